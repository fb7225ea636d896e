"""The Flower ServerApp and ClientApp that train mlfo's NumPy models (Flower 1.42 Message API)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from mlfo_toolkit.fl import data, models
from mlfo_toolkit.fl.anatomy import TRAIN_END, TRAIN_PART, TRAIN_START, RoundClock, StopRequested
from mlfo_toolkit.fl.control import RunControl, Settings
from mlfo_toolkit.fl.edge import EdgeError, EdgeInbox, ask_edge
from mlfo_toolkit.fl.partitions import PartitionSpec
from mlfo_toolkit.fl.strategies import make_strategy

# How long a relay waits for its edge's local rounds (the global server's round timeout bounds it too).
RELAY_TIMEOUT = 24 * 3600.0

server_app = ServerApp()
client_app = ClientApp()


def append_event(path: str, event: dict[str, Any]) -> None:
    """One JSON line per event in the metrics file that the node agent reads."""
    if not path:
        return
    event = {"time": time.time(), **event}
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(event) + "\n")


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Run the configured strategy; evaluate the global model on the held-out split each round."""
    cfg = context.run_config
    metrics_file = str(cfg.get("metrics-file", ""))
    try:
        dataset = data.load_dataset(str(cfg["source"]), Path(str(cfg["data-dir"])))
        initial = models.init_params(
            str(cfg["model"]), dataset.num_features, dataset.num_classes, seed=int(cfg["seed"])
        )
        control = RunControl(str(cfg.get("control-file", "")) or None)
        # A round waits at most three round timeouts for enough clients (time for the MLFO to restart lost ones).
        clock = RoundClock(grid, poll_seconds=float(cfg["server-poll-seconds"]), control=control,
                           node_wait_seconds=3 * float(cfg["round-timeout"]), wake_dir=str(cfg.get("wake-dir", "")))
        strategy = clock.instrument(
            make_strategy(
                str(cfg["strategy"]),
                fraction_train=float(cfg["fraction-fit"]),
                fraction_evaluate=0.0,  # the server evaluates on held-out data instead
                min_train_nodes=int(cfg["min-fit"]),
                min_evaluate_nodes=0,
                min_available_nodes=int(cfg["min-available"]),
                proximal_mu=float(cfg["proximal-mu"]),
                client_learning_rate=float(cfg["learning-rate"]),
            )
        )

        def evaluate(server_round: int, arrays: ArrayRecord, settings: dict[str, Any] | None = None) -> MetricRecord:
            started = time.time()
            params = models.unpack(arrays.to_numpy_ndarrays(), str(cfg["model"]), dataset.num_features, dataset.num_classes)
            loss, accuracy = models.evaluate(params, dataset.x_test, dataset.y_test)
            anatomy = clock.summary(server_round, started, time.time())
            extra: dict[str, Any] = {"settings": settings} if settings else {}
            if settings and "global_round" in settings:  # an edge run's local round: the global round it served
                extra["global_round"] = settings["global_round"]
            append_event(
                metrics_file,
                {"event": "round", "round": server_round, "loss": loss, "accuracy": accuracy, **anatomy, **extra},
            )
            return MetricRecord({"loss": loss, "accuracy": accuracy})

        inbox = str(cfg.get("edge-inbox", ""))
        append_event(metrics_file, {"event": "started", "rounds": int(cfg["num-rounds"]), "tier": "edge" if inbox else "global"})
        wait_for_nodes(grid, int(cfg["min-available"]), float(cfg["round-timeout"]), metrics_file)
        if inbox:
            stopped = serve_edge(strategy, clock, control, EdgeInbox(Path(inbox)), int(cfg.get("edge-rounds", 1)),
                                 float(cfg["round-timeout"]), evaluate)
            append_event(metrics_file, {"event": "finished", "reason": stopped})
            return
        train_config = ConfigRecord({
            "local-epochs": int(cfg["local-epochs"]),
            "learning-rate": float(cfg["learning-rate"]),
            "batch-size": int(cfg["batch-size"]),
        })
        reason = run_rounds(strategy, clock, control, ArrayRecord(models.pack(initial)), int(cfg["num-rounds"]), float(cfg["round-timeout"]),
                            train_config, evaluate)
    except Exception as err:
        append_event(metrics_file, {"event": "failed", "reason": f"{type(err).__name__}: {err}"})
        raise
    append_event(metrics_file, {"event": "finished", "reason": reason})


