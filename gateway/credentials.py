"""Temporary AWS credentials from the AWS IoT credentials provider.

The device certificate is exchanged, over mutual TLS, for the credentials of the
IAM role behind a role alias: ``GET https://{endpoint}/role-aliases/{alias}/credentials``
with the header ``x-amzn-iot-thingname``. No long-term AWS keys live on the device.
The calls block (http.client): run them off the event loop, on a worker thread.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from gateway.errors import GatewayError

#: Fetch new credentials this many seconds before the current ones expire.
REFRESH_BEFORE = 300.0
#: Seconds one request to the credentials provider may take.
REQUEST_TIMEOUT = 15.0


class CredentialsError(GatewayError):
    """The credentials provider refused us or could not be reached."""


@dataclass(frozen=True)
class TemporaryCredentials:
    """One set of credentials and when it expires (UNIX seconds)."""

    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: float

    def botocore_metadata(self) -> dict[str, str]:
        """The shape botocore's RefreshableCredentials takes."""
        expiry = dt.datetime.fromtimestamp(self.expiration, dt.UTC)
        return {
            "access_key": self.access_key_id,
            "secret_key": self.secret_access_key,
            "token": self.session_token,
            "expiry_time": expiry.isoformat(),
        }


def parse_credentials(body: bytes) -> TemporaryCredentials:
    """The provider's answer: ``{"credentials": {accessKeyId, secretAccessKey,
    sessionToken, expiration}}``, expiration in ISO 8601."""
    try:
        data = json.loads(body)
        creds = data["credentials"]
        expiration = dt.datetime.fromisoformat(str(creds["expiration"]).replace("Z", "+00:00"))
        if expiration.tzinfo is None:
            expiration = expiration.replace(tzinfo=dt.UTC)
        return TemporaryCredentials(
            access_key_id=str(creds["accessKeyId"]),
            secret_access_key=str(creds["secretAccessKey"]),
            session_token=str(creds["sessionToken"]),
            expiration=expiration.timestamp(),
        )
    except (ValueError, KeyError, TypeError) as err:
        raise CredentialsError(
            f"the credentials provider answered something that is not credentials ({err!r})"
        ) from err


def _explain(status: int, alias: str, endpoint: str, body: bytes) -> str:
    detail = body[:300].decode("utf-8", "replace").strip()
    where = f"credentials provider {endpoint}"
    if status == 403:
        return (
            f"{where}: the role alias {alias!r} is not allowed by the certificate's policy "
            "(iot:AssumeRoleWithCertificate on the role alias), or the IAM role does not "
            f"trust credentials.iot.amazonaws.com ({detail})"
        )
    if status == 404:
        return f"{where}: no role alias {alias!r} in this account and region ({detail})"
    if status == 401:
        return (
            f"{where}: the device certificate was not accepted: check that it is "
            f"registered and active ({detail})"
        )
    if status == 400:
        return (
            f"{where}: bad request: check that the thing name matches the thing "
            f"attached to the certificate ({detail})"
        )
    return f"{where}: HTTP {status} ({detail})"


class IotCredentialsProvider:
    """Fetches and caches credentials; thread-safe, blocking."""

    def __init__(
        self,
        *,
        endpoint: str,
        role_alias: str,
        thing: str,
        context: ssl.SSLContext,
        refresh_before: float = REFRESH_BEFORE,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        host, _, port = endpoint.partition(":")
        self.host = host
        self.port = int(port) if port else 443
        self.endpoint = endpoint
        self.role_alias = role_alias
        self.thing = thing
        self.context = context
        self.refresh_before = refresh_before
        self.timeout = timeout
        self.fetches = 0
        self._current: TemporaryCredentials | None = None
        self._lock = threading.Lock()

    def fetch(self) -> TemporaryCredentials:
        """One request to the provider (blocking)."""
        path = f"/role-aliases/{urllib.parse.quote(self.role_alias, safe='')}/credentials"
        conn = http.client.HTTPSConnection(
            self.host, self.port, context=self.context, timeout=self.timeout
        )
        try:
            conn.request("GET", path, headers={"x-amzn-iot-thingname": self.thing})
            response = conn.getresponse()
            body = response.read()
        except ssl.SSLCertVerificationError as err:
            raise CredentialsError(
                f"credentials provider {self.endpoint}: its certificate does not verify "
                f"against mqtt.ca ({err.verify_message})"
            ) from err
        except socket.gaierror as err:
            raise CredentialsError(
                f"credentials provider {self.endpoint}: cannot resolve the name "
                f"({err.strerror}); aws iot describe-endpoint --endpoint-type "
                "iot:CredentialProvider gives it"
            ) from err
        except (OSError, http.client.HTTPException) as err:
            raise CredentialsError(
                f"credentials provider {self.endpoint}: {err or type(err).__name__}"
            ) from err
        finally:
            conn.close()
        if response.status != 200:
            raise CredentialsError(_explain(response.status, self.role_alias, self.endpoint, body))
        self.fetches += 1
        return parse_credentials(body)

    def get(self) -> TemporaryCredentials:
        """Cached credentials, fetched again within ``refresh_before`` of expiry."""
        with self._lock:
            current = self._current
            if current is None or current.expiration - time.time() <= self.refresh_before:
                current = self._current = self.fetch()
            return current

    def botocore_metadata(self) -> dict[str, str]:
        """For RefreshableCredentials' ``refresh_using``: always a fresh fetch."""
        with self._lock:
            self._current = self.fetch()
            return self._current.botocore_metadata()


def botocore_credentials(provider: IotCredentialsProvider) -> Any:
    """A botocore credentials object that refreshes itself from ``provider``
    ``REFRESH_BEFORE`` seconds ahead of expiry (botocore imported lazily)."""
    from botocore.credentials import RefreshableCredentials  # noqa: PLC0415

    class _IotCredentials(RefreshableCredentials):  # type: ignore[misc]
        _advisory_refresh_timeout = int(provider.refresh_before)
        _mandatory_refresh_timeout = int(min(provider.refresh_before, 120))

    return _IotCredentials.create_from_metadata(
        metadata=provider.get().botocore_metadata(),
        refresh_using=provider.botocore_metadata,
        method="iot-credentials-provider",
    )
