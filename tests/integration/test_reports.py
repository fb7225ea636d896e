"""Reports a researcher can put in a paper: figures that read, an HTML page that opens in a real browser,
vector formats that parse, and runs in MLflow and TensorBoard read back with their own readers.

The experiment folders are written by the test (a 2 x 2 sweep of strategy and fraction_fit, two
repetitions, a kill at round 2 and a restart at round 4), in the form `mlfo run` writes them: the
report reads nothing else, and a Flower run would only make the test slower.
"""

from __future__ import annotations

import json
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mlfo_toolkit.cli.main import cli
from tests.helpers import require_binary

ROUNDS = 6
POINTS = [{"strategy": s, "fraction_fit": f} for s in ("FedAvg", "FedMedian") for f in (0.5, 1.0)]


def cohort(point: dict[str, Any], seed: int) -> dict[str, Any]:
    lift = 0.02 * POINTS.index(point) + 0.005 * seed
    return {"name": "welding-a", "deployment": f"d{seed}", "state": "done", "strategy": point["strategy"],
            "fraction_fit": point["fraction_fit"], "clients": 4,
            "accuracy": [round(min(0.99, 0.6 + 0.07 * r + lift), 4) for r in range(ROUNDS)],
            "loss": [round(1.2 / (r + 1) + lift, 4) for r in range(ROUNDS)],
            "round_seconds": [4.0 + (3.5 if r in (2, 3) else 0) + seed * 0.1 for r in range(ROUNDS)],
            "sampled": [4] * ROUNDS, "results": [4, 4, 3, 3, 4, 4], "short_rounds": [3, 4],
            "phases": [{"receive": 2.0, "train": 1.0, "idle": 1.0}] * ROUNDS,
            "traffic": {"bytes_sent": 400_000 + seed, "bytes_received": 380_000}, "partition": {"kind": "iid", "seed": 7},
            "label_counts": [[10, 12], [11, 11], [12, 10], [11, 11]]}


def write_experiment(folder: Path, name: str) -> Path:
    runs = []
    for point in POINTS:
        for seed in (1, 2):
            key = f"strategy_{point['strategy']}-fraction_fit_{point['fraction_fit']}-r{seed}"
            run_dir = folder / "runs" / key
            run_dir.mkdir(parents=True)
            events = [{"kind": "kill", "round": 2, "what": {"cohort": "welding-a", "part": 1}, "ok": True,
                       "effect": {"client_state": "lost", "pid": 100 + seed}},
                      {"kind": "restart", "round": 4, "what": {"cohort": "welding-a", "part": 1}, "ok": True,
                       "effect": {"ran_to_end": True}}]
            run = {"cohorts": [cohort(point, seed)], "events": events, "point": point, "seed": seed, "backend": "loopback",
                   "manifest": {"mlfo": "0.1.0", "flwr": "1.42.0", "python": "3.11", "seeds": {"fl.seed": seed}}}
            (run_dir / "run.json").write_text(json.dumps(run))
            runs.append({"key": key, "point": point, "seed": seed, "repetition": seed, "dir": str(run_dir), "state": "done"})
    source = folder / f"{name}.yaml"
    source.write_text(f"# {name}: FedAvg against FedMedian at two sampling fractions, a client killed and restarted.\nname: {name}\n")
    (folder / "index.json").write_text(json.dumps({"experiment": name, "source": str(source), "runs": runs}))
    return folder


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = write_experiment(tmp_path_factory.mktemp("sweep"), "sweep-2x2")
    result = CliRunner().invoke(cli, ["report", str(folder), "--format", "png,svg,pdf", "--json"])
    assert result.exit_code == 0, result.output
    return folder


def svg_texts(path: Path) -> list[str]:
    return [t.text or "" for t in ET.parse(path).getroot().iter("{http://www.w3.org/2000/svg}text")]


def test_every_figure_has_a_legend_integer_rounds_numbered_events_and_a_band(sweep: Path) -> None:
    out = sweep / "report"
    labels = [f"strategy={p['strategy']}, fraction_fit={p['fraction_fit']:g}" for p in POINTS]
    for figure in ("accuracy-loss", "round-time"):
        texts = svg_texts(out / f"{figure}.svg")
        assert all(any(t.startswith(label) for t in texts) for label in labels), (figure, texts)  # a legend entry per point
        ticks = [t for t in texts if re.fullmatch(r"\d+(\.\d+)?", t)]
        assert "1.5" not in ticks and "2.5" not in ticks and {"1", "2", str(ROUNDS)} <= set(ticks)
        assert "fill-opacity: 0.15" in (out / f"{figure}.svg").read_text()  # the spread band of the repetitions
    assert all(any(label in t for t in svg_texts(out / "traffic.svg")) for label in labels)
    # Events by number on the figure (once each, no text along the lines), explained in the events table.
    events = (out / "events.csv").read_text().splitlines()
    assert events[0].startswith("number,round,kind") and events[1].startswith("1,2,kill") and events[2].startswith("2,4,restart")
    marks = [t for t in svg_texts(out / "round-time.svg") if t in ("1", "2")]
    assert len(marks) >= 2 and not any("strategy_" in t for t in svg_texts(out / "round-time.svg"))


