"""Datasets fetched from their canonical source, or imported from files a user has, and checked.

`mlfo data get NAME` downloads every file of a dataset into `fl.data_dir` (resuming a broken download
from its `.part` file with an HTTP Range request), checks each file's SHA-256 against the value kept
here, and removes a file whose checksum is wrong. `mlfo data import NAME FILE...` lays out files the
user already has, checked the same way. Archives (CIFAR-10) are unpacked after the check, with
tarfile's `data` filter (no absolute paths, links out of the folder or device files).

The URLs and checksums: Fashion-MNIST's files and URL are those of its README
(github.com/zalandoresearch/fashion-mnist), which publishes MD5 sums; MNIST's are the mirror that
torchvision uses (the original yann.lecun.com site no longer serves them); CIFAR-10's archive is the
one its page (cs.toronto.edu/~kriz/cifar.html) links, with the MD5 published there. The SHA-256 values
were computed by others from those files and agree across independent references (Keras pins the
same CIFAR-10 value); the published MD5 is kept beside each and checked too.
`fl.dataset_sources` (a YAML file) adds datasets or replaces these, e.g. an institute's mirror.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from pydantic import BaseModel, ConfigDict, Field

from mlfo_toolkit.errors import UnreachableError, ValidationError
from mlfo_toolkit.util.yamlfiles import load_yaml, validate

CHUNK = 1 << 16
NET_CHUNK = 1 << 13  # written as it comes: a broken download keeps all but its last few KiB
TIMEOUT = (10, 60)  # connect, read (seconds)


class RemoteFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    url: str = Field(pattern=r"^https?://")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    md5: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")


class DatasetSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    folder: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="under fl.data_dir")
    description: str = ""
    files: list[RemoteFile] = Field(min_length=1)
    unpack: bool = Field(False, description="the files are tar archives, unpacked into the folder after the check")
    expect: list[str] = Field(default_factory=list, description="paths (in the folder) that show the dataset is present")


class SourcesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    datasets: dict[str, DatasetSource]


def _idx(base: str, names: dict[str, tuple[str, str]]) -> list[RemoteFile]:
    return [RemoteFile(name=n, url=base + n, sha256=sha, md5=md5) for n, (sha, md5) in names.items()]


SOURCES: dict[str, DatasetSource] = {
    "fashionmnist": DatasetSource(
        folder="fashionmnist",
        description="Fashion-MNIST: 70,000 28x28 grey images of clothing, 10 classes (Zalando Research)",
        files=_idx("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
            "train-images-idx3-ubyte.gz": ("08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
                                           "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            "train-labels-idx1-ubyte.gz": ("b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
                                           "25c81989df183df01b3e8a0aad5dffbe"),
            "t10k-images-idx3-ubyte.gz": ("78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
                                          "bef4ecab320f06d8554ea6380940ec79"),
            "t10k-labels-idx1-ubyte.gz": ("42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
                                          "bb300cfdad3c16e7a12a480ee83cd310"),
        }),
    ),
    "mnist": DatasetSource(
        folder="mnist",
        description="MNIST: 70,000 28x28 handwritten digits (LeCun, Cortes, Burges)",
        files=_idx("https://ossci-datasets.s3.amazonaws.com/mnist/", {
            "train-images-idx3-ubyte.gz": ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                                           "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            "train-labels-idx1-ubyte.gz": ("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                                           "d53e105ee54ea40749a09fcbcd1e9432"),
            "t10k-images-idx3-ubyte.gz": ("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                                          "9fb629c4189551a2d022fa330f9573f3"),
            "t10k-labels-idx1-ubyte.gz": ("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                                          "ec29112dd5afa0611ce80d1b7f02629c"),
        }),
    ),
    "cifar": DatasetSource(
        folder="cifar",
        description="CIFAR-10: 60,000 32x32 colour images, 10 classes (Krizhevsky), python batches",
        files=[RemoteFile(name="cifar-10-python.tar.gz", url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                          sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
                          md5="c58f30108f718f92721af3b95e74349a")],
        unpack=True,
        expect=["cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/test_batch"],
    ),
}


class ChecksumError(ValidationError):
    """A file's checksum is not the one kept for it (exit code 4: the input is invalid); the file is removed."""


def sources(extra: Path | None = None) -> dict[str, DatasetSource]:
    """The shipped sources, with those of `extra` (fl.dataset_sources) added or replacing them."""
    if extra is None:
        return dict(SOURCES)
    data, lines = load_yaml(extra.read_text(), str(extra))
    return {**SOURCES, **validate(SourcesFile, data, lines, str(extra)).datasets}


def source(name: str, extra: Path | None = None) -> DatasetSource:
    known = sources(extra)
    if name not in known:
        raise ValidationError(f"no dataset '{name}' to fetch", field="name",
                              hint=f"known: {', '.join(known)} (handmnist ships with scikit-learn; add more in fl.dataset_sources)")
    return known[name]


