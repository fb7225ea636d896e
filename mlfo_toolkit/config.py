"""The one config model: defaults < mlfo.yaml < MLFO_* environment < flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from mlfo_toolkit.errors import ConfigError
from mlfo_toolkit.util.yamlfiles import strict_load

ENV_PREFIX = "MLFO_"
ENV_CONFIG_FILE = "MLFO_CONFIG"
DEFAULT_CONFIG_FILE = "mlfo.yaml"
# Metric names under which Flower apps usually report accuracy and loss (Flower's examples and templates).
DEFAULT_ACCURACY_KEYS = ("accuracy", "acc", "eval_acc", "eval_accuracy", "test_accuracy", "val_accuracy")
DEFAULT_LOSS_KEYS = ("loss", "eval_loss", "test_loss", "val_loss")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ApiSettings(_Section):
    """Settings shared by every HTTP API (MLFO, Mo-Mo, node agent)."""

    token: str | None = Field(
        None, description="bearer token every HTTP API requires when set (prefer MLFO_API__TOKEN)"
    )
    southbound_token: str | None = Field(
        None,
        description="token the MLFOs present to node agents and the cloud MLFO, which require it (default: api.token; "
        "`topo up` generates one when neither is set)",
    )
    max_upload_bytes: int = Field(1_048_576, gt=0, description="largest request body accepted")
    timeout_seconds: float = Field(10.0, gt=0, description="timeout of one southbound HTTP call")
    request_seconds: float = Field(
        10.0, gt=0, le=3600,
        description="a request (head and body) must arrive in full within this; a stalled one is cut off",
    )


class MlfoSettings(_Section):
    """The MLFO processes (campus and cloud)."""

    host: str = Field("127.0.0.1", description="address the MLFO intent API binds to")
    port: int = Field(8000, ge=0, le=65535, description="intent API port (prototype: 8000)")
    momo_port: int = Field(9000, ge=0, le=65535, description="Mo-Mo API port of the cloud MLFO")
    cloud: str = Field("127.0.0.1:9000", description="HOST:PORT of the cloud MLFO's Mo-Mo API")
    catalog: Path | None = Field(None, description="operand catalog; default: intents/catalog.yaml")
    poll_seconds: float = Field(
        1.0, gt=0, description="how soon a deployment's FL server agent is asked again after it could not be reached "
        "(or answered at once with nothing new); an agent that can waits for the next round and answers when it ends"
    )
    client_check_seconds: float = Field(
        5.0, gt=0, description="how often each FL client's agent is checked (a silent one is lost after lost_after_seconds)"
    )
    lost_after_seconds: float = Field(
        10.0, gt=0, description="an agent silent this long is lost: its client shows lost, its server fails the run"
    )
    busy_lost_after_seconds: float = Field(
        60.0, gt=0, description="an agent that takes connections but does not answer (a saturated host) is lost after "
        "this long, or lost_after_seconds if that is longer; one that refuses them, after lost_after_seconds",
    )
    start_concurrency: int = Field(
        4, ge=1, le=256, description="FL clients started at once across all deployments (each is a Python process)"
    )
    client_memory_mb: int = Field(
        60, ge=0,
        description="memory one FL client takes (measured: a SuperNode forked by the shared executor ~30 MB of its "
        "own, the ClientApp process kept for it (fl.clientapp_processes: per-node) ~25 MB; 150 with fl.isolation "
        "subprocess); 0 turns admission control off",
    )
    server_memory_mb: int = Field(
        500, ge=0, description="memory one FL server takes (measured ~400 MB: SuperLink, SuperExec, ServerApp, flwr run)"
    )
    memory_reserve_mb: int = Field(1024, ge=0, description="MemAvailable that admission control always leaves free")
    queue_length: int = Field(
        32, ge=0, le=10_000,
        description="deployments that may wait for a free FL server at once; past it an intent is refused at once (503)",
    )
    queue_wait_seconds: float = Field(3600.0, gt=0, description="how long a deployment waits for a free FL server")
    janitor_seconds: float = Field(
        5.0, gt=0, description="how often the MLFOs retry what failed (a release, a store write, a stop) and check allocations",
    )
    release_grace_seconds: float = Field(
        60.0, gt=0, description="the cloud MLFO frees the server of a run that ended this long ago and was never released",
    )
    network_dir: Path | None = Field(
        None, description="the state folder of the emulated network this MLFO runs in (set by `topo up`): its meters",
    )


class AgentSettings(_Section):
    """The node agent (the prototype's REST front on every FL node)."""

    max_clients: int = Field(64, ge=1, le=10_000, description="FL clients (SuperNodes) one agent runs at once")

    host: str = Field("127.0.0.1", description="address the agent binds to")
    port: int = Field(5000, ge=0, le=65535, description="agent API port (prototype: 5000)")
    fl_server_port: int = Field(6000, ge=0, le=65535, description="Flower SuperLink port")


class FlowerApp(_Section):
    """A researcher's own Flower app, run as a pipeline's model (`model: app:NAME` in the catalog)."""

    path: Path = Field(description="the app's folder (its pyproject.toml has [tool.flwr.app.components])")
    isolation: Literal["shared", "subprocess"] | None = Field(
        None,
        description="shared: the executor forks each task and the FL server, which then import the app (fast; PyTorch "
        "works too, its threads start in the child); subprocess: Flower's default, a fresh process per message and a "
        "SuperExec per SuperLink (for an app that misbehaves after a fork); unset: fl.isolation",
    )
    run_config: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="fixed run-config values for the app (the intent's settings win)"
    )
    accuracy_keys: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ACCURACY_KEYS),
        description="metric names read as a round's accuracy, first found wins (server-side evaluation first)",
    )
    loss_keys: list[str] = Field(
        default_factory=lambda: list(DEFAULT_LOSS_KEYS),
        description="metric names read as a round's loss",
    )


