"""``wsn-gateway provision``: its options and how they reach :mod:`gateway.provision`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from gateway.config import CONFIG_ENV, IOT_ENDPOINT_REGION_RE, default_config_path
from gateway.files import root_ca_pem, write_atomically
from gateway.iot_policy import device_policy
from gateway.provision import (
    Provisioner,
    ProvisionOptions,
    ProvisionUsageError,
    check_options,
    clients,
    default_owner,
    iam_policy_text,
)
from gateway.provision_config import ProvisionedConfig, apply_config, plan_config

DEFAULT_STATE_DIR = Path("/var/lib/wsn-gateway")


def add_parser(sub: Any) -> None:
    """The ``provision`` subcommand."""
    p = sub.add_parser(
        "provision",
        help="create the AWS IoT thing, certificate and policy, and write the configuration",
        description=(
            "With your AWS credentials (aws configure, AWS_PROFILE, ...): creates the thing, "
            "a certificate for a key generated here, the fleet's least-privilege policy, "
            "and writes the certificate, key (0600), Amazon root CAs and configuration. "
            "Idempotent: run it again to check or repair."
        ),
    )
    p.add_argument("--thing", help="AWS IoT thing name (also the MQTT client id)")
    p.add_argument("--region", help="AWS region, e.g. eu-west-1")
    p.add_argument(
        "--config",
        "-c",
        type=Path,
        default=None,
        help=f"configuration to write or update (default: ${CONFIG_ENV} or "
        "/etc/wsn-gateway/gateway.yaml); certificate and key go beside it",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the signing key lives (default: the configuration's state_dir, "
        "else /var/lib/wsn-gateway)",
    )
    p.add_argument("--policy", default="wsn-gateway", help="IoT policy name (default wsn-gateway)")
    p.add_argument(
        "--basic-ingest",
        metavar="RULE",
        default=None,
        help="publish batches through Basic Ingest to this rule ($aws/rules/RULE/...): "
        "no messaging charge (the stack's rule is wsn_telemetry)",
    )
    p.add_argument(
        "--role-alias",
        default=None,
        help="IoT role alias for CloudWatch Logs credentials (the stack's RoleAliasName); "
        "turns on log shipping",
    )
    p.add_argument("--log-group", default="/wsn-gateway", help="CloudWatch Logs group")
    p.add_argument("--no-shadow", action="store_true", help="no remote configuration by shadow")
    p.add_argument("--shadow-name", default=None, help="a named shadow instead of the classic")
    p.add_argument(
        "--signing",
        choices=("ed25519", "certificate"),
        default="ed25519",
        help="sign batches with a dedicated Ed25519 key (default) or the certificate's key",
    )
    p.add_argument(
        "--adopt",
        action="store_true",
        help="the thing exists with another certificate: attach this device's too",
    )
    p.add_argument(
        "--update-policy",
        action="store_true",
        help="the policy exists with another document: replace it (for every gateway using it)",
    )
    p.add_argument("--dry-run", action="store_true", help="only look, and say what would change")
    claim = p.add_argument_group(
        "fleet provisioning by claim (no AWS credentials on the device: docs/fleet-provisioning.md)"
    )
    claim.add_argument("--claim-cert", type=Path, help="the factory image's claim certificate")
    claim.add_argument("--claim-key", type=Path, help="the claim certificate's private key")
    claim.add_argument("--template", help="the fleet provisioning template's name")
    claim.add_argument("--serial", help="this device's serial number (SerialNumber parameter)")
    claim.add_argument("--endpoint", help="the account's ATS data endpoint (xxx-ats.iot.R...)")
    claim.add_argument("--port", type=int, default=8883, help="8883 (default) or 443")
    claim.add_argument(
        "--ca", type=Path, help="CA bundle of the endpoint (default: the Amazon root CAs)"
    )
    claim.add_argument(
        "--force", action="store_true", help="provision anew although this device already was"
    )
    p.add_argument(
        "--print-policy",
        action="store_true",
        help="print the device policy for --region and the account, then exit",
    )
    p.add_argument(
        "--print-iam-policy",
        action="store_true",
        help="print the IAM policy the provisioning identity needs, then exit",
    )


def _existing_state_dir(config: Path) -> Path | None:
    """The ``state_dir`` of an existing configuration, so the signing key is found."""
    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    if isinstance(data, dict) and isinstance(data.get("state_dir"), str):
        path = Path(data["state_dir"])
        return path if path.is_absolute() else config.parent / path
    return None


def cmd_provision(args: argparse.Namespace) -> int:
    """Provision this gateway in AWS IoT; a file it cannot read or write is named with
    what to do, not shown as a traceback (running it again picks up where it stopped)."""
    try:
        return _provision(args)
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        print(
            f"wsn-gateway provision: {where}{err.strerror or err}: it writes the "
            "configuration directory and the state directory; run it with sudo, or give "
            "--config and --state-dir where you may write. Running it again is safe.",
            file=sys.stderr,
        )
        return 1


def _provision(args: argparse.Namespace) -> int:
    if args.print_iam_policy:
        print(iam_policy_text())
        return 0
    if args.claim_cert is not None:
        return _cmd_claim(args)
    try:
        if not args.region:
            raise ProvisionUsageError("--region is required (e.g. --region eu-west-1)")
        if not args.thing and not args.print_policy:
            raise ProvisionUsageError("--thing is required: the AWS IoT thing name")
        options = _options(args, thing=args.thing or "policy")
        check_options(options)
    except ProvisionUsageError as err:
        print(f"wsn-gateway provision: {err}", file=sys.stderr)
        return 2
    iot, sts = clients(options.region)
    say = (lambda _text: None) if args.print_policy else print
    provisioner = Provisioner(options, iot=iot, sts=sts, say=say)
    if args.print_policy:
        print(json.dumps(device_policy(provisioner.scope()), indent=2))
        return 0
    result = provisioner.run()
    if options.dry_run:
        print(f"dry run: {len(result.changes)} change(s) planned, nothing changed")
        return 0
    print(
        f"provisioned {result.thing}: certificate {result.certificate_id[:16]}…, "
        f"endpoint {result.endpoint}, {len(result.changes)} change(s)"
    )
    print(f"next: wsn-gateway check-config --config {options.config_path}")
    print("      sudo systemctl restart wsn-gateway")
    return 0


def _options(args: argparse.Namespace, *, thing: str) -> ProvisionOptions:
    config = Path(args.config) if args.config else default_config_path()
    state_dir = args.state_dir or _existing_state_dir(config) or DEFAULT_STATE_DIR
    return ProvisionOptions(
        thing=thing,
        region=args.region,
        config_path=config.absolute(),
        state_dir=Path(state_dir).absolute(),
        policy_name=args.policy,
        basic_ingest_rule=args.basic_ingest,
        role_alias=args.role_alias,
        log_group=args.log_group,
        shadow=not args.no_shadow,
        shadow_name=args.shadow_name,
        signing=args.signing,
        adopt=args.adopt,
        update_policy=args.update_policy,
        owner=default_owner(),
        dry_run=args.dry_run,
    )


def _cmd_claim(args: argparse.Namespace) -> int:
    """Fleet provisioning by claim, then the configuration for the thing it names.

    The device has no AWS credentials to register an Ed25519 key on its thing, so
    batches are signed with the new certificate's key: the cloud side finds it by
    its id (the ``kid``) and checks that it is attached to the thing.
    """
    missing = [
        f"--{name.replace('_', '-')}"
        for name in ("claim_key", "template", "serial", "endpoint")
        if not getattr(args, name)
    ]
    if missing:
        print(
            f"wsn-gateway provision: --claim-cert also needs {', '.join(missing)}",
            file=sys.stderr,
        )
        return 2
    match = IOT_ENDPOINT_REGION_RE.search(args.endpoint)
    region = args.region or (match.group(1) if match else None)
    if region is None:
        print(
            "wsn-gateway provision: give --region (it is not part of --endpoint)", file=sys.stderr
        )
        return 2
    from gateway.fleet import provision_by_claim  # noqa: PLC0415 - needs the fleet extra

    options = _options(args, thing=args.serial)
    options = dataclasses.replace(options, region=region, signing="certificate")
    result = provision_by_claim(
        endpoint=args.endpoint,
        port=args.port,
        claim_cert=args.claim_cert,
        claim_key=args.claim_key,
        template=args.template,
        parameters={"SerialNumber": args.serial},
        client_id=args.serial,
        out_dir=options.config_dir,
        ca=args.ca,
        force=args.force,
        owner=options.owner,
    )
    state = "already provisioned as" if result.already_provisioned else "provisioned as"
    print(f"{state} thing {result.thing_name} (certificate {result.certificate_id[:16]}…)")
    ca = args.ca.absolute() if args.ca else options.ca_path
    if args.ca is None and (not ca.exists() or ca.read_bytes() != root_ca_pem()):
        write_atomically(ca, root_ca_pem())
    plan = plan_config(
        options.config_path,
        ProvisionedConfig(
            thing=result.thing_name,
            state_dir=options.state_dir,
            endpoint=args.endpoint,
            ca=ca,
            cert=options.cert_path,
            key=options.key_path,
            topic=options.topic if options.basic_ingest_rule else None,
            shadow=options.shadow,
            shadow_name=options.shadow_name,
            signing="certificate",
            region=region,
            role_alias=None,
            credentials_endpoint=None,
            log_group=options.log_group,
        ),
    )
    if plan is not None:
        apply_config(plan)
        print(plan.change)
    print("next: sudo systemctl restart wsn-gateway")
    return 0
