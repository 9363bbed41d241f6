"""Benchmarks: run as `python -m bench.<name>`; they print measurements and ratios, they do not pass or fail."""
