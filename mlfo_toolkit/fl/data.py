"""Datasets of the FL pipelines and how they are partitioned among a cohort's clients."""

from __future__ import annotations

import functools
import gzip
import io
import os
import pickle
import struct
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mlfo_toolkit.errors import MissingDependencyError, ValidationError
from mlfo_toolkit.fl.partitions import KINDS, PartitionSpec, cached_split
from mlfo_toolkit.util.forks import fork_child

# The held-out split is fixed so every client and the server agree on it.
SPLIT_SEED = 0
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Dataset:
    """Flat float features in [0, 1] and integer labels, split into train and held-out test."""

    name: str
    x_train: NDArray[np.float64]
    y_train: NDArray[np.int64]
    x_test: NDArray[np.float64]
    y_test: NDArray[np.int64]
    num_classes: int

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])


def _split(name: str, x: NDArray[Any], y: NDArray[Any], num_classes: int) -> Dataset:
    from sklearn.model_selection import train_test_split  # scikit-learn takes ~0.5 s to import: only to load data

    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return Dataset(name, x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64), num_classes)


def load_handmnist(data_dir: Path) -> Dataset:
    """scikit-learn's 1,797 real 8x8 handwritten digits (ships with the wheel, works offline)."""
    from sklearn.datasets import load_digits  # as above

    digits = load_digits()
    return _split("handmnist", digits.data.astype(np.float64) / 16.0, digits.target, 10)


FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def read_idx(path: Path) -> NDArray[np.uint8]:
    """Read one (optionally gzipped) IDX file of unsigned bytes, as MNIST ships them."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValidationError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValidationError(f"{path} is truncated: header says {dims}, found {data.size} bytes")
    return data.reshape(dims)


def _load_idx(data_dir: Path, name: str) -> Dataset:
    """An MNIST-format dataset from the four IDX files in DATA_DIR/NAME/."""
    folder = data_dir / name
    missing = [f for f in FASHION_FILES.values() if not (folder / f).is_file()]
    if missing:
        raise MissingDependencyError(
            f"{name} is not in {folder} (missing {', '.join(missing)})",
            hint=f"`mlfo data get {name}` downloads and checks it (or `mlfo data import {name} FILE...`), or set fl.data_dir",
        )
    parts = {key: read_idx(folder / file) for key, file in FASHION_FILES.items()}
    x_train = parts["train_images"].reshape(len(parts["train_images"]), -1) / 255.0
    x_test = parts["test_images"].reshape(len(parts["test_images"]), -1) / 255.0
    return Dataset(name, x_train, parts["train_labels"].astype(np.int64), x_test, parts["test_labels"].astype(np.int64), 10)


def load_fashionmnist(data_dir: Path) -> Dataset:
    """Fashion-MNIST from the four IDX files in DATA_DIR/fashionmnist/."""
    return _load_idx(data_dir, "fashionmnist")


def load_mnist(data_dir: Path) -> Dataset:
    """MNIST from the four IDX files in DATA_DIR/mnist/."""
    return _load_idx(data_dir, "mnist")


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches only: plain containers and numpy arrays, nothing callable."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def _read_cifar_batch(path: Path) -> tuple[NDArray[Any], NDArray[Any]]:
    batch = _CifarUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    return data, labels


def load_cifar(data_dir: Path) -> Dataset:
    """CIFAR-10 from the python batches in DATA_DIR/cifar/cifar-10-batches-py/."""
    folder = data_dir / "cifar" / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise MissingDependencyError(
            f"CIFAR-10 is not in {folder} (missing {', '.join(missing)})",
            hint="`mlfo data get cifar` downloads, checks and unpacks it (or `mlfo data import cifar FILE`), "
            "or set fl.data_dir",
        )
    train = [_read_cifar_batch(folder / n) for n in names[:-1]]
    x_test, y_test = _read_cifar_batch(folder / "test_batch")
    x_train = np.concatenate([x for x, _ in train]) / 255.0
    y_train = np.concatenate([y for _, y in train])
    return Dataset("cifar", x_train, y_train, x_test / 255.0, y_test, 10)


LOADERS: dict[str, Callable[[Path], Dataset]] = {
    "handmnist": load_handmnist,
    "fashionmnist": load_fashionmnist,
    "mnist": load_mnist,
    "cifar": load_cifar,
}


# (features, classes) of each dataset, known without loading it (the size of a model's update, for placement).
SHAPES: dict[str, tuple[int, int]] = {"handmnist": (64, 10), "fashionmnist": (784, 10), "mnist": (784, 10), "cifar": (3072, 10)}

BUILT_IN = frozenset({"handmnist"})  # datasets that read no file of fl.data_dir


def load_dataset(name: str, data_dir: Path | str = Path("data")) -> Dataset:
    """Load a dataset by its catalog name, once per process while its files are unchanged.

    The shared executor loads the data once (`load_dataset_apart`); every ClientApp task it forks inherits it.
    """
    key = _key(name, data_dir)
    return _kept.get(key) or _load_cached(*key)


def load_dataset_apart(name: str, data_dir: Path | str = Path("data")) -> Dataset:
    """`load_dataset`, but loaded in a forked child, so that this process never imports scikit-learn (and the SciPy,
    pandas and pyarrow it brings: 150 MB). For the shared executor, which forks every ClientApp task, SuperNode and
    SuperLink: a fork copies the page tables of everything mapped, and without those 150 MB it costs 8.7 ms instead
    of 22.9 ms, and the child's exit 8.5 ms of CPU instead of 14.7. If the child fails, the data is loaded here, so
    that the error (or the data) is the one `load_dataset` gives."""
    key = _key(name, data_dir)
    if key not in _kept and "sklearn" not in sys.modules:
        try:
            with tempfile.TemporaryDirectory(prefix="mlfo-data-") as folder:
                saved = Path(folder) / "dataset.npz"

                def child() -> int:
                    loaded = _load_cached(*key)
                    np.savez(saved, x_train=loaded.x_train, y_train=loaded.y_train, x_test=loaded.x_test,
                             y_test=loaded.y_test, num_classes=np.int64(loaded.num_classes))
                    return 0

                _, status = os.waitpid(fork_child(child), 0)
                if os.waitstatus_to_exitcode(status) == 0:
                    with np.load(saved) as arrays:
                        for earlier in [k for k in _kept if k[:2] == key[:2]]:
                            del _kept[earlier]  # the same dataset before its files changed: one copy at a time
                        _kept[key] = Dataset(name, arrays["x_train"], arrays["y_train"], arrays["x_test"],
                                             arrays["y_test"], int(arrays["num_classes"]))
        except (OSError, ValueError, KeyError):  # no room for the hand-over (a full disk) or a torn file: load it here
            pass
    return _kept.get(key) or _load_cached(*key)  # as load_dataset, without looking at the files again


def _key(name: str, data_dir: Path | str) -> tuple[str, str, tuple[tuple[str, int, int], ...]]:
    """What a loaded dataset is known by: its name, folder and files (the built-in digits: one copy whatever the folder)."""
    if name in BUILT_IN:
        return name, "", ()
    folder = Path(data_dir).resolve()
    return name, str(folder), _fingerprint(folder / name)


_kept: dict[tuple[str, str, tuple[tuple[str, int, int], ...]], Dataset] = {}  # loaded apart (load_dataset_apart)


def _fingerprint(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Name, size and mtime of every file of a dataset's folder (none for the built-in digits)."""
    if not folder.is_dir():
        return ()
    return tuple(sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()))


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, data_dir: str, fingerprint: tuple[tuple[str, int, int], ...]) -> Dataset:
    try:
        loader = LOADERS[name]
    except KeyError:
        raise ValidationError(
            f"unknown dataset '{name}'", field="source", hint=f"known: {', '.join(LOADERS)}"
        ) from None
    return loader(Path(data_dir))


def partition_indices(
    labels: NDArray[np.int64],
    num_partitions: int,
    partition_id: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 42,
    *,
    spec: PartitionSpec | None = None,
    cache_dir: Path | None = None,
) -> NDArray[np.int64]:
    """Indices of partition `partition_id` of `num_partitions`; every caller gets the same split
    (`spec` when given, else `scheme` and `alpha`; see mlfo_toolkit.fl.partitions)."""
    if not 0 <= partition_id < num_partitions:
        raise ValidationError(
            f"partition {partition_id} is outside 0..{num_partitions - 1}", field="part"
        )
    if spec is None:
        if scheme not in KINDS:
            raise ValidationError(f"unknown partitioning '{scheme}'", hint=f"use one of {', '.join(KINDS)}")
        spec = PartitionSpec(kind=scheme, alpha=alpha)
    return cached_split(labels, num_partitions, spec, seed, cache_dir)[partition_id]
