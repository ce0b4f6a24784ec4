"""Fleet provisioning by claim: one factory image, and each device gets its own identity.

Every device of a batch is flashed with the same *claim* certificate. On first
start the device connects to AWS IoT Core with it and, through the fleet
provisioning MQTT API (the official ``awsiotsdk``'s ``IotIdentityClientV2``):

1. generates its own EC P-256 key here, on the device, and sends only a CSR to
   ``$aws/certificates/create-from-csr/json`` (CreateCertificateFromCsr): the
   private key never leaves the device;
2. checks that the certificate that comes back carries exactly that key;
3. calls ``$aws/provisioning-templates/{template}/provision/json`` (RegisterThing)
   with the certificate ownership token and the template parameters (e.g.
   ``SerialNumber``): the template creates the thing, attaches the device policy
   and activates the certificate;
4. puts ``private.pem.key`` (mode 0600), ``device.pem.crt`` and a record of the
   result (``fleet-provisioning.json``) in place.

Nothing is in place before everything has succeeded: the key and certificate are
written to temporary names (the key created 0600, never readable by others) and
made durable before RegisterThing, then renamed into place, the record last. The
record marks a finished run: a second run finds it with a matching key and
certificate and does nothing (unless ``force``); a directory that holds only part
of the set is reported rather than guessed about.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config import AWS_REGION_RE
from gateway.errors import GatewayError
from gateway.files import owner_ids, root_ca_pem
from gateway.pki import generate_key

log = logging.getLogger(__name__)

#: File names in ``out_dir``: the same names ``wsn-gateway provision`` writes and the
#: example configurations use.
CERT_FILE = "device.pem.crt"
KEY_FILE = "private.pem.key"
#: Written last: its presence (with a key and certificate that belong together) marks
#: a finished run.
RECORD_FILE = "fleet-provisioning.json"

#: The reserved topics of the fleet provisioning MQTT API (JSON payload format).
CREATE_FROM_CSR_TOPIC = "$aws/certificates/create-from-csr/json"
PROVISION_TOPIC = "$aws/provisioning-templates/{template}/provision/json"
RESPONSE_SUFFIXES = ("accepted", "rejected")

#: AWS IoT template names: 1 to 36 characters of letters, digits, ``-`` and ``_``.
_TEMPLATE_RE = re.compile(r"^[0-9A-Za-z_-]{1,36}$")
_ACCOUNT_RE = re.compile(r"^[0-9]{12}$")
#: AWS IoT Core refuses a longer MQTT client id.
_MAX_CLIENT_ID_BYTES = 128
#: Seconds to wait for the MQTT DISCONNECT to finish at the end.
_DISCONNECT_WAIT = 1.0


class FleetProvisioningError(GatewayError):
    """Fleet provisioning did not finish; the message says what to do.

    ``step`` names the API call that failed (``CreateCertificateFromCsr`` or
    ``RegisterThing``) when one did; ``status_code``, ``error_code`` and
    ``error_message`` are those of AWS IoT's rejection, when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        step: str | None = None,
        status_code: int | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.step = step
        self.status_code = status_code
        self.error_code = error_code
        self.error_message = error_message


@dataclass(frozen=True)
class FleetResult:
    """The device's new identity, or the one a previous run gave it."""

    thing_name: str
    certificate_id: str
    cert_path: Path
    key_path: Path
    record_path: Path
    device_configuration: dict[str, Any] = field(default_factory=dict)
    #: True when ``out_dir`` already held a finished run and nothing was done.
    already_provisioned: bool = False


