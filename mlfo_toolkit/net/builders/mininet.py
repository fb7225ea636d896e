"""The Mininet builder: OVS switches (userspace datapath where the kernel has no OVS module), hosts in
network namespaces, HTB-shaped links. The only module of mlfo that imports Mininet, inside its functions: Mininet is a
root-only system package that unit tests, `--help` and loopback runs never need."""

from __future__ import annotations

import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any

from mlfo_toolkit.errors import MissingDependencyError, MlfoError, NeedsRootError
from mlfo_toolkit.net.state import HostRecord, NetworkState, remove_bridges, remove_interfaces
from mlfo_toolkit.net.topology import Topology
from mlfo_toolkit.util.processes import run_tool, start_time


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


@dataclass
class _Settings:
    """What Mininet's TCIntf.config does to the interfaces of one network namespace, gathered to be done at once:
    each up (`ip -batch`), its offloads (`ethtool -K`, one each) and its queueing (`tc -batch`)."""

    pid: int | None  # a host's process, whose network namespace they are in; None: the machine's own
    ip: list[str] = field(default_factory=list)
    ethtool: list[list[str]] = field(default_factory=list)
    tc: list[str] = field(default_factory=list)

    def argv(self, tool: list[str]) -> list[str]:
        return tool if self.pid is None else ["nsenter", "--target", str(self.pid), "--net", "--", *tool]

    def apply(self, queues: bool) -> list[str]:
        """Run the interfaces' links (up, offloads) or, with `queues`, their queueing; what failed, one line each."""
        steps: list[tuple[str, list[str], str | None]]
        if queues:
            steps = [("tc -batch", ["tc", "-batch", "-"], "".join(self.tc))] if self.tc else []
        else:
            steps = [("ip -batch", ["ip", "-batch", "-"], "".join(self.ip))] if self.ip else []
            steps += [(f"ethtool -K {options[0]}", ["ethtool", "-K", *options], None) for options in self.ethtool]
        where = f"the host of PID {self.pid}" if self.pid is not None else "the machine's namespace"
        failed = []
        for what, tool, lines in steps:
            done = run_tool(self.argv(tool), timeout=60, input=lines)
            if done.returncode != 0:
                failed.append(f"{what} in {where}: {(done.stderr or done.stdout).strip()[:200]}")
        return failed


def _apply_settings(settings: list[_Settings], *, queues: bool) -> None:
    """Every namespace's interface settings (links, or their queueing), a few namespaces at a time (each is a handful
    of short tool runs)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        failed = [line for lines in pool.map(lambda one: one.apply(queues), settings) for line in lines]
    if failed:
        raise MlfoError(f"setting up the network's interfaces failed: {'; '.join(failed[:3])}",
                        hint="`mlfo topo down` removes what was made; `ip link` and `tc qdisc` show what is there")


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
        return HostRecord(host.name, host.role, host.ip, node.pid, start_time(node.pid), host.interface)

    def build(self, topology: Topology, state: NetworkState, controller: str | None) -> None:
        check_prerequisites()
        import mininet.net  # noqa: F401  (first: Containernet's mininet.link and mininet.node import each other)
        from mininet.link import TCIntf, TCLink
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
            re-application per port), then again when the switches start: until they start, the first is skipped.
            They start in batch (one ovs-vsctl for every bridge and port, where Mininet runs one per switch and then
            re-applies every port's tc settings one command at a time); the ports' queueing is applied once,
            afterwards, for every interface together (`_apply_settings`). A link added to a running network (none
            is, by mlfo) is still attached at once."""

            running = False

            def attach(self, intf: Any) -> None:
                if self.running:
                    super().attach(intf)

            @classmethod
            def batchStartup(cls, switches: list[Any], run: Any = errRun) -> list[Any]:  # noqa: N802 - Mininet's name
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
            batch=True,
        )
        deferring = [True]

        class DeferredIntf(TCIntf):  # type: ignore[misc]
            """Mininet's TCIntf, whose settings wait while the links are made, then are applied for every interface
            together (`_apply_settings`): up and offloads before the switches start, the queueing after they have
            their ports (OVS resets a port's queueing when it takes it). Mininet ran 5-6 commands through a node's
            shell per interface, twice on a switch's side: 3 s of `topo up 5`."""

            def config(self, **params: Any) -> Any:
                return None if deferring[0] else super().config(**params)

            def settings(self, host_side: bool, mtu: int) -> tuple[str, list[str], list[str]]:
                """Mininet's TCIntf.config, as lines for `ip -batch`, `ethtool -K` options and `tc -batch` lines: up, no
                GRO, checksum offloads on (TX off on a host's side: the userspace datapath drops TCP segments whose
                checksum was offloaded), and the link's HTB rate (and netem delay) with Mininet's own commands."""
                params = self.params
                name = self.name
                ip = f"link set dev {name} up" + (f" mtu {mtu}" if host_side and mtu != 1500 else "") + "\n"
                offloads = [name, "gro", "off", "tx", "off" if host_side else "on", "rx", "on"]
                bandwidth, parent = self.bwCmds(bw=params.get("bw"))
                delay, _ = self.delayCmds(parent, delay=params.get("delay"))
                return ip, offloads, [(command % ("", name)).strip() + "\n" for command in bandwidth + delay]

        class PreparedLink(TCLink):  # type: ignore[misc]
            """Mininet's TCLink on a veth pair made beforehand, with the others, in one `ip -batch` (`_make_veth_pairs`),
            its interfaces set up afterwards, with all the others (DeferredIntf)."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs.setdefault("cls1", DeferredIntf)
                kwargs.setdefault("cls2", DeferredIntf)
                super().__init__(*args, **kwargs)

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
        # The interfaces are up (with their offloads) before the switches take them, as Mininet had them: a
        # controller learns each port as it connects. Their queueing comes after: OVS resets it when it takes a port.
        by_namespace: dict[int | None, _Settings] = {}
        for link in net.links:
            for intf in (link.intf1, link.intf2):
                if isinstance(intf, DeferredIntf):
                    pid = intf.node.pid if intf.node.inNamespace else None
                    ip, offloads, tc = intf.settings(host_side=pid is not None, mtu=topology.mtu)
                    one = by_namespace.setdefault(pid, _Settings(pid))
                    one.ip.append(ip)
                    one.ethtool.append(offloads)
                    one.tc.extend(tc)
        settings = list(by_namespace.values())
        _apply_settings(settings, queues=False)
        net.build()
        net.start()
        for switch in net.switches:
            switch.running = True
        deferring[0] = False
        if topology.mtu != 1500:
            # One `ip -batch` and one ovs-vsctl for all of them (one command each was a second at 60 hosts).
            commands = "".join(f"link set dev {interface} mtu {topology.mtu}\n" for interface in interfaces)
            run_tool(["ip", "-batch", "-"], input=commands)
            # The switches' ports are the switch ends of the veth links (a patch port has no MTU of its own).
            sets = [a for port in interfaces for a in ("--", "set", "interface", port, f"mtu_request={topology.mtu}")]
            if sets:
                run_tool(["ovs-vsctl", "--timeout=30", *sets])
        _apply_settings(settings, queues=True)
        for host in topology.hosts:
            state.hosts.append(self._record(host, net.get(host.name)))
        if not kernel:
            time.sleep(0.5)  # let the userspace datapath pick up its ports

    def stop(self) -> None:
        if self.net is not None:
            _take_down_switches_and_links(self.net)
            self.net.stop()
            self.net = None
