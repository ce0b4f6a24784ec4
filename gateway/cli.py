"""The ``wsn-gateway`` command line (DESIGN.md, "Command line").

Exit status: 0 success, 2 bad usage or bad configuration, 1 any other failure,
always with a message that says what to do.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from gateway import __version__, provision_cli
from gateway.config import Settings, default_config_path, load_settings
from gateway.errors import ConfigError, GatewayError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        default=None,
        help="configuration file (default: $WSN_GATEWAY_CONFIG or /etc/wsn-gateway/gateway.yaml)",
    )


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their options."""
    parser = argparse.ArgumentParser(
        prog="wsn-gateway",
        description="Sensors to a durable buffer to signed batches over mutual-TLS MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"wsn-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon in the foreground (what systemd starts)")
    _config_arg(p)
    p = sub.add_parser("check-config", help="validate the configuration file")
    _config_arg(p)
    p = sub.add_parser("read", help="read sensors once and print one JSON reading a line")
    _config_arg(p)
    p.add_argument("sensors", nargs="*", metavar="SENSOR", help="sensor names (default: all)")
    p = sub.add_parser("verify", help="verify payloads: signatures and chain")
    _config_arg(p)
    p.add_argument(
        "--key",
        action="append",
        type=Path,
        default=[],
        help="PEM public key, private key or certificate (repeatable); "
        "default: the signing key of the configuration, if readable",
    )
    p.add_argument(
        "source",
        nargs="?",
        type=Path,
        default=None,
        help="file with one payload per line, or a directory of payload files (default: stdin)",
    )
    p = sub.add_parser("buffer", help="inspect the durable buffer")
    bsub = p.add_subparsers(dest="buffer_command", required=True, metavar="ACTION")
    b = bsub.add_parser("stats", help="what is buffered, oldest reading, outbox, drops")
    _config_arg(b)
    b.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser(
        "status", help="what the running daemon is doing: connection, sensors, buffer, shadow"
    )
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="the status snapshot as JSON")
    p = sub.add_parser("scan", help="probe an I2C bus like i2cdetect and name the chips found")
    p.add_argument(
        "--bus",
        default="1",
        help="I2C bus number (default 1, /dev/i2c-1), or sim: the simulated chips of --config",
    )
    p.add_argument(
        "--config",
        "-c",
        type=Path,
        default=None,
        help="configuration whose bus-sim sensors make up the simulated bus",
    )
    provision_cli.add_parser(sub)
    p = sub.add_parser("demo", help="the whole system on this machine: no hardware, no AWS")
    p.add_argument("--duration", type=float, default=30.0, help="seconds to run (default 30)")
    p.add_argument(
        "--config", type=Path, default=None, help="demo configuration (default: config/demo.yaml)"
    )
    p.add_argument(
        "--workdir", type=Path, default=None, help="keep certificates, state and payloads here"
    )
    return parser


def _load(path: Path | None) -> Settings:
    return load_settings(path or default_config_path())


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate and summarise."""
    settings = _load(args.config)
    print(
        f"{settings.source}: ok — thing {settings.thing}, {len(settings.sensors)} sensor(s): "
        + ", ".join(f"{s.name} ({s.driver})" for s in settings.sensors)
    )
    from gateway.startup import config_warnings  # noqa: PLC0415

    for warning in config_warnings(settings):
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """The daemon in the foreground."""
    from gateway.daemon import run_daemon  # noqa: PLC0415 - keep other commands light
    from gateway.logs import setup_logging  # noqa: PLC0415
    from gateway.startup import startup_checks  # noqa: PLC0415

    settings = _load(args.config)
    setup_logging(settings.logging.level)
    try:
        startup_checks(settings)  # refuses with a message that says what to fix
    except GatewayError as err:
        # Into the JSON log like every other line of the service, not onto stderr.
        logging.getLogger("gateway").error(f"cannot start: {err}")
        return EXIT_FAILURE
    return run_daemon(settings)


def cmd_read(args: argparse.Namespace) -> int:
    """Read the named sensors once."""
    from gateway.sensors import read_once  # noqa: PLC0415

    settings = _load(args.config)
    known = {s.name for s in settings.sensors}
    unknown = [n for n in args.sensors if n not in known]
    if unknown:
        print(
            f"unknown sensor(s): {', '.join(unknown)} (configured: {', '.join(sorted(known))})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    failures = 0
    for name, result in read_once(settings, args.sensors or None):
        if isinstance(result, BaseException):
            failures += 1
            print(f"{name}: read failed: {result}", file=sys.stderr)
            continue
        if not result:
            failures += 1
            print(
                f"{name}: no data yet (the device did not report within its interval)",
                file=sys.stderr,
            )
            continue
        for reading in result:
            print(
                json.dumps(
                    {
                        "sensor": reading.sensor,
                        "quantity": reading.quantity,
                        "unit": reading.unit,
                        "value": reading.value,
                        "time": reading.time,
                    }
                )
            )
    return EXIT_FAILURE if failures else EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify payloads from a file, a directory or stdin."""
    from gateway import verify  # noqa: PLC0415

    key_paths: list[Path] = list(args.key)
    if not key_paths:
        key_paths = _configured_public_keys(args.config)
    keys = verify.load_verification_keys(key_paths) if key_paths else None
    if keys is None:
        print(
            "no key given (--key): checking canonical form and chain, not signatures",
            file=sys.stderr,
        )
    if args.source is None:
        payloads = [line.rstrip(b"\r\n") for line in sys.stdin.buffer if line.strip()]
    else:
        if not args.source.exists():
            print(f"{args.source}: no such file or directory", file=sys.stderr)
            return EXIT_USAGE
        payloads = list(verify.read_payloads(args.source))
    report = verify.verify_stream(payloads, keys)
    print(verify.format_report(report))
    return EXIT_OK if report.ok else EXIT_FAILURE


