"""The can-tf benchmark suite; run it with ``python -m benchmarks.run`` (see benchmarks/README.md)."""
