"""Exit codes are documented and reachable from the CLI."""

import json

from click.testing import CliRunner

from mlfo_toolkit.cli.main import cli
from mlfo_toolkit.errors import EXIT_CODE_HELP, ExitCode


def test_every_exit_code_has_help_and_is_in_the_readme() -> None:
    from tests.helpers import REPO

    readme = (REPO / "README.md").read_text()
    assert set(EXIT_CODE_HELP) == set(ExitCode)
    for code in ExitCode:
        assert EXIT_CODE_HELP[code]
        assert f"{int(code)} " in readme, f"exit code {int(code)} is not documented in README.md"


def test_exit_codes_command() -> None:
    result = CliRunner().invoke(cli, ["exit-codes", "--json"])
    assert result.exit_code == 0
    listed = json.loads(result.output)
    assert listed["invalid_input"]["code"] == 4 and listed["deployment_failed"]["code"] == 7
