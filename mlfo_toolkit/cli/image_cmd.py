"""`mlfo image build`: the Docker image of Containernet hosts, offline."""

from __future__ import annotations

import click

from mlfo_toolkit.cli._common import echo_json, json_option
from mlfo_toolkit.cli._progress import DeployProgress


@click.group()
def image() -> None:
    """The node image Containernet hosts run (`topo up --backend containernet`)."""


@image.command()
@click.option("--force", is_flag=True, help="Rebuild even if an image of the same recipe exists.")
@json_option('Print {"image", "id", "built"}.')
def build(force: bool, as_json: bool) -> None:
    """Build the node image offline (root): debootstrap bookworm minbase with python3, iproute2,
    net-tools, iputils-ping, iperf3, ethtool and procps, imported with the Docker SDK.

    mlfo is not copied in: its folder and virtual environment are bind-mounted read-only into
    every container. The tag is a hash of the recipe (mlfo-node:HASH), so an unchanged recipe
    is not rebuilt. Exit code 9 names what is missing (debootstrap, the Docker SDK), 5 if no
    Docker engine answers.
    """
    from mlfo_toolkit import api

    result = api.image_build(force=force, progress=DeployProgress(enabled=not as_json))
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(f"{result.image} ({'built' if result.built else 'already built'}, {result.id[:19]})")
