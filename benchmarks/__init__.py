"""Benchmarks: synthfs against native and peer tools (``synthfs bench``)."""