class FlSettings(_Section):
    """Defaults of a federated-learning run; cohort files override them per cohort."""

    strategy: str = "FedAvg"
    fraction_fit: float = Field(0.5, gt=0, le=1)
    min_fit: int = Field(1, ge=1)
    min_available: int = Field(1, ge=1)
    rounds: int = Field(20, ge=1, le=10_000)
    local_epochs: int = Field(5, ge=1, le=1000)
    learning_rate: float = Field(0.1, gt=0)
    batch_size: int = Field(32, ge=1)
    proximal_mu: float = Field(0.1, ge=0, description="FedProx's proximal term mu (Flower's examples: 0.1); others ignore it")
    partitioning: Literal["iid", "dirichlet", "pathological", "shard", "linear", "square", "exponential"] = Field(
        "iid", description="how a cohort's clients split the data: iid (mlfo's own) or a flwr-datasets partitioner "
        "(needs mlfo-toolkit[partitions]); a cohort's partition: overrides it"
    )
    dirichlet_alpha: float = Field(0.5, gt=0, description="dirichlet: concentration")
    partition_classes: int = Field(2, ge=1, description="pathological: classes per client")
    partition_shards: int = Field(2, ge=1, description="shard: shards per client")
    partition_seed: int | None = Field(None, ge=0, description="the split's seed, apart from the model's; unset: fl.seed")
    seed: int = 42
    data_dir: Path = Field(Path("data"), description="folder holding fashionmnist/, mnist/ and cifar/ (`mlfo data get`)")
    dataset_sources: Path | None = Field(
        None, description="YAML file adding or replacing datasets `mlfo data get` knows (URLs and SHA-256), e.g. a mirror"
    )
    round_timeout: float = Field(600.0, gt=0, description="seconds to wait for clients per round")
    isolation: Literal["shared", "subprocess"] = Field(
        "shared",
        description="shared: one long-lived executor forks every SuperNode, ClientApp task, SuperLink and ServerApp "
        "(fast, light); subprocess: Flower's default, a SuperExec per SuperNode and SuperLink, a new process per message",
    )
    executor_dir: Path | None = Field(
        None, description="registration folder of a shared executor run by `topo up`/`demo`; unset: each agent runs its own"
    )
    server_poll_seconds: float = Field(
        0.25, ge=0, description="how often the ServerApp pulls replies (Flower's own loop: 3 s; 0 uses Flower's)"
    )
    wakeups: bool = Field(
        True, description="the ServerApp wakes the SuperNodes the shared executor runs when it pushed a round's messages, "
        "and they wake it and the executor when they have work done, instead of Flower's fixed polls (mlfo_toolkit/fl/wake.py; "
        "tested on Flower 1.42); false: Flower's 3 s polls"
    )
    supernode_poll_seconds: float = Field(
        0.0, ge=0, le=3, description="how often a busy SuperNode the shared executor runs asks for messages, e.g. 0.2 "
        "(one cohort of 10: rounds about 40 % shorter; 50 clients on 2 cores: slower, the polls saturate the CPU); "
        "0 (default) keeps Flower's 3 s. Tested on Flower 1.42 (mlfo_toolkit/fl/polls.py)"
    )
    node_key: Literal["P-256", "P-384"] = Field(
        "P-256", description="the curve of the key each SuperNode the shared executor runs makes for itself and signs its "
        "every Fleet API request with (Flower's node authentication): P-256, 7x cheaper to sign and check; P-384, Flower's "
        "own choice (tested on Flower 1.42, mlfo_toolkit/fl/polls.py)"
    )
    clientapp_processes: Literal["per-node", "per-message"] = Field(
        "per-node", description="how the shared executor runs a SuperNode's ClientApp tasks: per-node, one process kept "
        "for each SuperNode runs them one after another (as the long-running flwr-clientapp of Flower's process "
        "isolation); per-message, a fresh process for each message, as Flower's SuperExec starts them (tested on "
        "Flower 1.42, mlfo_toolkit/fl/polls.py; another Flower gets per-message)"
    )
    supernode_hot_seconds: float = Field(
        30.0, ge=0, description="how long after its last message a SuperNode stays busy; then it polls every 3 s again"
    )
    apps: dict[str, FlowerApp] = Field(
        default_factory=dict, description="researchers' own Flower apps by name; a catalog entry runs one with model: app:NAME"
    )