def run_rounds(strategy: Any, clock: RoundClock, control: RunControl, arrays: ArrayRecord, num_rounds: int, timeout: float,
               train_config: ConfigRecord, evaluate: Any) -> str | None:
    """Flower's `Strategy.start` loop (train, aggregate, evaluate on the server), reading the MLFO's
    changes before every round: the rounds to run, the sampling, a stop. Returns why it stopped early."""
    evaluate(0, arrays)
    current = 0
    while True:
        settings = control.read()
        if settings.stop:
            return settings.stop
        if current >= (settings.rounds or num_rounds):
            return None
        current += 1
        applied = apply_settings(strategy, settings)
        try:
            replies = clock.send_and_receive(strategy.configure_train(current, arrays, train_config, clock), timeout=timeout)
        except StopRequested as stop:  # asked to stop while waiting for SuperNodes or for their replies
            return str(stop)
        aggregated, _ = strategy.aggregate_train(current, replies)
        if aggregated is not None:
            arrays = aggregated
        evaluate(current, arrays, applied)


def serve_edge(strategy: Any, clock: RoundClock, control: RunControl, inbox: EdgeInbox, local_rounds: int, timeout: float,
               evaluate: Any) -> str:
    """The edge tier's run (mlfo_toolkit.fl.edge): for every global round its relay hands over, `local_rounds`
    rounds of the edge's own clients, starting from the global model; the relay gets their aggregate and
    the examples behind it. Runs until the MLFO stops it (or its SuperLink is stopped)."""
    local = 0
    try:
        while True:
            settings = control.read()
            if settings.stop:
                return settings.stop
            request = inbox.next(timeout=1.0)
            if request is None:
                continue
            arrays = ArrayRecord(request.arrays)
            config = ConfigRecord({k: v for k, v in (request.header.get("config") or {}).items()
                                   if isinstance(v, (bool, int, float, str)) and k != "server-round"})
            global_round = int(request.header.get("global_round", 0))
            examples, losses = 0, 0.0
            try:
                for _ in range(local_rounds):
                    local += 1
                    applied = apply_settings(strategy, control.read())
                    replies = clock.send_and_receive(strategy.configure_train(local, arrays, config, clock), timeout=timeout)
                    aggregated, _ = strategy.aggregate_train(local, replies)
                    if aggregated is not None:
                        arrays = aggregated
                    answered = [m for m in replies if not m.has_error() and "metrics" in m.content]
                    counts = [_metric(m, "num-examples") for m in answered]
                    examples = int(sum(counts))
                    losses = sum(_metric(m, "train_loss") * n for m, n in zip(answered, counts)) / max(1, examples)
                    evaluate(local, arrays, {**applied, "global_round": global_round})
            except StopRequested as stop:
                request.fail(f"the edge run was stopped: {stop}")
                return str(stop)
            except Exception as err:  # the relay gets the reason; the edge run serves the next global round
                request.fail(f"{type(err).__name__}: {err}")
                continue
            if not examples:
                request.fail(f"none of the edge's clients answered in local round {local}")
                continue
            request.answer({"num_examples": examples, "train_loss": losses}, arrays.to_numpy_ndarrays())
    finally:
        inbox.close()


def _metric(reply: Message, key: str) -> float:
    """One number of a client's reply metrics (0 if it sent none)."""
    value = cast(MetricRecord, reply.content["metrics"]).get(key, 0)
    return float(value) if isinstance(value, (int, float)) else 0.0


def apply_settings(strategy: Any, settings: Settings) -> dict[str, Any]:
    """Set the MLFO's sampling changes on the strategy (Flower's own attributes); what now applies."""
    for name, value in (("fraction_train", settings.fraction_fit), ("min_train_nodes", settings.min_fit),
                        ("min_available_nodes", settings.min_available)):
        if value is not None and hasattr(strategy, name):
            setattr(strategy, name, value)
    return {"fraction_fit": getattr(strategy, "fraction_train", None), "min_fit": getattr(strategy, "min_train_nodes", None),
            "min_available": getattr(strategy, "min_available_nodes", None), "excluded_nodes": len(settings.exclude_nodes)}


