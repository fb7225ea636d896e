"""Experiments as files: runs, a timeline of events tied to FL rounds, repetitions and sweeps, compared in one report."""
