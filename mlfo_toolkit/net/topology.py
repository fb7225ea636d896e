"""Topologies as pure data: load a YAML spec, expand its templates, check it, number the ports.

Nothing here needs root or touches the kernel; builders (mlfo_toolkit.emulation) realise a spec.
"""

from __future__ import annotations

import ast
import ipaddress
import itertools
import operator
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.net.profiles import DEVICE_CLASSES
from mlfo_toolkit.util.files import read_input
from mlfo_toolkit.util.resources import resource_path
from mlfo_toolkit.util.yamlfiles import load_yaml, validate

Role = Literal["cloud-mlfo", "campus-mlfo", "fl-server", "fl-client", "fl-aggregator", "app-server", "app-client", "prometheus"]
AGENT_ROLES = ("fl-server", "fl-client", "fl-aggregator")  # the hosts a node agent runs on
# Backhaul kinds (the prototype's hierFL branch): a link `kind: satellite` gets these unless it sets its own.
LINK_KINDS: dict[str, dict[str, float]] = {
    "satellite": {"bandwidth_mbit": 600, "delay_ms": 15},
    "fixed-wireless": {"bandwidth_mbit": 2000, "delay_ms": 10},
    "metro": {"bandwidth_mbit": 10000, "delay_ms": 5},
}
ROLES: tuple[str, ...] = Role.__args__  # type: ignore[attr-defined]
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9.]{0,8}$"  # "<name>-ethNN" fits the 15 characters of an interface name
MAX_PORT = 99


class HostSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    role: Role
    ip: str
    switch: str
    cpus: float | None = Field(None, gt=0, le=256)
    cohort: int | None = Field(None, ge=1)
    campus: int | None = Field(None, ge=1)
    publish: dict[int, int] = Field(default_factory=dict)
    bandwidth_mbit: float | None = Field(None, gt=0)
    profile: str | None = Field(None, description="an FL client's device class (net.profiles): its CPU, memory and link, "
                                "unless cpus or bandwidth_mbit say otherwise")
    edge: int | None = Field(None, ge=1, description="the edge an FL client or an aggregator belongs to (hierarchical FL)")

    @model_validator(mode="after")
    def _known_profile(self) -> HostSpec:
        if self.profile is not None and self.profile not in DEVICE_CLASSES:
            raise ValueError(f"unknown device class '{self.profile}' (classes: {', '.join(DEVICE_CLASSES)})")
        return self


class SwitchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    dpid: int = Field(ge=1, le=2**48 - 1)


class LinkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    a: str
    b: str
    bandwidth_mbit: float | None = Field(None, gt=0)
    delay_ms: float | None = Field(None, ge=0)
    kind: str | None = Field(None, max_length=40, description="a link kind (link_kinds or the built-in ones): its rate and delay")
    patch: bool | None = Field(None, description="a pair of OVS patch ports (no rate, delay or interface), not a veth pair; "
                               "default: link_defaults.patch")


class LinkKind(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bandwidth_mbit: float = Field(gt=0)
    delay_ms: float = Field(0.0, ge=0)


class LinkDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bandwidth_mbit: float | None = Field(None, gt=0)
    delay_ms: float = Field(0.0, ge=0)
    mtu: int = Field(1500, ge=576, le=9000)
    patch: bool = Field(False, description="switch links are OVS patch ports (the rate and delay here then apply to host links only)")


class TopologyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    parameters: dict[str, int] = Field(default_factory=dict)
    link_defaults: LinkDefaults = Field(default_factory=LinkDefaults)
    subnet_prefix_len: int = Field(8, ge=1, le=30)
    link_kinds: dict[str, LinkKind] = Field(default_factory=dict, description="link kinds beyond (or over) the built-in ones")
    switches: list[dict[str, Any]]
    hosts: list[dict[str, Any]]
    links: list[dict[str, Any]] = Field(default_factory=list)


# --- template expansion ----------------------------------------------------------------------
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
              ast.Mod: operator.mod}