def claim_policy_document(region: str, account: str, template: str) -> dict[str, Any]:
    """The least-privilege AWS IoT policy for the claim certificate.

    It can connect, publish the two requests of fleet provisioning by CSR, subscribe
    to and receive their answers, for the one template, and nothing else: a claim
    certificate copied off a device can do no more than provision devices.
    """
    _check_template(template)
    if not AWS_REGION_RE.match(region):
        raise ValueError(f"not an AWS region: {region!r} (e.g. eu-west-1)")
    if not _ACCOUNT_RE.match(account):
        raise ValueError(f"not an AWS account id: {account!r} (12 digits)")
    partition = _partition(region)

    def arn(kind: str, name: str) -> str:
        return f"arn:{partition}:iot:{region}:{account}:{kind}/{name}"

    requests = [CREATE_FROM_CSR_TOPIC, PROVISION_TOPIC.format(template=template)]
    responses = [f"{topic}/{suffix}" for topic in requests for suffix in RESPONSE_SUFFIXES]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": arn("client", "*")},
            {
                "Effect": "Allow",
                "Action": "iot:Publish",
                "Resource": [arn("topic", topic) for topic in requests],
            },
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": [arn("topicfilter", topic) for topic in responses],
            },
            {
                "Effect": "Allow",
                "Action": "iot:Receive",
                "Resource": [arn("topic", topic) for topic in responses],
            },
        ],
    }


def provisioning_template_document(
    *, policy_name: str = "wsn-gateway", thing_name_prefix: str = "wsn-"
) -> dict[str, Any]:
    """A fleet provisioning template for these gateways.

    It takes a ``SerialNumber`` parameter, creates (or finds) the thing
    ``{thing_name_prefix}{SerialNumber}`` with the serial as an attribute, attaches
    the existing device policy ``policy_name`` and activates the certificate.
    """
    return {
        "Parameters": {
            "SerialNumber": {"Type": "String"},
            "AWS::IoT::Certificate::Id": {"Type": "String"},
        },
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "Properties": {
                    "ThingName": {"Fn::Join": ["", [thing_name_prefix, {"Ref": "SerialNumber"}]]},
                    "AttributePayload": {"serial": {"Ref": "SerialNumber"}},
                },
                "OverrideSettings": {
                    "AttributePayload": "MERGE",
                    "ThingTypeName": "REPLACE",
                    "ThingGroups": "DO_NOTHING",
                },
            },
            "certificate": {
                "Type": "AWS::IoT::Certificate",
                "Properties": {
                    "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"},
                    "Status": "Active",
                },
            },
            "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": policy_name}},
        },
    }