def _digest(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def check_file(path: Path, expected: RemoteFile) -> None:
    """ChecksumError naming the file and both checksums (and the file removed) unless it is the expected one."""
    sha, md5 = _digest(path)
    if sha != expected.sha256 or (expected.md5 is not None and md5 != expected.md5):
        path.unlink(missing_ok=True)
        raise ChecksumError(
            f"{path.name}: SHA-256 is {sha}, expected {expected.sha256}; the file was removed",
            field=expected.name,
            hint="the download was altered or cut short: run `mlfo data get` again, or import a good copy",
        )


def _download(remote: RemoteFile, dest: Path, progress: Callable[[str, int, int | None], None]) -> str:
    """Fetch `remote` to `dest` through `dest.part`, resuming what an earlier try left; how it went."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with requests.get(remote.url, headers=headers, stream=True, timeout=TIMEOUT) as answer:
            if answer.status_code == 416:  # the part is whole already
                how = "complete"
            else:
                answer.raise_for_status()
                resumed = have > 0 and answer.status_code == 206
                if not resumed:
                    have = 0  # the server sends the whole file: start over
                length = answer.headers.get("Content-Length")
                total = have + int(length) if length and length.isdigit() else None
                with part.open("ab" if resumed else "wb") as out:
                    done = have
                    progress(remote.name, done, total)
                    for chunk in answer.iter_content(NET_CHUNK):
                        out.write(chunk)
                        done += len(chunk)
                        progress(remote.name, done, total)
                how = f"resumed at {have} bytes" if resumed else "downloaded"
    except requests.RequestException as err:
        raise UnreachableError(f"cannot fetch {remote.url}: {err}",
                               hint="check the network; `mlfo data get` again resumes where this one stopped, "
                               "or `mlfo data import` files you have") from None
    part.replace(dest)
    return how


def _unpack(archive: Path, folder: Path) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")


def present(entry: DatasetSource, data_dir: Path) -> bool:
    folder = data_dir / entry.folder
    wanted = entry.expect or [f.name for f in entry.files]
    return all((folder / p).exists() for p in wanted)


@dataclass
class FetchReport:
    name: str
    folder: Path
    files: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.name, "folder": str(self.folder), "files": self.files}


def get(name: str, data_dir: Path, *, extra: Path | None = None,
        progress: Callable[[str, int, int | None], None] = lambda *_: None) -> FetchReport:
    """Download, check and lay out dataset `name` under `data_dir` (files already good are kept)."""
    entry = source(name, extra)
    folder = data_dir / entry.folder
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for remote in entry.files:
        dest = folder / remote.name
        how = "already here"
        if dest.exists():
            try:
                check_file(dest, remote)
            except ChecksumError:
                how = ""  # a bad copy: removed, fetched anew
        if not dest.exists():
            how = _download(remote, dest, progress)
            check_file(dest, remote)
        if entry.unpack:
            _unpack(dest, folder)
        files.append({"file": remote.name, "sha256": remote.sha256, "how": how, "bytes": dest.stat().st_size})
    return FetchReport(name, folder, files)


def import_files(name: str, paths: list[Path], data_dir: Path, *, extra: Path | None = None) -> FetchReport:
    """Copy files the user has into the dataset's folder, each checked first (by its file name)."""
    entry = source(name, extra)
    by_name = {f.name: f for f in entry.files}
    unknown = [p.name for p in paths if p.name not in by_name]
    if unknown:
        raise ValidationError(f"{', '.join(unknown)} is not a file of {name}", field="files",
                              hint=f"its files: {', '.join(by_name)}")
    folder = data_dir / entry.folder
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for path in paths:
        remote = by_name[path.name]
        if not path.is_file():
            raise ValidationError(f"{path} is not a file", field="files")
        staged = folder / (remote.name + ".import")
        shutil.copyfile(path, staged)
        try:
            check_file(staged, remote)
        except ChecksumError as err:
            raise ChecksumError(err.reason.replace(staged.name, str(path)).replace("; the file was removed", "; nothing was copied"),
                                field=remote.name, hint="this is not the published file: fetch it with `mlfo data get`") from None
        staged.replace(folder / remote.name)
        if entry.unpack:
            _unpack(folder / remote.name, folder)
        files.append({"file": remote.name, "sha256": remote.sha256, "how": "imported"})
    return FetchReport(name, folder, files)


def listing(data_dir: Path, extra: Path | None = None) -> list[dict[str, Any]]:
    """Every dataset mlfo knows: whether it is present under `data_dir`, and where."""
    rows = [{"dataset": "handmnist", "present": True, "folder": "(ships with scikit-learn)",
             "description": "scikit-learn's 1,797 8x8 handwritten digits"}]
    for name, entry in sources(extra).items():
        rows.append({"dataset": name, "present": present(entry, data_dir), "folder": str(data_dir / entry.folder),
                     "description": entry.description})
    return rows
