"""Datasets, partitioning and the NumPy models, without Flower processes."""

import gzip
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydantic
import pytest

from mlfo_toolkit.errors import MissingDependencyError, ValidationError
from mlfo_toolkit.fl import data, models
from mlfo_toolkit.fl.partitions import PartitionSpec, cached_split, label_counts, split
from mlfo_toolkit.fl.strategies import KNOWN_STRATEGIES, canonical_strategy, make_strategy
from tests.helpers import REPO


def test_handmnist_is_real_and_split() -> None:
    digits = data.load_dataset("handmnist")
    assert len(digits.y_train) + len(digits.y_test) == 1797
    assert digits.num_features == 64 and digits.num_classes == 10
    assert digits.x_train.min() >= 0.0 and digits.x_train.max() <= 1.0
    assert set(np.unique(digits.y_test)) == set(range(10))


APART_PROBE = """
import sys
import numpy as np
from mlfo_toolkit.fl import data
apart = data.load_dataset_apart("handmnist")
print("sklearn" in sys.modules, data.load_dataset("handmnist") is apart)
here = data._load_cached("handmnist", "", ())  # loaded in this process, as before
print(all(np.array_equal(getattr(apart, k), getattr(here, k)) for k in ("x_train", "y_train", "x_test", "y_test")),
      apart.num_classes == here.num_classes, apart.x_train.dtype, apart.y_train.dtype)
"""


def test_the_executors_data_is_loaded_apart_the_same_and_without_scikit_learn() -> None:
    """The executor forks every task; scikit-learn (with SciPy, pandas, pyarrow) only loads the data, and kept in the
    executor it made every fork copy 150 MB more of page tables. Loaded in a child, the data is the same."""
    out = subprocess.run([sys.executable, "-c", APART_PROBE], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True", "True", "float64", "int64"]


def test_with_no_room_to_hand_the_data_over_the_executor_loads_it_itself() -> None:
    """A full disk (no temporary folder for the hand-over) costs the executor its leaner forks, not its data."""
    probe = ("import errno, sys\nfrom mlfo_toolkit.fl import data\n"
             "def full(*args, **kwargs):\n    raise OSError(errno.ENOSPC, 'No space left on device')\n"
             "data.tempfile.TemporaryDirectory = full\n"
             "loaded = data.load_dataset_apart('handmnist')\n"
             "print(len(loaded.y_train) + len(loaded.y_test), 'sklearn' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1797", "True"]


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partitions_are_disjoint_and_cover(scheme: str) -> None:
    labels = data.load_dataset("handmnist").y_train
    parts = [data.partition_indices(labels, 5, i, scheme=scheme, alpha=0.3, seed=1) for i in range(5)]
    joined = np.concatenate(parts)
    assert len(joined) == len(labels) and len(np.unique(joined)) == len(labels)
    assert min(len(p) for p in parts) >= 10
    again = data.partition_indices(labels, 5, 2, scheme=scheme, alpha=0.3, seed=1)
    assert np.array_equal(again, parts[2])  # every client computes the same split


def test_dirichlet_is_skewed_iid_is_not() -> None:
    labels = data.load_dataset("handmnist").y_train

    def skew(scheme: str) -> float:
        shares = []
        for i in range(5):
            counts = np.bincount(labels[data.partition_indices(labels, 5, i, scheme=scheme, alpha=0.1)], minlength=10)
            shares.append(counts.max() / counts.sum())
        return float(np.mean(shares))

    assert skew("dirichlet") > 2 * skew("iid")


def test_a_partition_seed_gives_the_same_split_everywhere() -> None:
    """Pinned: flwr-datasets' Dirichlet (alpha 0.1) over the digits' training split, 5 clients, seed 42."""
    labels = data.load_dataset("handmnist").y_train
    spec = PartitionSpec(kind="dirichlet", alpha=0.1)
    counts = label_counts(labels, split(labels, 5, spec, seed=42), 10)
    assert counts == [
        [30, 0, 6, 144, 0, 0, 74, 0, 12, 0],
        [86, 10, 127, 0, 19, 108, 14, 141, 97, 125],
        [0, 1, 8, 1, 110, 36, 44, 0, 0, 3],
        [25, 2, 0, 0, 0, 0, 12, 0, 29, 15],
        [1, 133, 1, 1, 16, 1, 1, 2, 1, 1],
    ]
    assert label_counts(labels, split(labels, 5, spec, seed=43), 10) != counts  # the seed is what decides


@pytest.mark.parametrize("spec", [PartitionSpec(kind="pathological", classes=2), PartitionSpec(kind="shard", shards=2),
                                  PartitionSpec(kind="exponential")])
def test_every_partitioner_covers_the_data_once(spec: PartitionSpec, tmp_path: Path) -> None:
    labels = data.load_dataset("handmnist").y_train
    parts = cached_split(labels, 4, spec, 7, tmp_path)
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined) <= len(labels)
    if spec.kind == "pathological":
        assert all(np.count_nonzero(np.bincount(labels[p], minlength=10)) <= 2 for p in parts)
    if spec.kind == "exponential":
        assert [len(p) for p in parts] == sorted(len(p) for p in parts) and len(parts[3]) > 4 * len(parts[0])
    again = cached_split(labels, 4, spec, 7, tmp_path)  # read back from the cache file
    assert len(list(tmp_path.glob("*.npz"))) == 1 and all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_bad_partition_requests() -> None:
    with pytest.raises(ValidationError, match="outside"):
        data.partition_indices(np.zeros(10, dtype=np.int64), 2, 2)
    with pytest.raises(ValidationError, match="unknown partitioning"):
        data.partition_indices(np.zeros(10, dtype=np.int64), 2, 0, scheme="zipf")
    with pytest.raises(pydantic.ValidationError):
        PartitionSpec(kind="zipf")  # type: ignore[arg-type]


