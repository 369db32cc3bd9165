"""Benchmarks of the course: `python -m bench.<name>` prints measured figures; nothing here asserts
a time."""
