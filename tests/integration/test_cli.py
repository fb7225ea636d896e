"""The CLI as a user drives it: output, --json, errors with hints, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from mlfo_toolkit.cli.main import cli
from mlfo_toolkit.config import Config
from tests.helpers import REPO
from tests.helpers.orchestra import close, start_orchestra

INTENTS = REPO / "intents"


def run(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_config_show_reflects_file_environment_and_masks_secrets(workdir: Path) -> None:
    (workdir / "mlfo.yaml").write_text("mlfo: {port: 8001}\n")
    result = run("config", "show", "--json", env={"MLFO_API__TOKEN": "hush", "MLFO_FL__ROUNDS": "3"})
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["mlfo"]["port"] == 8001 and shown["fl"]["rounds"] == 3 and shown["api"]["token"] == "***"
    (workdir / "mlfo.yaml").write_text("mlfo: {prot: 8001}\n")
    bad = run("config", "show")
    assert bad.exit_code == 3 and "mlfo.prot: unknown key" in bad.stderr and bad.stdout == ""


def test_intent_validate(workdir: Path) -> None:
    good = run("intent", "validate", str(INTENTS / "welding.yaml"))
    assert good.exit_code == 0 and "source handmnist, model complex" in good.stdout
    broken = workdir / "broken.yaml"
    broken.write_text("intentID: x\ntargets:\n  - id: a\n    operation: maximise\n    operand: robots.painting.accuracy\n")
    result = run("intent", "validate", str(broken))
    assert result.exit_code == 4
    assert "field 'targets[0].operand'" in result.stderr and "unknown operand" in result.stderr
    assert "Hint: known operands: robots.welding.accuracy" in result.stderr
    broken.write_text("intentID: x\ntargets:\n  - id: a\n    operation maximise\n")
    result = run("intent", "validate", str(broken))
    assert result.exit_code == 4 and f"{broken}:" in result.stderr


def test_intent_plan_json(workdir: Path) -> None:
    result = run("intent", "plan", str(INTENTS / "cohorts-prototype.yaml"), "--json")
    assert result.exit_code == 0, result.stderr
    plans = json.loads(result.stdout)["cohorts"]
    assert [p["ipstart"] for p in plans] == [10, 40, 50]
    assert [p["server"] for p in plans] == ["10.0.11.100:5000", "10.0.12.100:5000", "10.0.13.100:5000"]
    assert len(plans[0]["clients"]) == 30


def test_intent_send_wait_json_and_unreachable(config: Config, workdir: Path) -> None:
    orchestra, closables = start_orchestra(config, workdir, clients=10)
    try:
        env = {
            "MLFO_IP_PLAN__CLIENTS": json.dumps([a.address for a in orchestra.clients]),
            "MLFO_PATHS__RUNS_DIR": str(workdir / "runs"),
        }
        address = orchestra.url.removeprefix("http://")
        result = run("intent", "send", str(INTENTS / "cohorts.yaml"), "--mlfo", address, "--wait", "--json", env=env)
        assert result.exit_code == 0, result.stderr
        summary = json.loads(result.stdout)
        assert [c["name"] for c in summary["cohorts"]] == ["welding-a", "welding-b"]
        assert [c["strategy"] for c in summary["cohorts"]] == ["FedAvg", "FedProx"]
        assert summary["cohorts"][1]["accuracy"] == [0.7, 0.9]
        assert (Path(summary["run_dir"]) / "accuracy-loss.png").is_file()
        # ranges ran on from one cohort to the next: clients 0-4 then 5-9
        assert all(len(agent.cli_calls) == 1 for agent in orchestra.clients)
    finally:
        close(closables)
    unreachable = run("intent", "send", str(INTENTS / "cohorts.yaml"), "--mlfo", address)
    assert unreachable.exit_code == 5 and f"cannot reach the MLFO at {address}" in unreachable.stderr


def test_help_teaches() -> None:
    for args in (["--help"], ["intent", "send", "--help"], ["serve", "--help"], ["agent", "--help"], ["demo", "--help"]):
        result = run(*args)
        assert result.exit_code == 0 and "Usage:" in result.stdout
    assert "POST /receive" in run("serve", "--help").stdout
    assert "POST /serv" in run("agent", "--help").stdout
