"""Benchmarks of wsn-gateway, each measured against a naive baseline in the same run.

Run them all with ``python -m bench`` (``--quick`` for a short run, ``--help`` for
more). They are not tests: pytest never collects this package (its files are named
``bench_*.py``, and pytest's ``testpaths`` is ``tests``).
"""