def provision_by_claim(
    *,
    endpoint: str,
    claim_cert: Path,
    claim_key: Path,
    template: str,
    parameters: Mapping[str, str],
    client_id: str,
    out_dir: Path,
    port: int = 8883,
    ca: Path | None = None,
    timeout: float = 30.0,
    force: bool = False,
    owner: str | None = None,
) -> FleetResult:
    """Give this device its own certificate and thing through fleet provisioning by claim.

    ``endpoint``/``port``: the account's AWS IoT data endpoint (``xxx-ats.iot.<region>
    .amazonaws.com``; 8883, or 443 with ALPN). ``ca``: the CA bundle that verifies
    it, by default the Amazon root CAs shipped with the gateway. ``claim_cert`` /
    ``claim_key``: the shared claim certificate of the factory image. ``template``:
    the fleet provisioning template; ``parameters``: what it takes (``SerialNumber``).
    ``client_id``: the MQTT client id during provisioning, unique per device (its
    serial). ``out_dir`` receives ``private.pem.key``, ``device.pem.crt`` and
    ``fleet-provisioning.json``; run as root, ``owner`` (a user name) gets them.
    ``timeout`` bounds the whole exchange.

    If ``out_dir`` already holds a finished run, returns it with
    ``already_provisioned`` set and does nothing, unless ``force``. Raises
    :class:`FleetProvisioningError`, and then leaves no new file in ``out_dir``.
    """
    _check_template(template)
    if not client_id or len(client_id.encode()) > _MAX_CLIENT_ID_BYTES:
        raise FleetProvisioningError(
            f"client id must be 1 to {_MAX_CLIENT_ID_BYTES} bytes (got {client_id!r}); "
            "use the device's serial number"
        )
    if timeout <= 0:
        raise FleetProvisioningError(f"timeout must be positive (got {timeout})")
    params = dict(parameters)
    for name, value in params.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise FleetProvisioningError(
                f"template parameters are strings (got {name!r}: {value!r})"
            )
    try:
        uid_gid = owner_ids(owner)
    except GatewayError as err:
        raise FleetProvisioningError(str(err)) from None

    files = _Files(out_dir)
    files.remove_stale_temporaries()
    if not force:
        previous = files.previous_run()
        if previous is not None:
            log.info("%s already holds %s: nothing to do", out_dir, previous.thing_name)
            return previous

    claim_cert_pem, claim_key_pem = _read_claim(claim_cert, claim_key)
    ca_pem = _read_ca(ca)
    sdk = _Sdk.load()

    key = generate_key("ec")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    csr = _csr(key, client_id)
    deadline = time.monotonic() + timeout

    with _connected(
        sdk,
        endpoint=endpoint,
        port=port,
        ca_pem=ca_pem,
        cert_pem=claim_cert_pem,
        key_pem=claim_key_pem,
        client_id=client_id,
        deadline=deadline,
        timeout=timeout,
    ) as connection:
        identity = sdk.identity_client(connection, deadline - time.monotonic())
        created = _call(
            "CreateCertificateFromCsr",
            identity.create_certificate_from_csr(
                sdk.iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr)
            ),
            deadline=deadline,
            timeout=timeout,
            template=template,
            parameters=params,
        )
        certificate_id, cert = _check_certificate(created, key)
        token = getattr(created, "certificate_ownership_token", None)
        if not isinstance(token, str) or not token:
            raise FleetProvisioningError(
                "CreateCertificateFromCsr answered without a certificateOwnershipToken: "
                "nothing was written; run again",
                step="CreateCertificateFromCsr",
            )
        with files.staged(uid_gid) as staged:
            # Written and made durable before the thing is registered: a full disk
            # shows up now, not after AWS IoT has activated a certificate whose key
            # was lost.
            staged.write_key(key)
            staged.write_cert(cert)
            registered = _call(
                "RegisterThing",
                identity.register_thing(
                    sdk.iotidentity.RegisterThingRequest(
                        template_name=template,
                        certificate_ownership_token=token,
                        parameters=params,
                    )
                ),
                deadline=deadline,
                timeout=timeout,
                template=template,
                parameters=params,
            )
            thing_name = getattr(registered, "thing_name", None)
            if not isinstance(thing_name, str) or not thing_name:
                raise FleetProvisioningError(
                    f"RegisterThing answered without a thingName: the template {template!r} "
                    "must create an AWS::IoT::Thing resource; nothing was written",
                    step="RegisterThing",
                )
            configuration = getattr(registered, "device_configuration", None) or {}
            record = {
                "thingName": thing_name,
                "certificateId": certificate_id,
                "template": template,
                "endpoint": endpoint,
                "clientId": client_id,
                "deviceConfiguration": configuration,
                "provisionedAt": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            staged.write_record(record)
            staged.commit()
    log.info("provisioned thing %s with certificate %s", thing_name, certificate_id)
    return FleetResult(
        thing_name=thing_name,
        certificate_id=certificate_id,
        cert_path=files.cert,
        key_path=files.key,
        record_path=files.record,
        device_configuration=dict(configuration),
    )


# --------------------------------------------------------------------------- checks


def _check_template(template: str) -> None:
    if not _TEMPLATE_RE.match(template):
        raise FleetProvisioningError(
            f"not a provisioning template name: {template!r} (1 to 36 letters, digits, '-' or '_')"
        )


def _partition(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def _spki(public_key: Any) -> bytes:
    der: bytes = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _read_claim(cert_path: Path, key_path: Path) -> tuple[bytes, bytes]:
    """The claim certificate and key, checked before anything goes on the network."""
    hint = (
        "the claim certificate and key are part of the factory image "
        "(aws iot create-keys-and-certificate --set-as-active, with the claim policy attached)"
    )
    try:
        cert_pem = cert_path.read_bytes()
    except OSError as err:
        raise FleetProvisioningError(
            f"{cert_path}: cannot read the claim certificate: {err.strerror}; {hint}"
        ) from err
    try:
        key_pem = key_path.read_bytes()
    except OSError as err:
        raise FleetProvisioningError(
            f"{key_path}: cannot read the claim key: {err.strerror}; {hint}"
        ) from err
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise FleetProvisioningError(f"{cert_path}: not a PEM certificate; {hint}") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise FleetProvisioningError(
            f"{key_path}: not an unencrypted PEM private key; {hint}"
        ) from None
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise FleetProvisioningError(
            f"{key_path} is not the key of the claim certificate {cert_path}: "
            "give the key file that was created with it"
        )
    if cert.not_valid_after_utc < dt.datetime.now(dt.UTC):
        raise FleetProvisioningError(
            f"{cert_path}: the claim certificate expired on {cert.not_valid_after_utc:%Y-%m-%d} "
            "(or the clock is wrong): create a new claim certificate for the image"
        )
    return cert_pem, key_pem


def _read_ca(ca: Path | None) -> bytes:
    if ca is not None:
        try:
            data = ca.read_bytes()
        except OSError as err:
            raise FleetProvisioningError(
                f"{ca}: cannot read the CA certificate: {err.strerror}; for AWS IoT Core "
                "give Amazon Root CA 1 (https://www.amazontrust.com/repository/AmazonRootCA1.pem)"
            ) from err
        if b"-----BEGIN CERTIFICATE-----" not in data:
            raise FleetProvisioningError(f"{ca}: not a PEM certificate bundle")
        return data
    try:
        return root_ca_pem()
    except OSError:
        raise FleetProvisioningError(
            "no CA bundle given and none shipped with this installation: give the CA "
            "certificate of the endpoint (Amazon Root CA 1 for AWS IoT Core)"
        ) from None


def _csr(key: ec.EllipticCurvePrivateKey, client_id: str) -> str:
    """A PEM CSR for ``key``. AWS IoT takes only the public key from it."""
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, client_id[:64])]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _check_certificate(
    response: Any, key: ec.EllipticCurvePrivateKey
) -> tuple[str, x509.Certificate]:
    """The certificate AWS IoT issued, if it is one and carries this device's key."""
    pem = getattr(response, "certificate_pem", None)
    try:
        cert = x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else b"")
    except ValueError:
        raise FleetProvisioningError(
            "CreateCertificateFromCsr answered without a PEM certificate: nothing was "
            "written; run again",
            step="CreateCertificateFromCsr",
        ) from None
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    certificate_id = getattr(response, "certificate_id", None)
    if not isinstance(certificate_id, str) or not certificate_id:
        certificate_id = digest
    if _spki(cert.public_key()) != _spki(key.public_key()):
        raise FleetProvisioningError(
            f"the certificate {certificate_id} that CreateCertificateFromCsr returned does "
            "not carry this device's public key: it was not registered and nothing was "
            "written; run again (the unused certificate stays PENDING_ACTIVATION in AWS IoT, "
            "where it can be deleted)",
            step="CreateCertificateFromCsr",
        )
    if certificate_id != digest:
        log.warning(
            "certificate id %s is not the SHA-256 of the certificate (%s)", certificate_id, digest
        )
    return certificate_id, cert


