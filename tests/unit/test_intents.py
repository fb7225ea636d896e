"""Intent parsing, the operand catalog, and the Mo-Mo intent."""

from pathlib import Path

import pytest

from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.orchestrator.intents import (
    Catalog,
    MomoConstraints,
    build_momo_intent,
    load_intent_file,
    parse_intent,
    parse_momo_intent,
)
from tests.helpers import REPO

INTENTS = REPO / "intents"


@pytest.mark.parametrize(
    ("file", "source", "model"),
    [("welding.yaml", "handmnist", "complex"), ("drilling.yaml", "fashionmnist", "complex"), ("cutting.yaml", "cifar", "complex")],
)
def test_prototype_intents_resolve(file: str, source: str, model: str) -> None:
    intent = load_intent_file(INTENTS / file)
    pipeline = Catalog.load().resolve(intent)
    assert (pipeline.source, pipeline.model, pipeline.sink, pipeline.federated) == (source, model, "robot.controller", True)


def test_errors_name_field_and_line() -> None:
    text = "intentID: x\ntargets:\n  - id: a\n    operation: maximise\n    operand: 42\n    oprand: y\n"
    with pytest.raises(ValidationError) as err:
        parse_intent(text, "in.yaml")
    assert err.value.field in ("targets[0].operand", "targets[0].oprand")
    assert err.value.line in (5, 6)
    missing = "intentID: x\ntargets:\n  - id: a\n    operation: maximise\n"
    with pytest.raises(ValidationError, match=r"in.yaml:3, field 'targets\[0\]\.operand': is required"):
        parse_intent(missing, "in.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("intentID: [unclosed\n", "malformed YAML"),
        ("- just\n- a list\n", "must be a mapping"),
        ("intentID: x\ntargets: []\n", "targets"),
        ("intentID: x\ntargets:\n  - {id: a, operation: explode, operand: b}\n", "unknown operation 'explode'"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_bad_intents(text: str | bytes, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_intent(text)


def test_unknown_operand_names_the_known_ones() -> None:
    intent = parse_intent("intentID: x\ntargets:\n  - {id: a, operation: maximise, operand: robots.painting.accuracy}\n")
    with pytest.raises(ValidationError) as err:
        Catalog.load().resolve(intent)
    assert err.value.field == "targets[0].operand"
    assert "robots.welding.accuracy" in (err.value.hint or "")


def test_catalog_is_extensible_without_code(tmp_path: Path) -> None:
    catalog_file = tmp_path / "catalog.yaml"
    catalog_file.write_text("operands:\n  drones.landing.accuracy: {source: handmnist, model: simple, sink: drone}\n")
    intent = parse_intent(
        "intentID: d\ntargets:\n  - {id: a, operation: maximise, operand: drones.landing.accuracy, constraints: {privacylevel: low}}\n"
    )
    pipeline = Catalog.load(catalog_file).resolve(intent)
    assert (pipeline.model, pipeline.sink, pipeline.federated) == ("simple", "drone", False)
    catalog_file.write_text("operands:\n  x: {source: imagenet, model: simple}\n")
    with pytest.raises(ValidationError, match="unknown dataset 'imagenet'"):
        Catalog.load(catalog_file)


def test_momo_intent_round_trip() -> None:
    intent = load_intent_file(INTENTS / "welding.yaml")
    pipeline = Catalog.load().resolve(intent)
    constraints = MomoConstraints(sourcekind="handmnist", modelkind="complex", avgalgo="fedprox", numround=3, sameserv=True)
    momo = build_momo_intent(intent.intentID, pipeline, constraints)
    parsed, typed = parse_momo_intent(momo.model_dump())
    assert parsed.targets[0].operation == "aggregate.global" and parsed.targets[0].operand == "model.federated"
    assert (typed.avgalgo, typed.numround, typed.sameserv) == ("FedProx", 3, True)
    again, _ = parse_momo_intent(momo.to_yaml())
    assert again == parsed


def test_momo_intent_rejects_wrong_types_and_strategies() -> None:
    base = {"intentID": "m", "targets": [{"id": "c", "operation": "aggregate.global", "operand": "model.federated",
                                          "constraints": {"sourcekind": "handmnist", "modelkind": "simple", "numround": "many"}}]}
    with pytest.raises(ValidationError, match=r"targets\[0\]\.constraints\.numround"):
        parse_momo_intent(base)
    base["targets"][0]["constraints"].update(numround=2, avgalgo="FedMagic")
    with pytest.raises(ValidationError, match="unknown FL strategy 'FedMagic'"):
        parse_momo_intent(base)
