"""Benchmarks: scripts that print figures and ratios against the targets (``make bench``)."""
