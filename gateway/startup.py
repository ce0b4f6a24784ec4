"""Start-up checks: refuse what cannot work, warn about what will stop working.

Refused (``run`` exits 1 with the message): a private key readable by group or others,
a certificate and key that cannot be read or do not belong together, an expired
certificate. Warned: a certificate that expires within 30 days, an endpoint name that
does not resolve now (the gateway buffers offline, so that is no reason not to start).
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import logging
import socket
from pathlib import Path

from cryptography import x509

from gateway.config import Settings
from gateway.errors import GatewayError
from gateway.publisher import tls_context
from gateway.signing import _check_private_file

log = logging.getLogger(__name__)

#: A certificate that expires within this many days is warned about.
EXPIRY_WARNING_DAYS = 30
#: Seconds the endpoint name may take to resolve.
RESOLVE_TIMEOUT = 3.0


class StartupError(GatewayError):
    """The gateway must not start: the message says what to fix."""


def certificate_expiry(path: Path) -> dt.datetime:
    """When the PEM certificate at ``path`` expires (UTC)."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as err:
        raise StartupError(f"{path}: cannot read certificate: {err.strerror}") from err
    except ValueError as err:
        raise StartupError(f"{path}: not a PEM certificate") from err
    return cert.not_valid_after_utc


def check_credentials(settings: Settings, *, now: dt.datetime | None = None) -> list[str]:
    """Key mode, certificate and key together, expiry. Returns warnings; raises
    StartupError for what must stop the start."""
    from gateway.daemon import mqtt_target  # noqa: PLC0415 - daemon imports this module's users

    m = settings.mqtt
    _check_private_file(m.key)  # mode: chmod 600 named in the message
    tls_context(mqtt_target(settings))  # readable, and the key belongs to the certificate
    expires = certificate_expiry(m.cert)
    now = now or dt.datetime.now(dt.UTC)
    if expires <= now:
        raise StartupError(
            f"mqtt.cert {m.cert}: the certificate expired on {expires:%Y-%m-%d %H:%M} UTC; "
            "the broker will refuse it: create a new one (AWS IoT) and replace the file"
        )
    left = expires - now
    if left <= dt.timedelta(days=EXPIRY_WARNING_DAYS):
        return [
            f"mqtt.cert {m.cert}: the certificate expires on {expires:%Y-%m-%d} "
            f"(in {left.days} days): replace it before then"
        ]
    return []


def check_endpoint(host: str, port: int, timeout: float = RESOLVE_TIMEOUT) -> list[str]:
    """A warning when ``host`` does not resolve within ``timeout`` seconds."""
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="resolve")
    try:
        pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM).result(timeout)
    except concurrent.futures.TimeoutError:
        return [f"mqtt.endpoint {host}: no DNS answer within {timeout:g} s; readings are buffered"]
    except OSError as err:
        return [
            f"mqtt.endpoint {host}: cannot resolve it ({err}); check mqtt.endpoint and DNS; "
            "readings are buffered until it resolves"
        ]
    finally:
        pool.shutdown(wait=False)
    return []


def startup_checks(settings: Settings, *, resolve_timeout: float = RESOLVE_TIMEOUT) -> list[str]:
    """Everything before ``run`` starts: warnings are logged and returned; raises
    StartupError (or the publisher's or signing's error) when the start must be refused."""
    warnings = check_credentials(settings)
    warnings += check_endpoint(settings.mqtt.endpoint, settings.mqtt.port, resolve_timeout)
    for warning in warnings:
        log.warning(warning)
    return warnings


def config_warnings(settings: Settings, *, resolve_timeout: float = RESOLVE_TIMEOUT) -> list[str]:
    """For ``check-config``: the same checks as warnings, where the files exist."""
    m = settings.mqtt
    warnings: list[str] = []
    if m.cert.exists() and m.key.exists():
        try:
            warnings += check_credentials(settings)
        except GatewayError as err:
            warnings.append(str(err))
    warnings += check_endpoint(m.endpoint, m.port, resolve_timeout)
    return warnings
