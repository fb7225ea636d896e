"""mlfo: a toolkit to orchestrate federated learning across emulated 5G and edge networks."""

__version__ = "0.1.0"
