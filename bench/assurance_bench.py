"""Benchmark (run on demand, no root): what the closed loop saves and bounds, with real Flower on loopback.

    .venv/bin/python bench/assurance_bench.py [--seeds 3] [--clients 4] [--rounds 20]

The same cohort and seeds, `--rounds` rounds allowed, run once under the `none` policy (observe only:
the full run) and under the `default` policy with three targets:

* plateau: `maximise` accuracy with a floor of 0.9: stops once accuracy is above it and has stopped
  improving (`assurance.plateau_rounds`, `plateau_gain`);
* achieve: `achieve` 0.93: stops at the round that reaches it;
* unreachable: `achieve` 0.999 (out of reach of this model): called missed once the trend shows it.

Prints every run (rounds, seconds of rounds, FL traffic at the server, final accuracy, state), then
per target what `default` saved over the full run (ratios) and its final accuracy against the full
run's, after how many rounds the unreachable target was called missed, and how many rounds each
`achieve` run went past the round that reached its value (how soon the loop acts).
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


def experiment(name: str, target: dict[str, Any], policy: str, clients: int, rounds: int, seeds: int) -> dict[str, Any]:
    return {
        "name": name, "backend": "loopback", "policy": policy,
        "cohorts": [{"name": "target", "size": clients, "min_available": clients, "rounds": rounds, "intent": {
            "intentID": name, "targets": [{"id": "factory.all", "operand": "robots.welding.accuracy",
                                           "constraints": {"privacylevel": "high"}, **target}]}}],
        "fl": {"fraction_fit": 1.0, "min_fit": 1},
        "repeat": seeds,
    }


TARGETS = {
    "full run": ({"operation": "maximise", "value": 0.9}, "none"),
    "plateau": ({"operation": "maximise", "value": 0.9}, "default"),
    "achieve": ({"operation": "achieve", "value": 0.93}, "default"),
    "unreachable": ({"operation": "achieve", "value": 0.999}, "default"),
}


def mean_round(row: dict[str, Any]) -> float:
    return float(row["seconds"]) / max(1, int(row["rounds"]))


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
        for name, (target, policy) in TARGETS.items():
            key = name.replace(" ", "-")
            path = work / f"{key}.yaml"
            path.write_text(yaml.safe_dump(experiment(key, target, policy, args.clients, args.rounds, args.seeds)))
            print(f"running {name} ({policy}): {args.seeds} runs", file=sys.stderr)
            result = api.run_experiment(path, config, out_dir=work / key)
            for entry in result.runs:
                run = json.loads((Path(entry["dir"]) / "run.json").read_text())
                (cohort,) = run["cohorts"]
                traffic = cohort.get("traffic") or {}
                rows.append({
                    "target": name, "policy": policy, "seed": entry["seed"],
                    "rounds": len(cohort["accuracy"]), "seconds": round(sum(s for s in cohort["round_seconds"] if s), 1),
                    "mb": round((traffic.get("bytes_sent", 0) + traffic.get("bytes_received", 0)) / 1e6, 2),
                    "final_accuracy": round(cohort["accuracy"][-1], 4), "state": (cohort.get("assurance") or {}).get("state"),
                    "reason": cohort.get("reason"), "accuracy": cohort["accuracy"],
                })
    print(f"{'target':<12}{'policy':<9}{'seed':>5}{'rounds':>8}{'seconds':>9}{'MB':>8}{'accuracy':>10}  state")
    for r in rows:
        print(f"{r['target']:<12}{r['policy']:<9}{r['seed']:>5}{r['rounds']:>8}{r['seconds']:>9}{r['mb']:>8}{r['final_accuracy']:>10}  {r['state']}")

    def mean(target: str, key: str) -> float:
        return statistics.fmean(r[key] for r in rows if r["target"] == target)

    for target in ("plateau", "achieve", "unreachable"):
        print(f"\n{target} / full run, {args.seeds} seeds: rounds {mean(target, 'rounds') / mean('full run', 'rounds'):.2f}, "
              f"seconds {mean(target, 'seconds') / mean('full run', 'seconds'):.2f}, "
              f"traffic {mean(target, 'mb') / max(mean('full run', 'mb'), 1e-9):.2f}; "
              f"final accuracy {mean(target, 'final_accuracy'):.4f} vs {mean('full run', 'final_accuracy'):.4f}; "
              f"states {[r['state'] for r in rows if r['target'] == target]}")
    full = {r["seed"]: r["accuracy"] for r in rows if r["target"] == "full run"}
    for target in ("plateau", "achieve"):
        # Stopping changes nothing of the rounds before it: the full run with the same seed had this accuracy then.
        pairs = [(r["final_accuracy"], full[r["seed"]][r["rounds"] - 1]) for r in rows if r["target"] == target and r["seed"] in full]
        print(f"{target}: final accuracy vs the full run's at the same round (same seed): "
              + ", ".join(f"{a:.4f}/{b:.4f}" for a, b in pairs) + f"; largest difference {max(abs(a - b) for a, b in pairs):.4f}")
    # How soon the loop acts: the rounds an `achieve` run went past the first round that reached its value (the round
    # under way when the stop came still reports; more means the loop saw the round late).
    reached = {seed: next((i for i, a in enumerate(acc, start=1) if a >= TARGETS["achieve"][0]["value"]), None) for seed, acc in full.items()}
    past = [r["rounds"] - reached[r["seed"]] for r in rows if r["target"] == "achieve" and reached.get(r["seed"])]
    print(f"achieve: rounds run past the round that reached the value: {past} "
          f"(the full runs took {statistics.fmean(mean_round(r) for r in rows if r['target'] == 'full run'):.2f} s a round)")
    missed = [r["rounds"] for r in rows if r["target"] == "unreachable"]
    print(f"unreachable target called missed after {missed} rounds (of {args.rounds})")
    print(json.dumps([{k: v for k, v in r.items() if k != "accuracy"} for r in rows]))


if __name__ == "__main__":
    main()
