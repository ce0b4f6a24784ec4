"""``wsn-gateway provision``: from AWS credentials to a gateway that can connect.

With boto3 and the credentials of the person installing the gateway, it
creates (or finds) the AWS IoT thing, gets a certificate for a private key
generated here (the key never leaves the device: AWS signs a CSR), attaches the
fleet's least-privilege policy (:mod:`gateway.iot_policy`), finds the account's
ATS data endpoint, registers the gateway's Ed25519 signing key on the thing
(attributes the cloud-side verifier reads), and writes the certificate, the key
(mode 0600), the Amazon root CAs and the configuration.

Every step first looks at what exists, so running it again changes nothing;
``--dry-run`` only looks. Conflicts that could hurt another gateway (a thing
that belongs to other certificates, a shared policy with another document) stop
with an explanation instead of being overwritten.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from gateway.config import AWS_REGION_RE
from gateway.errors import GatewayError
from gateway.files import owner_ids, root_ca_pem, write_atomically
from gateway.iot_policy import PolicyScope, device_policy, provisioning_iam_policy
from gateway.pki import generate_key
from gateway.provision_config import ConfigPlan, ProvisionedConfig, apply_config, plan_config
from gateway.signing import load_or_create_ed25519

#: Thing attributes that carry the gateway's Ed25519 signing key for the cloud side.
KID_ATTRIBUTE = "wsn_signing_kid"
KEY_ATTRIBUTE = "wsn_signing_key"
#: File names in the configuration directory (the names systemd/install.sh copies).
CERT_FILE = "device.pem.crt"
KEY_FILE = "private.pem.key"
CA_FILE = "AmazonRootCA1.pem"
#: AWS IoT keeps at most five versions of a policy.
MAX_POLICY_VERSIONS = 5
#: The service user systemd/install.sh creates; it must own the private keys.
SERVICE_USER = "wsn-gateway"

_THING_RE = re.compile(r"^[a-zA-Z0-9:_-]{1,128}$")
_RULE_RE = re.compile(r"^[a-zA-Z0-9_]{1,128}$")
_DENIED = {"AccessDeniedException", "AccessDenied", "UnauthorizedException"}


class ProvisionError(GatewayError):
    """Provisioning cannot go on; the message says what to do."""


class ProvisionUsageError(ProvisionError):
    """A bad option: nothing was asked of AWS."""


@dataclass(frozen=True)
class ProvisionOptions:
    """What to provision, and where to write it."""

    thing: str
    region: str
    config_path: Path = Path("/etc/wsn-gateway/gateway.yaml")
    state_dir: Path = Path("/var/lib/wsn-gateway")
    policy_name: str = "wsn-gateway"
    basic_ingest_rule: str | None = None
    role_alias: str | None = None
    log_group: str = "/wsn-gateway"
    shadow: bool = True
    shadow_name: str | None = None
    signing: str = "ed25519"
    adopt: bool = False
    update_policy: bool = False
    owner: str | None = None
    dry_run: bool = False

    @property
    def config_dir(self) -> Path:
        return self.config_path.parent

    @property
    def cert_path(self) -> Path:
        return self.config_dir / CERT_FILE

    @property
    def key_path(self) -> Path:
        return self.config_dir / KEY_FILE

    @property
    def ca_path(self) -> Path:
        return self.config_dir / CA_FILE

    @property
    def signing_key_path(self) -> Path:
        return self.state_dir / "signing-ed25519.pem"

    @property
    def topic(self) -> str:
        base = "dt/wsn/{thing}/telemetry"
        if self.basic_ingest_rule is None:
            return base
        return f"$aws/rules/{self.basic_ingest_rule}/{base}"


@dataclass
class ProvisionResult:
    """What provisioning found or did, for the summary and the tests."""

    thing: str
    endpoint: str
    certificate_id: str
    certificate_arn: str
    policy_name: str
    signing_kid: str | None
    credentials_endpoint: str | None = None
    changes: list[str] = field(default_factory=list)


def check_options(options: ProvisionOptions) -> None:
    """Refuse bad names before any AWS call (AWS's own messages are vaguer)."""
    if not _THING_RE.match(options.thing):
        raise ProvisionUsageError(
            f"--thing {options.thing!r}: a thing name is 1 to 128 letters, digits, "
            "':', '_' or '-' (it is also the MQTT client id)"
        )
    if options.basic_ingest_rule is not None and not _RULE_RE.match(options.basic_ingest_rule):
        raise ProvisionUsageError(
            f"--basic-ingest {options.basic_ingest_rule!r}: an AWS IoT rule name is letters, "
            "digits and '_' only (the stack's output TelemetryRuleName, e.g. wsn_telemetry)"
        )
    if not AWS_REGION_RE.match(options.region):
        raise ProvisionUsageError(
            f"--region {options.region!r}: give an AWS region such as eu-west-1"
        )
    if options.signing not in ("ed25519", "certificate"):
        raise ProvisionUsageError(f"--signing {options.signing!r}: use ed25519 or certificate")


def certificate_id(cert: x509.Certificate) -> str:
    """AWS IoT's certificate id: the lowercase hex SHA-256 of the DER certificate."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signing_attributes(key: ed25519.Ed25519PublicKey, kid: str) -> dict[str, str]:
    """Thing attributes for the Ed25519 signing key: its kid and its raw public key."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {KID_ATTRIBUTE: kid, KEY_ATTRIBUTE: _b64url(raw)}


def build_csr(key: ec.EllipticCurvePrivateKey, thing: str) -> str:
    """A PEM CSR for ``key`` with the thing name as common name."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, thing)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ) == key.public_key().public_bytes(serialization.Encoding.DER, spki)


class Provisioner:
    """Runs the steps against AWS IoT through boto3 clients."""

    def __init__(
        self,
        options: ProvisionOptions,
        *,
        iot: Any,
        sts: Any,
        say: Callable[[str], None] = print,
    ) -> None:
        self.options = options
        self.iot = iot
        self.sts = sts
        self.say = say
        self.changes: list[str] = []

    # --- helpers -------------------------------------------------------------------
    def _change(self, text: str) -> None:
        """Report a change: done, or only planned under --dry-run."""
        self.changes.append(text)
        self.say(("would " if self.options.dry_run else "") + text)

    def _note(self, text: str) -> None:
        self.say(f"ok: {text}")

    @contextmanager
    def _aws(self, action: str) -> Iterator[None]:
        """Turn boto3's failures into messages that say what to do."""
        from botocore.exceptions import (  # noqa: PLC0415 - optional dependency
            BotoCoreError,
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            NoRegionError,
        )

        try:
            yield
        except NoCredentialsError as err:
            raise ProvisionError(
                "no AWS credentials found: run `aws configure` (or set AWS_PROFILE, or "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) for an identity allowed the "
                "actions listed by `wsn-gateway provision --print-iam-policy`"
            ) from err
        except NoRegionError as err:
            raise ProvisionError("no AWS region: pass --region (e.g. eu-west-1)") from err
        except EndpointConnectionError as err:
            raise ProvisionError(
                f"cannot reach AWS IoT in {self.options.region} ({err}): check the network "
                "and --region"
            ) from err
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            message = err.response.get("Error", {}).get("Message", str(err))
            if code in _DENIED:
                raise ProvisionError(
                    f"AWS refused {action} for the credentials in use ({message}): allow "
                    "the actions listed by `wsn-gateway provision --print-iam-policy` "
                    "for this identity"
                ) from err
            if code in ("InvalidClientTokenId", "UnrecognizedClientException"):
                raise ProvisionError(
                    f"AWS does not know these credentials ({message}): check `aws configure`"
                ) from err
            raise ProvisionError(f"{action} failed: {code}: {message}") from err
        except BotoCoreError as err:
            raise ProvisionError(f"{action} failed: {err}") from err

    def _exists(self, action: str, call: Callable[[], Any]) -> Any | None:
        """The response of a describe/get call, or None when the resource is absent."""
        from botocore.exceptions import ClientError  # noqa: PLC0415

        with self._aws(action):
            try:
                return call()
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                    return None
                raise

    # --- the steps -----------------------------------------------------------------
    def run(self) -> ProvisionResult:
        """Provision (or with ``dry_run`` plan) everything; returns what it found."""
        o = self.options
        check_options(o)
        scope = self.scope()
        endpoint = self._endpoint("iot:Data-ATS")
        credentials_endpoint = None
        if o.role_alias is not None:
            self._check_role_alias(o.role_alias)
            credentials_endpoint = self._endpoint("iot:CredentialProvider")
        config = self._plan_config(endpoint, credentials_endpoint)
        key = self._device_key()
        cert_id, cert_arn = self._certificate(key)
        self._thing(cert_arn)
        self._policy(device_policy(scope), cert_arn)
        kid = self._signing_key()
        self._files()
        if config is not None and not o.dry_run:
            apply_config(config, owner=owner_ids(o.owner))
        return ProvisionResult(
            thing=o.thing,
            endpoint=endpoint,
            certificate_id=cert_id,
            certificate_arn=cert_arn,
            policy_name=o.policy_name,
            signing_kid=kid,
            credentials_endpoint=credentials_endpoint,
            changes=self.changes,
        )

    def scope(self) -> PolicyScope:
        """The policy's scope: this account and region, and the chosen topics."""
        o = self.options
        with self._aws("sts:GetCallerIdentity"):
            identity = self.sts.get_caller_identity()
        arn = str(identity["Arn"])
        self.say(f"AWS account {identity['Account']} as {arn}, region {o.region}")
        return PolicyScope(
            region=o.region,
            account=str(identity["Account"]),
            topic=o.topic,
            shadow=o.shadow,
            shadow_name=o.shadow_name,
            role_alias=o.role_alias,
            partition=arn.split(":")[1] if arn.count(":") >= 5 else "aws",
        )

    def _endpoint(self, kind: str) -> str:
        with self._aws(f"iot:DescribeEndpoint ({kind})"):
            address = str(self.iot.describe_endpoint(endpointType=kind)["endpointAddress"])
        self._note(f"{kind} endpoint {address}")
        return address

    def _check_role_alias(self, alias: str) -> None:
        found = self._exists(
            "iot:DescribeRoleAlias", lambda: self.iot.describe_role_alias(roleAlias=alias)
        )
        if found is None:
            raise ProvisionError(
                f"role alias {alias!r} does not exist in {self.options.region}: deploy "
                "cloud/template.yaml first and pass its output RoleAliasName (or leave out "
                "--role-alias to provision without CloudWatch Logs)"
            )
        self._note(f"role alias {alias}")

    def _device_key(self) -> ec.EllipticCurvePrivateKey | None:
        """The device's TLS key: the one already here, else a new P-256 key."""
        path = self.options.key_path
        if path.exists():
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except (ValueError, TypeError, OSError) as err:
                raise ProvisionError(
                    f"{path}: cannot read the device key ({err}): move it away to create "
                    "a new key and certificate"
                ) from err
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ProvisionError(
                    f"{path}: not an EC key; move it away to create a new key and certificate"
                )
            self._note(f"device key {path} (kept)")
            return key
        self._change(f"generate an EC P-256 device key in {path} (mode 0600)")
        if self.options.dry_run:
            return None
        new_key = generate_key("ec")
        assert isinstance(new_key, ec.EllipticCurvePrivateKey)
        _write_private(path, _pem(new_key), self.options.owner)
        return new_key

    def _certificate(self, key: ec.EllipticCurvePrivateKey | None) -> tuple[str, str]:
        """The certificate of the device key in AWS IoT, created from a CSR if needed."""
        o = self.options
        if key is not None and o.cert_path.exists():
            try:
                cert = x509.load_pem_x509_certificate(o.cert_path.read_bytes())
            except ValueError as err:
                raise ProvisionError(
                    f"{o.cert_path}: not a PEM certificate ({err}): move it away to get a new one"
                ) from err
            if not _same_key(cert, key):
                raise ProvisionError(
                    f"{o.cert_path} does not belong to {o.key_path}: move both away to "
                    "create a new pair"
                )
            cert_id = certificate_id(cert)
            found = self._exists(
                "iot:DescribeCertificate",
                lambda: self.iot.describe_certificate(certificateId=cert_id),
            )
            if found is not None:
                info = found["certificateDescription"]
                status = info.get("status")
                if status != "ACTIVE":
                    raise ProvisionError(
                        f"certificate {cert_id} is {status} in AWS IoT: activate it "
                        f"(aws iot update-certificate --certificate-id {cert_id} "
                        f"--new-status ACTIVE) or move {o.cert_path} away to get a new one"
                    )
                self._note(f"certificate {cert_id} (active)")
                return cert_id, str(info["certificateArn"])
            self.say(
                f"certificate {cert_id} is not registered in {o.region}: "
                "a new one is made from the same key"
            )
        self._change(f"create a certificate from a CSR for the device key in {o.cert_path}")
        if key is None:
            return "(new certificate)", f"arn:aws:iot:{o.region}:(account):cert/(new)"
        with self._aws("iot:CreateCertificateFromCsr"):
            response = self.iot.create_certificate_from_csr(
                certificateSigningRequest=build_csr(key, o.thing), setAsActive=True
            )
        cert = x509.load_pem_x509_certificate(str(response["certificatePem"]).encode())
        if not _same_key(cert, key):
            raise ProvisionError(
                "AWS IoT returned a certificate for another public key than the CSR's: "
                f"nothing was written; revoke certificate {response['certificateId']}"
            )
        _write_public(o.cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return str(response["certificateId"]), str(response["certificateArn"])

    def _thing(self, cert_arn: str) -> None:
        """Create the thing, or check that the existing one is this device's."""
        o = self.options
        found = self._exists(
            "iot:DescribeThing", lambda: self.iot.describe_thing(thingName=o.thing)
        )
        if found is None:
            self._change(f"create thing {o.thing}")
            if not o.dry_run:
                with self._aws("iot:CreateThing"):
                    self.iot.create_thing(thingName=o.thing)
        else:
            with self._aws("iot:ListThingPrincipals"):
                principals = list(
                    self.iot.list_thing_principals(thingName=o.thing).get("principals", [])
                )
            others = [p for p in principals if p != cert_arn]
            if others and cert_arn not in principals and not o.adopt:
                ids = ", ".join(p.rsplit("/", 1)[-1][:12] + "…" for p in others)
                raise ProvisionError(
                    f"thing {o.thing} already exists and belongs to certificate(s) {ids} that "
                    "this device does not hold: choose another --thing, or pass --adopt to "
                    "attach this device's certificate to it as well (then detach the old one)"
                )
            self._note(f"thing {o.thing} exists")
            if cert_arn in principals:
                self._note("certificate attached to the thing")
                return
        self._change(f"attach the certificate to thing {o.thing}")
        if not o.dry_run:
            with self._aws("iot:AttachThingPrincipal"):
                self.iot.attach_thing_principal(thingName=o.thing, principal=cert_arn)

    def _policy(self, document: dict[str, Any], cert_arn: str) -> None:
        """Create the fleet policy, or check the existing one, and attach it."""
        o = self.options
        name = o.policy_name
        text = json.dumps(document, indent=2)
        found = self._exists("iot:GetPolicy", lambda: self.iot.get_policy(policyName=name))
        if found is None:
            self._change(f"create policy {name}:\n{text}")
            if not o.dry_run:
                with self._aws("iot:CreatePolicy"):
                    self.iot.create_policy(policyName=name, policyDocument=text)
        elif json.loads(found["policyDocument"]) != document:
            if not o.update_policy:
                raise ProvisionError(
                    f"policy {name} exists with another document (it is shared by the "
                    "gateways provisioned with it): pass --update-policy to replace it for "
                    "all of them, or --policy NAME to use a separate one. Wanted:\n" + text
                )
            self._change(f"make a new default version of policy {name}:\n{text}")
            if not o.dry_run:
                self._new_policy_version(name, text)
        else:
            self._note(f"policy {name} is up to date")
        if cert_arn.endswith("(new)"):  # dry run: no certificate yet
            self._change(f"attach policy {name} to the certificate")
            return
        with self._aws("iot:ListAttachedPolicies"):
            attached = self._attached_policies(cert_arn)
        if name in attached:
            self._note(f"policy {name} attached to the certificate")
            return
        self._change(f"attach policy {name} to the certificate")
        if not o.dry_run:
            with self._aws("iot:AttachPolicy"):
                self.iot.attach_policy(policyName=name, target=cert_arn)

    def _attached_policies(self, cert_arn: str) -> list[str]:
        response = self.iot.list_attached_policies(target=cert_arn)
        return [str(p["policyName"]) for p in response.get("policies", [])]

    def _new_policy_version(self, name: str, text: str) -> None:
        with self._aws("iot:ListPolicyVersions"):
            versions = self.iot.list_policy_versions(policyName=name)["policyVersions"]
        if len(versions) >= MAX_POLICY_VERSIONS:
            oldest = min(
                (v for v in versions if not v.get("isDefaultVersion")),
                key=lambda v: int(v["versionId"]),
            )
            with self._aws("iot:DeletePolicyVersion"):
                self.iot.delete_policy_version(policyName=name, policyVersionId=oldest["versionId"])
        with self._aws("iot:CreatePolicyVersion"):
            self.iot.create_policy_version(policyName=name, policyDocument=text, setAsDefault=True)

    def _signing_key(self) -> str | None:
        """Create the Ed25519 signing key and register it on the thing."""
        o = self.options
        if o.signing != "ed25519":
            self._note("batches are signed with the certificate's key (kid = certificate id)")
            return None
        path = o.signing_key_path
        if o.dry_run and not path.exists():
            self._change(f"create the Ed25519 signing key {path} and register it on the thing")
            return None
        existed = path.exists()
        try:
            signer = load_or_create_ed25519(path)
        except GatewayError as err:
            raise ProvisionError(str(err)) from err
        if not existed:
            self.changes.append(f"created the Ed25519 signing key {path}")
            self.say(f"created the Ed25519 signing key {path}")
            _chown(path, o.owner)
        public = signer.key.public_key()
        assert isinstance(public, ed25519.Ed25519PublicKey)
        wanted = signing_attributes(public, signer.kid)
        found = self._exists(
            "iot:DescribeThing", lambda: self.iot.describe_thing(thingName=o.thing)
        )
        current = dict(found.get("attributes", {})) if found else {}
        if all(current.get(k) == v for k, v in wanted.items()):
            self._note(f"signing key {signer.kid[:16]}… registered on the thing")
            return signer.kid
        self._change(f"register signing key {signer.kid[:16]}… on thing {o.thing}")
        if not o.dry_run:
            with self._aws("iot:UpdateThing"):
                self.iot.update_thing(
                    thingName=o.thing, attributePayload={"attributes": wanted, "merge": True}
                )
        return signer.kid

    def _files(self) -> None:
        o = self.options
        pem = root_ca_pem()
        if o.ca_path.exists() and o.ca_path.read_bytes() == pem:
            self._note(f"Amazon root CAs in {o.ca_path}")
            return
        self._change(f"write the Amazon root CAs to {o.ca_path}")
        if not o.dry_run:
            _write_public(o.ca_path, pem)

    def _plan_config(self, endpoint: str, credentials_endpoint: str | None) -> ConfigPlan | None:
        """The configuration to write, validated before anything changes in AWS."""
        o = self.options
        plan = plan_config(
            o.config_path,
            ProvisionedConfig(
                thing=o.thing,
                state_dir=o.state_dir,
                endpoint=endpoint,
                ca=o.ca_path,
                cert=o.cert_path,
                key=o.key_path,
                topic=o.topic if o.basic_ingest_rule else None,
                shadow=o.shadow,
                shadow_name=o.shadow_name,
                signing=o.signing,
                region=o.region,
                role_alias=o.role_alias,
                credentials_endpoint=credentials_endpoint,
                log_group=o.log_group,
            ),
        )
        if plan is None:
            self._note(f"configuration {o.config_path} is up to date")
        else:
            self._change(plan.change)
        return plan


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes, owner: str | None) -> None:
    """A private key: created 0600 (never readable by others), owned by the service."""
    from gateway.signing import _create_private_file  # noqa: PLC0415 - one implementation

    try:
        _create_private_file(path, data)
    except OSError as err:
        raise ProvisionError(f"{path}: cannot write the key: {err}") from err
    _chown(path, owner)


def _write_public(path: Path, data: bytes) -> None:
    """A certificate: replaced whole, mode 0644."""
    try:
        write_atomically(path, data)
    except OSError as err:
        raise ProvisionError(f"{path}: cannot write: {err}") from err


def _chown(path: Path, owner: str | None) -> None:
    """Give a private key to the service user, when run as root."""
    ids = owner_ids(owner)
    if ids is not None:
        os.chown(path, *ids)


def default_owner() -> str | None:
    """The service user, when it exists (systemd/install.sh creates it)."""
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    return SERVICE_USER


def clients(region: str) -> tuple[Any, Any]:
    """boto3 clients for AWS IoT and STS (``AWS_ENDPOINT_URL`` is honoured by boto3)."""
    try:
        import boto3  # noqa: PLC0415 - optional: pip install 'wsn-gateway[aws]'
    except ImportError as err:
        raise ProvisionError("provisioning needs boto3: pip install 'wsn-gateway[aws]'") from err
    session = boto3.session.Session(region_name=region)
    return session.client("iot"), session.client("sts")


def iam_policy_text() -> str:
    """The IAM policy the provisioning identity needs, as JSON text."""
    return json.dumps(provisioning_iam_policy(), indent=2)
