"""Metrics, Prometheus, socket sampling, run records and reports."""