def wait_for_nodes(grid: Grid, wanted: int, timeout: float, metrics_file: str) -> None:
    """Wait until `wanted` SuperNodes are connected before round 1.

    Flower's strategies size the sample from the nodes connected when a round starts, so a run that
    starts while its clients are still connecting would train round 1 on one or two of them.
    """
    started = time.time()
    connected = len(list(grid.get_node_ids()))
    while connected < wanted and time.time() - started < timeout:
        time.sleep(0.5)
        connected = len(list(grid.get_node_ids()))
    append_event(metrics_file, {"event": "nodes", "connected": connected, "waited": round(time.time() - started, 3)})


def _local_data(context: Context) -> tuple[data.Dataset, np.ndarray]:
    node = context.node_config
    data_dir = Path(str(node.get("data-dir", "data")))
    dataset = data.load_dataset(str(node.get("source", "handmnist")), data_dir)
    spec, seed = PartitionSpec.from_node_config(node)
    indices = data.partition_indices(dataset.y_train, num_partitions=int(node["num-partitions"]),
                                     partition_id=int(node["partition-id"]), seed=seed, spec=spec,
                                     cache_dir=data_dir / ".partitions")
    return dataset, indices


def _unpack(arrays: ArrayRecord, dataset: data.Dataset, context: Context) -> list[np.ndarray]:
    return models.unpack(arrays.to_numpy_ndarrays(), str(context.node_config.get("model", "complex")), dataset.num_features,
                         dataset.num_classes)


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    """Train the received global model on this node's partition and send it back (an edge aggregator's
    relay: have the edge's clients train it, and send back their aggregate)."""
    train_start = time.time()
    if context.node_config.get("edge-inbox"):
        return _relay(msg, context, train_start)
    dataset, indices = _local_data(context)
    config = cast(ConfigRecord, msg.content["config"])
    arrays = cast(ArrayRecord, msg.content["arrays"])
    params, loss = models.train(
        _unpack(arrays, dataset, context),
        dataset.x_train[indices],
        dataset.y_train[indices],
        epochs=int(cast(int, config.get("local-epochs", 5))),
        learning_rate=float(cast(float, config.get("learning-rate", 0.1))),
        batch_size=int(cast(int, config.get("batch-size", 32))),
        seed=int(cast(int, config.get("server-round", 0))),
        proximal_mu=float(cast(float, config.get("proximal-mu", 0.0))),
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(models.pack(params)),
            "metrics": MetricRecord(
                {
                    "train_loss": loss,
                    "num-examples": int(len(indices)),
                    TRAIN_START: train_start,
                    TRAIN_END: time.time(),
                    TRAIN_PART: int(context.node_config["partition-id"]),
                }
            ),
        }
    )
    return Message(content=content, reply_to=msg)


def _relay(msg: Message, context: Context, train_start: float) -> Message:
    """The relay of an edge aggregator (mlfo_toolkit.fl.edge): one global round becomes the edge's local rounds."""
    config = cast(ConfigRecord, msg.content["config"])
    arrays = cast(ArrayRecord, msg.content["arrays"])
    header = {"global_round": int(cast(int, config.get("server-round", 0))),
              "config": {k: v for k, v in config.items() if isinstance(v, (bool, int, float, str))}}
    try:
        reply, trained = ask_edge(Path(str(context.node_config["edge-inbox"])), header, arrays.to_numpy_ndarrays(),
                                  timeout=RELAY_TIMEOUT)
    except EdgeError as err:
        raise RuntimeError(f"edge aggregator: {err}") from None
    # The same keys as a client's reply: Flower's strategies aggregate only replies whose metrics match, and a
    # cohort's global server may have clients on no edge next to the relays.
    metrics = MetricRecord({
        "train_loss": float(reply.get("train_loss", 0.0)),
        "num-examples": int(reply["num_examples"]),
        TRAIN_START: train_start,
        TRAIN_END: time.time(),
        TRAIN_PART: int(context.node_config["partition-id"]),
    })
    return Message(content=RecordDict({"arrays": ArrayRecord(trained), "metrics": metrics}), reply_to=msg)


@client_app.evaluate()
def client_evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this node's share of the held-out split."""
    dataset, _ = _local_data(context)
    node = context.node_config
    share = np.array_split(np.arange(len(dataset.y_test)), int(node["num-partitions"]))[
        int(node["partition-id"])
    ]
    arrays = cast(ArrayRecord, msg.content["arrays"])
    loss, accuracy = models.evaluate(_unpack(arrays, dataset, context), dataset.x_test[share], dataset.y_test[share])
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": accuracy, "num-examples": int(len(share))})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
