"""Fixtures of the fault-injection suite: a rig of broker, PKI and state directory.

The real-process harness lives in ``tests/integration/daemon_harness.py``; it is put
on ``sys.path`` here so that the fault scenarios import it rather than copy it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from .fault_harness import FaultRig

if TYPE_CHECKING:
    from conftest import Mosquitto, PkiBundle


@pytest.fixture
def make_rig(
    mosquitto_factory: Callable[..., Mosquitto],
    pki: PkiBundle,
    tmp_path: Path,
) -> Iterator[Callable[..., FaultRig]]:
    """Factory: ``make_rig(**broker_options)`` -> a FaultRig on a freshly started broker.

    Teardown kills every daemon still running, wakes a broker left SIGSTOPped (so that
    its own teardown can stop it) and unmounts what the test mounted.
    """
    rigs: list[FaultRig] = []

    def make(**broker_options: Any) -> FaultRig:
        broker = mosquitto_factory(**broker_options)
        rig = FaultRig(broker, pki, tmp_path / f"rig{len(rigs) + 1}")
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.cleanup()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The suite's ledger: for every scenario, readings taken, delivered (after
    deduplication), duplicates removed, dropped and reported, and lost (must be 0)."""
    from .fault_harness import LEDGER  # noqa: PLC0415 - only once the suite has run

    if not LEDGER:
        return
    columns = ["taken", "delivered", "duplicates removed", "dropped and reported", "lost"]
    terminalreporter.section("fault suite ledger")
    terminalreporter.write_line(f"{'scenario':<70} " + " ".join(f"{c:>12}" for c in columns))
    for test, counts in sorted(LEDGER.items()):
        if "taken" not in counts or "test_audit.py" in test:
            continue  # the audit's own tests feed it made-up data on purpose
        name = test.split("::", 1)[-1][:70]
        cells = " ".join(f"{counts.get(c, 0):>12,}" for c in columns)
        terminalreporter.write_line(f"{name:<70} {cells}")