class EdgePlan(_Section):
    """One edge of hierarchical FL: its clients, its aggregator host, and its backhaul as declared."""

    name: str = Field(max_length=64)
    clients: list[str] = Field(default_factory=list, description="the client agents on this edge, HOST[:PORT]")
    aggregator: str | None = Field(None, description="the agent that aggregates for it; unset: its first client's host")
    kind: str | None = Field(None, max_length=40, description="its backhaul's kind (satellite, fixed-wireless, metro, ...)")
    bandwidth_mbit: float | None = Field(None, gt=0, description="its backhaul's declared rate")
    delay_ms: float | None = Field(None, ge=0, description="its backhaul's declared one-way delay")
    interfaces: list[str] = Field(default_factory=list, description="the backhaul link's switch interfaces (byte counts)")


class IpPlan(_Section):
    """Where the FL clients and FL servers are (agent addresses)."""

    clients: list[str] = Field(
        default_factory=list,
        description="client agents in order, HOST[:PORT]; empty: client_prefix + octets",
    )
    client_prefix: str = "10.0.1."
    first_client_octet: int = Field(10, ge=0, le=255)
    num_clients: int = Field(50, ge=0)
    servers: list[str] = Field(
        default_factory=lambda: [f"10.0.{10 + n}.100" for n in range(1, 6)],
        description="FL server agents the cloud MLFO allocates from, HOST[:PORT]",
    )
    edges: list[EdgePlan] = Field(default_factory=list, description="the network's edges for hierarchical FL (topo up fills it)")


class PathSettings(_Section):
    """Where mlfo keeps its state and its runs."""

    state_dir: Path = Path(".mlfo")
    runs_dir: Path = Path("runs")


class OnosSettings(_Section):
    """The ONOS controller (REST)."""

    url: str = "http://127.0.0.1:8181/onos/v1"
    user: str = "onos"
    password: str = "rocks"
    openflow: str = Field("127.0.0.1:6653", description="HOST:PORT switches connect to when ONOS controls them")
    app_id: str = Field("org.mlfo.meters", description="application id of the flows mlfo adds")
    apps: list[str] = Field(
        default_factory=lambda: ["org.onosproject.openflow", "org.onosproject.fwd"],
        description="ONOS apps `topo up --controller onos` activates",
    )


class FaucetSettings(_Section):
    """Faucet, the OpenFlow controller `topo up --controller faucet` starts (on loopback, for that network)."""

    command: str = Field("faucet", max_length=1000, description="the faucet executable: a name on PATH or a path "
                         "(`make faucet` installs it in .venv-faucet; its bin folder must also hold osken-manager)")
    openflow_port: int = Field(6653, ge=1, le=65535, description="where Faucet listens for the switches, on 127.0.0.1")
    prometheus_port: int = Field(9302, ge=1, le=65535, description="Faucet's own metrics, on 127.0.0.1")
    reload_timeout_seconds: float = Field(30.0, gt=0, le=600, description="how long a meter change waits for the switches to show it")


