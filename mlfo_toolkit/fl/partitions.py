"""How a cohort's clients split a dataset: mlfo's IID split, or flwr-datasets' partitioners.

The default, `iid`, is mlfo's own (a seeded shuffle cut into equal parts) and needs nothing more.
The others are flwr-datasets' (the field's standard, so results compare with published work), run
on in-memory labels with no hub download (`pip install 'mlfo-toolkit[partitions]'`):

* `dirichlet` (alpha): per class, shares drawn from Dir(alpha); small alpha, few classes per client;
* `pathological` (classes): each client holds `classes` classes;
* `shard` (shards): sorted by label, cut in shards, `shards` shards per client;
* `linear`, `square`, `exponential`: IID labels, client sizes growing as the id, its square or 2^id.

The split depends only on the labels, the partitioner, its parameters and the partition seed (apart
from the model seed): the same on every machine with the same flwr-datasets. A split is computed once
per machine and kept in DATA_DIR/.partitions/ (flwr-datasets takes ~2 s to import; every client of a
cohort then reads the file), under a lock so that ten clients starting at once compute it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from mlfo_toolkit.config import FlSettings
from mlfo_toolkit.errors import MissingDependencyError, ValidationError

Kind = Literal["iid", "dirichlet", "pathological", "shard", "linear", "square", "exponential"]
KINDS: tuple[str, ...] = ("iid", "dirichlet", "pathological", "shard", "linear", "square", "exponential")


class PartitionSpec(BaseModel):
    """A partitioner and its parameters (a cohort's `partition:`, or fl.partitioning and its fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind = "iid"
    alpha: float = Field(0.5, gt=0, le=1000, description="dirichlet: concentration (0.1 very skewed, 100 near IID)")
    classes: int = Field(2, ge=1, le=1000, description="pathological: classes per client")
    shards: int = Field(2, ge=1, le=1000, description="shard: shards per client")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="partition seed; unset: the run's seed")

    def label(self) -> str:
        extra = {"dirichlet": f" alpha={self.alpha:g}", "pathological": f" classes={self.classes}",
                 "shard": f" shards={self.shards}"}.get(self.kind, "")
        return f"{self.kind}{extra}"

    @classmethod
    def configured(cls, fl: FlSettings, kind: str | None = None) -> PartitionSpec:
        """The agents' default split (fl.partitioning and its fields); `kind` replaces the partitioner."""
        return cls.model_validate({"kind": kind or fl.partitioning, "alpha": fl.dirichlet_alpha, "classes": fl.partition_classes,
                                   "shards": fl.partition_shards, "seed": fl.partition_seed})

    def slug(self) -> str:
        """The partitioner as part of a folder name: iid, dirichlet0.1, pathological2, shard2."""
        return self.kind + {"dirichlet": f"{self.alpha:g}", "pathological": str(self.classes),
                            "shard": str(self.shards)}.get(self.kind, "")

    def node_config(self, seed: int) -> str:
        """The SuperNode's node-config entries for this split (read back by `from_node_config`)."""
        return (f'partitioning="{self.kind}" alpha={self.alpha} partition-classes={self.classes} '
                f"partition-shards={self.shards} partition-seed={self.seed if self.seed is not None else seed}")

    @classmethod
    def from_node_config(cls, node: Any) -> tuple[PartitionSpec, int]:
        seed = int(node.get("partition-seed", node.get("seed", 42)))
        spec = cls(kind=str(node.get("partitioning", "iid")), alpha=float(node.get("alpha", 0.5)),
                   classes=int(node.get("partition-classes", 2)), shards=int(node.get("partition-shards", 2)))
        return spec, seed


def _iid(num_labels: int, num_partitions: int, seed: int) -> list[NDArray[np.int64]]:
    order = np.random.default_rng(seed).permutation(num_labels)
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, num_partitions)]


def _flwr(labels: NDArray[np.int64], num_partitions: int, spec: PartitionSpec, seed: int) -> list[NDArray[np.int64]]:
    try:
        from datasets import Dataset
        from flwr_datasets import partitioner as fp
    except ImportError:
        raise MissingDependencyError(
            f"the '{spec.kind}' partitioner is flwr-datasets'", hint="pip install 'mlfo-toolkit[partitions]' (or use iid)"
        ) from None
    common: dict[str, Any] = {"num_partitions": num_partitions}
    made: Any
    if spec.kind == "dirichlet":
        made = fp.DirichletPartitioner(**common, partition_by="label", alpha=spec.alpha, seed=seed,
                                       min_partition_size=min(10, len(labels) // (2 * num_partitions) or 1))
    elif spec.kind == "pathological":
        made = fp.PathologicalPartitioner(**common, partition_by="label", num_classes_per_partition=spec.classes, seed=seed)
    elif spec.kind == "shard":
        made = fp.ShardPartitioner(**common, partition_by="label", num_shards_per_partition=spec.shards, seed=seed)
    else:
        made = {"linear": fp.LinearPartitioner, "square": fp.SquarePartitioner,
                "exponential": fp.ExponentialPartitioner}[spec.kind](**common)
    rows = np.random.default_rng(seed).permutation(len(labels)) if spec.kind in ("linear", "square", "exponential") \
        else np.arange(len(labels))  # size partitioners cut in order: shuffle first, with the partition seed
    made.dataset = Dataset.from_dict({"label": labels[rows].tolist(), "row": rows.tolist()})
    try:
        return [np.sort(np.asarray(made.load_partition(i)["row"], dtype=np.int64)) for i in range(num_partitions)]
    except ValueError as err:  # e.g. more classes per client than the dataset has
        raise ValidationError(f"flwr-datasets cannot split {len(labels)} samples this way: {err}", field="partition") from None


def split(labels: NDArray[np.int64], num_partitions: int, spec: PartitionSpec, seed: int) -> list[NDArray[np.int64]]:
    """Every client's indices into `labels`."""
    if num_partitions < 1:
        raise ValidationError("a cohort needs at least one client", field="cohsize")
    if spec.kind == "iid":
        return _iid(len(labels), num_partitions, seed)
    return _flwr(labels, num_partitions, spec, seed)


def cached_split(labels: NDArray[np.int64], num_partitions: int, spec: PartitionSpec, seed: int,
                 cache_dir: Path | None) -> list[NDArray[np.int64]]:
    """`split`, computed once per machine and kept in `cache_dir` (none: not kept)."""
    if spec.kind == "iid" or cache_dir is None:
        return split(labels, num_partitions, spec, seed)
    key = hashlib.sha256(json.dumps([spec.model_dump(exclude={"seed"}), seed, num_partitions]).encode()
                         + labels.astype(np.int64).tobytes()).hexdigest()[:24]
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{key}.npz"
    with open(cache_dir / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one computes, the others wait and read
        if path.exists():
            with np.load(path) as saved:
                return [saved[f"arr_{i}"] for i in range(num_partitions)]
        parts = split(labels, num_partitions, spec, seed)
        temporary = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(temporary, *parts)
        temporary.replace(path)
        return parts


def label_counts(labels: NDArray[np.int64], parts: list[NDArray[np.int64]], num_classes: int) -> list[list[int]]:
    """Samples of each class per client."""
    return [np.bincount(labels[p], minlength=num_classes).astype(int).tolist() for p in parts]
