"""The drop audit itself, on made-up arrivals: it passes oldest-first drops that are
counted exactly, and catches uncounted gaps and drops that were not the oldest."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from .fault_harness import RUN, Arrival, Arrived, audit_drops

pytestmark = pytest.mark.faults

INTERVAL = {"a": 1.0, "b": 1.0}


def made_up(batches: dict[int, tuple[list[int], int]]) -> Arrival:
    """seq -> (offsets from RUN carried by both sensors, dropped); reading k of sensor
    "a" is taken at time k, of "b" at k + 0.5."""
    readings = {}
    for seq, (offsets, _) in batches.items():
        for k in offsets:
            readings[("a", RUN + k)] = Arrived(seq, float(k))
            readings[("b", RUN + k)] = Arrived(seq, k + 0.5)
    stubs: list[Any] = [
        SimpleNamespace(seq=seq, dropped=dropped) for seq, (_, dropped) in sorted(batches.items())
    ]
    return Arrival(stubs, readings)


def test_oldest_first_drops_counted_exactly_pass() -> None:
    got = made_up({1: ([0, 1, 2], 0), 2: ([6, 7, 8, 9], 6)})  # 3..5 of both dropped
    audit = audit_drops(got, INTERVAL)
    assert not audit.problems
    assert audit.dropped == len(audit.missing) == 6
    assert [(s, v - RUN) for _, s, v in audit.missing[:2]] == [("a", 3), ("b", 3)]


def test_drops_in_several_batches_pass() -> None:
    got = made_up({1: ([0, 1], 0), 2: ([4, 5], 4), 3: ([7, 8, 9], 2)})  # 2,3 then 6
    assert not audit_drops(got, INTERVAL).problems


def test_a_gap_not_announced_is_found() -> None:
    got = made_up({1: ([0, 1, 2], 0), 2: ([6, 7, 8, 9], 5)})
    (problem,) = audit_drops(got, INTERVAL).problems
    assert "6 readings are missing but the batches announce 5 dropped" in problem


def test_dropping_newer_readings_than_the_ones_kept_is_found() -> None:
    # 6..8 dropped and announced in seq 2, but the older 3..5 arrive later, in seq 3.
    got = made_up({1: ([0, 1, 2], 0), 2: ([9], 6), 3: ([3, 4, 5], 0)})
    (problem,) = audit_drops(got, INTERVAL).problems
    assert "the dropped ones were not the oldest" in problem


def test_each_run_starts_at_its_own_base() -> None:
    got = made_up({1: ([0, 1], 0)})
    got.readings[("a", 2 * RUN + 1)] = Arrived(2, 10.0)  # 2 * RUN itself is missing
    got.batches.append(SimpleNamespace(seq=2, dropped=0))
    (problem,) = audit_drops(got, INTERVAL).problems
    assert "1 readings are missing" in problem
