"""Generated bad input for mlfo's four HTTP endpoints and its intent CLI, by class.

Every case is a request no correct server may accept: the harness asserts a 4xx JSON answer,
never a 5xx, never a 2xx, and that the servers stay up. `tests/integration/test_fuzz.py` runs a
quick form in `make test`; `bench/fuzz_bench.py` runs the full one on demand.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.helpers import REPO

WELDING = (REPO / "intents" / "welding.yaml").read_text()
GOOD_FORM = {"cohortsize": "2", "ipstart": "10", "numround": "2"}
GOOD_SERV = {"algo": "FedAvg", "fracfit": "0.5", "minfit": "1", "minav": "1", "numround": "2"}
GOOD_CLI = {"source": "handmnist", "model": "complex", "server": "127.0.0.1:6000", "cohsize": "2", "part": "0"}
MOMO_CONSTRAINTS = {"sourcekind": "handmnist", "modelkind": "complex", "avgalgo": "FedAvg", "fracfit": 0.5,
                    "minfit": 1, "minav": 1, "numround": 2, "sameserv": False, "deployment": "d1", "cohort": "c1"}

CLASSES = (
    "alias",        # 1: YAML anchors, aliases, alias bombs
    "depth",        # 2: deep nesting (YAML and JSON), self-referencing aliases
    "utf8",         # 3: invalid UTF-8 in text fields
    "surrogate",    # 4: lone surrogates in Mo-Mo and agent fields
    "momo_field",   # 5: unchecked Mo-Mo fields (paths, unknown kinds, names)
    "range",        # 6: numbers out of range, minfit/minav above cohortsize
    "oversize",     # 7: text fields over 64 KB, fields sent as file uploads with junk
    "address",      # 9: server addresses Flower would read as options or bad ports
    "malformed",    # broken bodies, wrong content types, junk bytes
    "type",         # wrong types and unknown fields
    "number",       # 18/7: values no number can be (4,300-digit integers, !!float x), NaN, true as a number
    "duplicate",    # 18/11: a key, field, file or query field given twice
    "multipart",    # 18/7: forms python-multipart cannot parse (boundary mismatch or too long, many headers, long names)
    "bounds",       # 18/11: intents past their bounds (targets, constraints, lengths)
)


@dataclass
class Case:
    kind: str
    endpoint: str  # campus, cloud, serv, cli
    method: str = "POST"
    fields: dict[str, Any] | None = None
    files: dict[str, Any] | None = None
    json_body: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    query: str = ""

    def request_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"headers": dict(self.headers)}
        if self.raw is not None:
            kwargs["data"] = self.raw
        elif self.json_body is not None:
            kwargs["data"] = json.dumps(self.json_body).encode()
            kwargs["headers"].setdefault("Content-Type", "application/json")
        else:
            kwargs["data"] = self.fields or {}
            if self.files:
                kwargs["files"] = self.files
        return kwargs


def _bomb(levels: int, width: int) -> str:
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + f"\nintentID: *a{levels - 1}\n"


def _deep_yaml(depth: int, flow: bool) -> str:
    if flow:
        return "intentID: " + "[" * depth + "]" * depth + "\n"
    lines = ["intentID: x", "targets:"]
    indent = "  "
    for i in range(depth):
        lines.append(f"{indent * (i + 1)}- k{i}:")
    return "\n".join(lines) + "\n"


def _momo(**constraints: Any) -> dict[str, Any]:
    return {"intentID": "x.momo", "targets": [{"id": "cloud.fl", "operation": "aggregate.global", "operand": "model.federated",
                                                "constraints": {**MOMO_CONSTRAINTS, **constraints}}]}


def _intent_upload(text: str | bytes) -> dict[str, Any]:
    return {"file": ("intent.yaml", text if isinstance(text, bytes) else text.encode())}


def generate(rng: random.Random, kind: str) -> Case:
    """One random bad request of the given class."""
    endpoint = rng.choice(["campus", "cloud", "serv", "cli"])
    if kind == "alias":
        text = rng.choice([_bomb(rng.randint(3, 9), rng.randint(3, 9)), "a: &a [*a]\n", "intentID: &x y\ntargets: *x\n",
                           WELDING.replace("intentID:", "intentID: &i", 1)])
        if endpoint == "cloud":
            return Case(kind, "cloud", raw=text.encode(), headers={"Content-Type": "application/yaml"})
        return Case(kind, "campus", fields=GOOD_FORM, files=_intent_upload(text))
    if kind == "depth":
        depth = rng.choice([40, 200, 1000, 5000])
        if endpoint in ("serv", "cli"):
            nested: Any = "x"
            for _ in range(depth):
                nested = [nested]
            return Case(kind, endpoint, raw=("{\"algo\": " + "[" * depth + "]" * depth + "}").encode(),
                        headers={"Content-Type": "application/json"})
        if endpoint == "cloud":
            return Case(kind, "cloud", raw=("{\"intentID\": " + "[" * depth + "]" * depth + "}").encode(),
                        headers={"Content-Type": "application/json"})
        if rng.random() < 0.5:
            return Case(kind, "campus", raw=("{\"intent\": " + "{\"a\": " * depth + "1" + "}" * depth + "}").encode(),
                        headers={"Content-Type": "application/json"})
        return Case(kind, "campus", fields=GOOD_FORM, files=_intent_upload(_deep_yaml(depth, rng.random() < 0.5)))
    if kind == "utf8":
        junk = rng.choice([b"\xed\xb3\xbf", b"\xff\xfe", b"\xc3\x28", b"\x80abc", b"2\xe2\x82"])
        if endpoint == "campus":
            name = rng.choice(["cohortsize", "ipstart", "avgalgo", "numround", "name"])
            return Case(kind, "campus", files={**_intent_upload(WELDING), name: (None, junk)})
        if endpoint == "cloud":
            return Case(kind, "cloud", raw=WELDING.encode() + junk, headers={"Content-Type": "application/yaml"})
        base = GOOD_SERV if endpoint == "serv" else GOOD_CLI
        name = rng.choice(list(base))
        return Case(kind, endpoint, files={**{k: (None, v) for k, v in base.items() if k != name}, name: (None, junk)})
    if kind == "surrogate":
        lone = rng.choice(["\ud800", "\udfff", "x\udc80y"])
        if endpoint in ("cloud", "campus"):
            name = rng.choice(["deployment", "cohort", "sourcekind", "modelkind", "avgalgo"])
            return Case(kind, "cloud", raw=json.dumps(_momo(**{name: lone})).encode(), headers={"Content-Type": "application/json"})
        base = dict(GOOD_SERV if endpoint == "serv" else GOOD_CLI)
        base[rng.choice(list(base))] = lone
        return Case(kind, endpoint, raw=json.dumps(base).encode(), headers={"Content-Type": "application/json"})
    if kind == "momo_field":
        name, value = rng.choice([("sourcekind", "../../etc/passwd"), ("modelkind", "/bin/sh"), ("deployment", "a b"),
                                  ("cohort", "--help"), ("deployment", "x" * 200), ("sourcekind", ""), ("cohort", "a/b"),
                                  ("modelkind", "complex; rm -rf /"), ("avgalgo", "FedMagic")])
        return Case(kind, "cloud", json_body=_momo(**{name: value}))
    if kind == "range":
        if endpoint == "campus":
            name, value = rng.choice([("minav", "10000000000"), ("minfit", "5"), ("cohortsize", "0"), ("cohortsize", "-3"),
                                      ("numround", "0"), ("numround", "100001"), ("fracfit", "0"), ("fracfit", "1.5"),
                                      ("ipstart", "256"), ("minav", "0"), ("fracfit", "nan"), ("numround", "1e9")])
            return Case(kind, "campus", fields={**GOOD_FORM, name: value}, files=_intent_upload(WELDING))
        if endpoint == "cloud":
            name, value = rng.choice([("minav", 10**10), ("numround", 0), ("fracfit", 2), ("minfit", -1)])
            return Case(kind, "cloud", json_body=_momo(**{name: value}))
        base = dict(GOOD_SERV if endpoint == "serv" else GOOD_CLI)
        name, value = rng.choice([("fracfit", "3"), ("numround", "0"), ("minav", "99999999")] if endpoint == "serv"
                                 else [("cohsize", "0"), ("part", "-1"), ("part", "5"), ("cohsize", "100000")])
        base[name] = value
        return Case(kind, endpoint, fields=base)
    if kind == "oversize":
        big = rng.choice(["1", "x"]) * rng.choice([65 * 1024, 70 * 1024, 200 * 1024])
        if endpoint == "campus":
            name = rng.choice(["cohortsize", "avgalgo", "name", "numround"])
            if rng.random() < 0.5:
                return Case(kind, "campus", fields={**GOOD_FORM, name: big}, files=_intent_upload(WELDING))
            return Case(kind, "campus", fields=GOOD_FORM, files={**_intent_upload(WELDING), name: ("junk.bin", big.encode())})
        base = dict(GOOD_SERV if endpoint in ("serv", "cloud") else GOOD_CLI)
        name = rng.choice(list(base))
        base[name] = big
        return Case(kind, "serv" if endpoint == "cloud" else endpoint, fields=base)
    if kind == "address":
        value = rng.choice(["--help:1", "127.0.0.1:99999", "127.0.0.1:0", "-x:6000", "host", ":6000", "[::1:6000",
                            "a..b:6000", "127.0.0.1:6000 --insecure", "$(reboot):1", "[zz::1]:6000", "x" * 300 + ":1",
                            "127.0.0.1:\uff16\uff10\uff10\uff10", "0.0.0.0:6000", "[::]:6000", "255.255.255.255:6000",
                            "224.0.0.1:6000", "::1:6000"])
        return Case(kind, "cli", fields={**GOOD_CLI, "server": value})
    if kind == "malformed":
        choice = rng.randrange(6)
        target = rng.choice(["campus", "cloud", "serv", "cli"])
        if choice == 0:
            return Case(kind, target, raw=rng.randbytes(rng.randint(1, 400)), headers={"Content-Type": "application/json"})
        if choice == 1:
            return Case(kind, target, raw=b"--xx\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc",
                        headers={"Content-Type": "multipart/form-data; boundary=xx"})
        if choice == 2:
            return Case(kind, "campus", raw=b"<xml/>", headers={"Content-Type": "application/xml"})
        if choice == 3:
            return Case(kind, target, raw=b"{}", headers={"Content-Type": "multipart/form-data"})
        if choice == 4:
            return Case(kind, "campus", fields=GOOD_FORM, files=_intent_upload(rng.randbytes(rng.randint(1, 300))))
        return Case(kind, target, raw=b"[1, 2", headers={"Content-Type": "application/json"})
    if kind == "type":
        if endpoint == "campus":
            name, value = rng.choice([("sameserver", "maybe"), ("cohortsize", "two"), ("colour", "blue"), ("ipstart", "1.5")])
            return Case(kind, "campus", fields={**GOOD_FORM, name: value}, files=_intent_upload(WELDING))
        if endpoint == "cloud":
            return Case(kind, "cloud", json_body=rng.choice([[1, 2], "text", 42, None, {"intentID": 5}, _momo(sameserv="yes")]))
        base = dict(GOOD_SERV if endpoint == "serv" else GOOD_CLI)
        base[rng.choice(["unknown", "colour"])] = "1"
        return Case(kind, endpoint, json_body=rng.choice([base, [base], "x"]))
    if kind == "number":
        bad = rng.choice(["9" * rng.randint(4301, 6000), "!!float x", "!!int abc", "!!float 1e99999x"])
        if endpoint == "cloud":
            text = f"intentID: x.momo\ntargets:\n  - id: cloud.fl\n    operation: aggregate.global\n    operand: model.federated\n    constraints: {{minfit: {bad}}}\n"
            return Case(kind, "cloud", raw=text.encode(), headers={"Content-Type": "application/yaml"})
        if endpoint == "campus":
            where = rng.choice(["intentID", "constraint", "nan"])
            if where == "nan":
                text = WELDING.replace("privacylevel: high", f"privacylevel: high\n        budget: {rng.choice(['.nan', '.inf', '-.inf'])}")
            elif where == "constraint":
                text = WELDING.replace("privacylevel: high", f"privacylevel: high\n        gpus: {bad}")
            else:
                text = WELDING.replace("intentID: edgeintent01", f"intentID: {bad}")
            return Case(kind, "campus", fields=GOOD_FORM, files=_intent_upload(text))
        base: dict[str, Any] = dict(GOOD_SERV if endpoint == "serv" else GOOD_CLI)
        name = rng.choice(["minfit", "numround", "minav"] if endpoint == "serv" else ["cohsize", "part"])
        base[name] = "@"
        value = rng.choice(["true", "false", "NaN", "Infinity", "1e999", "9" * rng.randint(4301, 6000)])
        return Case(kind, endpoint, raw=json.dumps(base).replace('"@"', value).encode(), headers={"Content-Type": "application/json"})
    if kind == "duplicate":
        if endpoint == "campus":
            choice = rng.randrange(4)
            if choice == 0:
                text = WELDING.replace("privacylevel: high", "privacylevel: low\n        privacylevel: high")
                return Case(kind, "campus", fields=GOOD_FORM, files=_intent_upload(text))
            if choice == 1:
                return Case(kind, "campus", raw=_form_bytes([("file", "intent.yaml", WELDING.encode()), ("file", "other.yaml", WELDING.encode()),
                                                             ("cohortsize", None, b"2")]),
                            headers={"Content-Type": "multipart/form-data; boundary=mlfo-fuzz"})
            if choice == 2:
                return Case(kind, "campus", raw=_form_bytes([("file", "intent.yaml", WELDING.encode()), ("cohortsize", None, b"2"),
                                                             ("cohortsize", None, b"3")]),
                            headers={"Content-Type": "multipart/form-data; boundary=mlfo-fuzz"})
            return Case(kind, "campus", raw=WELDING.encode(), headers={"Content-Type": "application/yaml"},
                        query="cohortsize=2&cohortsize=3")
        if endpoint == "cloud":
            text = json.dumps(_momo())
            text = text.replace('"minfit": 1', '"minfit": 1, "minfit": 2')
            return Case(kind, "cloud", raw=text.encode(), headers={"Content-Type": "application/json"})
        base = dict(GOOD_SERV if endpoint == "serv" else GOOD_CLI)
        name = rng.choice(list(base))
        text = json.dumps(base).replace(f'"{name}": ', f'"{name}": "1", "{name}": ', 1)
        return Case(kind, endpoint, raw=text.encode(), headers={"Content-Type": "application/json"})
    if kind == "multipart":
        target = rng.choice(["campus", "serv", "cli"])
        choice = rng.randrange(4)
        if choice == 0:
            return Case(kind, target, raw=b"hello", headers={"Content-Type": "multipart/form-data; boundary=x"})
        if choice == 1:
            boundary = "b" * 200
            return Case(kind, target, raw=f"--{boundary}\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--{boundary}--\r\n".encode(),
                        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if choice == 2:
            headers = "".join(f"X-H{i}: v\r\n" for i in range(1000))
            return Case(kind, target, raw=f"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n{headers}\r\n1\r\n--x--\r\n".encode(),
                        headers={"Content-Type": "multipart/form-data; boundary=x"})
        name = "n" * 10_000
        return Case(kind, target, raw=f"--x\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n1\r\n--x--\r\n".encode(),
                    headers={"Content-Type": "multipart/form-data; boundary=x"})
    if kind == "bounds":
        choice = rng.randrange(4)
        target = "factory.all"
        if choice == 0:
            extra = "".join(f"    - id: t{i}\n      operation: maximise\n      operand: robots.welding.accuracy\n" for i in range(40))
            text = WELDING + extra
        elif choice == 1:
            many = "".join(f"        c{i}: {i}\n" for i in range(rng.choice([100, 1000, 5000])))
            text = WELDING.replace("        privacylevel: high\n", "        privacylevel: high\n" + many)
        elif choice == 2:
            text = WELDING.replace("privacylevel: high", f"privacylevel: high\n        {'k' * 100}: 1")
        else:
            text = WELDING.replace(target, "t" * 2000)
        if endpoint == "cloud":
            return Case(kind, "campus", fields=GOOD_FORM, files=_intent_upload(text))
        return Case(kind, "campus", fields=GOOD_FORM, files=_intent_upload(text))
    raise ValueError(kind)


def _form_bytes(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    """A multipart body written by hand (requests will not repeat a field name as a file twice)."""
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--mlfo-fuzz\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + b"--mlfo-fuzz--\r\n"


def cases(seed: int, per_class: int) -> Iterator[Case]:
    rng = random.Random(seed)
    for _ in range(per_class):
        for kind in CLASSES:
            yield generate(rng, kind)


CLI_BAD = [
    "a: &a [*a]\n",
    "intentID: " + "[" * 3000 + "]" * 3000 + "\n",
    "a0: &a0 [lol, lol, lol]\na1: &a1 [*a0, *a0, *a0]\nintentID: *a1\n",
    "intentID: x\ntargets:\n  - {id: t, operation: maximise, operand: nonsense}\n",
    "intentID: x\ntargets: 5\n",
    "\xff\xfe",
    "targets: [",
    "- just\n- a list\n",
]
