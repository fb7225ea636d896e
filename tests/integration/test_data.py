"""`mlfo data`: a dataset fetched from a (local) HTTP source, resumed, checked, refused when altered, used by a cohort.

This machine has no internet: a loopback server serves files the test generates in the real formats
(MNIST's gzipped IDX files, built from scikit-learn's real digits scaled to 28x28), and the test sets
their checksums in a `fl.dataset_sources` file. The shipped URLs and checksums are the datasets' own.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from mlfo_toolkit.fl.fetch import SOURCES
from tests.helpers import REPO, processes_under

pytestmark = [pytest.mark.flower]


def idx(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes, gzipped, as MNIST and Fashion-MNIST ship them."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def fashion_like_files() -> dict[str, bytes]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.kron(digits.images, np.ones((4, 4)))[:, 2:30, 2:30] * 255 / 16  # 8x8 -> 28x28 grey
    cut = 1400
    return {"train-images-idx3-ubyte.gz": idx(images[:cut]), "train-labels-idx1-ubyte.gz": idx(digits.target[:cut]),
            "t10k-images-idx3-ubyte.gz": idx(images[cut:]), "t10k-labels-idx1-ubyte.gz": idx(digits.target[cut:])}


class Source:
    """What the local server serves, and how it misbehaves: cut a file short, or alter it."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.cut: dict[str, int] = {}  # file -> bytes sent before the connection drops (once)
        self.altered: set[str] = set()
        self.ranges: list[str] = []


@pytest.fixture
def source() -> Iterator[tuple[Source, str]]:
    state = Source(fashion_like_files())

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            body = state.files.get(name)
            if body is None:
                self.send_error(404)
                return
            if name in state.altered:
                body = body[:-1] + bytes([body[-1] ^ 0xFF])
            start = 0
            if self.headers.get("Range"):
                state.ranges.append(f"{name} {self.headers['Range']}")
                start = int(self.headers["Range"].split("=")[1].split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            cut = state.cut.pop(name, None)
            self.wfile.write(body[start:cut] if cut is not None else body[start:])
            if cut is not None:
                self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def mlfo(workdir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFO_")}
    env |= {"MLFO_FL__DATA_DIR": str(workdir / "data"), "MLFO_FL__DATASET_SOURCES": str(workdir / "sources.yaml"),
            "MLFO_PATHS__RUNS_DIR": str(workdir / "runs"), "MLFO_PATHS__STATE_DIR": str(workdir / "state")}
    return subprocess.run([sys.executable, "-m", "mlfo_toolkit", *args], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=timeout)


def write_sources(workdir: Path, state: Source, base: str) -> None:
    files = [{"name": n, "url": base + n, "sha256": hashlib.sha256(b).hexdigest()} for n, b in state.files.items()]
    sources = {"datasets": {"fashionmnist": {"folder": "fashionmnist", "description": "test copy", "files": files}}}
    (workdir / "sources.yaml").write_text(yaml.safe_dump(sources))


def test_the_shipped_sources_are_the_datasets_own() -> None:
    urls = {name: [f.url for f in entry.files] for name, entry in SOURCES.items()}
    assert urls["fashionmnist"][0].startswith("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")
    assert urls["cifar"] == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert SOURCES["cifar"].files[0].md5 == "c58f30108f718f92721af3b95e74349a"  # as published on its page
    assert all(len(f.sha256) == 64 for entry in SOURCES.values() for f in entry.files)


def test_get_resumes_checks_and_feeds_a_cohort_that_learns(source: tuple[Source, str], workdir: Path) -> None:
    state, base = source
    write_sources(workdir, state, base)
    assert "fashionmnist  no" in mlfo(workdir, "data", "list").stdout
    # The connection drops halfway through the biggest file: exit 5, and the part stays for the next try.
    state.cut["train-images-idx3-ubyte.gz"] = len(state.files["train-images-idx3-ubyte.gz"]) // 2
    broken = mlfo(workdir, "data", "get", "fashionmnist")
    assert broken.returncode == 5, broken.stderr
    assert (workdir / "data" / "fashionmnist" / "train-images-idx3-ubyte.gz.part").is_file()
    done = mlfo(workdir, "data", "get", "fashionmnist", "--json")
    assert done.returncode == 0, done.stderr
    how = {f["file"]: f["how"] for f in json.loads(done.stdout)["files"]}
    assert how["train-images-idx3-ubyte.gz"].startswith("resumed at") and state.ranges
    again = json.loads(mlfo(workdir, "data", "get", "fashionmnist", "--json").stdout)
    assert {f["how"] for f in again["files"]} == {"already here"}  # checked again, kept, not fetched
    listed = json.loads(mlfo(workdir, "data", "list", "--json").stdout)["datasets"]
    assert {r["dataset"]: r["present"] for r in listed}["fashionmnist"] is True
    # A cohort of the drilling intent (fashionmnist in the catalog) trains on what was fetched.
    cohorts = yaml.safe_load((REPO / "intents" / "cohorts.yaml").read_text())
    cohorts["cohorts"] = [{"name": "drilling", "size": 2, "intent": str(REPO / "intents" / "drilling.yaml"), "min_available": 2}]
    cohorts["defaults"] |= {"rounds": 3, "fraction_fit": 1.0}
    (workdir / "cohorts.yaml").write_text(yaml.safe_dump(cohorts))
    run = mlfo(workdir, "demo", "--cohort-file", str(workdir / "cohorts.yaml"), "--json", timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    (cohort,) = json.loads(run.stdout)["cohorts"]
    assert cohort["accuracy"][-1] > cohort["accuracy"][0] and cohort["accuracy"][-1] > 0.5
    assert processes_under(workdir) == []


def test_an_altered_or_truncated_file_is_refused_and_removed(source: tuple[Source, str], workdir: Path) -> None:
    state, base = source
    write_sources(workdir, state, base)
    state.altered.add("train-labels-idx1-ubyte.gz")
    bad = mlfo(workdir, "data", "get", "fashionmnist")
    assert bad.returncode == 4, bad.stderr
    expected = hashlib.sha256(state.files["train-labels-idx1-ubyte.gz"]).hexdigest()
    assert "train-labels-idx1-ubyte.gz: SHA-256 is" in bad.stderr and expected in bad.stderr
    assert not (workdir / "data" / "fashionmnist" / "train-labels-idx1-ubyte.gz").exists()
    # A file the user has is checked the same way: a truncated one is refused and nothing is laid out.
    mine = workdir / "train-labels-idx1-ubyte.gz"
    mine.write_bytes(state.files["train-labels-idx1-ubyte.gz"][:-10])
    refused = mlfo(workdir, "data", "import", "fashionmnist", str(mine))
    assert refused.returncode == 4 and str(mine) in refused.stderr and expected in refused.stderr
    assert not (workdir / "data" / "fashionmnist" / "train-labels-idx1-ubyte.gz").exists()
    mine.write_bytes(state.files["train-labels-idx1-ubyte.gz"])
    assert mlfo(workdir, "data", "import", "fashionmnist", str(mine)).returncode == 0
    assert (workdir / "data" / "fashionmnist" / "train-labels-idx1-ubyte.gz").read_bytes() == mine.read_bytes()
