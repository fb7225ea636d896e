"""Input that used to get a 500, a traceback or silent acceptance: each is refused naming the field (issue 18)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlfo_toolkit.agent.node import check_address
from mlfo_toolkit.cli.main import cli
from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.experiments.spec import load_experiment
from mlfo_toolkit.orchestrator.intake import ReceiveParams
from mlfo_toolkit.orchestrator.intents import parse_intent
from mlfo_toolkit.util.yamlfiles import strict_json, validate
from tests.helpers import REPO

WELDING = (REPO / "intents" / "welding.yaml").read_text()


@pytest.mark.parametrize("text, words", [
    (WELDING.replace("intentID: edgeintent01", "intentID: " + "9" * 4400), "4300 digits"),
    (WELDING.replace("privacylevel: high", "privacylevel: !!float x"), "could not convert"),
    (WELDING.replace("privacylevel: high", "privacylevel: low\n        privacylevel: high"), "'privacylevel' is given twice"),
    (WELDING.replace("privacylevel: high", "privacylevel: high\n        budget: .nan"), "not a finite number"),
    (WELDING.replace("privacylevel: high", "privacylevel: high\n" + "".join(f"        c{i}: {i}\n" for i in range(65))), "64"),
    (WELDING + "".join(f"    - id: t{i}\n      operation: maximise\n      operand: x\n" for i in range(16)), "16"),
])
def test_intents_that_used_to_pass_or_crash_are_refused(text: str, words: str) -> None:
    with pytest.raises(ValidationError) as refused:
        parse_intent(text, "intent.yaml")
    assert words in refused.value.message, refused.value.message


def test_a_duplicate_key_names_its_line() -> None:
    with pytest.raises(ValidationError) as refused:
        parse_intent("intentID: a\nintentID: b\ntargets: []\n", "intent.yaml")
    assert refused.value.line == 2 and "'intentID' is given twice" in refused.value.message


@pytest.mark.parametrize("body", ['{"a": 1, "a": 2}', '{"a": NaN}', '{"a": Infinity}'])
def test_json_with_a_duplicate_key_or_nan_is_refused(body: str) -> None:
    with pytest.raises(ValueError):
        strict_json(body)
    assert strict_json('{"a": 1, "b": [1.5]}') == {"a": 1, "b": [1.5]}


@pytest.mark.parametrize("field, value", [("minfit", True), ("cohortsize", False), ("fracfit", True)])
def test_true_is_not_a_number(field: str, value: bool) -> None:
    with pytest.raises(ValidationError) as refused:
        validate(ReceiveParams, {"cohortsize": 3, field: value}, {}, "form")
    assert refused.value.field == field


@pytest.mark.parametrize("address", ["127.0.0.1:\uff16\uff10\uff10\uff10", "0.0.0.0:6000", "[::]:6000", "255.255.255.255:6000",
                                     "224.0.0.1:6000", "::1:6000"])
def test_server_addresses_no_client_can_use_are_refused(address: str) -> None:
    with pytest.raises(ValueError):
        check_address(address)
    assert check_address("[::1]:6000") == "[::1]:6000" and check_address("10.0.11.100:6000") == "10.0.11.100:6000"


@pytest.mark.parametrize("sweep, field", [
    ("rounds: ['../../../../ESCAPED']", "sweep.rounds[0]"),
    ("fraction_fit: [.nan]", "sweep.fraction_fit[0]"),
    ("clients: [-5]", "sweep.clients[0]"),
    ("rounds: [true]", "sweep.rounds[0]"),
])
def test_sweep_values_are_checked_as_the_field_they_set(tmp_path: Path, sweep: str, field: str) -> None:
    path = tmp_path / "e.yaml"
    path.write_text(f"name: x\nsweep:\n  {sweep}\n")
    with pytest.raises(ValidationError) as refused:
        load_experiment(path)
    assert refused.value.field == field


def test_seeds_beyond_the_range_and_text_rounds(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    path.write_text(f"name: x\nrepeat: 1\nseeds: [{10**30}]\n")
    with pytest.raises(ValidationError) as refused:
        load_experiment(path)
    assert refused.value.field == "seeds[0]"
    path.write_text("name: x\nsweep:\n  rounds: ['5', 6]\n")
    assert [r.point["rounds"] for r in load_experiment(path).runs] == [5, 6]  # read as the numbers they are


# --- the CLI: a clear error, never a traceback (13) --------------------------------------------
def _fails_cleanly(argv: list[str], code: int, words: str) -> None:
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == code, (argv, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert words in result.stderr, result.stderr


def test_cli_names_the_problem_without_a_traceback(workdir: Path) -> None:
    (workdir / "big.yaml").write_text(WELDING.replace("intentID: edgeintent01", "intentID: " + "9" * 5000))
    _fails_cleanly(["intent", "validate", str(workdir / "big.yaml")], 4, "4300 digits")
    os.mkfifo(workdir / "fifo.yaml")  # reading it would block for ever
    _fails_cleanly(["intent", "validate", str(workdir / "fifo.yaml")], 4, "not a regular file")
    (workdir / "c.yaml").write_text("cohorts:\n  - {name: a, size: 2, intent: \"w\\0.yaml\"}\n")
    _fails_cleanly(["intent", "plan", str(workdir / "c.yaml")], 4, "NUL")
    (workdir / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    _fails_cleanly(["--config", str(workdir / "binary.yaml"), "config", "show"], 3, "not UTF-8")
    (workdir / "dup.yaml").write_text("mlfo: {port: 1}\nmlfo: {port: 2}\n")
    _fails_cleanly(["--config", str(workdir / "dup.yaml"), "config", "show"], 3, "given twice")
    _fails_cleanly(["topo", "show", "nosuchtopo"], 4, "shipped: hierarchical, prototype, small")
    (workdir / "e.yaml").write_text("name: x\nsweep:\n  rounds: [five]\n")
    _fails_cleanly(["run", str(workdir / "e.yaml"), "--dry-run"], 4, "sweep.rounds[0]")


def test_a_full_disk_is_a_clear_error_naming_the_file(workdir: Path) -> None:
    result = CliRunner().invoke(cli, ["monitor", "config", "--loopback", "-o", "/dev/full", "--json"])
    assert result.exit_code == 13, (result.output, result.exception)
    error = json.loads(result.stdout)
    assert error["error"] == "StorageError" and "/dev/full" in error["message"] and "No space left" in error["message"]


def test_a_service_that_cannot_listen_says_why(workdir: Path) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = str(taken.getsockname()[1])
        _fails_cleanly(["agent", "--port", port], 12, "the port is in use")
        _fails_cleanly(["serve", "--role", "campus", "--port", port], 12, "the port is in use")
    finally:
        taken.close()
    _fails_cleanly(["serve", "--role", "cloud", "--host", "no-such-host.invalid", "--port", "0"], 3, "does not resolve")