# --------------------------------------------------------------------------- SDK


@dataclass(frozen=True)
class _Sdk:
    """The parts of awsiotsdk / awscrt used here, imported only when needed (extra 'aws')."""

    iotidentity: Any
    builder: Any
    request_response: Any
    exceptions: Any

    @classmethod
    def load(cls) -> _Sdk:
        try:
            # Optional dependency: pip install 'wsn-gateway[aws]'.
            from awscrt import (  # type: ignore[import-untyped,unused-ignore]  # noqa: PLC0415
                exceptions,
                mqtt_request_response,
            )
            from awsiot import (  # type: ignore[import-untyped,unused-ignore]  # noqa: PLC0415
                iotidentity,
                mqtt_connection_builder,
            )
        except ImportError as err:
            raise FleetProvisioningError(
                f"fleet provisioning needs the AWS IoT Device SDK ({err}): "
                "pip install 'wsn-gateway[aws]'"
            ) from err
        if not hasattr(iotidentity, "IotIdentityClientV2"):
            raise FleetProvisioningError(
                "this awsiotsdk has no IotIdentityClientV2: pip install --upgrade awsiotsdk"
            )
        return cls(iotidentity, mqtt_connection_builder, mqtt_request_response, exceptions)

    def identity_client(self, connection: Any, remaining: float) -> Any:
        options = self.request_response.ClientOptions(
            max_request_response_subscriptions=2,
            max_streaming_subscriptions=0,
            operation_timeout_in_seconds=max(1, math.ceil(remaining)),
        )
        return self.iotidentity.IotIdentityClientV2(connection, options)


