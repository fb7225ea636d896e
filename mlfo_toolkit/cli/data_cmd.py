"""`mlfo data get|import|list|show`: datasets fetched and checked, and how a cohort's clients split them."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mlfo_toolkit.cli._common import echo_json, json_option, pass_config, print_table

if TYPE_CHECKING:
    from mlfo_toolkit.config import Config


@click.group()
def data() -> None:
    """Datasets in fl.data_dir: fetch them from their source, import files you have, see what is there.

    Every file is checked against the SHA-256 mlfo keeps for it; a file whose checksum is wrong is
    removed and refused (exit code 4, the message names the file and both checksums).
    handmnist ships with scikit-learn and needs nothing.
    """


@data.command("get")
@click.argument("name")
@json_option("Print the files fetched as JSON.")
@pass_config
def get(cfg: Config, name: str, as_json: bool) -> None:
    """Download dataset NAME (fashionmnist, mnist, cifar) into fl.data_dir, checked.

    A download cut short resumes where it stopped when you run the command again.
    """
    from mlfo_toolkit import api

    bars: dict[str, Any] = {}

    def progress(file_name: str, done: int, total: int | None) -> None:
        if as_json:
            return
        if file_name not in bars:
            stderr = sys.stderr
            bar: Any = click.progressbar(length=total or 0, label=file_name, show_pos=total is None, file=stderr)
            bars[file_name] = stack.enter_context(bar)
        bars[file_name].update(done - bars[file_name].pos)

    with contextlib.ExitStack() as stack:
        result = api.data_get(name, cfg, progress=progress)
    if as_json:
        echo_json(result.to_dict())
        return
    report = result.to_dict()
    for row in report["files"]:
        click.echo(f"{row['file']}: {row['how']}, SHA-256 {row['sha256'][:16]}... checked")
    click.echo(f"{name} is in {report['folder']}")


@data.command("import")
@click.argument("name")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option("Print the files imported as JSON.")
@pass_config
def import_(cfg: Config, name: str, files: tuple[Path, ...], as_json: bool) -> None:
    """Lay out FILES you already have as dataset NAME (by their published file names), checked."""
    from mlfo_toolkit import api

    result = api.data_import(name, list(files), cfg)
    if as_json:
        echo_json(result.to_dict())
        return
    click.echo(f"{name}: {len(files)} file(s) checked and laid out in {result.to_dict()['folder']}")


@data.command("list")
@json_option("Print the datasets as JSON.")
@pass_config
def list_(cfg: Config, as_json: bool) -> None:
    """The datasets mlfo can use and whether each is present in fl.data_dir."""
    from mlfo_toolkit import api

    rows = api.data_list(cfg).to_dict()["datasets"]
    if as_json:
        echo_json({"datasets": rows})
        return
    print_table(["dataset", "present", "folder", "description"],
                [(r["dataset"], "yes" if r["present"] else "no", r["folder"], r["description"]) for r in rows])


@data.command("show")
@click.option("--dataset", default="handmnist", show_default=True, help="Dataset to split (handmnist, fashionmnist, mnist, cifar).")
@click.option("--clients", type=click.IntRange(1, 10_000), default=10, show_default=True, help="Clients in the cohort.")
@click.option("--partitioning", type=click.Choice(["iid", "dirichlet", "pathological", "shard", "linear", "square", "exponential"]),
              help="Partitioner (default: fl.partitioning).")
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), help="dirichlet: concentration (0.1 skewed, 100 near IID).")
@click.option("--classes", type=click.IntRange(min=1), help="pathological: classes per client.")
@click.option("--shards", type=click.IntRange(min=1), help="shard: shards per client.")
@click.option("--seed", type=click.IntRange(min=0), help="Partition seed (default: fl.partition_seed, else fl.seed).")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Also draw the distribution to this PNG file.")
@json_option("Print the label counts per client as JSON.")
@pass_config
def show(cfg: Config, dataset: str, clients: int, partitioning: str | None, alpha: float | None, classes: int | None,
         shards: int | None, seed: int | None, plot: Path | None, as_json: bool) -> None:
    """How a cohort's clients would split a dataset: samples of each label per client. Runs nothing.

    \b
    mlfo data show --clients 10 --partitioning dirichlet --alpha 0.1 --plot skew.png
    """
    from mlfo_toolkit import api
    from mlfo_toolkit.fl.partitions import PartitionSpec

    fl = cfg.fl
    spec = PartitionSpec.model_validate({
        "kind": partitioning or fl.partitioning, "alpha": alpha or fl.dirichlet_alpha, "classes": classes or fl.partition_classes,
        "shards": shards or fl.partition_shards, "seed": seed if seed is not None else fl.partition_seed})
    result = api.data_show(dataset, clients, spec, cfg, plot=plot).to_dict()
    if as_json:
        echo_json(result)
        return
    counts = result["label_counts"]
    print_table(["client", "samples", *[str(c) for c in range(len(counts[0]))]],
                [(i, sum(row), *row) for i, row in enumerate(counts)], right=["client", "samples"],
                title=f"{dataset}, {clients} clients, {spec.label()}, seed {result['seed']}")
    if plot is not None:
        click.echo(f"Plot written to {plot}")
