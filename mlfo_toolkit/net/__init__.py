"""The emulated network: topologies as data, builders (Mininet, Containernet), the state file, processes inside hosts."""

# The builders `topo up --backend` knows (kept here, import-free, for the CLI's --help).
BACKENDS = ("mininet", "containernet")
