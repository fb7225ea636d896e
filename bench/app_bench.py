"""Benchmark (run on demand, no root): researchers' own Flower apps through mlfo, forked or in fresh processes.

    .venv/bin/python bench/app_bench.py [--clients 5] [--rounds 5] [--apps examples/sklearn-digits,bench/apps/torch-digits]

For each app (a Flower app folder; an app whose framework is not installed is skipped with the reason)
and each isolation (`shared`: the executor forks every ClientApp task; `subprocess`: Flower's default,
a SuperExec per SuperNode and a fresh process per message), runs `mlfo demo --app` with one cohort and
prints: done or not, the final accuracy, the median seconds per round, the median train phase (the
ClientApp's own call), and how far MemAvailable fell.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import tomllib
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import MachineWatch  # noqa: E402

from mlfo_toolkit import api  # noqa: E402
from mlfo_toolkit.config import load_config  # noqa: E402
from mlfo_toolkit.errors import MlfoError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NEEDS = {"torch": "torch", "scikit-learn": "sklearn", "tensorflow": "tensorflow", "jax": "jax"}


def missing(app: Path) -> str | None:
    """The app's framework, when it is not installed here."""
    dependencies = tomllib.loads((app / "pyproject.toml").read_text())["project"].get("dependencies", [])
    for dep in dependencies:
        name = dep.split(">")[0].split("=")[0].split("<")[0].strip()
        module = NEEDS.get(name)
        if module and importlib.util.find_spec(module) is None:
            return f"{name} is not installed in this environment"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--apps", default="examples/sklearn-digits,bench/apps/torch-digits")
    args = parser.parse_args()
    print(f"{'app':16} {'isolation':10} {'state':6} {'accuracy':>8} {'s/round':>8} {'train s':>8} {'MemAvail drop':>14}")
    for name in args.apps.split(","):
        app = (REPO / name).resolve()
        why = missing(app)
        if why:
            print(f"{app.name:16} skipped: {why}")
            continue
        for isolation in ("shared", "subprocess"):
            with tempfile.TemporaryDirectory(prefix="mlfo-app-bench-") as work:
                cfg = load_config(None).with_overrides({"fl.isolation": isolation, "paths.runs_dir": f"{work}/runs",
                                                        "paths.state_dir": f"{work}/state"})
                with MachineWatch() as watch:
                    try:
                        result = api.demo(cfg, cohorts=1, clients=args.clients, rounds=args.rounds, app=app, timeout=900)
                        cohort = result.to_dict()["cohorts"][0]
                        state = cohort["state"]
                    except MlfoError as err:
                        print(f"{app.name:16} {isolation:10} failed: {err}")
                        continue
                seconds = median(cohort["round_seconds"]) if cohort["round_seconds"] else float("nan")
                train = median(p["train"] for p in cohort["phases"]) if cohort["phases"] else float("nan")
                accuracy = cohort["accuracy"][-1] if cohort["accuracy"] else float("nan")
                print(f"{app.name:16} {isolation:10} {state:6} {accuracy:8.3f} {seconds:8.2f} {train:8.2f} "
                      f"{watch.drop_gb:11.2f} GB", flush=True)


if __name__ == "__main__":
    main()