class MonitorSettings(_Section):
    """Prometheus, exporters and Grafana (`mlfo monitor`)."""

    prometheus_port: int = Field(9090, ge=1, le=65535, description="Prometheus port (on loopback)")
    node_exporter_port: int = Field(9100, ge=1, le=65535)
    app_exporter_port: int = Field(9200, ge=1, le=65535, description="the background app's socket exporter (prototype: 9200)")
    scrape_interval: str = Field("5s", pattern=r"^\d+(ms|s|m)$")
    exporters_on_clients: bool = Field(False, description="also run node_exporter in every FL client host")
    grafana_port: int = Field(3000, ge=1, le=65535)
    grafana_image: str = "grafana/grafana"


class AssuranceSettings(_Section):
    """The closed loop's thresholds and bounds (config section `assurance`; a cohort or experiment may
    override them for its deployments)."""

    policy: str = Field("default", max_length=300, description="none, default, or package.module:Name / file.py:Name")
    allowed_policies: list[str] = Field(default_factory=list, description="policies an intent may name, beyond none and default")
    plateau_rounds: int = Field(4, ge=2, le=100, description="rounds without gain after which the metric has stopped improving")
    plateau_gain: float = Field(0.002, ge=0, le=1, description="the least gain per round that counts as improving")
    max_restarts_per_client: int = Field(2, ge=0, le=100, description="restarts of one client before it is replaced on a spare host")
    min_fraction_fit: float = Field(0.2, gt=0, le=1, description="the default policy never samples fewer than this fraction")
    meter_step: float = Field(2.0, gt=1, le=100, description="the default policy raises a cohort's meter by this factor")
    cooldown_rounds: int = Field(1, ge=0, le=100, description="rounds between two actions of one kind (per client for restarts)")
    max_actions_per_kind: int = Field(10, ge=1, le=1000, description="actions of one kind in one run, at the most")

    def with_thresholds(self, thresholds: Mapping[str, Any] | None) -> AssuranceSettings:
        """These settings with a deployment's own thresholds over them (a cohort's, an experiment's)."""
        return AssuranceSettings.model_validate({**self.model_dump(), **(thresholds or {})})


class PlacementSettings(_Section):
    """Where a cohort with `aggregation: auto` aggregates (orchestrator.placement): per edge, an aggregator
    when it saves the backhaul enough time and the aggregator's host has the CPU for it."""

    policy: str = Field("pays-off", max_length=300, description="pays-off, or package.module:Name / file.py:Name")
    allowed_policies: list[str] = Field(default_factory=list, description="placement policies a cohort may name, beyond pays-off")
    min_saving_seconds: float = Field(0.1, ge=0, description="aggregate at an edge when it saves the backhaul at least this "
                                      "much time per global round (its clients' updates against one aggregate, both ways)")
    min_free_cpus: float = Field(0.25, ge=0, description="and its aggregator's host has at least these cores free")
    probe_bytes: int = Field(4_000_000, ge=10_000, le=64 * 1024 * 1024, description="the download that measures an edge's rate")
    on_edge_lost: Literal["rehome", "drop"] = Field(
        "rehome", description="an edge aggregator lost mid-run: its clients start again towards the global FL server "
        "(rehome), or the edge leaves the run (drop)")


class TrackingSettings(_Section):
    """Where `mlfo report --to` and `mlfo run --track` log runs (needs mlfo-toolkit[tracking])."""

    mlflow_uri: str | None = Field(None, description="MLflow tracking URI; unset: sqlite mlflow.db in the report folder")
    tensorboard_dir: Path | None = Field(None, description="TensorBoard log folder; unset: tensorboard/ in the report folder")


