"""The Mininet builder: OVS switches (userspace datapath where the kernel has no OVS module), hosts in
network namespaces, HTB-shaped links. The only module of mlfo that imports Mininet, inside its functions: Mininet is a
root-only system package that unit tests, `--help` and loopback runs never need."""

from __future__ import annotations

import os
import time
import uuid
from functools import cache, partial
from pathlib import Path
from typing import Any

import psutil

from mlfo_toolkit.errors import MissingDependencyError, MlfoError, NeedsRootError
from mlfo_toolkit.net.state import HostRecord, NetworkState, remove_bridges, remove_interfaces
from mlfo_toolkit.net.topology import Topology
from mlfo_toolkit.util.processes import run_tool


def ovs_kernel_datapath() -> bool:
    """True when the kernel has the openvswitch module (else the userspace datapath is used)."""
    return Path("/sys/module/openvswitch").exists()


def netem_available() -> bool:
    """Try a netem qdisc on a throwaway veth pair of our own."""
    name = f"mlfonetem{uuid.uuid4().hex[:5]}"
    if run_tool(["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"]).returncode != 0:
        return False
    try:
        return run_tool(["tc", "qdisc", "add", "dev", name, "root", "netem", "delay", "1ms"]).returncode == 0
    finally:
        run_tool(["ip", "link", "del", name])


def check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise NeedsRootError("building an emulated network needs root", hint="run it with sudo")
    try:
        import mininet  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "Mininet is not importable from this Python",
            hint="install Debian's mininet (`sudo make system`) and use a venv made with --system-site-packages",
        ) from None
    if run_tool(["ovs-vsctl", "--timeout=5", "show"]).returncode != 0:
        raise MissingDependencyError("Open vSwitch is not running", hint="start it with `sudo make ovs`")


MAX_SHAPED_MBIT = 1000  # Mininet's TCLink (bwParamMax): its tc parameters are not meant for faster links


@cache
def _patch_link_class() -> Any:
    """Mininet's OVSLink (a pair of OVS patch ports between two switches), whose ends say they are up: the patch
    ports OVS makes have no kernel interface for Mininet's `ip link` check to read (Containernet's Mininet asks)."""
    from mininet.link import Link, OVSIntf, OVSLink

    class PatchIntf(OVSIntf):  # type: ignore[misc]
        def isUp(self, setUp: bool = False) -> bool:  # noqa: N802 - Mininet's name
            return True

    class PatchLink(OVSLink):  # type: ignore[misc]
        def __init__(self, node1: Any, node2: Any, **params: Any) -> None:
            self.isPatchLink = True
            params.update(cls1=PatchIntf, cls2=PatchIntf)
            Link.__init__(self, node1, node2, **params)

    return PatchLink


def _make_veth_pairs(pairs: list[tuple[str, str, int | None]]) -> None:
    """Make veth pairs (first end, second end, PID of the process whose network namespace the first end goes to, or
    None to keep both here) with one `ip -batch`. Names come from the topology (checked: letters, digits, dots)."""
    lines = []
    for first, second, namespace_pid in pairs:
        lines.append(f"link add name {first} type veth peer name {second}\n")
        if namespace_pid is not None:
            lines.append(f"link set {first} netns {namespace_pid}\n")
    done = run_tool(["ip", "-batch", "-"], timeout=120, input="".join(lines))
    if done.returncode != 0:
        raise MlfoError(f"making the network's veth pairs failed: {done.stderr.strip()[:300]}",
                        hint="`mlfo topo down` removes what was made; `ip link` shows what is in the way")


def _take_down_switches_and_links(net: Any) -> None:
    """Delete every switch (with its ports) in one ovs-vsctl and every veth pair in one `ip -batch`, then leave Mininet
    no links to stop: it deletes a link's two interfaces and takes its port off the switch one command each (4.3 s of
    `topo down` at `topo up 5`). Deleting a veth pair's end here, in the machine's namespace, deletes its peer in the
    host. Mininet's own stop then ends the switches' and hosts' shells (its `del-br` is `--if-exists`)."""
    remove_bridges([switch.name for switch in net.switches])
    # A patch link's ports went with the switches.
    remove_interfaces([link.intf2.name if link.intf1.node.inNamespace else link.intf1.name
                       for link in net.links if not getattr(link, "isPatchLink", False)])
    net.links = []


