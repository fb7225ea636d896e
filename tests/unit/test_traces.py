"""Link traces: the CSV is checked line by line, the replay follows it in time, and the netem commands are right."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.net.traces import TracePoint, load_trace, netem_commands, parse_trace

STEPS = "seconds,rate_mbit\n0,40\n3,10\n6,25\n"


def test_a_trace_holds_each_row_until_the_next_and_loops() -> None:
    trace = parse_trace(STEPS)
    assert trace.duration == 9  # the last row holds for the median step (3 s)
    assert [trace.at(t).rate_mbit for t in (0, 2.9, 3, 5.5, 6, 8.9, 9, 12.5)] == [40, 40, 10, 10, 25, 25, 40, 10]
    assert trace.mean_rate(0, 3) == pytest.approx(40)
    assert trace.mean_rate(2.5, 3.5) == pytest.approx(25, abs=1)  # half at 40, half at 10


@pytest.mark.parametrize(("text", "field", "line"), [
    ("time,rate_mbit\n0,1\n", "header", 1),
    ("seconds,rate_mbit,jitter\n0,1,2\n", "jitter", 1),
    ("seconds,rate_mbit\n1,10\n", "seconds", 2),
    ("seconds,rate_mbit\n0,10\n2,5\n2,7\n", "seconds", 4),
    ("seconds,rate_mbit\n0,ten\n", "rate_mbit", 2),
    ("seconds,rate_mbit\n0,0\n", "rate_mbit", 2),
    ("seconds,rate_mbit,loss_percent\n0,10,150\n", "loss_percent", 2),
    ("seconds,rate_mbit\n0,\n", "rate_mbit", 2),
    ("seconds,rate_mbit\n", None, 2),
])
def test_bad_traces_name_the_line_and_column(text: str, field: str | None, line: int) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_trace(text, "my.csv")
    assert caught.value.field == field and caught.value.line == line and "my.csv" in str(caught.value)


def test_the_netem_commands_set_delay_and_loss_under_mininets_htb_class() -> None:
    assert netem_commands("s1-eth2", TracePoint(0, 10)) is None
    assert netem_commands("s1-eth2", TracePoint(0, 10, 12.5, 0.5)) == [
        "tc", "qdisc", "replace", "dev", "s1-eth2", "parent", "5:1", "handle", "10:", "netem", "delay", "12.5ms", "loss", "0.5%"]
    assert netem_commands("s1-eth2", TracePoint(0, 10, None, 2))[-3:] == ["netem", "loss", "2%"]


def test_the_shipped_traces_load_and_span_what_their_docs_say() -> None:
    leo, drive = load_trace("leo-pass"), load_trace("cellular-drive")
    assert leo.duration == 240 and drive.duration == 300
    leo_rates = [p.rate_mbit for p in leo.points]
    assert 29 < min(leo_rates) < 30 and 75 < max(leo_rates) < 76
    assert max(leo_rates) == leo.at(120).rate_mbit  # the zenith is mid-pass
    assert min(p.rate_mbit for p in drive.points) == 1 and max(p.rate_mbit for p in drive.points) == 80
    assert [p.seconds for p in drive.points if p.loss_percent == 2] == [60, 120, 180, 240]  # the handovers
    with pytest.raises(ValidationError, match="no-such-trace") as caught:
        load_trace("no-such-trace")
    assert "cellular-drive, leo-pass" in (caught.value.hint or "")  # the shipped ones are named


def test_the_generator_reproduces_the_shipped_traces(tmp_path: Path) -> None:
    import importlib.util

    from mlfo_toolkit.util.resources import resource_path

    folder = resource_path("topologies") / "traces"
    spec = importlib.util.spec_from_file_location("make_traces", folder / "make_traces.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.HERE = tmp_path
    module.write("leo-pass.csv", module.leo_pass())
    module.write("cellular-drive.csv", module.cellular_drive())
    for name in ("leo-pass.csv", "cellular-drive.csv"):
        assert (tmp_path / name).read_text() == (folder / name).read_text()


def test_the_shipped_trace_experiment_sweeps_both_shipped_traces() -> None:
    from mlfo_toolkit.experiments.spec import load_experiment
    from tests.helpers import REPO

    experiment = load_experiment(REPO / "experiments" / "link-traces.yaml")
    assert [r.key for r in experiment.runs] == ["file_leo-pass-r1", "file_cellular-drive-r1"]
    assert experiment.spec.topology.controller == "faucet"
