"""Benchmark (run on demand, no root): what the closed loop saves and bounds, with real Flower on loopback.

    .venv/bin/python bench/assurance_bench.py [--seeds 3] [--clients 4] [--rounds 20]

Two experiments, each run under the `none` policy (observe only) and the `default` policy, with the
same seeds: an intent to *achieve* 0.93 accuracy (reachable: the default policy stops the run when
it is met), and one to achieve 0.999 (out of reach of this model: the default policy calls it
missed once accuracy stops improving). Both allow `--rounds` rounds. Prints, per target and policy,
the rounds run, the seconds of rounds, the FL traffic at the server, and whether the target was met;
then what `default` saved over `none` (ratios), and how many rounds it took to call the
unreachable target missed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlfo_toolkit import api  # noqa: E402
from mlfo_toolkit.config import load_config  # noqa: E402


def experiment(name: str, value: float, clients: int, rounds: int, seeds: int) -> dict[str, Any]:
    return {
        "name": name, "backend": "loopback",
        "cohorts": [{"name": "target", "size": clients, "min_available": clients, "rounds": rounds, "intent": {
            "intentID": name, "targets": [{"id": "factory.all", "operation": "achieve", "operand": "robots.welding.accuracy",
                                           "value": value, "constraints": {"privacylevel": "high"}}]}}],
        "fl": {"fraction_fit": 1.0, "min_fit": 1},
        "repeat": seeds, "sweep": {"policy": ["none", "default"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlfo-assurance-bench-") as tmp:
        work = Path(tmp)
        config = load_config(environ={}).with_overrides({"paths.state_dir": str(work / "state"), "paths.runs_dir": str(work / "runs")})
        for name, value in (("reachable", 0.93), ("unreachable", 0.999)):
            path = work / f"{name}.yaml"
            path.write_text(yaml.safe_dump(experiment(name, value, args.clients, args.rounds, args.seeds)))
            print(f"running {name} (target {value}): {2 * args.seeds} runs", file=sys.stderr)
            result = api.run_experiment(path, config, out_dir=work / name)
            for entry in result.runs:
                run = json.loads((Path(entry["dir"]) / "run.json").read_text())
                (cohort,) = run["cohorts"]
                traffic = cohort.get("traffic") or {}
                rows.append({
                    "target": name, "value": value, "policy": entry["point"]["policy"], "seed": entry["seed"],
                    "rounds": len(cohort["accuracy"]), "seconds": round(sum(s for s in cohort["round_seconds"] if s), 1),
                    "mb": round((traffic.get("bytes_sent", 0) + traffic.get("bytes_received", 0)) / 1e6, 2),
                    "final_accuracy": round(cohort["accuracy"][-1], 4), "state": (cohort.get("assurance") or {}).get("state"),
                    "reason": cohort.get("reason"),
                })
    print(f"{'target':<12}{'policy':<9}{'seed':>5}{'rounds':>8}{'seconds':>9}{'MB':>8}{'accuracy':>10}  state")
    for r in rows:
        print(f"{r['target']:<12}{r['policy']:<9}{r['seed']:>5}{r['rounds']:>8}{r['seconds']:>9}{r['mb']:>8}{r['final_accuracy']:>10}  {r['state']}")

    def mean(target: str, policy: str, key: str) -> float:
        return statistics.fmean(r[key] for r in rows if r["target"] == target and r["policy"] == policy)

    for target in ("reachable", "unreachable"):
        print(f"\n{target}: default / none over {args.seeds} seeds: rounds {mean(target, 'default', 'rounds') / mean(target, 'none', 'rounds'):.2f}, "
              f"seconds {mean(target, 'default', 'seconds') / mean(target, 'none', 'seconds'):.2f}, "
              f"traffic {mean(target, 'default', 'mb') / max(mean(target, 'none', 'mb'), 1e-9):.2f}; "
              f"accuracy default {mean(target, 'default', 'final_accuracy'):.4f} vs none {mean(target, 'none', 'final_accuracy'):.4f}")
    met = sum(1 for r in rows if r["target"] == "reachable" and r["policy"] == "default" and r["state"] == "met")
    print(f"reachable target met under default: {met}/{args.seeds}")
    missed = [r["rounds"] for r in rows if r["target"] == "unreachable" and r["policy"] == "default"]
    print(f"unreachable target called missed after {missed} rounds (of {args.rounds})")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
