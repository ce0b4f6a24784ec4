"""Fault injection against the real daemon and broker (a package, so that its conftest
does not take the module name ``conftest`` from tests/conftest.py)."""