@contextlib.contextmanager
def _connected(
    sdk: _Sdk,
    *,
    endpoint: str,
    port: int,
    ca_pem: bytes,
    cert_pem: bytes,
    key_pem: bytes,
    client_id: str,
    deadline: float,
    timeout: float,
) -> Iterator[Any]:
    """An MQTT 3.1.1 connection with the claim certificate (mutual TLS), closed at the end."""
    where = f"{endpoint}:{port}"
    connection = sdk.builder.mtls_from_bytes(
        cert_bytes=cert_pem,
        pri_key_bytes=key_pem,
        ca_bytes=ca_pem,
        endpoint=endpoint,
        port=port,
        client_id=client_id,
        clean_session=True,
        keep_alive_secs=60,
        tcp_connect_timeout_ms=max(1, int(max(0.0, deadline - time.monotonic()) * 1000)),
    )
    future: concurrent.futures.Future[Any] = connection.connect()
    try:
        future.result(timeout=max(0.0, deadline - time.monotonic()))
    except concurrent.futures.TimeoutError:
        # The SDK cannot cancel a connect in progress: close it should it still succeed.
        future.add_done_callback(lambda done: done.exception() or connection.disconnect())
        raise FleetProvisioningError(
            f"no connection to {where} within {timeout:g} s (the TLS handshake or CONNACK "
            "never came): check that the endpoint is the account's AWS IoT data endpoint "
            "(aws iot describe-endpoint --endpoint-type iot:Data-ATS), that this network "
            f"lets TCP port {port} out, and try again"
        ) from None
    except Exception as err:
        raise _connect_error(err, where, port) from err
    try:
        yield connection
    finally:
        try:
            # Prompt after a normal exchange; after a request that went unanswered the
            # SDK can take seconds, and the connection finishes closing on its own.
            connection.disconnect().result(timeout=_DISCONNECT_WAIT)
        except Exception as err:  # closing is best effort
            log.debug("disconnect from %s: %s", where, err)


def _crt_name(err: BaseException | None) -> str:
    name = getattr(err, "name", None)
    return name if isinstance(name, str) else type(err).__name__


