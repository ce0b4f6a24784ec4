"""GPIO: the status LED and the sensors' power-enable pins.

RPi.GPIO where it imports (the ``rpi-lgpio`` package provides the same module on
a Pi 5, where RPi.GPIO itself cannot find the SoC), a simulated pin bank
elsewhere, chosen by ``gpio.backend``. Pins use BCM numbering.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from gateway.errors import GatewayError

log = logging.getLogger(__name__)


class GpioError(GatewayError, OSError):
    """The GPIO backend cannot be used."""


class Pins(Protocol):
    """Output pins, as the daemon uses them."""

    def setup_output(self, pin: int, value: bool) -> None: ...

    def write(self, pin: int, value: bool) -> None: ...

    def close(self) -> None: ...


class SimPins:
    """A simulated pin bank that records every level it is given, for tests and demos."""

    def __init__(self) -> None:
        self.levels: dict[int, bool] = {}
        self.history: list[tuple[float, int, bool]] = []

    def setup_output(self, pin: int, value: bool) -> None:
        self.write(pin, value)

    def write(self, pin: int, value: bool) -> None:
        if self.levels.get(pin) is not value:
            self.history.append((time.monotonic(), pin, value))
        self.levels[pin] = value

    def close(self) -> None:
        """Nothing to release."""


class RPiPins:
    """RPi.GPIO (or rpi-lgpio's drop-in module) in BCM numbering."""

    def __init__(self) -> None:
        try:
            import RPi.GPIO as gpio  # noqa: PLC0415 - only on a Pi
        except ImportError as err:
            raise GpioError(
                "RPi.GPIO is not installed: pip install 'wsn-gateway[gpio]' "
                "(on a Pi 5: pip install rpi-lgpio)"
            ) from err
        except RuntimeError as err:  # "Cannot determine SOC peripheral base address"
            raise GpioError(
                f"RPi.GPIO cannot drive this board ({err}); on a Pi 5 replace it with "
                "rpi-lgpio: pip uninstall RPi.GPIO && pip install rpi-lgpio"
            ) from err
        self._gpio: Any = gpio
        self._used: set[int] = set()
        gpio.setwarnings(False)
        gpio.setmode(gpio.BCM)

    def setup_output(self, pin: int, value: bool) -> None:
        g = self._gpio
        try:
            g.setup(pin, g.OUT, initial=g.HIGH if value else g.LOW)
        except RuntimeError as err:
            raise GpioError(f"GPIO {pin}: {err}; the service user needs the gpio group") from err
        self._used.add(pin)

    def write(self, pin: int, value: bool) -> None:
        self._gpio.output(pin, self._gpio.HIGH if value else self._gpio.LOW)

    def close(self) -> None:
        if self._used:
            self._gpio.cleanup(sorted(self._used))
            self._used.clear()


def open_pins(backend: str) -> Pins:
    """The pin bank for ``gpio.backend``: "rpi", "sim", or "auto" (RPi.GPIO if usable)."""
    if backend == "sim":
        return SimPins()
    try:
        return RPiPins()
    except GpioError as err:
        if backend == "rpi":
            raise
        log.info("no usable RPi.GPIO: pins are simulated", extra={"reason": str(err)})
        return SimPins()


class LedState(enum.Enum):
    """What the status LED shows."""

    ONLINE = "online"  # steady on
    OFFLINE = "offline"  # slow blink: buffering while the uplink is down
    ERROR = "error"  # fast blink: a failed sensor, or the broker refuses us


#: (on seconds, off seconds) per state; off 0 means steady.
LED_PATTERNS: dict[LedState, tuple[float, float]] = {
    LedState.ONLINE: (1.0, 0.0),
    LedState.OFFLINE: (0.5, 0.5),
    LedState.ERROR: (0.1, 0.1),
}


async def drive_status_led(
    pins: Pins, pin: int, *, active_low: bool, state: Callable[[], LedState]
) -> None:
    """Blink ``pin`` in the pattern of ``state()`` until cancelled; off at the end."""
    on, off = (not active_low), active_low
    pins.setup_output(pin, off)
    try:
        while True:
            lit, dark = LED_PATTERNS[state()]
            pins.write(pin, on)
            await asyncio.sleep(lit)
            if dark:
                pins.write(pin, off)
                await asyncio.sleep(dark)
    finally:
        pins.write(pin, off)


async def power_cycle(pins: Pins, pin: int, off_seconds: float) -> None:
    """Switch a sensor's supply off for ``off_seconds`` and on again."""
    pins.write(pin, False)
    await asyncio.sleep(off_seconds)
    pins.write(pin, True)