class MininetBuilder:
    """Realise a Topology with Mininet."""

    name = "mininet"

    def __init__(self) -> None:
        self.net: Any = None
        # Set by the caller: writes the state file (a builder records what it makes before making it).
        self.checkpoint: Any = lambda: None

    def prepare(self, state_dir: Path) -> None:
        """Anything the builder needs to know of the state folder before building (nothing, here)."""

    def _network(self, **params: Any) -> Any:
        from mininet.net import Mininet

        return Mininet(**params)

    def _add_host(self, net: Any, host: Any, state: NetworkState) -> None:
        net.addHost(host.name, ip=f"{host.ip}/{host.prefix_len}")

    def _record(self, host: Any, node: Any) -> HostRecord:
        return HostRecord(host.name, host.role, host.ip, node.pid, psutil.Process(node.pid).create_time(), host.interface)

    def build(self, topology: Topology, state: NetworkState, controller: str | None) -> None:
        check_prerequisites()
        import mininet.net  # noqa: F401  (first: Containernet's mininet.link and mininet.node import each other)
        from mininet.link import TCLink
        from mininet.log import setLogLevel
        from mininet.node import OVSSwitch, RemoteController
        from mininet.util import errRun

        setLogLevel("critical")  # tc prints r2q notices as errors
        bridges = [s.name for s in topology.switches]
        interfaces = [f"{h.switch}-eth{h.port}" for h in topology.hosts]
        interfaces += [i for link in topology.links if not link.patch for i in (link.interface_a, link.interface_b)]
        existing = set(run_tool(["ovs-vsctl", "--timeout=10", "list-br"]).stdout.split())
        stale = [b for b in bridges if b in existing] + [i for i in interfaces if Path(f"/sys/class/net/{i}").exists()]
        if stale:
            raise MlfoError(
                f"leftovers of an earlier network are in the way: {', '.join(stale[:8])}",
                hint="`mlfo topo down` removes what an earlier run recorded; otherwise delete them by name "
                "(`ovs-vsctl del-br NAME`, `ip link del NAME`)",
            )
        kernel = ovs_kernel_datapath()
        delays = any(link.delay_ms for link in topology.links)
        netem = netem_available()
        state.extra["netem"] = netem  # link traces and run records say whether delay and loss were emulated
        if delays and not netem:
            state.warnings.append(
                "this kernel has no netem qdisc: link delays ("
                + ", ".join(f"{link.a}-{link.b} {link.delay_ms:g} ms" for link in topology.links if link.delay_ms)
                + ") are not emulated; bandwidth limits are"
            )
        if not kernel:
            state.warnings.append("no openvswitch kernel module: switches use OVS's userspace datapath (netdev)")
        state.bridges = bridges
        state.interfaces = interfaces
        self.checkpoint()  # on record before they are made: a `topo up` killed while building leaves nothing behind

        class Switch(OVSSwitch):  # type: ignore[misc]
            """Containernet's Mininet adds each link's port to its switch at once (`attach`, one ovs-vsctl and a tc
            re-application per port), then again when the switches start (one batched ovs-vsctl that re-creates
            the bridge with every port, and the tc settings re-applied): until they start, the first is skipped.
            A link added to a running network (none is, by mlfo) is still attached at once."""

            running = False

            def attach(self, intf: Any) -> None:
                if self.running:
                    super().attach(intf)

            @classmethod
            def batchStartup(cls, switches: list[Any], run: Any = errRun) -> list[Any]:  # noqa: N802 - Mininet's name
                """Mininet's batched start re-applies every switch port's tc settings afterwards, because the kernel
                datapath replaces them. The userspace datapath leaves them alone (checked: the HTB class of a
                port is there without it), so there the re-application (2 s at 60 hosts) is skipped."""
                if kernel:
                    return list(super().batchStartup(switches, run))
                commands = [c.strip() for switch in switches for c in switch.commands]
                for switch in switches:
                    switch.cmds, switch.batch = [], False
                while commands:  # Mininet's own command strings (names from the topology), in chunks below ARG_MAX
                    chunk: list[str] = []
                    while commands and sum(map(len, chunk)) + len(commands[0]) < cls.argmax:
                        chunk.append(commands.pop(0))
                    run("ovs-vsctl " + " ".join(chunk or [commands.pop(0)]), shell=True)
                return switches

        switch_class = partial(
            Switch,
            datapath="kernel" if kernel else "user",
            protocols="OpenFlow13",
            failMode="secure" if controller else "standalone",
        )
        class PreparedLink(TCLink):  # type: ignore[misc]
            """Mininet's TCLink on a veth pair made beforehand, with the others, in one `ip -batch` (`_make_veth_pairs`)."""

            @classmethod
            def makeIntfPair(cls, *args: Any, **kwargs: Any) -> None:  # noqa: N802 - Mininet's name
                return None

        net = self._network(topo=None, build=False, controller=None, switch=switch_class, link=PreparedLink, autoSetMacs=False,
                            waitConnected=False)
        self.net = net
        if controller:
            address, _, port = controller.rpartition(":")
            net.addController("c0", controller=RemoteController, ip=address, port=int(port))
        for switch in topology.switches:
            net.addSwitch(switch.name, dpid=switch.dpid_hex)
        for host in topology.hosts:
            self._add_host(net, host, state)

        # Every veth pair at once, each host's end in its host (Mininet makes a pair and moves its ends with three
        # commands per link: 2.4 s of `topo up 5`).
        _make_veth_pairs([(host.interface, f"{host.switch}-eth{host.port}", net.get(host.name).pid) for host in topology.hosts]
                         + [(link.interface_a, link.interface_b, None) for link in topology.links if not link.patch])
        unshaped: list[str] = []

        def shaping(bandwidth: float | None, delay: float, name: str = "") -> dict[str, Any]:
            params: dict[str, Any] = {}
            if bandwidth and bandwidth > MAX_SHAPED_MBIT:
                unshaped.append(f"{name} {bandwidth:g}")  # Mininet's TCLink ignores it, with an error line
            elif bandwidth:
                params["bw"] = bandwidth
            if delay and netem:
                params["delay"] = f"{delay:g}ms"
            return params

        for host in topology.hosts:
            net.addLink(
                host.name, host.switch, port1=0, port2=host.port,
                intfName1=host.interface, intfName2=f"{host.switch}-eth{host.port}",
                **shaping(host.bandwidth_mbit, 0.0),
            )
        for link in topology.links:
            net.addLink(
                link.a, link.b, port1=link.port_a, port2=link.port_b,
                intfName1=link.interface_a, intfName2=link.interface_b,
                **({"cls": _patch_link_class()} if link.patch else shaping(link.bandwidth_mbit, link.delay_ms, f"{link.a}-{link.b}")),
            )
        if unshaped:
            state.warnings.append(f"Mininet shapes rates up to {MAX_SHAPED_MBIT} Mbit/s: links {', '.join(unshaped)} Mbit/s "
                                  "run unshaped (as fast as this machine forwards)" + ("; their delays are emulated" if netem else ""))
        net.build()
        net.start()
        for switch in net.switches:
            switch.running = True
        if topology.mtu != 1500:
            # One `ip -batch` and one ovs-vsctl for all of them (one command each was a second at 60 hosts).
            commands = "".join(f"link set dev {interface} mtu {topology.mtu}\n" for interface in interfaces)
            run_tool(["ip", "-batch", "-"], input=commands)
            patches = {i for link in topology.links if link.patch for i in (link.interface_a, link.interface_b)}
            ports = [p for bridge in bridges for p in run_tool(["ovs-vsctl", "--timeout=10", "list-ports", bridge]).stdout.split()
                     if p not in patches]
            sets = [a for port in ports for a in ("--", "set", "interface", port, f"mtu_request={topology.mtu}")]
            if sets:
                run_tool(["ovs-vsctl", "--timeout=30", *sets])
        for host in topology.hosts:
            node = net.get(host.name)
            # The userspace datapath drops TCP segments with offloaded checksums: compute them in software.
            node.cmd("ethtool", "-K", host.interface, "tx", "off")
            if topology.mtu != 1500:
                node.cmd("ip", "link", "set", "dev", host.interface, "mtu", str(topology.mtu))
            state.hosts.append(self._record(host, node))
        if not kernel:
            time.sleep(0.5)  # let the userspace datapath pick up its ports

    def stop(self) -> None:
        if self.net is not None:
            _take_down_switches_and_links(self.net)
            self.net.stop()
            self.net = None