def _connect_error(err: BaseException, where: str, port: int) -> FleetProvisioningError:
    name = _crt_name(err)
    detail = str(err) or name
    if err.args and type(err.args[0]).__name__ == "ConnectReturnCode":
        return FleetProvisioningError(
            f"{where} refused the MQTT connection ({err.args[0]!r}): the claim certificate "
            "must be ACTIVE in AWS IoT with the claim policy attached, and the client id "
            "allowed by its iot:Connect statement"
        )
    if name == "AWS_IO_SOCKET_CONNECTION_REFUSED":
        return FleetProvisioningError(
            f"connection refused by {where}: check the endpoint and the port (AWS IoT Core "
            "takes mutual TLS on 8883, or on 443 with ALPN)"
        )
    if name.startswith("AWS_IO_DNS"):
        return FleetProvisioningError(
            f"cannot resolve the endpoint of {where} ({detail}): check the host name "
            "(aws iot describe-endpoint --endpoint-type iot:Data-ATS) and the device's DNS"
        )
    if name.startswith("AWS_IO_SOCKET") or name == "AWS_ERROR_MQTT_TIMEOUT":
        return FleetProvisioningError(
            f"cannot reach {where} ({detail}): check the network, and that TCP port {port} "
            "is allowed out"
        )
    if name.startswith("AWS_IO_TLS") or name == "AWS_ERROR_MQTT_UNEXPECTED_HANGUP":
        return FleetProvisioningError(
            f"the TLS handshake with {where} failed ({detail}): check that the CA bundle "
            "verifies the endpoint (Amazon Root CA 1 for AWS IoT Core), that the claim "
            "certificate is registered and ACTIVE in this account and region with the claim "
            "policy attached, and that the device's clock is right"
        )
    return FleetProvisioningError(f"cannot connect to {where}: {detail}")


def _call(
    step: str,
    future: concurrent.futures.Future[Any],
    *,
    deadline: float,
    timeout: float,
    template: str,
    parameters: Mapping[str, str],
) -> Any:
    """The response of one request, or an error that says what to do."""
    try:
        return future.result(timeout=max(0.0, deadline - time.monotonic()))
    except concurrent.futures.TimeoutError:
        raise _no_answer(step, timeout, template) from None
    except Exception as err:
        raise _request_error(step, err, timeout, template, parameters) from err


def _policy_hint(template: str) -> str:
    return (
        "the claim certificate's policy must allow iot:Publish, iot:Subscribe and "
        "iot:Receive on $aws/certificates/create-from-csr/* and "
        f"$aws/provisioning-templates/{template}/provision/* "
        "(wsn-gateway prints it: see docs/fleet-provisioning.md)"
    )


def _no_answer(step: str, timeout: float, template: str) -> FleetProvisioningError:
    return FleetProvisioningError(
        f"no answer to {step} within {timeout:g} s: AWS IoT drops requests and answers that "
        f"the policy does not allow without telling; {_policy_hint(template)}",
        step=step,
    )


def _request_error(
    step: str,
    err: BaseException,
    timeout: float,
    template: str,
    parameters: Mapping[str, str],
) -> FleetProvisioningError:
    modeled = getattr(err, "modeled_error", None)
    if modeled is not None:
        return _rejected(step, modeled, template, parameters)
    inner = getattr(err, "inner_error", None) or err
    name = _crt_name(inner)
    if name == "AWS_ERROR_MQTT_REQUEST_RESPONSE_TIMEOUT":
        return _no_answer(step, timeout, template)
    if name in (
        "AWS_ERROR_MQTT_REQUEST_RESPONSE_SUBSCRIBE_FAILURE",
        "AWS_ERROR_MQTT_CONNECTION_SUBSCRIBE_FAILURE",
        "AWS_ERROR_MQTT_REQUEST_RESPONSE_PUBLISH_FAILURE",
    ):
        return FleetProvisioningError(
            f"{step}: the broker refused to subscribe to or publish the answer topics "
            f"({name}); {_policy_hint(template)}",
            step=step,
        )
    if "HANGUP" in name or "SHUT" in name or "CONNECTION" in name or "NOT_CONNECTED" in name:
        return FleetProvisioningError(
            f"{step}: the broker closed the connection ({name}); AWS IoT disconnects a "
            f"client that publishes where its policy does not allow: {_policy_hint(template)}",
            step=step,
        )
    return FleetProvisioningError(f"{step} failed: {inner}", step=step)


