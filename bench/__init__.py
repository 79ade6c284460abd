"""Benchmarks: scripts run with python -m bench.<name>; nothing imports them."""