def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _fashion_files(folder: Path) -> None:
    """A Fashion-MNIST folder of 20 training and 10 test images, in the IDX files it ships as."""
    rng = np.random.default_rng(0)
    _idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28)))
    _idx(folder / "train-labels-idx1-ubyte.gz", np.arange(20) % 10)
    _idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (10, 28, 28)))
    _idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(10))


def test_fashionmnist_loader_on_generated_files(tmp_path: Path) -> None:
    with pytest.raises(MissingDependencyError, match="fashionmnist is not in"):
        data.load_dataset("fashionmnist", tmp_path)
    folder = tmp_path / "fashionmnist"
    folder.mkdir()
    _fashion_files(folder)
    fashion = data.load_dataset("fashionmnist", tmp_path)
    assert fashion.x_train.shape == (20, 784) and fashion.x_test.shape == (10, 784)
    assert fashion.x_train.max() <= 1.0 and list(fashion.y_test) == list(range(10))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not idx")
    with pytest.raises(ValidationError, match="not an IDX file"):
        data.load_dataset("fashionmnist", tmp_path)


CHANGED_FILES_PROBE = """
import gzip, struct, sys
import numpy as np
from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.fl import data
folder = sys.argv[1]
first = data.load_dataset_apart("fashionmnist", folder)
labels = folder + "/fashionmnist/train-labels-idx1-ubyte.gz"
array = (np.arange(20) + 1) % 10
open(labels, "wb").write(gzip.compress(struct.pack(">BBBBI", 0, 0, 8, 1, 20) + array.astype(np.uint8).tobytes()))
second = data.load_dataset_apart("fashionmnist", folder)
open(labels, "wb").write(b"not idx")
try:
    data.load_dataset_apart("fashionmnist", folder)
except ValidationError as err:
    print("refused:", "not an IDX file" in str(err))
print(first.y_train[:3].tolist(), second.y_train[:3].tolist(), len(data._kept), "sklearn" in sys.modules)
"""


def test_data_loaded_apart_follows_its_files_and_their_errors(tmp_path: Path) -> None:
    """The executor's copy of a dataset is the one its files hold now (one copy at a time), and a broken file gives
    the error a load in the executor would."""
    folder = tmp_path / "fashionmnist"
    folder.mkdir()
    _fashion_files(folder)
    out = subprocess.run([sys.executable, "-c", CHANGED_FILES_PROBE, str(tmp_path)], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["refused: True", "[0, 1, 2] [1, 2, 3] 1 False"]


def test_cifar_loader_on_generated_files(tmp_path: Path) -> None:
    with pytest.raises(MissingDependencyError, match="CIFAR-10 is not in"):
        data.load_dataset("cifar", tmp_path)
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
    cifar = data.load_dataset("cifar", tmp_path)
    assert cifar.x_train.shape == (20, 3072) and cifar.x_test.shape == (4, 3072)

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("pwned",))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        data.load_dataset("cifar", tmp_path)


@pytest.mark.parametrize("kind", ["simple", "complex"])
def test_training_raises_held_out_accuracy(kind: str) -> None:
    digits = data.load_dataset("handmnist")
    params = models.init_params(kind, digits.num_features, digits.num_classes, seed=0)
    loss_before, before = models.evaluate(params, digits.x_test, digits.y_test)
    trained, _ = models.train(params, digits.x_train, digits.y_train, epochs=5, learning_rate=0.1, batch_size=32)
    loss, after = models.evaluate(trained, digits.x_test, digits.y_test)
    assert before < 0.3 and after > 0.9 and loss < loss_before / 2


def test_gradients_match_finite_differences() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.random((6, 5)), rng.integers(0, 3, 6)
    params = models.init_params("complex", 5, 3, seed=1)
    _, grads = models.loss_and_grads(params, x, y)
    for p, g in zip(params, grads):
        index = tuple(rng.integers(0, s) for s in p.shape)
        old = p[index]
        p[index] = old + 1e-6
        up, _ = models.loss_and_grads(params, x, y)
        p[index] = old - 1e-6
        down, _ = models.loss_and_grads(params, x, y)
        p[index] = old
        assert abs((up - down) / 2e-6 - g[index]) < 1e-5


def test_unknown_model_kind() -> None:
    with pytest.raises(ValidationError, match="unknown model 'mobilenet'"):
        models.init_params("mobilenet", 4, 2)


def test_every_known_strategy_exists_in_flower() -> None:
    for name in KNOWN_STRATEGIES:
        strategy = make_strategy(name, fraction_train=0.5, min_available_nodes=1, client_learning_rate=0.1, proximal_mu=0.1)
        assert type(strategy).__name__ == name
    assert canonical_strategy("fedavg") == "FedAvg"
    with pytest.raises(ValidationError) as err:
        canonical_strategy("FedMagic", "avgalgo")
    assert err.value.field == "avgalgo" and "FedAvg" in (err.value.hint or "")
