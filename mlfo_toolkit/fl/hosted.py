"""mlfo's host for a researcher's own ServerApp (the `serverapp` component of a deployed app's copy).

It loads the app's ServerApp (`mlfo-serverapp` in the run config, as the app's pyproject named it)
and calls it unchanged, with two things around it:

* the Grid it gets is mlfo's `RoundClock`, so rounds are timed phase by phase, replies are pulled at
  mlfo's interval, and a stop or an excluded SuperNode from the MLFO's control file takes effect;
* Flower's `Strategy.start` (the loop every Flower strategy runs) is wrapped for this process: before
  each round it applies the MLFO's sampling changes and its round limit; after each round it writes
  mlfo's round event with the accuracy and loss the app reported.

How mlfo learns a round's accuracy and loss from an app it did not write: the first of the metric
names in `mlfo-accuracy-keys` (and `mlfo-loss-keys`) found in the round's server-side evaluation
(the strategy's `evaluate_fn`), else in the clients' aggregated evaluation (`aggregate_evaluate`).
A round for which the app reports neither is still recorded, with its anatomy, and
`accuracy`/`loss` set to null; the MLFO then cannot judge accuracy targets (it says so).
An app that does not use `Strategy.start` (its own loop over the Grid) still gets the Grid's
anatomy and control, but mlfo records no rounds for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

from flwr.app import Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from flwr.supercore.object_ref import load_app

from mlfo_toolkit.fl.anatomy import RoundClock, StopRequested, TooFewNodes
from mlfo_toolkit.fl.apps import append_event, apply_settings, wait_for_nodes
from mlfo_toolkit.fl.control import RunControl

server_app = ServerApp()


class _RoundsDone(Exception):
    """The MLFO's round limit is reached: the app's loop ends here, as a finished run."""


def _first(metrics: Any, keys: list[str]) -> float | None:
    if metrics is None:
        return None
    for key in keys:
        if key in metrics:
            value = metrics[key]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
    return None


class _Tracker:
    """What the host knows of the run: the clock, the control, where round events go."""

    def __init__(self, clock: RoundClock, control: RunControl, cfg: dict[str, Any]) -> None:
        self.clock, self.control = clock, control
        self.metrics_file = str(cfg.get("mlfo-metrics-file", ""))
        self.rounds_limit = int(cfg.get("mlfo-num-rounds", 0) or 0)
        self.accuracy_keys = [k.strip() for k in str(cfg.get("mlfo-accuracy-keys", "")).split(",") if k.strip()]
        self.loss_keys = [k.strip() for k in str(cfg.get("mlfo-loss-keys", "")).split(",") if k.strip()]
        self.applied: dict[int, dict[str, Any]] = {}
        self.trained: dict[int, float] = {}  # round -> end of its aggregation: the evaluation starts then
        self.client_metrics: dict[int, Any] = {}
        self.reported = False  # whether round 0 was written

    def event(self, server_round: int, metrics: Any, fallback: Any = None) -> None:
        now = time.time()
        accuracy = _first(metrics, self.accuracy_keys)
        loss = _first(metrics, self.loss_keys)
        if accuracy is None and loss is None and fallback is not None:
            accuracy, loss = _first(fallback, self.accuracy_keys), _first(fallback, self.loss_keys)
        anatomy = self.clock.summary(server_round, self.trained.get(server_round, now), now) if server_round else {}
        extra = {"settings": self.applied[server_round]} if server_round in self.applied else {}
        append_event(self.metrics_file, {"event": "round", "round": server_round, "loss": loss, "accuracy": accuracy,
                                          **anatomy, **extra})

    def wrap(self, strategy: Strategy, evaluate_fn: Callable[..., Any] | None, num_rounds: int) -> Callable[..., Any] | None:
        """Instrument the strategy for this run; the evaluate_fn to hand to Flower's loop."""
        self.clock.instrument(strategy)
        configure, aggregate_train, aggregate_evaluate = (strategy.configure_train, strategy.aggregate_train,
                                                          strategy.aggregate_evaluate)
        limit = self.rounds_limit or num_rounds

        def configure_train(server_round: int, *args: Any, **kwargs: Any) -> Any:
            settings = self.control.read()
            if settings.stop:
                raise StopRequested(settings.stop)
            if server_round > (settings.rounds or limit):
                raise _RoundsDone()
            self.applied[server_round] = apply_settings(strategy, settings)
            return configure(server_round, *args, **kwargs)

        def aggregate_train_(server_round: int, *args: Any, **kwargs: Any) -> Any:
            try:
                return aggregate_train(server_round, *args, **kwargs)
            finally:
                self.trained[server_round] = time.time()

        def aggregate_evaluate_(server_round: int, *args: Any, **kwargs: Any) -> Any:
            result = aggregate_evaluate(server_round, *args, **kwargs)
            self.client_metrics[server_round] = result
            if evaluate_fn is None:  # no server-side evaluation follows: the round ends here
                self.event(server_round, result)
            return result

        strategy.configure_train = configure_train  # type: ignore[method-assign]
        strategy.aggregate_train = aggregate_train_  # type: ignore[method-assign]
        strategy.aggregate_evaluate = aggregate_evaluate_  # type: ignore[method-assign]
        if evaluate_fn is None:
            self.event(0, None)
            return None
        user_evaluate = evaluate_fn

        def evaluate(server_round: int, arrays: Any) -> MetricRecord | None:
            result: MetricRecord | None = user_evaluate(server_round, arrays)
            self.event(server_round, result, self.client_metrics.get(server_round))
            return result

        return evaluate


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Run the app's own ServerApp behind mlfo's round clock (see the module's text)."""
    cfg = dict(context.run_config)
    metrics_file = str(cfg.get("mlfo-metrics-file", ""))
    try:
        app = load_app(str(cfg["mlfo-serverapp"]), RuntimeError)
        if not isinstance(app, ServerApp):
            raise TypeError(f"{cfg['mlfo-serverapp']} is a {type(app).__name__}, not a Flower ServerApp")
        control = RunControl(str(cfg.get("mlfo-control-file", "")) or None)
        round_timeout = float(cfg.get("mlfo-round-timeout", 600.0))
        clock = RoundClock(grid, poll_seconds=float(cfg.get("mlfo-server-poll-seconds", 0.25)), control=control,
                           node_wait_seconds=3 * round_timeout, wake_dir=str(cfg.get("mlfo-wake-dir", "")))
        tracker = _Tracker(clock, control, cfg)
        rounds = int(cfg.get("mlfo-num-rounds", 0) or 0)
        append_event(metrics_file, {"event": "started", "rounds": rounds})
        wait_for_nodes(grid, int(cfg.get("mlfo-min-available", 1)), round_timeout, metrics_file)
        original = Strategy.start

        def start(strategy: Strategy, grid: Any, initial_arrays: Any, num_rounds: int = 3, timeout: float = 3600,
                  train_config: Any = None, evaluate_config: Any = None, evaluate_fn: Any = None) -> Any:
            evaluate = tracker.wrap(strategy, evaluate_fn, num_rounds)
            # mlfo's round limit (the intent's, or the MLFO's change at the start) is the loop's length, so the
            # app's code after its loop runs; a later cut ends the loop early, a later extension cannot reach it.
            total = control.read().rounds or tracker.rounds_limit or num_rounds
            return original(strategy, grid, initial_arrays, total, min(timeout, round_timeout), train_config,
                            evaluate_config, evaluate)

        Strategy.start = start  # type: ignore[method-assign,assignment]
        reason: str | None = None
        try:
            app(cast(Grid, clock), context)
        except _RoundsDone:
            pass
        except StopRequested as stop:
            reason = str(stop)
        finally:
            Strategy.start = original  # type: ignore[method-assign]
    except TooFewNodes as err:
        append_event(metrics_file, {"event": "failed", "reason": str(err)})
        raise
    except Exception as err:
        append_event(metrics_file, {"event": "failed", "reason": f"{type(err).__name__}: {err}"})
        raise
    append_event(metrics_file, {"event": "finished", "reason": reason})