class Config(_Section):
    """The effective configuration of every mlfo command and process."""

    api: ApiSettings = Field(default_factory=ApiSettings)
    mlfo: MlfoSettings = Field(default_factory=MlfoSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    fl: FlSettings = Field(default_factory=FlSettings)
    ip_plan: IpPlan = Field(default_factory=IpPlan)
    paths: PathSettings = Field(default_factory=PathSettings)
    onos: OnosSettings = Field(default_factory=OnosSettings)
    faucet: FaucetSettings = Field(default_factory=FaucetSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    assurance: AssuranceSettings = Field(default_factory=AssuranceSettings)
    placement: PlacementSettings = Field(default_factory=PlacementSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)

    def client_agents(self) -> list[str]:
        """Client agent addresses HOST:PORT, in IP-plan order."""
        plan = self.ip_plan
        if plan.clients:
            hosts = list(plan.clients)
        else:
            hosts = [
                f"{plan.client_prefix}{plan.first_client_octet + i}" for i in range(plan.num_clients)
            ]
        return [with_port(h, self.agent.port) for h in hosts]

    def server_agents(self) -> list[str]:
        """FL server agent addresses HOST:PORT the cloud MLFO allocates from."""
        return [with_port(h, self.agent.port) for h in self.ip_plan.servers]

    def with_overrides(
        self, overrides: Mapping[str, Any], origin: str = "command-line flags"
    ) -> Config:
        """A new validated config with dotted keys (`mlfo.port`) set; None values are skipped."""
        data = self.model_dump()
        for key, value in overrides.items():
            if value is not None:
                _set_dotted(data, key, value)
        return _validate(data, origin)

    @property
    def southbound_token(self) -> str | None:
        """What agents and the cloud MLFO require, and what the MLFOs present to them."""
        return self.api.southbound_token or self.api.token

    def redacted(self) -> dict[str, Any]:
        """The config as plain data with secrets masked, for display."""
        data = self.model_dump(mode="json")
        for key in ("token", "southbound_token"):
            if data["api"][key]:
                data["api"][key] = "***"
        data["onos"]["password"] = "***"
        return data


def with_port(address: str, default_port: int) -> str:
    """`host` -> `host:default_port`; `host:port` and `[v6]:port` unchanged."""
    if address.startswith("["):
        return address if "]:" in address else f"{address}:{default_port}"
    return address if address.count(":") == 1 else f"{address}:{default_port}"


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    section, _, name = key.partition(".")
    if not name:
        raise ConfigError(f"config key '{key}' must be SECTION.KEY, e.g. mlfo.port")
    if section not in data or not isinstance(data[section], dict):
        raise ConfigError(
            f"unknown config section '{section}'", hint=f"known sections: {', '.join(data)}"
        )
    data[section][name] = value


def _validate(data: Mapping[str, Any], origin: str) -> Config:
    try:
        return Config.model_validate(data)
    except pydantic.ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {_describe(e)}" for e in err.errors()
        )
        raise ConfigError(
            f"invalid configuration from {origin}: {problems}",
            hint="run `mlfo config show` to see the effective config and its keys",
        ) from None


def _describe(error: Mapping[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    return str(error["msg"])


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """`MLFO_SECTION__KEY=value` variables as dotted keys; values parsed as YAML scalars."""
    overrides: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG_FILE:
            continue
        section, sep, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if not sep or not key:
            raise ConfigError(
                f"environment variable {name} is not of the form MLFO_SECTION__KEY",
                hint="e.g. MLFO_MLFO__PORT=8001 or MLFO_API__TOKEN=secret",
            )
        try:
            value = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            value = raw
        # Tokens and passwords stay strings even when they look like numbers.
        if key in {"token", "southbound_token", "password", "user"}:
            value = raw
        overrides[f"{section}.{key}"] = value
    return overrides


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the effective config: defaults < file < environment < overrides (flags)."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = Config().model_dump()
    explicit = path or (Path(environ[ENV_CONFIG_FILE]) if environ.get(ENV_CONFIG_FILE) else None)
    file_path = explicit or Path(DEFAULT_CONFIG_FILE)
    origin = "defaults"
    if file_path.is_file():
        origin = str(file_path)
        try:
            loaded = strict_load(file_path.read_bytes().decode("utf-8")) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"{file_path} is not UTF-8 text (is it the config file?)") from None
        except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as err:
            raise ConfigError(f"{file_path} is not valid YAML: {str(err)[:300]}") from None
        except OSError as err:
            raise ConfigError(f"cannot read the config file {file_path}: {err.strerror}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file_path} must hold a mapping of sections, e.g. 'mlfo: {{port: 8000}}'")
        for section, values in loaded.items():
            if section not in data:
                raise ConfigError(
                    f"{file_path}: unknown config section '{section}'",
                    hint=f"known sections: {', '.join(data)}",
                )
            if not isinstance(values, dict):
                raise ConfigError(f"{file_path}: section '{section}' must be a mapping")
            data[section].update(values)
    elif explicit is not None:
        raise ConfigError(f"config file {explicit} does not exist")
    config = _validate(data, origin)
    config = config.with_overrides(env_overrides(environ), "MLFO_* environment")
    return config.with_overrides(overrides or {})
