"""Sensor drivers: one module per chip or protocol, each with its simulator in ``drivers.sim``."""
