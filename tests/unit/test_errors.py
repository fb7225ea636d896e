"""Exit codes are documented and reachable from the CLI."""

import json

from click.testing import CliRunner

from mlfo_toolkit.cli.main import cli
from mlfo_toolkit.errors import EXIT_CODE_HELP, ExitCode


def test_every_exit_code_has_a_help_line() -> None:
    # (The README's table of them is checked row by row in test_architecture.)
    assert set(EXIT_CODE_HELP) == set(ExitCode)
    assert all(EXIT_CODE_HELP[code].strip() for code in ExitCode)


def test_exit_codes_command() -> None:
    result = CliRunner().invoke(cli, ["exit-codes", "--json"])
    assert result.exit_code == 0
    listed = json.loads(result.output)
    assert listed["invalid_input"]["code"] == 4 and listed["deployment_failed"]["code"] == 7
