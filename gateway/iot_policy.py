"""The least-privilege AWS IoT policy a gateway's certificate needs.

One document serves a whole fleet: every resource names the connecting thing
through the policy variable ``${iot:Connection.Thing.ThingName}``, which AWS IoT
fills in only when the certificate is attached to a thing whose name is also the
MQTT client id. So a gateway can connect only as itself, publish only on its own
topics and read only its own shadow; a stolen certificate cannot impersonate
another gateway.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: The policy variable AWS IoT replaces with the connecting thing's name.
THING_VARIABLE = "${iot:Connection.Thing.ThingName}"
#: The policy document language version AWS IoT accepts.
POLICY_VERSION = "2012-10-17"
#: Shadow responses a gateway subscribes to (AWS IoT device shadow MQTT topics).
SHADOW_RESPONSES = (
    "get/accepted",
    "get/rejected",
    "update/accepted",
    "update/rejected",
    "update/delta",
)
#: Shadow requests a gateway publishes.
SHADOW_REQUESTS = ("get", "update")


@dataclass(frozen=True)
class PolicyScope:
    """What the gateways under one policy do: their topics, shadow and role alias."""

    region: str
    account: str
    topic: str = "dt/wsn/{thing}/telemetry"
    status_topic: str = "dt/wsn/{thing}/status"
    shadow: bool = True
    shadow_name: str | None = None
    role_alias: str | None = None
    partition: str = "aws"

    def arn(self, kind: str, name: str) -> str:
        """``arn:aws:iot:<region>:<account>:<kind>/<name>``."""
        return f"arn:{self.partition}:iot:{self.region}:{self.account}:{kind}/{name}"


def topic_pattern(template: str) -> str:
    """A topic template of the configuration (``{thing}`` placeholder) as a policy
    resource name with the thing-name policy variable in its place."""
    return template.replace("{thing}", THING_VARIABLE)


def shadow_prefix(shadow_name: str | None, thing: str = THING_VARIABLE) -> str:
    """``$aws/things/<thing>/shadow`` for the classic shadow, ``.../shadow/name/<n>``
    for a named one."""
    base = f"$aws/things/{thing}/shadow"
    return base if shadow_name is None else f"{base}/name/{shadow_name}"


def device_policy(scope: PolicyScope) -> dict[str, Any]:
    """The policy document, as AWS IoT stores it (a JSON object)."""
    publish = [topic_pattern(scope.topic), topic_pattern(scope.status_topic)]
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ConnectAsItsOwnThing",
            "Effect": "Allow",
            "Action": "iot:Connect",
            "Resource": scope.arn("client", THING_VARIABLE),
            "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
        },
    ]
    shadow_responses: list[str] = []
    if scope.shadow:
        prefix = shadow_prefix(scope.shadow_name)
        publish += [f"{prefix}/{request}" for request in SHADOW_REQUESTS]
        shadow_responses = [f"{prefix}/{response}" for response in SHADOW_RESPONSES]
    statements.append(
        {
            "Sid": "PublishOnItsOwnTopics",
            "Effect": "Allow",
            "Action": "iot:Publish",
            "Resource": _arns(scope, "topic", publish),
        }
    )
    statements.append(
        {
            # The status topic carries a retained "online"/"offline" (and the last will).
            "Sid": "RetainItsStatus",
            "Effect": "Allow",
            "Action": "iot:RetainPublish",
            "Resource": scope.arn("topic", topic_pattern(scope.status_topic)),
        }
    )
    if shadow_responses:
        statements += [
            {
                "Sid": "SubscribeToItsShadow",
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": _arns(scope, "topicfilter", shadow_responses),
            },
            {
                "Sid": "ReceiveFromItsShadow",
                "Effect": "Allow",
                "Action": "iot:Receive",
                "Resource": _arns(scope, "topic", shadow_responses),
            },
        ]
    if scope.role_alias is not None:
        statements.append(
            {
                "Sid": "CredentialsForItsLogs",
                "Effect": "Allow",
                "Action": "iot:AssumeRoleWithCertificate",
                "Resource": scope.arn("rolealias", scope.role_alias),
            }
        )
    return {"Version": POLICY_VERSION, "Statement": statements}


def _arns(scope: PolicyScope, kind: str, names: Iterable[str]) -> list[str]:
    return [scope.arn(kind, name) for name in names]


#: What the AWS identity running ``wsn-gateway provision`` must be allowed (IAM).
PROVISIONING_ACTIONS = (
    "iot:AttachPolicy",
    "iot:AttachThingPrincipal",
    "iot:CreateCertificateFromCsr",
    "iot:CreatePolicy",
    "iot:CreatePolicyVersion",
    "iot:CreateThing",
    "iot:DeletePolicyVersion",
    "iot:DescribeCertificate",
    "iot:DescribeEndpoint",
    "iot:DescribeRoleAlias",
    "iot:DescribeThing",
    "iot:GetPolicy",
    "iot:ListAttachedPolicies",
    "iot:ListPolicyVersions",
    "iot:ListThingPrincipals",
    "iot:UpdateThing",
)


def provisioning_iam_policy() -> dict[str, Any]:
    """An IAM policy for the person or role that provisions gateways."""
    return {
        "Version": POLICY_VERSION,
        "Statement": [
            {
                "Sid": "ProvisionWsnGateways",
                "Effect": "Allow",
                "Action": list(PROVISIONING_ACTIONS),
                "Resource": "*",
            }
        ],
    }