def test_vector_figures_parse_and_render(sweep: Path) -> None:
    pdftoppm = require_binary("pdftoppm")
    for pdf in sorted((sweep / "report").glob("*.pdf")):
        rendered = subprocess.run([pdftoppm, "-png", "-r", "30", "-singlefile", str(pdf), str(pdf.with_suffix(".check"))],
                                  capture_output=True, text=True)
        assert rendered.returncode == 0, rendered.stderr
        assert pdf.with_suffix(".check.png").read_bytes()[:4] == b"\x89PNG"
    assert {p.stem for p in (sweep / "report").glob("*.pdf")} >= {"accuracy-loss", "round-time", "traffic"}
    for svg in (sweep / "report").glob("*.svg"):
        assert ET.parse(svg).getroot().tag == "{http://www.w3.org/2000/svg}svg"


def test_the_html_report_says_what_was_run_and_opens_in_a_real_browser(sweep: Path) -> None:
    page = (sweep / "report" / "index.html").read_text()
    assert "<title>sweep-2x2</title>" in page and "FedAvg against FedMedian" in page  # name and description
    assert "strategy: FedAvg | FedMedian; fraction_fit: 0.5 | 1" in page and "flwr 1.42.0" in page
    assert "['" not in page and "{'" not in page  # plain values, no Python reprs
    assert "http://" not in page and "https://" not in page  # nothing from elsewhere
    chromium = require_binary("chromium")
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    url = (sweep / "report" / "index.html").as_uri()
    dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=60)
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body is not None, dom.stderr[-2000:]
    marks = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(0)))
    assert marks["images-broken"] == "0" and int(marks["images-loaded"]) >= 4 and marks["overflow"] == "false", marks
    shot = sweep / "report" / "screenshot.png"
    subprocess.run([*args, "--window-size=1280,2000", f"--screenshot={shot}", url], capture_output=True, timeout=60)
    assert shot.read_bytes()[:4] == b"\x89PNG"
    # A missing figure is said on the page itself, and the page marks it.
    (sweep / "report" / "traffic.png").rename(sweep / "report" / "traffic.moved")
    try:
        dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=60)
        assert 'data-images-broken="1"' in dom.stdout and "Missing figures: traffic.png" in dom.stdout
    finally:
        (sweep / "report" / "traffic.moved").rename(sweep / "report" / "traffic.png")


def test_the_runs_reach_mlflow_and_tensorboard_and_read_back_the_same(sweep: Path) -> None:
    pytest.importorskip("mlflow", reason="needs mlfo-toolkit[tracking] (make test installs it)")
    pytest.importorskip("tensorboardX", reason="needs mlfo-toolkit[tracking] (make test installs it)")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for _ in range(2):  # a second report logs nothing twice
        result = CliRunner().invoke(cli, ["report", str(sweep), "--to", "mlflow", "--to", "tensorboard", "--json"])
        assert result.exit_code == 0, result.output
    tracked = json.loads(result.stdout)["tracked"]
    client = MlflowClient(tracked["mlflow"])
    experiment = client.get_experiment_by_name("sweep-2x2")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id], max_results=100)}
    assert len(runs) == 1 + 8  # the report's parent run and one per run and cohort
    key = "strategy_FedMedian-fraction_fit_1.0-r2"
    recorded = json.loads((sweep / "runs" / key / "run.json").read_text())["cohorts"][0]
    run = runs[f"{key}/welding-a"]
    history = client.get_metric_history(run.info.run_id, "accuracy")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == recorded["accuracy"]
    assert run.data.params["point.strategy"] == "FedMedian" and run.data.params["seed"] == "2"
    assert run.data.tags["event.1"].startswith("round 2: kill")
    assert {a.path for a in client.list_artifacts(runs["report"].info.run_id)} >= {"accuracy-loss.pdf", "index.html"}
    events = EventAccumulator(str(Path(tracked["tensorboard"]) / key / "welding-a"))
    events.Reload()
    assert [e.value for e in events.Scalars("accuracy")] == pytest.approx(recorded["accuracy"])
    assert [e.step for e in events.Scalars("round_seconds")] == list(range(1, ROUNDS + 1))


def test_two_experiments_side_by_side(sweep: Path, tmp_path: Path) -> None:
    other = write_experiment(tmp_path / "after", "after-change")
    out = tmp_path / "compare"
    result = CliRunner().invoke(cli, ["report", str(sweep), str(other), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    texts = " ".join(row["point"] for row in json.loads(result.stdout)["table"])
    assert "sweep-2x2: strategy=FedAvg" in texts and "after-change: strategy=FedMedian" in texts
    assert "<title>sweep-2x2 vs after-change</title>" in (out / "index.html").read_text()
    refused = CliRunner().invoke(cli, ["report", str(sweep), str(tmp_path), "--json"])
    assert refused.exit_code == 4 and "not an experiment folder" in refused.stdout
