"""`mlfo image build`: the Docker image of Containernet hosts, built offline.

No registry is needed: the root file system comes from `debootstrap --variant=minbase` (Debian
bookworm, the Python of this machine's Debian) with the tools a host needs, and is imported with
the Docker SDK. mlfo itself is not copied in: the repository and its virtual environment are
bind-mounted read-only into every container at the same paths. That keeps the image small and
unchanged when mlfo's code changes, and the venv's interpreter (a link to /usr/bin/python3)
finds the image's python3, which is checked to be the same minor version at build time.

The image is tagged with a hash of its recipe, so an unchanged recipe is not rebuilt.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mlfo_toolkit.errors import MissingDependencyError, MlfoError, NeedsRootError, UnreachableError
from mlfo_toolkit.util.progress import Progress, quiet, say

REPOSITORY = "mlfo-node"
SUITE = "bookworm"
# What a host needs: Python for mlfo, iproute2/net-tools/ethtool for Containernet's interface set-up,
# ping and iperf3 for `topo ping`, `mlfo init` and meter checks, procps for ps.
PACKAGES = ("python3", "iproute2", "net-tools", "iputils-ping", "iperf3", "ethtool", "procps")
REQUIRED_TOOLS = ("bash", "ip", "ifconfig", "ethtool", "iperf3", "ping", "python3")


def recipe() -> dict[str, Any]:
    return {"suite": SUITE, "variant": "minbase", "packages": list(PACKAGES), "python": f"{sys.version_info.major}.{sys.version_info.minor}"}


def image_tag() -> str:
    digest = hashlib.sha256(repr(sorted(recipe().items())).encode()).hexdigest()[:12]
    return f"{REPOSITORY}:{digest}"


def docker_client() -> Any:
    """The Docker SDK client; a clear error when the SDK or the engine is missing."""
    try:
        import docker  # the optional `containers` extra (only Containernet and Grafana need it)
    except ImportError:
        raise MissingDependencyError("the Docker SDK for Python is not installed",
                                     hint="pip install 'mlfo-toolkit[containers]' (docker>=7.1)") from None
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as err:  # the SDK raises several kinds when no engine answers
        raise UnreachableError(f"no Docker engine answers: {err}",
                               hint="start it (`sudo dockerd &`, or `sudo make docker`) and check `docker info`") from None
    return client


def find_image(client: Any, tag: str | None = None) -> Any | None:
    import docker  # the optional `containers` extra (only Containernet and Grafana need it)

    try:
        return client.images.get(tag or image_tag())
    except docker.errors.ImageNotFound:
        return None


def build_image(*, force: bool = False, progress: Progress = quiet) -> dict[str, Any]:
    """Build (or find) the node image; returns its tag, id and whether it was built now."""
    if os.geteuid() != 0:
        raise NeedsRootError("building the node image runs debootstrap, which needs root", hint="run it with sudo")
    client = docker_client()
    tag = image_tag()
    existing = find_image(client, tag)
    if existing is not None and not force:
        say(progress, "image", f"{tag} is up to date (built from the same recipe); --force rebuilds it")
        return {"image": tag, "id": existing.id, "built": False}
    debootstrap = shutil.which("debootstrap") or ("/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None)
    if debootstrap is None:
        raise MissingDependencyError("debootstrap is not installed", hint="sudo apt-get install debootstrap (or `sudo make system`)")
    with tempfile.TemporaryDirectory(prefix="mlfo-image-") as folder:
        root = Path(folder) / "rootfs"
        say(progress, "image", f"debootstrap {SUITE} (minbase + {', '.join(PACKAGES)}): about a minute")
        done = subprocess.run([debootstrap, "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise MlfoError(f"debootstrap failed (exit {done.returncode})", hint=(done.stdout + done.stderr)[-800:])
        missing = [tool for tool in REQUIRED_TOOLS if not any((root / d / tool).exists() for d in ("bin", "usr/bin", "sbin", "usr/sbin"))]
        if missing:
            raise MlfoError(f"the image would lack {', '.join(missing)}", hint="check the package list in mlfo_toolkit/net/image.py")
        python = sorted(p.name for p in (root / "usr/bin").glob("python3.*") if p.name[8:].isdigit())
        wanted = f"python{recipe()['python']}"
        if wanted not in python:
            raise MlfoError(f"the image has {', '.join(python) or 'no python3.N'}, but mlfo's venv runs {wanted}",
                            hint="the venv is bind-mounted into the containers, so both must be the same Python")
        tarball = Path(folder) / "rootfs.tar"
        say(progress, "image", "packing the root file system")
        subprocess.run(["tar", "-C", str(root), "-cf", str(tarball), "."], check=True)
        say(progress, "image", f"importing it as {tag}")
        repository, _, version = tag.partition(":")
        with open(tarball, "rb") as data:
            client.api.import_image_from_data(data.read(), repository=repository, tag=version, changes=['CMD ["/bin/bash"]'])
    image = find_image(client, tag)
    if image is None:
        raise MlfoError(f"docker import did not produce {tag}")
    return {"image": tag, "id": image.id, "built": True}


def require_image(client: Any) -> str:
    """The node image's tag, or a clear error saying how to build it."""
    tag = image_tag()
    if find_image(client, tag) is None:
        raise MissingDependencyError(f"the node image {tag} is not built", hint="build it once with `sudo mlfo image build` (about a minute)")
    return tag


def bind_mounts(state_dir: Path) -> list[str]:
    """What every container sees at the host's paths: mlfo's code and venv read-only, the state folder read-write."""
    package = Path(__file__).resolve().parents[2]
    venv = Path(sys.prefix).resolve()
    mounts = {package: "ro", venv: "ro", state_dir.resolve(): "rw"}
    data_dir = Path(os.environ.get("MLFO_FL__DATA_DIR", "data")).resolve()
    if data_dir.exists():
        mounts[data_dir] = "ro"
    return [f"{path}:{path}:{mode}" for path, mode in mounts.items()]
