"""The benchmark suite (``make bench``): served throughput and latency against the raw model.

See docs/PERFORMANCE.md for the method and the latest results; ``python -m bench.run --help``.
"""
