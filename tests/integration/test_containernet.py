"""The Containernet backend for real (root, Docker): the small topology with Docker hosts built
offline, the same commands as on namespace hosts, CPU limits through Docker, exact teardown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from mlfo_toolkit.util.processes import free_port
from tests.helpers import DECOY_RECORD, REPO, require_binary, require_root, still_running

pytestmark = [pytest.mark.root, pytest.mark.slow]


def mlfo(env: dict[str, str], cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlfo_toolkit", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def docker_client() -> Any:
    import docker

    return docker.from_env()


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    require_root()
    for tool in ("ovs-vsctl", "debootstrap", "docker"):
        require_binary(tool)
    try:
        import docker  # noqa: F401
        from mininet.net import Containernet  # noqa: F401
    except ImportError:
        pytest.skip("needs the docker SDK and Containernet in the venv (`make install-test`)")
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        pytest.skip("needs a running Docker engine (`make docker` as root)")
    workdir = tmp_path_factory.mktemp("containernet")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFO_")}
    env |= {"MLFO_PATHS__STATE_DIR": str(workdir / "state"), "MLFO_PATHS__RUNS_DIR": str(workdir / "runs")}
    built = mlfo(env, workdir, "image", "build", "--json")
    assert built.returncode == 0, built.stderr
    again = mlfo(env, workdir, "image", "build", "--json")
    assert json.loads(again.stdout)["built"] is False  # a content-hash tag: nothing to rebuild
    port = free_port()
    # Its switches are joined by OVS patch ports (the namespace-host networks of the other modules by veth pairs).
    started = mlfo(env, workdir, "topo", "up", "--topology", "small", "--param", f"publish_port={port}", "--param", "patch_links=1",
                   "--backend", "containernet", "--detach", "--json")
    assert started.returncode == 0, started.stderr[-3000:]
    state = json.loads((workdir / "state" / "network.json").read_text())
    decoy = f"{state['containers'][0]}-not-ours"
    # A run killed before the end still has it removed by the next one (conftest), never by one running beside it.
    (workdir / DECOY_RECORD).write_text(json.dumps({"name": decoy, "pid": os.getpid(),
                                                   "create_time": psutil.Process().create_time()}))
    foreign = docker_client().containers.run(json.loads(built.stdout)["image"], "sleep 600", detach=True, name=decoy)
    info = {"env": env, "workdir": workdir, "port": port, "state": state}
    try:
        yield info
    finally:
        # topo up is SIGKILLed, one container is stuck (paused); topo down removes exactly the containers it recorded.
        docker_client().containers.get(state["containers"][-1]).pause()
        os.kill(state["owner_pid"], signal.SIGKILL)
        time.sleep(0.5)
        down = mlfo(env, workdir, "topo", "down")
        assert down.returncode == 0, down.stderr
        names = {c.name for c in docker_client().containers.list(all=True)}
        try:
            assert not set(state["containers"]) & names
            assert foreign.name in names, "topo down removed a container it did not make"
        finally:
            foreign.remove(force=True)
            (workdir / DECOY_RECORD).unlink()
        bridges = subprocess.run(["ovs-vsctl", "list-br"], capture_output=True, text=True, check=True).stdout.split()
        assert not set(state["bridges"]) & set(bridges)
        assert [i for i in state["interfaces"] if Path(f"/sys/class/net/{i}").exists()] == []
        final = json.loads(json.dumps(state))
        pids = [h["pid"] for h in final["hosts"]] + [p["pid"] for p in final["processes"]]
        assert still_running(pids) == []
        assert not (workdir / "state" / "network.json").exists()


def test_fl_and_mlfo_hosts_are_prefixed_containers(network: dict[str, Any]) -> None:
    state = network["state"]
    docker_hosts = {h["name"] for h in state["hosts"] if h["container"]}
    assert docker_hosts == {"cloud.0", "mo.1", "fed.1", "fed.2", "fc.10", "fc.11", "fc.12", "fc.20", "fc.21", "fc.22"}
    prefix = state["containers"][0].split(".")[0]
    assert prefix.startswith("mlfo-") and all(c.startswith(prefix + ".") for c in state["containers"])
    running = {c.name for c in docker_client().containers.list()}
    assert set(state["containers"]) <= running


def test_ping_exec_and_status(network: dict[str, Any]) -> None:
    env, cwd = network["env"], network["workdir"]
    mesh = json.loads(mlfo(env, cwd, "topo", "ping", "--json").stdout)
    assert mesh["pairs"] == 13 * 12 and mesh["failed"] == []
    inside = mlfo(env, cwd, "topo", "exec", "fed.1", "--json", "--", "cat", "/etc/hostname", "/etc/debian_version")
    assert inside.returncode == 0, inside.stderr
    assert json.loads(inside.stdout)["stdout"].split()[0] == "fed.1"  # the container's own files, like docker exec
    status = json.loads(mlfo(env, cwd, "topo", "status", "--json").stdout)
    assert {c["state"] for c in status["containers"]} == {"running"}
    assert all(c["memory_mb"] > 10 for c in status["containers"] if c["host"].startswith("fed"))  # an agent runs in each


def test_switches_are_joined_by_patch_ports_which_meters_use_and_no_link_change_can_touch(network: dict[str, Any]) -> None:
    env, cwd = network["env"], network["workdir"]
    kinds = subprocess.run(["ovs-vsctl", "--columns=name,type", "--format=csv", "--no-headings", "list", "interface"],
                           capture_output=True, text=True, check=True).stdout
    patches = sorted(line.split(",")[0] for line in kinds.splitlines() if line.endswith(",patch"))
    assert patches == sorted(["swCampus1-eth4", "swEdge0-eth3", "swCampus2-eth4", "swEdge0-eth4", "swEdge0-eth5", "aggsw0-eth4",
                              "csw1-eth2", "aggsw0-eth5", "csw2-eth2", "aggsw0-eth6"])
    assert not any(Path(f"/sys/class/net/{name}").exists() for name in patches)  # no kernel interface, no tc
    refused = mlfo(env, cwd, "topo", "trace", "swCampus1", "swEdge0", "leo-pass")
    assert refused.returncode == 4 and "swCampus1-swEdge0 is a patch link" in refused.stderr, refused.stderr
    # A meter still limits its cohort: its flows output to the patch port towards the edge.
    verified = mlfo(env, cwd, "meter", "verify", "--port", "1", "--rate", "10mbit", "--json")
    try:
        assert verified.returncode == 0, verified.stderr[-2000:]
        figures = json.loads(verified.stdout)
        assert figures["metered_mbit"] < 12 < 100 < min(figures["unmetered_mbit"], figures["other_cohort_mbit"]), figures
    finally:
        assert mlfo(env, cwd, "meter", "clear").returncode == 0


def test_init_limits_cpu_through_docker_and_fl_trains_across(network: dict[str, Any]) -> None:
    env, cwd, state = network["env"], network["workdir"], network["state"]
    result = mlfo(env, cwd, "init", "--cpus", "0.5", "--bg-rate", "0", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["reachable"] == {"fed.1": True, "fed.2": True}
    client = docker_client()
    for name in ("fed.1", "fed.2"):
        container = next(c for c in state["containers"] if c.endswith("." + name))
        config = client.api.inspect_container(container)["HostConfig"]
        assert (config["CpuQuota"], config["CpuPeriod"]) == (50_000, 100_000)
    # The agent of fed.1 runs in that container's CPU cgroup, so Docker's limit is its limit.
    agent = next(p for p in json.loads((cwd / "state" / "network.json").read_text())["processes"] if p["host"] == "fed.1")
    container_id = client.containers.get(next(c for c in state["containers"] if c.endswith(".fed.1"))).id
    assert f"cpu:/docker/{container_id}" in Path(f"/proc/{agent['pid']}/cgroup").read_text()

    cohorts = cwd / "cohorts.yaml"
    cohorts.write_text((REPO / "intents" / "cohorts-small.yaml").read_text().replace("rounds: 5", "rounds: 2"))
    (cwd / "welding.yaml").write_bytes((REPO / "intents" / "welding.yaml").read_bytes())
    sent = mlfo(env, cwd, "intent", "send", str(cohorts), "--mlfo", f"127.0.0.1:{network['port']}", "--wait", "--json")
    assert sent.returncode == 0, sent.stderr[-2000:]
    for cohort in json.loads(sent.stdout)["cohorts"]:
        assert cohort["state"] == "done" and cohort["accuracy"][-1] >= 0.85 and cohort["accuracy"][-1] > cohort["accuracy"][0]
        assert cohort["server"].split(":")[0] in ("10.0.11.100", "10.0.12.100")


def test_an_experiment_runs_on_docker_hosts_and_undoes_its_changes(network: dict[str, Any]) -> None:
    """init, a CPU change, a kill and restart and a link change, in the running Containernet network."""
    env, cwd, state = network["env"], network["workdir"], network["state"]
    client = docker_client()
    fed1 = next(c for c in state["containers"] if c.endswith(".fed.1"))

    def quota() -> int:
        return int(client.api.inspect_container(fed1)["HostConfig"]["CpuQuota"])

    before = quota()
    experiment = cwd / "containers.yaml"
    experiment.write_text(f"""name: containers
