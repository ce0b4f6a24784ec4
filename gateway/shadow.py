"""Remote configuration through the AWS IoT device shadow (docs/shadow.md).

The shadow's ``desired`` state may change a few settings while everything runs: a
sensor's poll ``interval``, the batch limits and the log level. This module holds

- the pure part: :func:`evaluate` checks a desired document against the file's
  settings with the configuration's own pydantic models (one set of rules), and
  returns the settings in effect, what was applied and what was refused and why;
  :func:`reported_view` and :func:`report_patch` make the ``reported`` document;
- :class:`RemoteConfig`: the desired document as last applied and its version, kept
  across reloads in memory and across restarts in ``state_dir/shadow.json``;
- :class:`ShadowAgent`: the shadow protocol (get on every connect, get/accepted,
  update/delta, update/accepted, rejections, the report). It does no MQTT itself: it
  sends through a callable and receives what the publisher's listener hands it, so it
  runs on the publisher's connection (AWS IoT allows one connection per client id).

Shadow documents follow JSON merge patch (RFC 7396): a ``null`` deletes a key. A
desired key deleted (or set to null) goes back to the file's value.
"""

from __future__ import annotations

import asyncio
import difflib
import itertools
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from gateway.config import SensorSettings, Settings, _explain, _format_loc, _show
from gateway.errors import PublishError
from gateway.files import write_atomically

log = logging.getLogger(__name__)

#: What the desired state may change, by section; sensors take SENSOR_KEYS per sensor.
REMOTE_KEYS: dict[str, tuple[str, ...]] = {
    "batch": ("max_records", "max_bytes", "max_age"),
    "logging": ("level",),
}
SENSOR_KEYS: tuple[str, ...] = ("interval",)
#: The top-level keys of the desired state, and of the reported state the gateway owns.
DESIRED_SECTIONS: tuple[str, ...] = ("sensors", *REMOTE_KEYS)
REPORTED_SECTIONS: tuple[str, ...] = (*DESIRED_SECTIONS, "refused")
#: The file in state_dir that keeps the last applied desired state across restarts.
STATE_FILE = "shadow.json"
STATE_FORMAT = 1
#: Seconds to wait for the answer to a get before saying (once) that none came.
ANSWER_TIMEOUT = 5.0
#: Shadow responses subscribed to, and requests published, below the shadow's prefix.
RESPONSES: tuple[str, ...] = (
    "get/accepted",
    "get/rejected",
    "update/accepted",
    "update/rejected",
    "update/delta",
)
REQUESTS: tuple[str, ...] = ("get", "update")

Json = Any
M = TypeVar("M", bound=BaseModel)


# --------------------------------------------------------------------------- topics


@dataclass(frozen=True)
class ShadowTopics:
    """The MQTT topics of one shadow: ``$aws/things/<thing>/shadow`` (classic) or
    ``$aws/things/<thing>/shadow/name/<name>`` (named), then get, update, ..."""

    prefix: str

    @classmethod
    def of(cls, thing: str, name: str | None = None) -> ShadowTopics:
        base = f"$aws/things/{thing}/shadow"
        return cls(base if name is None else f"{base}/name/{name}")

    def topic(self, suffix: str) -> str:
        return f"{self.prefix}/{suffix}"

    @property
    def get(self) -> str:
        return self.topic("get")

    @property
    def update(self) -> str:
        return self.topic("update")

    @property
    def get_accepted(self) -> str:
        return self.topic("get/accepted")

    @property
    def get_rejected(self) -> str:
        return self.topic("get/rejected")

    @property
    def update_accepted(self) -> str:
        return self.topic("update/accepted")

    @property
    def update_rejected(self) -> str:
        return self.topic("update/rejected")

    @property
    def update_delta(self) -> str:
        return self.topic("update/delta")

    @property
    def responses(self) -> tuple[str, ...]:
        """Topics to subscribe to (iot:Subscribe and iot:Receive)."""
        return tuple(self.topic(suffix) for suffix in RESPONSES)

    @property
    def requests(self) -> tuple[str, ...]:
        """Topics published on (iot:Publish)."""
        return tuple(self.topic(suffix) for suffix in REQUESTS)


