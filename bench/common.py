"""What every benchmark needs: the machine's description, a mutual-TLS Mosquitto on
loopback, a counting subscriber, subprocesses whose output lines are time-stamped,
daemon configurations, synthetic readings and /proc figures."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import random
import re
import signal
import socket
import sqlite3
import ssl
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from gateway.pki import PkiFiles, write_pki
from gateway.readings import Reading

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LOCALHOST = "127.0.0.1"
THING = "bench-gw"
TOPIC_FILTER = "dt/wsn/+/telemetry"
MOSQUITTO = Path(os.environ.get("WSN_BENCH_MOSQUITTO", "/usr/sbin/mosquitto"))
MIB = 1024 * 1024


# --------------------------------------------------------------------------- context


@dataclass
class Context:
    """What the runner hands to every benchmark."""

    workdir: Path
    pki: PkiFiles
    broker: Mosquitto
    quick: bool
    strace: bool
    log: Callable[[str], None] = print

    def directory(self, name: str) -> Path:
        """A fresh directory for one benchmark run."""
        path = self.workdir / f"{name}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True)
        return path


def make_pki(directory: Path) -> PkiFiles:
    """CA, broker certificate for 127.0.0.1 and a client certificate for ``THING``."""
    return write_pki(directory, thing=THING, hosts=("localhost", LOCALHOST))


def client_tls(pki: PkiFiles) -> ssl.SSLContext:
    """A client context with the bench client certificate that verifies the broker."""
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mosquitto_version() -> str:
    try:
        out = subprocess.run(
            [str(MOSQUITTO), "-h"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except OSError:
        return "not installed"
    match = re.search(r"mosquitto version (\S+)", out)
    return match.group(1) if match else "unknown"


def _package(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def _filesystem(path: Path) -> str:
    """Type and device of the mount that holds ``path``."""
    best = ("", "?", "?")
    target = str(path.resolve())
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint
        if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) > len(
            best[0]
        ):
            best = (mount, part.fstype, part.device)
    return f"{best[1]} ({best[2]} on {best[0]})"


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "gateway", "drivers"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" (gateway/ or drivers/ modified)" if dirty else "")


def machine_info(workdir: Path) -> dict[str, Any]:
    """Where the figures come from."""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_mib": psutil.virtual_memory().total // MIB,
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version,
        "openssl": ssl.OPENSSL_VERSION,
        "mosquitto": _mosquitto_version(),
        "packages": {
            name: _package(name)
            for name in ("aiomqtt", "paho-mqtt", "cryptography", "rfc8785", "pydantic", "psutil")
        },
        "filesystem": _filesystem(workdir),
        "loadavg_at_start": os.getloadavg(),
        "git": _git_revision(),
    }


# --------------------------------------------------------------------------- Mosquitto


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


class Mosquitto:
    """A Mosquitto with one mutual-TLS listener on 127.0.0.1, in memory, quiet log.

    Unlike the test fixture it logs no debug lines (one per PUBLISH would slow the
    broker down in proportion to the message count, i.e. penalise the baseline),
    keeps nothing on disk, and queues without limit so that a slow subscriber never
    makes the broker drop messages.
    """

    def __init__(self, pki: PkiFiles, directory: Path) -> None:
        self.pki = pki
        self.directory = directory
        self.host = LOCALHOST
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "mosquitto.log"

    def config_text(self) -> str:
        lines = [
            f"listener {self.port} {self.host}",
            f"cafile {self.pki.ca_cert}",
            f"certfile {self.pki.server_cert}",
            f"keyfile {self.pki.server_key}",
            "require_certificate true",
            "use_identity_as_username false",
            "allow_anonymous true",
            "persistence false",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "max_inflight_messages 100",
            "max_queued_messages 0",
            "message_size_limit 0",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it switches to "mosquitto", who cannot read our keys
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> None:
        if not MOSQUITTO.exists():
            raise RuntimeError(f"{MOSQUITTO} not found: apt-get install mosquitto")
        config = self.directory / "mosquitto.conf"
        config.write_text(self.config_text())
        with (self.directory / "mosquitto.out").open("ab") as out:
            self.process = subprocess.Popen(
                [str(MOSQUITTO), "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log_text()}")
            if " running" in self.log_text():
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection((self.host, self.port), timeout=0.2),
                ):
                    return
            time.sleep(0.02)
        raise TimeoutError(f"mosquitto not ready within {timeout} s: {self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cpu_seconds(self) -> float:
        """User + system CPU time the broker has used so far."""
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None


# --------------------------------------------------------------------------- subscriber


class Subscriber:
    """A QoS 1 subscriber on its own paho network thread that counts what arrives.

    ``count(payload)`` says how many readings a message carries (1 for the naive
    baseline, the number of records of a batch for the gateway).
    """

    def __init__(
        self,
        broker: Mosquitto,
        pki: PkiFiles,
        count: Callable[[bytes], int],
        *,
        keep: bool = False,
        topic_filter: str = TOPIC_FILTER,
    ) -> None:
        self.count = count
        self.keep = keep
        self.topic_filter = topic_filter
        self.total = 0
        self.messages = 0
        self.payload_bytes = 0
        self.payloads: list[bytes] = []
        self.last_arrival = 0.0
        self._broker = broker
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-sub-{uuid.uuid4().hex[:8]}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        self._client.tls_set_context(client_tls(pki))
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def start(self, timeout: float = 10.0) -> Subscriber:
        self._client.connect(self._broker.host, self._broker.port, keepalive=60)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            raise TimeoutError("subscriber not subscribed")
        return self

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self.topic_filter, qos=1)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _m: int, reasons: Any, _p: Any) -> None:
        if all(not r.is_failure for r in reasons):
            self._subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        payload = bytes(message.payload)
        n = self.count(payload)
        now = time.monotonic()
        with self._cond:
            self.total += n
            self.messages += 1
            self.payload_bytes += len(payload)
            self.last_arrival = now
            if self.keep:
                self.payloads.append(payload)
            self._cond.notify_all()

    def wait_total(self, n: int, timeout: float) -> float:
        """Block until ``n`` readings arrived; returns the arrival time of the last one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.total < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"subscriber got {self.total} of {n} readings in {timeout} s"
                    )
                self._cond.wait(min(left, 0.5))
            return self.last_arrival

    def wait_quiet(self, quiet: float, timeout: float) -> None:
        """Block until nothing has arrived for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                last = self.last_arrival
            if time.monotonic() - last >= quiet:
                return
            time.sleep(0.05)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def batch_records(payload: bytes, prefix: str = "") -> list[dict[str, Any]]:
    """The SenML records of one gateway batch whose names start with ``prefix``."""
    records: list[dict[str, Any]] = json.loads(payload)["records"]
    if prefix:
        return [r for r in records if r["n"].startswith(prefix)]
    return records


def record_times(payload: bytes) -> list[float]:
    """Absolute UNIX times of the records of one gateway batch (SenML bt + t)."""
    records = json.loads(payload)["records"]
    base = float(records[0].get("bt", 0.0))
    return [base + float(r.get("t", 0.0)) for r in records]


# --------------------------------------------------------------------------- processes


class Proc:
    """A subprocess whose output lines are collected with their arrival time.

    ``target`` is the process to measure and signal: the subprocess itself, or the
    program it runs when it is a wrapper such as strace.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        wrapped: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self.spawned = time.monotonic()
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.target = self._find_target(wrapped)

    def _find_target(self, wrapped: bool) -> psutil.Process:
        process = psutil.Process(self.popen.pid)
        if not wrapped:
            return process
        # strace forks short-lived children of its own (to probe seccomp support)
        # before the one that execs the command: wait for the command itself.
        wrapper = process.cmdline()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for child in process.children():
                with contextlib.suppress(psutil.Error):
                    cmdline = child.cmdline()
                    if cmdline and cmdline != wrapper and self.argv[-1] in cmdline:
                        return child
            time.sleep(0.005)
        raise RuntimeError(f"{self.argv[0]} started no child")

    def _read(self) -> None:
        assert self.popen.stdout is not None
        with self.log_path.open("w") as log:
            for raw in self.popen.stdout:
                now = time.monotonic()
                line = raw.decode(errors="replace").rstrip("\n")
                log.write(line + "\n")
                log.flush()
                with self._cond:
                    self.lines.append((now, line))
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, predicate: Callable[[str], bool], timeout: float) -> float:
        """Arrival time of the first line that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for stamp, line in self.lines[seen:]:
                    if predicate(line):
                        return stamp
                seen = len(self.lines)
                if self.popen.poll() is not None and not self._reader.is_alive():
                    raise RuntimeError(
                        f"{self.argv} exited {self.popen.returncode}:\n{self.tail()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.argv}: no such line in {timeout} s:\n{self.tail()}")
                self._cond.wait(min(left, 0.2))

    def wait_msg(self, msg: str, timeout: float = 30.0) -> float:
        """Arrival time of the daemon's JSON log line with this ``msg``."""
        return self.wait_line(lambda line: _log_msg(line) == msg, timeout)

    def tail(self, n: int = 15) -> str:
        with self._cond:
            return "\n".join(line for _, line in self.lines[-n:])

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM to the target, then wait for the subprocess to end (SIGKILL after
        ``timeout``, with a warning: the daemon allows itself 10 s to drain)."""
        if self.popen.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                self.target.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                print(
                    f"WARNING: {' '.join(self.argv[:3])} did not stop within {timeout:g} s "
                    f"of SIGTERM: killed (log: {self.log_path})",
                    flush=True,
                )
                with contextlib.suppress(psutil.NoSuchProcess):
                    self.target.kill()
                self.popen.kill()
                self.popen.wait(timeout)
        self._reader.join(5)
        return self.popen.returncode


def _log_msg(line: str) -> str | None:
    if not line.startswith("{"):
        return None
    try:
        return str(json.loads(line).get("msg"))
    except ValueError:
        return None


def daemon_argv(config: Path) -> list[str]:
    """``wsn-gateway run``: the console script beside this interpreter (what systemd
    starts), else the same entry point through ``-m gateway.cli``."""
    script = Path(PYTHON).parent / "wsn-gateway"
    if script.is_file():
        return [str(script), "run", "--config", str(config)]
    return [PYTHON, "-m", "gateway.cli", "run", "--config", str(config)]


# --------------------------------------------------------------------------- /proc


def proc_status(process: psutil.Process) -> dict[str, int]:
    """VmRSS, VmHWM, ... from /proc/PID/status, in bytes."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0]) * 1024
        elif key == "Threads":
            out[key] = int(parts[0])
    return out


