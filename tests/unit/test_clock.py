"""Is the wall clock trustworthy: the policy, the override, and the kernel's answer."""

from __future__ import annotations

import types

import pytest

from gateway import clock
from gateway.clock import TIME_ERROR, clock_synchronised, kernel_clock_synchronised

ENV = "WSN_GATEWAY_ASSUME_SYNCED"


@pytest.fixture(autouse=True)
def no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)


def kernel_says(monkeypatch: pytest.MonkeyPatch, answer: bool | None) -> None:
    monkeypatch.setattr(clock, "kernel_clock_synchronised", lambda: answer)


@pytest.mark.parametrize("kernel", [True, False, None])
def test_assume_synced_is_always_synced(
    monkeypatch: pytest.MonkeyPatch, kernel: bool | None
) -> None:
    kernel_says(monkeypatch, kernel)
    assert clock_synchronised("assume-synced") is True


@pytest.mark.parametrize("kernel", [False, None])
def test_environment_override_forces_synced(
    monkeypatch: pytest.MonkeyPatch, kernel: bool | None
) -> None:
    kernel_says(monkeypatch, kernel)
    monkeypatch.setenv(ENV, "1")
    assert clock_synchronised("kernel") is True
    assert clock_synchronised() is True


@pytest.mark.parametrize("value", ["0", "", "true", "yes"])
def test_only_one_forces_the_override(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    kernel_says(monkeypatch, False)
    monkeypatch.setenv(ENV, value)
    assert clock_synchronised("kernel") is False


@pytest.mark.parametrize(("kernel", "expected"), [(True, True), (False, False), (None, False)])
def test_kernel_policy_follows_the_kernel_and_unknown_is_unsynced(
    monkeypatch: pytest.MonkeyPatch, kernel: bool | None, expected: bool
) -> None:
    kernel_says(monkeypatch, kernel)
    assert clock_synchronised("kernel") is expected
    assert clock_synchronised() is expected  # "kernel" is the default


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (0, True),  # TIME_OK
        (1, True),  # TIME_INS: leap second pending, still synchronised
        (4, True),  # TIME_WAIT
        (TIME_ERROR, False),
        (-1, None),  # the call failed
    ],
)
def test_kernel_answer_from_adjtimex(
    monkeypatch: pytest.MonkeyPatch, state: int, expected: bool | None
) -> None:
    calls: list[bytes] = []

    def adjtimex(buf: object) -> int:
        calls.append(bytes(buf))  # type: ignore[call-overload]
        return state

    monkeypatch.setattr(clock, "_libc", lambda: types.SimpleNamespace(adjtimex=adjtimex))
    assert kernel_clock_synchronised() is expected
    assert calls and not any(calls[0][:4]), "modes must be 0: read only, never set the clock"


def test_kernel_unknown_without_libc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clock, "_libc", lambda: None)
    assert kernel_clock_synchronised() is None
    monkeypatch.setattr(clock, "_libc", types.SimpleNamespace)  # no adjtimex
    assert kernel_clock_synchronised() is None


def test_real_kernel_gives_an_answer() -> None:
    assert kernel_clock_synchronised() in (True, False, None)
