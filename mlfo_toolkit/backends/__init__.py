"""Where cohorts run. A backend is a context manager that starts what it needs (and stops exactly that)
and offers the campus MLFO's address and the config to send cohorts with:

* `LoopbackBackend`: MLFOs, agents and Flower as this process's children on 127.0.0.1 (no root);
* `EmulatedBackend`: the emulated network (Mininet or Containernet), the running one or one brought up;
* `AttachedBackend`: MLFOs someone else runs (`mlfo serve`, a network started earlier), by address.

The demo, `intent send`, experiments and tests all go through this interface (`backends.base.Backend`).
"""
