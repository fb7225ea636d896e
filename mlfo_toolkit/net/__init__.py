"""The emulated network: topologies as data, builders (Mininet), the state file, processes inside hosts."""
