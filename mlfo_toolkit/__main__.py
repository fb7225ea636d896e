"""`python -m mlfo_toolkit` runs the same CLI as `mlfo`."""

from mlfo_toolkit.cli.main import main

main()
