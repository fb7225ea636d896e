"""A researcher's own Flower app as a pipeline's model: registered by name, copied, hosted, never changed."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Any

import pytest

from mlfo_toolkit.agent.node import ClientStartParams, NodeAgent, ServerStartParams
from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.fl.anatomy import RoundClock
from mlfo_toolkit.fl.control import RunControl
from mlfo_toolkit.fl.userapps import HOST_COMPONENT, app_run_config, prepare_app, read_app
from mlfo_toolkit.orchestrator.intents import Catalog, MomoConstraints
from tests.helpers import REPO

EXAMPLE = REPO / "examples" / "sklearn-digits"


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def test_the_copy_runs_behind_mlfos_host_and_the_users_folder_is_untouched(tmp_path: Path) -> None:
    before = tree_digest(EXAMPLE)
    copy, own = prepare_app(EXAMPLE, tmp_path / "app")
    assert tree_digest(EXAMPLE) == before
    project = tomllib.loads((copy / "pyproject.toml").read_text())
    app = project["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": HOST_COMPONENT, "clientapp": "sklearn_digits.client_app:app"}
    assert app["config"]["mlfo-serverapp"] == "sklearn_digits.server_app:app"
    assert {"mlfo-metrics-file", "mlfo-control-file", "mlfo-num-rounds", "mlfo-accuracy-keys"} <= set(app["config"])
    assert "federations" not in project["tool"]["flwr"]  # the agent's FLWR_HOME names the SuperLink
    assert own["num-server-rounds"] == 5 and "mlfo-serverapp" not in own
    assert (copy / "sklearn_digits" / "task.py").read_bytes() == (EXAMPLE / "sklearn_digits" / "task.py").read_bytes()


def test_the_intents_settings_reach_the_keys_the_app_declares_in_its_types() -> None:
    own = {"num-server-rounds": 3, "fraction-train": 1.0, "lr": 0.01, "penalty": "l2", "data-seed": 7}
    settings = {"rounds": 12, "fraction_fit": 1, "learning_rate": 0.5, "batch_size": 64, "min_fit": None}
    overrides = app_run_config(own, settings, {"penalty": "l1", "data-seed": 9, "not-declared": 1})
    assert overrides == {"num-server-rounds": 12, "fraction-train": 1.0, "lr": 0.5, "penalty": "l1", "data-seed": 9}
    assert isinstance(overrides["fraction-train"], float)


def test_a_folder_that_is_not_a_flower_app_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no pyproject.toml") as err:
        read_app(tmp_path)
    assert "flwr new" in str(err.value.hint)
    (tmp_path / "pyproject.toml").write_text('[tool.flwr.app.components]\nclientapp = "a:b"\n')
    with pytest.raises(ValidationError, match="names no serverapp"):
        read_app(tmp_path)


def test_an_agent_runs_only_apps_registered_in_its_config(tmp_path: Path) -> None:
    config = Config().with_overrides({"fl.apps": {"digits": {"path": str(EXAMPLE)}}})
    agent = NodeAgent(config, work_dir=tmp_path / "agent")
    server = {"algo": "FedAvg", "fracfit": 1.0, "minfit": 1, "minav": 1, "numround": 1}
    with pytest.raises(ValidationError, match="no Flower app 'other' is registered") as err:
        agent.start_server(ServerStartParams(**server, model="app:other"))
    assert err.value.field == "model" and "digits" in str(err.value.hint)
    with pytest.raises(ValidationError, match="not a valid app model"):  # a path is never a name
        agent.start_client(ClientStartParams(source="handmnist", model="app:../../tmp/x", server="127.0.0.1:9", cohsize=2, part=0))
    assert agent.server is None and agent.clients == []


def test_the_catalog_and_the_momo_intent_take_app_models_of_a_valid_form(tmp_path: Path) -> None:
    good = tmp_path / "catalog.yaml"
    good.write_text("operands:\n  my.accuracy:\n    source: handmnist\n    model: app:sklearn-digits\n")
    assert Catalog.load(good).spec.operands["my.accuracy"].model == "app:sklearn-digits"
    bad = tmp_path / "bad.yaml"
    bad.write_text("operands:\n  my.accuracy:\n    source: handmnist\n    model: app:/etc/passwd\n")
    with pytest.raises(ValidationError, match="not a valid app model") as err:
        Catalog.load(bad)
    assert err.value.field == "operands.my.accuracy.model" and err.value.line == 4
    assert MomoConstraints(sourcekind="handmnist", modelkind="app:digits").modelkind == "app:digits"
    with pytest.raises(ValueError, match="unknown model"):
        MomoConstraints(sourcekind="handmnist", modelkind="resnet")


class _Grid:
    def get_node_ids(self) -> list[int]:
        return [1, 2]


class _Strategy:
    """The three methods of a Flower strategy the host wraps."""

    def configure_train(self, server_round: int, *args: Any) -> list[Any]:
        return []

    def aggregate_train(self, server_round: int, replies: Any) -> tuple[None, None]:
        return None, None

    def aggregate_evaluate(self, server_round: int, replies: Any) -> Any:
        return None  # an app without client-side evaluation


def test_an_app_that_reports_no_accuracy_still_gets_its_rounds_recorded(tmp_path: Path) -> None:
    import json

    from mlfo_toolkit.fl.hosted import _Tracker

    metrics = tmp_path / "metrics.jsonl"
    control = RunControl(None)
    tracker = _Tracker(RoundClock(_Grid(), poll_seconds=0.01, control=control), control,
                       {"mlfo-metrics-file": str(metrics), "mlfo-num-rounds": 2, "mlfo-accuracy-keys": "accuracy",
                        "mlfo-loss-keys": "loss"})
    strategy = _Strategy()
    assert tracker.wrap(strategy, None, num_rounds=2) is None  # no evaluate_fn: none is made up
    for server_round in (1, 2):
        strategy.configure_train(server_round)
        strategy.aggregate_train(server_round, [])
        strategy.aggregate_evaluate(server_round, [])
    rounds = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [(r["round"], r["accuracy"], r["loss"]) for r in rounds] == [(0, None, None), (1, None, None), (2, None, None)]
    assert "phases" in rounds[1]