def state_path(settings: Settings) -> Path:
    """Where the last applied desired state is kept."""
    return settings.state_dir / STATE_FILE


# --------------------------------------------------------------------------- JSON merge patch


def merge_patch(target: Json, patch: Json) -> Json:
    """RFC 7396: ``patch`` applied to ``target`` (neither is changed; nulls delete)."""
    if not isinstance(patch, Mapping):
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def prune(document: Mapping[str, Json]) -> dict[str, Json]:
    """``document`` without the objects that deletions left empty."""
    out: dict[str, Json] = {}
    for key, value in document.items():
        kept = prune(value) if isinstance(value, Mapping) else value
        if kept != {}:
            out[key] = kept
    return out


def diff_patch(old: Mapping[str, Json], new: Mapping[str, Json]) -> dict[str, Json]:
    """The merge patch that turns ``old`` into ``new`` (empty when they are equal)."""
    patch: dict[str, Json] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = diff_patch(before, value)
            if sub:
                patch[key] = sub
        elif key not in old or not _same(before, value):
            patch[key] = value
    return patch


def _same(a: Json, b: Json) -> bool:
    """Equal as JSON values: 30 and 30.0 are, true and 1 are not."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _plain(value: Json) -> Json:
    """A whole float as an int (30.0 -> 30), as a person writes it in a desired state."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# --------------------------------------------------------------------------- evaluation


class _Refused(ValueError):
    """A remote value the configuration's rules do not accept; the text says why."""


@dataclass(frozen=True)
class Evaluation:
    """A desired state checked against the file's settings."""

    settings: Settings  # the file's settings with every accepted remote value in place
    applied: dict[str, Json]  # "batch.max_age" -> the value in effect, per accepted key
    refused: dict[str, str]  # "sensors.fan.interval" -> why not


def _revalidate(current: M, changes: Mapping[str, Any]) -> M:
    """``current`` with ``changes``, validated again by its own model (the YAML's rules:
    field constraints, validators, booleans refused as numbers). Nested models that are
    not changed pass as they are."""
    model = type(current)
    data = {name: getattr(current, name) for name in type(current).model_fields}
    data.update(changes)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problems = _explain(err.errors(include_url=False), model)
        own = [
            (f"{_format_loc(loc[1:])}: {message}" if len(loc) > 1 else message)
            for loc, message in problems
            if loc[:1] and loc[0] in changes
        ]
        other = [f"{_format_loc(loc)}: {message}" if loc else message for loc, message in problems]
        raise _Refused("; ".join(own or other)) from None


