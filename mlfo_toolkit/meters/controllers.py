"""Which OpenFlow controller a network's switches connect to, made ready before the network is built."""

from __future__ import annotations

from mlfo_toolkit.config import Config
from mlfo_toolkit.errors import ValidationError
from mlfo_toolkit.meters.onos import OnosClient
from mlfo_toolkit.util.progress import Progress, quiet, say


def resolve_controller(config: Config, controller: str | None, progress: Progress = quiet) -> str | None:
    """`onos`: activate onos.apps over REST and return onos.openflow; HOST:PORT as given; None: no controller."""
    if controller is None:
        return None
    if controller == "onos":
        client = OnosClient(config.onos)
        for app in config.onos.apps:
            client.activate(app)
            say(progress, "topo", f"ONOS app {app} active")
        return config.onos.openflow
    host, sep, port = controller.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValidationError(f"'{controller}' is not HOST:PORT or 'onos'", field="controller")
    return controller
