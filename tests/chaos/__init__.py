"""Chaos tests: kills, faults, concurrent runs, full/read-only disks and bad input (``pytest -m chaos``)."""