def _unknown(
    key: str, accepted: tuple[str, ...], what: str = "key", listed: str = "accepted"
) -> str:
    close = difflib.get_close_matches(key, accepted, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {key!r} ({listed}: {', '.join(accepted)}){hint}"


def _not_remote(key: str, model: type[BaseModel], accepted: tuple[str, ...]) -> str:
    if key in model.model_fields and key != "source":
        return (
            f"cannot be changed remotely (only {', '.join(accepted)}); "
            "change it in the configuration file"
        )
    return _unknown(key, accepted)


class _Evaluator:
    def __init__(self, base: Settings) -> None:
        self.settings = base
        self.applied: dict[str, Json] = {}
        self.refused: dict[str, str] = {}

    def run(self, desired: Json) -> Evaluation:
        if not isinstance(desired, Mapping):
            self.refused["desired"] = f"must be a mapping of keys (got {_show(desired)})"
        else:
            for key, value in desired.items():
                if value is None:
                    continue
                if key == "sensors":
                    self._sensors(value)
                elif key in REMOTE_KEYS:
                    self._section(key, value)
                else:
                    self.refused[str(key)] = _not_remote(str(key), Settings, DESIRED_SECTIONS)
        return Evaluation(self.settings, self.applied, self.refused)

    def _sensors(self, value: Json) -> None:
        if not isinstance(value, Mapping):
            self.refused["sensors"] = (
                f"must be a mapping of sensor names to settings (got {_show(value)})"
            )
            return
        names = tuple(sensor.name for sensor in self.settings.sensors)
        for name, changes in value.items():
            path = f"sensors.{name}"
            if changes is None:
                continue
            if name not in names:
                self.refused[path] = _unknown(str(name), names, "sensor", "configured")
            elif not isinstance(changes, Mapping):
                self.refused[path] = f"must be a mapping of keys (got {_show(changes)})"
            else:
                index = names.index(name)
                for key, setting in changes.items():
                    if setting is None:
                        continue
                    if key not in SENSOR_KEYS:
                        self.refused[f"{path}.{key}"] = _not_remote(
                            str(key), SensorSettings, SENSOR_KEYS
                        )
                        continue
                    self._set(f"{path}.{key}", key, setting, sensor=index)

    def _section(self, section: str, value: Json) -> None:
        if not isinstance(value, Mapping):
            self.refused[section] = f"must be a mapping of keys (got {_show(value)})"
            return
        accepted = REMOTE_KEYS[section]
        model = type(getattr(self.settings, section))
        for key, setting in value.items():
            if setting is None:
                continue
            if key not in accepted:
                self.refused[f"{section}.{key}"] = _not_remote(str(key), model, accepted)
                continue
            self._set(f"{section}.{key}", key, setting, section=section)

    def _set(
        self,
        path: str,
        key: str,
        value: Json,
        *,
        section: str | None = None,
        sensor: int | None = None,
    ) -> None:
        """Check one value in its section, then the whole settings (cross-section rules);
        keep it when both pass, refuse it with the reason otherwise."""
        s = self.settings
        try:
            if sensor is not None:
                changed = _revalidate(s.sensors[sensor], {key: value})
                sensors = list(s.sensors)
                sensors[sensor] = changed
                updated = _revalidate(s, {"sensors": sensors})
            else:
                assert section is not None
                changed = _revalidate(getattr(s, section), {key: value})
                updated = _revalidate(s, {section: changed})
        except _Refused as err:
            self.refused[path] = str(err)
            return
        self.settings = updated
        self.applied[path] = _plain(getattr(changed, key))


def evaluate(desired: Json, base: Settings) -> Evaluation:
    """Check a desired state against ``base`` (the file's settings). Every value is
    checked on its own: the good ones apply, the others are refused with the reason, so
    that one bad key never blocks the rest."""
    return _Evaluator(base).run(desired)


def effective_values(settings: Settings) -> dict[str, Json]:
    """What is in effect of the remotely changeable keys, as a shadow document."""
    return {
        "sensors": {s.name: {"interval": _plain(s.interval)} for s in settings.sensors},
        "batch": {key: _plain(getattr(settings.batch, key)) for key in REMOTE_KEYS["batch"]},
        "logging": {"level": settings.logging.level},
    }


def reported_view(evaluation: Evaluation) -> dict[str, Json]:
    """The reported state the gateway wants the shadow to hold: the values in effect,
    and under ``refused`` what was refused and why."""
    view = effective_values(evaluation.settings)
    if evaluation.refused:
        view["refused"] = dict(evaluation.refused)
    return view


def report_patch(wanted: Mapping[str, Json], known: Mapping[str, Json] | None) -> Json:
    """What to send as ``reported`` so that the shadow holds ``wanted``: the whole of it
    when what the shadow holds is not known, else only the differences (with nulls for
    what went away: a refusal that was fixed, a sensor no longer configured). None when
    the shadow already holds it."""
    if known is None:
        return dict(wanted)
    return diff_patch(known, wanted) or None


def flatten(document: Mapping[str, Json], prefix: str = "") -> dict[str, Json]:
    """``{"batch": {"max_age": 5}}`` -> ``{"batch.max_age": 5}``."""
    flat: dict[str, Json] = {}
    for key, value in document.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def changes_between(old: Settings, new: Settings) -> dict[str, dict[str, Json]]:
    """``{"sensors.fan.interval": {"from": 10, "to": 30}}`` for every remote key that
    differs between two settings."""
    before = flatten(effective_values(old))
    after = flatten(effective_values(new))
    return {
        path: {"from": before.get(path), "to": value}
        for path, value in after.items()
        if not _same(before.get(path), value)
    }


def _managed(reported: Json) -> dict[str, Json]:
    """The part of a reported state that belongs to the gateway."""
    if not isinstance(reported, Mapping):
        return {}
    return {key: reported[key] for key in REPORTED_SECTIONS if key in reported}


def _version(document: Mapping[str, Json]) -> int | None:
    version = document.get("version")
    if isinstance(version, int) and not isinstance(version, bool):
        return version
    return None


# --------------------------------------------------------------------------- state


def write_json_atomically(path: Path, data: Mapping[str, Json]) -> None:
    """Write ``data`` as JSON to ``path``, whole or not at all (a power cut leaves the
    old file or the new one)."""
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    write_atomically(path, text.encode("utf-8"))


class RemoteConfig:
    """The shadow's desired state as last applied and its version (kept in memory across
    reloads, and in ``state_dir/shadow.json`` across restarts), what the shadow reports
    as far as the gateway knows, and which one-time log lines were written.

    Versions: a document older than the last applied one is ignored, except the answer
    to this connection's own get, which is the shadow as it is now (a shadow deleted and
    created again starts its versions anew).
    """

    def __init__(self, path: Path, topics: ShadowTopics) -> None:
        self.path = path
        self.topics = topics
        self.desired: dict[str, Json] = {}
        self.version: int | None = None
        #: The shadow's reported state (the gateway's keys), None when not known.
        self.known: dict[str, Json] | None = None
        #: The desired state or its version changed since the file was written.
        self.dirty = False
        #: Keys of the log lines written once per process.
        self.said: set[str] = set()
        #: When the desired state last changed (UNIX seconds), kept in the file too.
        #: For ``status``.
        self.applied_time: float | None = None
        self._floor: int | None = None  # the version applied on this connection

    @classmethod
    def load(cls, path: Path, topics: ShadowTopics) -> RemoteConfig:
        """The state kept in ``path``; empty when there is none (or it is unreadable,
        or it belongs to another shadow: both are logged)."""
        remote = cls(path, topics)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return remote
        except (OSError, ValueError) as err:
            log.warning(
                "shadow: cannot read the saved remote settings; starting without them",
                extra={"path": str(path), "error": str(err)},
            )
            return remote
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            log.warning(
                "shadow: the saved remote settings are not in a known format; "
                "starting without them",
                extra={"path": str(path)},
            )
            return remote
        if data.get("shadow") != topics.prefix:
            log.info(
                "shadow: the saved remote settings belong to another shadow; not applied",
                extra={"path": str(path), "saved": data.get("shadow"), "shadow": topics.prefix},
            )
            return remote
        desired = data.get("desired")
        remote.desired = merge_patch({}, desired) if isinstance(desired, Mapping) else {}
        remote.version = _version(data)
        changed = data.get("changed", data.get("saved"))  # "saved": an older file
        if isinstance(changed, int | float) and not isinstance(changed, bool):
            remote.applied_time = float(changed)
        return remote

    def snapshot(self, evaluation: Evaluation) -> dict[str, Json]:
        """What :meth:`load` reads back (``applied`` and ``refused`` are for people)."""
        return {
            "format": STATE_FORMAT,
            "shadow": self.topics.prefix,
            "version": self.version,
            "desired": self.desired,
            "applied": evaluation.applied,
            "refused": evaluation.refused,
            "changed": None if self.applied_time is None else round(self.applied_time, 3),
            "saved": round(time.time(), 3),
        }

    def begin_session(self) -> None:
        """A new connection: its get will answer with the shadow as it is."""
        self._floor = None
        self.known = None

    def forget_version(self) -> None:
        """There is no shadow (get answered 404): any version that comes is new."""
        if self.version is not None:
            self.version = None
            self.dirty = True
        self._floor = None

    def _accepts(self, version: int | None, *, whole: bool) -> bool:
        if version is None:
            return True
        if self._floor is not None:
            return version >= self._floor
        if whole:  # the answer to this connection's get: the shadow as it is now
            if self.version is not None and version < self.version:
                log.info(
                    "shadow: the shadow's version went back; it was deleted and made again",
                    extra={"was": self.version, "now": version},
                )
            return True
        return self.version is None or version >= self.version

    def _settle(self, desired: dict[str, Json], version: int | None) -> None:
        desired = prune(desired)
        if desired != self.desired:
            self.applied_time = time.time()
        if desired != self.desired or (version is not None and version != self.version):
            self.dirty = True
        self.desired = desired
        if version is not None:
            self.version = version
            self._floor = version

    def take_document(self, desired: Json, version: int | None) -> bool:
        """The whole desired state (get/accepted); False when ignored as older."""
        if not self._accepts(version, whole=True):
            return False
        self._settle(merge_patch({}, desired) if isinstance(desired, Mapping) else {}, version)
        return True

    def take_patch(self, patch: Json, version: int | None) -> bool:
        """Changes to the desired state (update/delta, update/accepted; nulls delete, a
        null patch deletes it all); False when ignored as older."""
        if patch is not None and not isinstance(patch, Mapping):
            log.debug("shadow: a desired state that is not an object was ignored")
            return False
        if not self._accepts(version, whole=False):
            return False
        self._settle(merge_patch(self.desired, patch) if patch is not None else {}, version)
        return True

    def once(self, key: str) -> bool:
        """True the first time ``key`` is asked about in this process."""
        if key in self.said:
            return False
        self.said.add(key)
        return True


# --------------------------------------------------------------------------- protocol


def _refusal(document: Mapping[str, Json]) -> str:
    """``403 Forbidden``: the code and message of a rejection, as far as given."""
    said = [str(document[key]) for key in ("code", "message") if document.get(key) is not None]
    return " ".join(said) or "no reason given"


_TIMED_OUT = object()
_SUBSCRIBED: tuple[str, bytes] = ("", b"")  # queued by identity: "subscribed, send a get"


class ShadowAgent:
    """Follows one shadow over the publisher's connection.

    The publisher calls :meth:`subscribed` after each connect's SUBACK and
    :meth:`message` for each message on :attr:`subscriptions`; both only queue, and
    :meth:`run` (a task of the daemon) does the work in order: on every connect a get,
    then each desired state is checked, applied through ``apply`` (which must not
    block), saved through ``persist`` when it changed, and reported back. ``send``
    publishes at QoS 1 and raises PublishError when it cannot.
    """

    def __init__(
        self,
        remote: RemoteConfig,
        base: Settings,
        *,
        send: Callable[[str, bytes], Awaitable[None]],
        apply: Callable[[Settings], None],
        persist: Callable[[Path, dict[str, Json]], Awaitable[None]],
        answer_timeout: float = ANSWER_TIMEOUT,
    ) -> None:
        self.remote = remote
        self.topics = remote.topics
        self.base = base
        self.evaluation = evaluate(remote.desired, base)
        self._send_fn = send
        self._apply = apply
        self._persist = persist
        self._answer_timeout = answer_timeout
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._deadline: float | None = None  # a get is waiting for its answer until then
        self._token = f"wsn-gateway:{os.getpid()}:"
        self._tokens = itertools.count(1)
        # What ``status`` shows: UNIX seconds, read on the event loop.
        #: When the get that waits for its answer was sent.
        self.asked: float | None = None
        #: When this connection's get was answered (the document, or: there is none).
        self.synced: float | None = None
        #: When the shadow service last sent anything.
        self.answered: float | None = None
        #: Since when gets go unanswered (the first one's time); None after any answer.
        self.silent_since: float | None = None
        #: When and why the shadow service refused a get (other than 404), until one
        #: is answered.
        self.get_refused: float | None = None
        self.get_error: str | None = None
        #: Why the shadow service refused the last report (None once one is accepted).
        self.report_error: str | None = None

    @property
    def subscriptions(self) -> tuple[str, ...]:
        return self.topics.responses

    # --- called by the publisher (on the event loop; they must not block) ----------
    def subscribed(self) -> None:
        self._queue.put_nowait(_SUBSCRIBED)

    def message(self, topic: str, payload: bytes) -> None:
        self._queue.put_nowait((topic, payload))

    # --- the task -------------------------------------------------------------------
    async def run(self) -> None:
        """Handle what arrives, in order, until cancelled. A document that cannot be
        handled is logged; nothing here stops the gateway."""
        while True:
            item = await self._next()
            try:
                if item is _TIMED_OUT:
                    self._no_answer()
                elif item is _SUBSCRIBED:
                    await self._request(new_session=True)
                else:
                    assert isinstance(item, tuple)
                    await self._handle(*item)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.error("shadow: a message could not be handled", exc_info=err)

    async def _next(self) -> object:
        if self._deadline is None:
            return await self._queue.get()
        try:
            async with asyncio.timeout_at(self._deadline):
                return await self._queue.get()
        except TimeoutError:
            self._deadline = None
            return _TIMED_OUT

    async def _send(self, topic: str, payload: bytes) -> bool:
        try:
            await self._send_fn(topic, payload)
        except PublishError as err:
            log.debug("shadow: not sent", extra={"topic": topic, "error": str(err)})
            return False
        return True

    async def _request(self, *, new_session: bool = False) -> None:
        """Ask for the whole document (an empty message on .../get)."""
        if new_session:
            self.remote.begin_session()
            self.synced = None
        elif self._deadline is not None:
            return  # one get at a time
        self._deadline = asyncio.get_running_loop().time() + self._answer_timeout
        self.asked = time.time()
        if not await self._send(self.topics.get, b""):
            self._deadline = None
            self.asked = None

    def _no_answer(self) -> None:
        if self.silent_since is None:
            self.silent_since = self.asked if self.asked is not None else time.time()
        self.asked = None
        if self.remote.once("no-answer"):
            log.warning(
                f"shadow: no answer from the device shadow service within "
                f"{self._answer_timeout:g} s; the current settings stay in effect "
                "(a broker without the AWS IoT shadow service, or a policy without the "
                "shadow topics: see docs/shadow.md)",
                extra={"topic": self.topics.get},
            )

    async def _handle(self, topic: str, payload: bytes) -> None:
        self.answered = time.time()
        self.silent_since = None
        try:
            document = json.loads(payload) if payload else None
        except ValueError:
            document = None
        if not isinstance(document, dict):
            log.warning(
                "shadow: ignored a message that is not a JSON object",
                extra={"topic": topic, "bytes": len(payload)},
            )
            return
        log.debug("shadow: message", extra={"topic": topic, "version": document.get("version")})
        t = self.topics
        if topic == t.get_accepted:
            await self._on_document(document)
        elif topic == t.get_rejected:
            await self._on_get_rejected(document)
        elif topic == t.update_delta:
            await self._on_delta(document)
        elif topic == t.update_accepted:
            await self._on_update_accepted(document)
        elif topic == t.update_rejected:
            self._on_update_rejected(document)

    def _synced(self) -> None:
        self.synced = time.time()
        self.get_refused = self.get_error = None

    async def _on_document(self, document: dict[str, Json]) -> None:
        self._deadline = None
        self.asked = None
        state = document.get("state")
        state = state if isinstance(state, Mapping) else {}
        if not self.remote.take_document(state.get("desired"), _version(document)):
            log.debug("shadow: older document ignored", extra={"version": _version(document)})
            await self._request()
            return
        self._synced()
        self.remote.known = _managed(state.get("reported"))
        await self._settle()

    async def _on_get_rejected(self, document: dict[str, Json]) -> None:
        self._deadline = None
        self.asked = None
        code, message = document.get("code"), document.get("message")
        if code == 404:
            self._synced()
            # No document: nothing is desired, as with a document without "desired".
            if self.remote.once("no-shadow"):
                log.info(
                    "shadow: this thing has no shadow document yet; the settings of the "
                    "configuration file apply, and are reported (which creates it)",
                    extra={"shadow": self.topics.prefix},
                )
            self.remote.forget_version()
            self.remote.take_document({}, None)
            self.remote.known = {}
            await self._settle()
            return
        self.get_refused = time.time()
        self.get_error = _refusal(document)
        if self.remote.once(f"get-rejected-{code}"):
            log.warning(
                "shadow: the shadow service refused to send the document; "
                "the current settings stay in effect",
                extra={"code": code, "error": message},
            )

    async def _on_delta(self, document: dict[str, Json]) -> None:
        state = document.get("state")
        if not isinstance(state, Mapping):
            return
        # Deltas are cumulative: an older one is safely dropped.
        if self.remote.take_patch(state, _version(document)):
            await self._settle()

    async def _on_update_accepted(self, document: dict[str, Json]) -> None:
        token = document.get("clientToken")
        if isinstance(token, str) and token.startswith(self._token):
            self.report_error = None  # our report went through
        if "state" not in document:
            return
        state = document["state"]
        if state is None:  # {"state": null}: everything was deleted
            desired: Json = None
            reported: Json = None
        elif isinstance(state, Mapping):
            desired = state.get("desired", ...)
            reported = state.get("reported", ...)
        else:
            return
        if reported is not ...:  # someone's report, or the echo of ours
            known = self.remote.known or {}
            self.remote.known = {} if reported is None else _managed(merge_patch(known, reported))
        if desired is not ... and not self.remote.take_patch(desired, _version(document)):
            # Not cumulative like a delta: what it deleted may be missed. Ask again.
            await self._request()
            return
        await self._settle()

    def _on_update_rejected(self, document: dict[str, Json]) -> None:
        token = document.get("clientToken")
        extra = {"code": document.get("code"), "error": document.get("message")}
        if isinstance(token, str) and token.startswith(self._token):
            self.report_error = _refusal(document)
            log.warning("shadow: the shadow service refused the reported state", extra=extra)
        else:
            log.debug("shadow: someone else's update was refused", extra=extra)

    async def _settle(self) -> None:
        """Apply the desired state as it now stands, save it when it changed, report."""
        old, new = self.evaluation, evaluate(self.remote.desired, self.base)
        if new.settings != old.settings:
            # Logged before it applies: a new log level would otherwise hide the line.
            log.info(
                "shadow: settings changed remotely",
                extra={
                    "changes": changes_between(old.settings, new.settings),
                    "version": self.remote.version,
                },
            )
            self._apply(new.settings)
        self.evaluation = new
        if new.refused != old.refused:
            if new.refused:
                log.warning(
                    "shadow: remote settings refused",
                    extra={"refused": new.refused, "version": self.remote.version},
                )
            else:
                log.info("shadow: no remote setting is refused any more")
        if self.remote.dirty:
            try:
                await self._persist(self.remote.path, self.remote.snapshot(new))
            except OSError as err:
                log.warning(
                    "shadow: cannot save the remote settings; they apply until the next restart",
                    extra={"path": str(self.remote.path), "error": str(err)},
                )
            else:
                self.remote.dirty = False
        await self._report()

    async def _report(self) -> None:
        patch = report_patch(reported_view(self.evaluation), self.remote.known)
        if patch is None:
            return
        document = {
            "state": {"reported": patch},
            "clientToken": f"{self._token}{next(self._tokens)}",
        }
        payload = json.dumps(document, separators=(",", ":")).encode()
        if await self._send(self.topics.update, payload):
            # Taken as held from now on, so that the delta the report itself causes (a
            # refused value still differs) does not make another report: no loop.
            self.remote.known = _managed(merge_patch(self.remote.known or {}, patch))
            log.debug("shadow: reported", extra={"reported": patch})
