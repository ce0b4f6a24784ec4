"""Simulated chips and serial devices that act as the bus, so the real driver code runs."""
