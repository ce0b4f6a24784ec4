"""A synthetic sensor that reports an increasing count: an end-to-end loss check.

Each read returns the next integer. Any gap in the values that reach the cloud
is a reading that was lost, which makes it the gateway's own self-test and the
probe the tests use to prove that nothing is dropped silently.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from drivers.base import Driver, DriverContext, DriverOptions
from gateway.readings import Measurement


class CounterOptions(DriverOptions):
    """Options of the counter sensor."""

    start: int = Field(default=1, description="first value reported")
    quantity: str = Field(default="count", pattern=r"^[A-Za-z0-9_.:-]+$")


class Counter(Driver):
    """Reports start, start+1, ... one value per read."""

    options_model: ClassVar[type[DriverOptions]] = CounterOptions

    def __init__(self, context: DriverContext, options: DriverOptions) -> None:
        super().__init__(context, options)
        assert isinstance(options, CounterOptions)
        self._opts = options
        self._next = options.start

    def read(self) -> list[Measurement]:
        value = self._next
        self._next += 1
        return [Measurement(self._opts.quantity, "count", float(value))]