_FUNCTIONS = {"min": min, "max": max}


def _arith(expression: str, variables: dict[str, int]) -> int:
    """Evaluate `n+10`, `(s-1)*3+i`, `max(5, cohorts)` and the like: integers, names, + - * // %, min and max."""

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in variables:
                raise KeyError(node.id)
            return variables[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return int(_OPERATORS[type(node.op)](walk(node.left), walk(node.right)))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS and len(node.args) >= 2
                and not node.keywords):
            return int(_FUNCTIONS[node.func.id](walk(a) for a in node.args))
        raise ValueError(f"unsupported expression '{expression}'")

    return walk(ast.parse(expression.strip(), mode="eval"))


def substitute(value: Any, variables: dict[str, int], where: str) -> Any:
    """Replace every `{expr}` in strings (recursively); a string that is one `{expr}` becomes an int.
    `{one_of: [a, b, c], index: "{expr}"}` picks an entry (cycling: index 3 is `a` again)."""
    if isinstance(value, dict) and set(value) == {"one_of", "index"}:
        choices, index = value["one_of"], substitute(value["index"], variables, where)
        if not isinstance(choices, list) or not choices or not isinstance(index, int):
            raise ValidationError("one_of needs a list of choices and an integer index", field=where)
        return substitute(choices[index % len(choices)], variables, where)
    if isinstance(value, dict):
        return {substitute(k, variables, where): substitute(v, variables, where) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, variables, where) for v in value]
    if not isinstance(value, str) or "{" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        try:
            return str(_arith(match.group(1), variables))
        except KeyError as err:
            raise ValidationError(f"unknown variable {err} in '{value}'", field=where) from None
        except (ValueError, SyntaxError):
            raise ValidationError(f"bad expression '{match.group(1)}' in '{value}'", field=where) from None

    text = re.sub(r"\{([^{}]+)\}", replace, value)
    return int(text) if re.fullmatch(r"\{[^{}]+\}", value) else text


def expand(entries: list[dict[str, Any]], parameters: dict[str, int], section: str) -> list[dict[str, Any]]:
    """Entries with `repeat: {var, from, to}` (or a list of them, nested) become one entry each."""
    out = []
    for index, entry in enumerate(entries):
        where = f"{section}[{index}]"
        if not isinstance(entry, dict):
            raise ValidationError("must be a mapping", field=where)
        repeat = entry.get("repeat")
        body = {k: v for k, v in entry.items() if k != "repeat"}
        if repeat is None:
            out.append(substitute(body, parameters, where))
            continue
        loops = repeat if isinstance(repeat, list) else [repeat]
        ranges = []
        for loop in loops:
            if not isinstance(loop, dict) or set(loop) != {"var", "from", "to"}:
                raise ValidationError("repeat needs {var, from, to}", field=f"{where}.repeat")
            low = substitute(loop["from"], parameters, where)
            high = substitute(loop["to"], parameters, where)
            if not isinstance(low, int) or not isinstance(high, int):
                raise ValidationError("repeat bounds must be integers", field=f"{where}.repeat")
            ranges.append([(loop["var"], v) for v in range(low, high + 1)])
        for combination in itertools.product(*ranges):
            out.append(substitute(body, {**parameters, **dict(combination)}, where))
    return out


# --- the checked, numbered topology -----------------------------------------------------------
@dataclass
class Host:
    name: str
    role: str
    ip: str
    prefix_len: int
    switch: str
    port: int  # the switch port this host hangs on
    interface: str
    cpus: float | None = None
    cohort: int | None = None
    campus: int | None = None
    publish: dict[int, int] = field(default_factory=dict)
    bandwidth_mbit: float | None = None
    profile: str | None = None
    memory_mb: float | None = None  # from the profile: applied at `topo up` where memory cgroups exist
    edge: int | None = None


