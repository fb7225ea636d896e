"""Entry point of the Flower app bundle: the components live in the installed mlfo_toolkit."""

from mlfo_toolkit.fl.apps import client_app, server_app

__all__ = ["client_app", "server_app"]