def _rejected(
    step: str, modeled: Any, template: str, parameters: Mapping[str, str]
) -> FleetProvisioningError:
    status = getattr(modeled, "status_code", None)
    code = getattr(modeled, "error_code", None)
    message = getattr(modeled, "error_message", None)
    status_code = status if isinstance(status, int) else None
    error_code = code if isinstance(code, str) else None
    error_message = message if isinstance(message, str) else None
    shown = f"{status_code} {error_code}: {error_message}"
    if step == "RegisterThing":
        sent = ", ".join(sorted(parameters)) or "none"
        hints = {
            400: f"the template {template!r} did not accept the request: check that its "
            f"Parameters section takes what the device sends (sent: {sent}); an expired "
            "ownership token (they last an hour) needs a new run",
            401: "the template's provisioning role may not register things: give it the "
            "AWSIoTThingsRegistration managed policy",
            403: "the template's provisioning role may not register things (give it the "
            "AWSIoTThingsRegistration managed policy), or its pre-provisioning hook refused "
            "this device",
            404: f"there is no provisioning template {template!r} in this account and region, "
            "or it is disabled (aws iot describe-provisioning-template --template-name "
            f"{template})",
            409: "the thing exists and conflicts with the template (its OverrideSettings say "
            "FAIL), or the serial number was provisioned before",
        }
    else:
        hints = {
            400: "AWS IoT did not accept the CSR; this is unexpected: run again, and report it "
            "if it persists",
            401: _policy_hint(template),
            403: _policy_hint(template),
        }
    if status_code is not None and status_code in hints:
        hint = hints[status_code]
    elif status_code == 429:
        hint = "AWS IoT throttled the request: wait a minute and run again"
    elif status_code is not None and status_code >= 500:
        hint = "an error on the AWS side: run again later"
    else:
        hint = "see docs/fleet-provisioning.md"
    if step == "RegisterThing":
        hint += (
            "; the certificate created for this device stays PENDING_ACTIVATION in AWS IoT "
            "and can be deleted"
        )
    return FleetProvisioningError(
        f"{step} rejected by AWS IoT ({shown}); nothing was written. {hint}",
        step=step,
        status_code=status_code,
        error_code=error_code,
        error_message=error_message,
    )


# --------------------------------------------------------------------------- files