@dataclass
class Switch:
    name: str
    dpid: int

    @property
    def dpid_hex(self) -> str:
        return f"{self.dpid:016x}"

    @property
    def onos_id(self) -> str:
        return f"of:{self.dpid:016x}"


@dataclass
class Link:
    a: str
    b: str
    port_a: int
    port_b: int
    interface_a: str
    interface_b: str
    bandwidth_mbit: float | None
    delay_ms: float
    kind: str | None = None
    # A pair of OVS patch ports: OVS carries a packet across it inside one datapath pass; it has no interface, rate or delay.
    patch: bool = False


@dataclass
class Topology:
    """A realisable network: hosts, switches with fixed DPIDs, links with numbered ports."""

    name: str
    parameters: dict[str, int]
    hosts: list[Host]
    switches: list[Switch]
    links: list[Link]
    source: str = ""
    mtu: int = 1500

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise ValidationError(f"no host '{name}' in topology {self.name}", hint=f"hosts: {', '.join(h.name for h in self.hosts)}")

    def switch(self, name: str) -> Switch:
        for switch in self.switches:
            if switch.name == name:
                return switch
        raise ValidationError(f"no switch '{name}' in topology {self.name}")

    def by_role(self, role: str) -> list[Host]:
        return [h for h in self.hosts if h.role == role]

    def one(self, role: str) -> Host:
        hosts = self.by_role(role)
        if len(hosts) != 1:
            raise ValidationError(f"topology {self.name} needs exactly one {role} host, has {len(hosts)}")
        return hosts[0]

    def links_of(self, switch: str) -> list[tuple[int, str]]:
        """(port, peer) pairs of a switch, hosts and switches alike, by port."""
        ports = [(h.port, h.name) for h in self.hosts if h.switch == switch]
        for link in self.links:
            if link.a == switch:
                ports.append((link.port_a, link.b))
            elif link.b == switch:
                ports.append((link.port_b, link.a))
        return sorted(ports)

    def port_towards(self, switch: str, peer: str) -> int:
        for port, name in self.links_of(switch):
            if name == peer:
                return port
        raise ValidationError(f"switch {switch} has no link to {peer}")

    def fl_clients(self) -> list[Host]:
        """FL clients in IP order: the campus MLFO's client pool."""
        return sorted(self.by_role("fl-client"), key=lambda h: ipaddress.ip_address(h.ip))

    def fl_servers(self) -> list[Host]:
        return sorted(self.by_role("fl-server"), key=lambda h: (h.cohort or 0, ipaddress.ip_address(h.ip)))

    def cohort_switch(self, cohort: int) -> Switch:
        """The campus switch whose clients form cohort N (the prototype's meter port N)."""
        names = sorted({h.switch for h in self.by_role("fl-client") if h.campus == cohort})
        if len(names) != 1:
            known = sorted({h.campus for h in self.by_role("fl-client") if h.campus})
            raise ValidationError(f"no campus switch for cohort {cohort}", field="port", hint=f"cohorts: {known}")
        return self.switch(names[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "parameters": self.parameters,
            "mtu": self.mtu,
            "hosts": [asdict(h) for h in self.hosts],
            "switches": [{"name": s.name, "dpid": s.dpid, "dpid_hex": s.dpid_hex, "onos_id": s.onos_id, "ports": self.links_of(s.name)} for s in self.switches],
            "links": [asdict(link) for link in self.links],
        }

    def edges(self) -> list[dict[str, Any]]:
        """The edges of hierarchical FL (hosts with `edge: N`), in edge order: each edge's clients, its
        aggregator, and its backhaul (the link out of the clients' switch that has a kind, else the first)."""
        numbers = sorted({h.edge for h in self.hosts if h.edge is not None})
        out = []
        for number in numbers:
            clients = [h for h in self.fl_clients() if h.edge == number]
            aggregators = [h for h in self.by_role("fl-aggregator") if h.edge == number]
            switches = {h.switch for h in clients} or {h.switch for h in aggregators}
            touching = [link for link in self.links if link.a in switches or link.b in switches]
            backhaul = next((link for link in touching if link.kind), touching[0] if touching else None)
            out.append({
                "name": f"edge{number}",
                "aggregator": aggregators[0].ip if aggregators else None,
                "clients": [h.ip for h in clients],
                "kind": backhaul.kind if backhaul else None,
                "bandwidth_mbit": backhaul.bandwidth_mbit if backhaul else None,
                "delay_ms": backhaul.delay_ms if backhaul else None,
                "interfaces": [backhaul.interface_a, backhaul.interface_b] if backhaul else [],
            })
        return out

    def mlfo_config(self, config: Config) -> Config:
        """The config every mlfo process inside this network runs with: addresses from the topology."""
        cloud = self.one("cloud-mlfo")
        return config.with_overrides(
            {
                "mlfo.cloud": f"{cloud.ip}:{config.mlfo.momo_port}",
                "ip_plan.clients": [h.ip for h in self.fl_clients()],
                "ip_plan.servers": [h.ip for h in self.fl_servers()],
                "ip_plan.edges": self.edges(),
            },
            origin=f"topology {self.name}",
        )


def interface_name(node: str, port: int) -> str:
    return f"{node}-eth{port}"


def build_topology(spec: TopologyFile, source: str, parameters: dict[str, int] | None = None) -> Topology:
    """Expand templates, validate references and addresses, and number every switch port."""
    params = {**spec.parameters, **(parameters or {})}
    unknown = set(parameters or {}) - set(spec.parameters)
    if unknown:
        raise ValidationError(f"topology {spec.name} has no parameter {', '.join(sorted(unknown))}", source=source,
                              hint=f"parameters: {', '.join(spec.parameters) or 'none'}")
    switches = [validate(SwitchSpec, s, {}, source, ("switches", i)) for i, s in enumerate(expand(spec.switches, params, "switches"))]
    hosts = [validate(HostSpec, h, {}, source, ("hosts", i)) for i, h in enumerate(expand(spec.hosts, params, "hosts"))]
    links = [validate(LinkSpec, link, {}, source, ("links", i)) for i, link in enumerate(expand(spec.links, params, "links"))]

    names = [s.name for s in switches] + [h.name for h in hosts]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValidationError(f"duplicate node names: {', '.join(duplicates)}", source=source)
    dpids = [s.dpid for s in switches]
    if len(set(dpids)) != len(dpids):
        raise ValidationError("two switches share a DPID", field="switches", source=source)
    switch_names = {s.name for s in switches}
    seen_ips: dict[str, str] = {}
    for i, host in enumerate(hosts):
        try:
            ipaddress.IPv4Address(host.ip)
        except ValueError:
            raise ValidationError(f"'{host.ip}' is not an IPv4 address", field=f"hosts[{i}].ip ({host.name})", source=source) from None
        if host.ip in seen_ips:
            raise ValidationError(f"{host.name} and {seen_ips[host.ip]} share the address {host.ip}", field=f"hosts[{i}].ip", source=source)
        seen_ips[host.ip] = host.name
        if host.switch not in switch_names:
            raise ValidationError(f"{host.name} hangs on unknown switch '{host.switch}'", field=f"hosts[{i}].switch", source=source)
    kinds = {**{k: LinkKind(**v) for k, v in LINK_KINDS.items()}, **spec.link_kinds}
    patched = [link.patch if link.patch is not None else spec.link_defaults.patch for link in links]
    for i, link in enumerate(links):
        for end in (link.a, link.b):
            if end not in switch_names:
                raise ValidationError(f"link end '{end}' is not a switch (hosts attach with 'switch:')", field=f"links[{i}]", source=source)
        if patched[i]:
            for name in ("bandwidth_mbit", "delay_ms", "kind"):
                if getattr(link, name):  # a delay of 0 is what a patch link has
                    raise ValidationError(f"link {link.a}-{link.b} is a patch link (OVS patch ports): it has no {name}",
                                          field=f"links[{i}].{name}", source=source,
                                          hint="drop the field, or make it a veth link with `patch: false`")
        if link.kind is not None and link.kind not in kinds:
            raise ValidationError(f"unknown link kind '{link.kind}'", field=f"links[{i}].kind", source=source,
                                  hint=f"kinds: {', '.join(sorted(kinds))}, or add it under link_kinds")
    for i, host in enumerate(hosts):
        if host.role == "fl-aggregator" and host.edge is None:
            raise ValidationError(f"aggregator {host.name} names no edge", field=f"hosts[{i}].edge", source=source,
                                  hint="give it `edge: N`, the edge whose clients it aggregates")

    # Ports: per switch, hosts first in spec order, then switch links in spec order.
    next_port = {s.name: 1 for s in switches}

    def take(switch: str) -> int:
        port = next_port[switch]
        if port > MAX_PORT:
            raise ValidationError(f"switch {switch} has more than {MAX_PORT} ports", source=source)
        next_port[switch] = port + 1
        return port

    default_bw = spec.link_defaults.bandwidth_mbit
    built_hosts = []
    for h in hosts:
        port = take(h.switch)
        device = DEVICE_CLASSES[h.profile] if h.profile else {}
        cpus = h.cpus if h.cpus is not None else device.get("cpus")
        bandwidth = h.bandwidth_mbit or device.get("link_mbit") or default_bw
        built_hosts.append(
            Host(h.name, h.role, h.ip, spec.subnet_prefix_len, h.switch, port, interface_name(h.name, 0), cpus, h.cohort,
                 h.campus, dict(h.publish), bandwidth, h.profile, device.get("memory_mb"), h.edge)
        )
    built_links = []
    for link, patch in zip(links, patched, strict=True):
        pa, pb = take(link.a), take(link.b)
        if patch:
            built_links.append(Link(link.a, link.b, pa, pb, interface_name(link.a, pa), interface_name(link.b, pb), None, 0.0, patch=True))
            continue
        kind = kinds[link.kind] if link.kind else None
        bandwidth = link.bandwidth_mbit or (kind.bandwidth_mbit if kind else None) or default_bw
        delay = link.delay_ms if link.delay_ms is not None else (kind.delay_ms if kind else spec.link_defaults.delay_ms)
        built_links.append(
            Link(link.a, link.b, pa, pb, interface_name(link.a, pa), interface_name(link.b, pb), bandwidth, delay or 0.0, link.kind)
        )
    return Topology(spec.name, params, built_hosts, [Switch(s.name, s.dpid) for s in switches], built_links, source, spec.link_defaults.mtu)


def load_topology(path: Path | None = None, parameters: dict[str, int] | None = None) -> Topology:
    """Load topologies/NAME.yaml (or any path); `parameters` overrides e.g. {'cohorts': 3}."""
    path = path or resource_path("topologies/prototype.yaml")
    if not path.exists() and not path.suffix and len(path.parts) == 1:
        shipped = {p.stem: p for p in shipped_topologies()}
        if path.name not in shipped:
            raise ValidationError(f"no topology file '{path}' and no shipped topology of that name",
                                  field="topology", hint=f"shipped: {', '.join(sorted(shipped))}, or give a file's path")
        path = shipped[path.name]
    data, lines = load_yaml(read_input(path, "topology file"), str(path))
    if not isinstance(data, dict):
        raise ValidationError("a topology must be a mapping", source=str(path), line=1)
    spec = validate(TopologyFile, data, lines, str(path))
    return build_topology(spec, str(path), parameters)


def shipped_topologies() -> list[Path]:
    return sorted(resource_path("topologies").glob("*.yaml"))