backend: network
cohorts: {REPO / "intents" / "cohorts-small.yaml"}
shape: {{cohorts: 1, clients: 3, rounds: 4}}
init: {{cpus: 0.75}}
fl: {{fraction_fit: 1.0, min_fit: 1, min_available: 2, round_timeout: 10}}
timeline:
  - at: {{cohort: welding-1, round: 2}}
    cpu: {{host: fed.1, cpus: 0.25}}
  - at: {{cohort: welding-1, round: 2}}
    kill: {{cohort: welding-1, part: 1}}
  - at: {{cohort: welding-1, round: 3}}
    restart: {{cohort: welding-1, part: 1}}
  - at: {{cohort: welding-1, round: 3}}
    link: {{a: fc.10, b: swCampus1, rate: 20mbit}}
""")
    result = mlfo(env, cwd, "run", str(experiment), "-o", str(cwd / "exp"), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((cwd / "exp" / "runs" / "base-r1" / "run.json").read_text())
    assert run["cohorts"][0]["state"] == "done" and run["cohorts"][0]["accuracy"][-1] > 0.8, run["cohorts"]
    assert run["init"]["cpu_limits"] == {"fed.1": 0.75, "fed.2": 0.75}
    events = {e["kind"]: e for e in run["events"]}
    assert all(e["ok"] for e in run["events"]), run["events"]
    assert (events["cpu"]["effect"]["cpus_before"], events["cpu"]["effect"]["cpus_after"]) == (0.75, 0.25)  # read back from Docker
    assert events["kill"]["effect"]["client_state"] == "lost" and events["restart"]["effect"]["ran_to_end"]
    assert events["link"]["effect"]["measured_mbit_after"] < 30 < events["link"]["effect"]["measured_mbit_before"]
    assert run["undo_problems"] == [] and quota() == before  # the run's limits were undone


def test_missing_image_and_engine_are_clear_errors(tmp_path: Path) -> None:
    require_root()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFO_")} | {"MLFO_PATHS__STATE_DIR": str(tmp_path / "s")}
    no_engine = mlfo(env | {"DOCKER_HOST": f"unix://{tmp_path}/nothing.sock"}, tmp_path, "image", "build")
    assert no_engine.returncode == 5 and "no Docker engine answers" in no_engine.stderr
    assert "Traceback" not in no_engine.stderr


def test_missing_image_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    require_root()
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        pytest.skip("needs a running Docker engine (`make docker` as root)")
    from mlfo_toolkit.errors import MissingDependencyError
    from mlfo_toolkit.net import image

    monkeypatch.setattr(image, "REPOSITORY", "mlfo-node-never-built")
    with pytest.raises(MissingDependencyError, match="is not built") as caught:
        image.require_image(image.docker_client())
    assert "mlfo image build" in str(caught.value.hint)