class _Files:
    """The key, certificate and record in ``out_dir``: found, staged, put in place."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.key = out_dir / KEY_FILE
        self.cert = out_dir / CERT_FILE
        self.record = out_dir / RECORD_FILE

    def _temporary_prefix(self, path: Path) -> str:
        return f".{path.name}."

    def remove_stale_temporaries(self) -> None:
        """Temporary files a run left behind when it was killed: they are never used."""
        if not self.out_dir.is_dir():
            return
        for path in (self.key, self.cert, self.record):
            for stale in self.out_dir.glob(f"{self._temporary_prefix(path)}*.tmp"):
                with contextlib.suppress(OSError):
                    stale.unlink()

    def previous_run(self) -> FleetResult | None:
        """The result of a finished run in ``out_dir``, None when there is none at all."""
        present = [path for path in (self.key, self.cert, self.record) if path.exists()]
        if not present:
            return None
        redo = "run again with --force to provision this device anew (a new certificate)"
        if len(present) < 3:
            names = ", ".join(path.name for path in present)
            missing = ", ".join(
                path.name for path in (self.key, self.cert, self.record) if path not in present
            )
            raise FleetProvisioningError(
                f"{self.out_dir} holds {names} but not {missing}: not the result of a "
                "finished fleet provisioning run (an interrupted run, or a device "
                f"provisioned another way); keep the files and use them, or {redo}"
            )
        try:
            record = json.loads(self.record.read_text())
            cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
            key = serialization.load_pem_private_key(self.key.read_bytes(), password=None)
            thing_name = record["thingName"]
            certificate_id = record["certificateId"]
        except (OSError, ValueError, TypeError, KeyError, UnsupportedAlgorithm) as err:
            raise FleetProvisioningError(
                f"{self.out_dir}: cannot read the result of the previous run ({err}); {redo}"
            ) from err
        if _spki(key.public_key()) != _spki(cert.public_key()):
            raise FleetProvisioningError(f"{self.key} does not belong to {self.cert}; {redo}")
        if not isinstance(thing_name, str) or not isinstance(certificate_id, str):
            raise FleetProvisioningError(f"{self.record}: not a fleet provisioning record; {redo}")
        configuration = record.get("deviceConfiguration")
        return FleetResult(
            thing_name=thing_name,
            certificate_id=certificate_id,
            cert_path=self.cert,
            key_path=self.key,
            record_path=self.record,
            device_configuration=configuration if isinstance(configuration, dict) else {},
            already_provisioned=True,
        )

    @contextlib.contextmanager
    def staged(self, owner: tuple[int, int] | None) -> Iterator[_Staged]:
        """Temporary files beside the final ones; whatever is not committed is removed,
        and so is ``out_dir`` if it was made here and nothing was put in it."""
        created = not self.out_dir.exists()
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise FleetProvisioningError(f"{self.out_dir}: cannot create: {err}") from err
        staged = _Staged(self, owner)
        try:
            yield staged
        except BaseException:
            staged.discard()
            if created:
                with contextlib.suppress(OSError):
                    self.out_dir.rmdir()
            raise
        staged.discard()


class _Staged:
    def __init__(self, files: _Files, owner: tuple[int, int] | None) -> None:
        self.files = files
        self.owner = owner
        self.temporaries: dict[Path, Path] = {}  # final path -> temporary path

    def _write(self, final: Path, data: bytes, mode: int) -> None:
        try:
            # mkstemp creates the file with mode 0600: the key is never readable by others.
            fd, name = tempfile.mkstemp(
                dir=self.files.out_dir, prefix=self.files._temporary_prefix(final), suffix=".tmp"
            )
        except OSError as err:
            raise FleetProvisioningError(f"{self.files.out_dir}: cannot write: {err}") from err
        temporary = Path(name)
        self.temporaries[final] = temporary
        try:
            with os.fdopen(fd, "wb") as fh:
                if mode != 0o600:
                    os.fchmod(fh.fileno(), mode)
                if self.owner is not None:
                    os.fchown(fh.fileno(), *self.owner)
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:
            raise FleetProvisioningError(f"{final}: cannot write: {err}") from err

    def write_key(self, key: ec.EllipticCurvePrivateKey) -> None:
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._write(self.files.key, pem, 0o600)

    def write_cert(self, cert: x509.Certificate) -> None:
        self._write(self.files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def write_record(self, record: dict[str, Any]) -> None:
        text = json.dumps(record, indent=2, sort_keys=True) + "\n"
        self._write(self.files.record, text.encode(), 0o644)

    def commit(self) -> None:
        """Rename into place: the record goes first out of the way, and last back in."""
        files = self.files
        try:
            # Replacing an earlier set (force): without its record, an interruption
            # between the renames leaves a set that the next run reports as incomplete.
            files.record.unlink(missing_ok=True)
            _fsync_directory(files.out_dir)
            for final in (files.key, files.cert, files.record):
                self.temporaries.pop(final).replace(final)
            _fsync_directory(files.out_dir)
        except OSError as err:
            raise FleetProvisioningError(
                f"{files.out_dir}: cannot put the new key and certificate in place: {err}"
            ) from err

    def discard(self) -> None:
        for temporary in self.temporaries.values():
            with contextlib.suppress(OSError):
                temporary.unlink()
        self.temporaries.clear()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