def _configured_public_keys(config: Path | None) -> list[Path]:
    try:
        settings = _load(config)
    except ConfigError:
        return []
    path = (
        settings.mqtt.cert if settings.signing.key == "certificate" else settings.signing_key_path
    )
    return [path] if path.is_file() else []


def cmd_buffer_stats(args: argparse.Namespace) -> int:
    """Show what the buffer holds (read-only, safe while the daemon runs)."""
    from gateway.buffer import Buffer  # noqa: PLC0415

    settings = _load(args.config)
    if not settings.buffer_path.exists():
        print(
            f"{settings.buffer_path}: no buffer yet (the daemon creates it on first start)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    buffer = Buffer(settings.buffer_path, max_bytes=settings.buffer.max_bytes)
    try:
        stats = buffer.stats()
    finally:
        buffer.close()
    data = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(stats).items()}
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    now = time.time()
    age = "-" if stats.oldest_time is None else f"{now - stats.oldest_time:,.0f} s ago"
    print(f"buffer        {stats.path}")
    print(f"stream        {stats.stream}  (last sealed seq {stats.last_seq})")
    print(f"readings      {stats.readings:,}  (oldest {age})")
    print(
        f"outbox        {stats.outbox_batches:,} batches, {stats.outbox_readings:,} readings, "
        f"{stats.outbox_bytes:,} bytes awaiting PUBACK"
    )
    print(
        f"size          {stats.size_bytes:,} of {stats.max_bytes:,} bytes "
        f"({100 * stats.size_bytes / stats.max_bytes:.1f} %), file {stats.file_bytes:,} bytes"
    )
    print(
        f"dropped       {stats.dropped_total:,} in all, {stats.dropped_pending:,} not yet reported"
    )
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """Show the running daemon's status file; exit 1 when it is not running."""
    from gateway import status  # noqa: PLC0415

    settings = _load(args.config)
    paths = status.read_paths(settings)
    found = status.read_status(paths)
    if found is None:
        where = " or ".join(str(p) for p in paths)
        if args.json:
            print(json.dumps({"running": False, "reason": "no status file", "paths": where}))
        else:
            print(f"not running (no status file at {where})")
        return EXIT_FAILURE
    now = time.time()
    why_not = status.not_running(found.snapshot, now)
    if args.json:
        data = {
            "running": why_not is None,
            "reason": why_not,
            "age": round(now - float(found.snapshot["time"]), 1),
            "path": str(found.path),
            **found.snapshot,
        }
        print(json.dumps(data, indent=2, default=str))
    else:
        print(status.render(found.snapshot, now, why_not=why_not))
    return EXIT_OK if why_not is None else EXIT_FAILURE


def cmd_scan(args: argparse.Namespace) -> int:
    """Probe a bus and name the known chips by their id registers."""
    from gateway.scan import format_scan, open_scan_bus, scan_bus  # noqa: PLC0415

    bus: int | str = args.bus
    if args.bus == "sim":
        settings = _load(args.config)
    elif args.bus.isdigit():
        bus, settings = int(args.bus), None
    else:
        print(f"--bus takes a bus number such as 1, or sim (got {args.bus!r})", file=sys.stderr)
        return EXIT_USAGE
    with open_scan_bus(bus, settings) as device:  # type: ignore[arg-type]
        print(format_scan(scan_bus(device)))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole system on one machine."""
    from gateway.demo import run_demo  # noqa: PLC0415

    return run_demo(duration=args.duration, config=args.config, workdir=args.workdir)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {
        "run": cmd_run,
        "check-config": cmd_check_config,
        "read": cmd_read,
        "verify": cmd_verify,
        "demo": cmd_demo,
        "scan": cmd_scan,
        "status": cmd_status,
        "provision": provision_cli.cmd_provision,
    }
    handler = cmd_buffer_stats if args.command == "buffer" else handlers[args.command]
    try:
        return handler(args)
    except ConfigError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    except (GatewayError, ValueError) as err:
        print(f"wsn-gateway {args.command}: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    logging.basicConfig()
    sys.exit(main())