def proc_io(process: psutil.Process) -> dict[str, int]:
    """/proc/PID/io: rchar, wchar, syscr, syscw, read_bytes, write_bytes, ..."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{process.pid}/io").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = int(value)
    return out


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def proc_stat_cpu(process: psutil.Process) -> float:
    """utime + stime from /proc/PID/stat (every thread of the process), in seconds."""
    text = Path(f"/proc/{process.pid}/stat").read_text()
    fields = text.rpartition(")")[2].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- strace


def strace_usable() -> bool:
    """strace exists and may trace here (ptrace can be forbidden in containers)."""
    try:
        result = subprocess.run(
            ["strace", "-f", "--seccomp-bpf", "-e", "trace=fsync", "-o", "/dev/null", "true"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


SYNC_CALLS = ("fsync", "fdatasync", "sync_file_range", "syncfs")


def strace_argv(output: Path) -> list[str]:
    """Wrap a command so that its sync calls are logged with UNIX times (only those
    calls stop the tracee, thanks to the seccomp filter)."""
    return [
        "strace",
        "-f",
        "--seccomp-bpf",
        "-qq",
        "-ttt",
        "-e",
        "signal=none",
        "-e",
        "trace=" + ",".join(SYNC_CALLS),
        "-o",
        str(output),
        "--",
    ]


_STRACE_LINE = re.compile(r"^\d+\s+(\d+\.\d+)\s+(?:<\.\.\.\s+)?(\w+)\(")


def count_sync_calls(output: Path, start: float, end: float) -> dict[str, int]:
    """Sync calls in an strace log that began within [start, end) (UNIX times)."""
    counts = dict.fromkeys(SYNC_CALLS, 0)
    for line in output.read_text(errors="replace").splitlines():
        match = _STRACE_LINE.match(line)
        if not match or "resumed>" in line:
            continue
        stamp, name = float(match.group(1)), match.group(2)
        if name in counts and start <= stamp < end:
            counts[name] += 1
    return counts


# --------------------------------------------------------------------------- data


def synthetic_readings(n: int, *, start: float, rate: float = 100.0) -> list[Reading]:
    """``n`` readings of 10 sensors taken at ``rate`` per second from ``start`` on:
    6 BME280-like sensors (temperature, pressure, humidity as full-precision
    floats, as the driver produces them) and 4 counters. Deterministic."""
    rng = random.Random(8785)
    out: list[Reading] = []
    counts = [0] * 4
    while len(out) < n:
        for s in range(10):
            t = round(start + len(out) / rate, 3)
            if s < 6:
                name = f"pre{s}"
                out.append(Reading(name, "temperature", "Cel", 20 + rng.uniform(-5, 5), t))
                out.append(Reading(name, "pressure", "Pa", 101325 + rng.uniform(-900, 900), t))
                out.append(Reading(name, "humidity", "%RH", 45 + rng.uniform(-15, 15), t))
            else:
                counts[s - 6] += 1
                out.append(Reading(f"pre{s}", "count", "count", float(counts[s - 6]), t))
    return out[:n]


#: The three quantities of a BME280-like sensor: name, SenML unit, centre, spread.
BME_QUANTITIES = (
    ("temperature", "Cel", 21.0, 4.0),
    ("humidity", "%RH", 50.0, 15.0),
    ("pressure", "Pa", 101325.0, 800.0),
)


def sensor_history(
    n: int,
    *,
    start: float,
    prefix: str = "bme-",
    sensors: int = 10,
    rate: float = 100.0,
    chunk: int = 10_000,
    seed: int = 8428,
) -> Iterator[list[Reading]]:
    """``n`` readings of ``sensors`` BME280-like sensors (temperature, humidity and
    pressure as full-precision floats, as the driver produces them, names
    ``{prefix}{i}/{quantity}``), polled together so that they make ``rate``
    readings per second from ``start`` on; in lists of ``chunk``. Deterministic."""
    rng = random.Random(seed)
    per_poll = sensors * len(BME_QUANTITIES)
    period = per_poll / rate
    out: list[Reading] = []
    for k in range(n):
        poll, within = divmod(k, per_poll)
        sensor, q = divmod(within, len(BME_QUANTITIES))
        quantity, unit, centre, spread = BME_QUANTITIES[q]
        value = centre + rng.uniform(-spread, spread)
        out.append(
            Reading(f"{prefix}{sensor}", quantity, unit, value, round(start + poll * period, 3))
        )
        if len(out) == chunk:
            yield out
            out = []
    if out:
        yield out


def naive_json(reading: Reading) -> bytes:
    """The payload of the naive baseline: one reading as a small JSON object, as the
    AWS IoT Device SDK samples publish it."""
    return json.dumps(
        {
            "sensor": reading.sensor,
            "quantity": reading.quantity,
            "unit": reading.unit,
            "value": reading.value,
            "time": reading.time,
        }
    ).encode()


# --------------------------------------------------------------------------- configuration


def bme280(name: str, address: int, interval: float) -> dict[str, Any]:
    return {
        "name": name,
        "driver": "bme280",
        "bus": "sim",
        "address": address,
        "interval": interval,
    }


def counter(name: str, interval: float) -> dict[str, Any]:
    return {"name": name, "driver": "counter", "interval": interval}


def mixed_sensors() -> list[dict[str, Any]]:
    """10 simulated sensors, intervals 0.1 to 1 s: 6 BME280 at distinct addresses on
    the simulated bus (3 readings per poll) and 4 counters; about 87 readings/s."""
    bmes = [
        bme280("bme-a", 0x76, 0.1),
        bme280("bme-b", 0x77, 0.2),
        bme280("bme-c", 0x75, 0.25),
        bme280("bme-d", 0x74, 0.5),
        bme280("bme-e", 0x73, 1.0),
        bme280("bme-f", 0x72, 1.0),
    ]
    counters = [counter(f"count-{i}", iv) for i, iv in enumerate((0.1, 0.2, 0.5, 1.0))]
    return bmes + counters


def mixed_rate() -> float:
    """Readings per second that ``mixed_sensors`` produce."""
    return sum(
        (3 if s["driver"] == "bme280" else 1) / float(s["interval"]) for s in mixed_sensors()
    )


def write_config(
    path: Path,
    *,
    ctx: Context,
    state_dir: Path,
    sensors: list[dict[str, Any]],
    mqtt: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """A daemon configuration for the bench broker; ``mqtt`` and ``extra`` add keys."""
    data: dict[str, Any] = {
        "thing": THING,
        "state_dir": str(state_dir),
        "clock": "assume-synced",
        "mqtt": {
            "endpoint": LOCALHOST,
            "port": ctx.broker.port,
            "ca": str(ctx.pki.ca_cert),
            "cert": str(ctx.pki.client_cert),
            "key": str(ctx.pki.client_key),
            "reconnect_min": 0.5,
            "reconnect_max": 2.0,
            **(mqtt or {}),
        },
        "sensors": sensors,
        **(extra or {}),
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --------------------------------------------------------------------------- figures


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def mib(value: float) -> float:
    return round(value / MIB, 1)


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


@dataclass
class Table:
    """A small text table for the console and the README."""

    header: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)
