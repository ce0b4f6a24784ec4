"""cloud/template.yaml: cfn-lint clean, and in agreement with the gateway and the functions."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import ingest
import paho.mqtt.client as mqtt
import pytest
import silence

from gateway.config import MqttSettings
from gateway.fleet import claim_policy_document, provisioning_template_document

from .conftest import TEMPLATE, load_template, resource

CFN_LINT = Path(sys.executable).parent / "cfn-lint"

SQL = (
    "SELECT encode(*, 'base64') AS payload, topic(3) AS thing, clientid() AS client_id, "
    "timestamp() AS received FROM 'dt/wsn/+/telemetry'"
)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    """Every statement of the role's inline policies."""
    return [
        statement
        for policy in role["Properties"].get("Policies", [])
        for statement in policy["PolicyDocument"]["Statement"]
    ]


def actions(role: dict[str, Any]) -> set[str]:
    found: set[str] = set()
    for statement in statements(role):
        action = statement["Action"]
        found.update([action] if isinstance(action, str) else action)
    return found


def test_cfn_lint_passes_without_errors_or_warnings() -> None:
    assert CFN_LINT.exists(), f"{CFN_LINT} missing: pip install cfn-lint"
    done = subprocess.run(
        [str(CFN_LINT), "--format", "parseable", str(TEMPLATE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "", done.stdout


def test_the_rule_selects_the_gateways_default_topic(template: dict[str, Any]) -> None:
    rule = resource(template, "TelemetryRule")["Properties"]
    payload = rule["TopicRulePayload"]
    assert payload["AwsIotSqlVersion"] == "2016-03-23"
    assert " ".join(payload["Sql"].split()) == SQL

    topic_filter = re.search(r"FROM '([^']+)'", payload["Sql"])
    assert topic_filter is not None
    default_topic = MqttSettings.model_fields["topic"].default
    assert default_topic == "dt/wsn/{thing}/telemetry"
    for thing in ("test-gw", "barn_7", "greenhouse:a-1"):
        topic = default_topic.format(thing=thing)
        assert mqtt.topic_matches_sub(topic_filter.group(1), topic)
        assert topic.split("/")[2] == thing  # what topic(3) gives the function
    status_topic = MqttSettings.model_fields["status_topic"].default.format(thing="test-gw")
    assert not mqtt.topic_matches_sub(topic_filter.group(1), status_topic)

    # The rule name serves Basic Ingest: $aws/rules/<name>/dt/wsn/<thing>/telemetry.
    name = template["Parameters"]["TelemetryRuleName"]
    assert name["Default"] == "wsn_telemetry"
    assert re.fullmatch(name["AllowedPattern"], name["Default"])
    assert rule["RuleName"] == {"Ref": "TelemetryRuleName"}

    (action,) = payload["Actions"]
    assert action == {"Lambda": {"FunctionArn": {"Fn::GetAtt": ["IngestFunction", "Arn"]}}}
    assert payload["ErrorAction"]["Sqs"]["QueueUrl"] == {"Ref": "IngestFailedQueue"}


def test_the_functions_are_wired_as_the_code_expects(template: dict[str, Any]) -> None:
    ingest_fn = resource(template, "IngestFunction")["Properties"]
    assert ingest_fn["Runtime"] == "python3.12"
    assert ingest_fn["Handler"] == "ingest.handler" and callable(ingest.handler)
    assert set(ingest_fn["Environment"]["Variables"]) == {
        "BATCHES_TABLE",
        "GATEWAYS_TABLE",
        "REJECTS_QUEUE_URL",
        "METRIC_NAMESPACE",
        "KEY_CACHE_SECONDS",
    }
    silence_fn = resource(template, "SilenceFunction")["Properties"]
    assert silence_fn["Handler"] == "silence.handler" and callable(silence.handler)
    assert set(silence_fn["Environment"]["Variables"]) == {
        "GATEWAYS_TABLE",
        "METRIC_NAMESPACE",
        "SILENCE_MINUTES",
    }
    assert template["Parameters"]["SilenceMinutes"]["Default"] == 30

    permission = resource(template, "IngestFromIoTPermission")["Properties"]
    assert permission["Principal"] == "iot.amazonaws.com"
    assert permission["SourceArn"] == {"Fn::GetAtt": ["TelemetryRule", "Arn"]}
    on_failure = resource(template, "IngestInvokeConfig")["Properties"]["DestinationConfig"]
    assert on_failure["OnFailure"]["Destination"] == {"Fn::GetAtt": ["IngestFailedQueue", "Arn"]}

    schedule = resource(template, "SilenceSchedule")["Properties"]
    assert schedule["ScheduleExpression"] == "rate(5 minutes)"
    alarm = resource(template, "SilentGatewaysAlarm")["Properties"]
    assert alarm["MetricName"] == silence.METRIC_NAME == "SilentGateways"
    assert alarm["Namespace"] == {"Ref": "MetricNamespace"}
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (
        1,
        "GreaterThanOrEqualToThreshold",
    )
    assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]


def test_the_tables_have_the_documented_keys(template: dict[str, Any]) -> None:
    batches = resource(template, "BatchesTable")["Properties"]
    assert batches["BillingMode"] == "PAY_PER_REQUEST"
    assert batches["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "seq", "KeyType": "RANGE"},
    ]
    assert {(a["AttributeName"], a["AttributeType"]) for a in batches["AttributeDefinitions"]} == {
        ("pk", "S"),
        ("seq", "N"),
    }
    gateways = resource(template, "GatewaysTable")["Properties"]
    assert gateways["KeySchema"] == [{"AttributeName": "thing", "KeyType": "HASH"}]
    assert ingest.partition_key("gw-1", "s1") == "gw-1#s1"


def test_roles_are_least_privilege(template: dict[str, Any]) -> None:
    every_action = set()
    for name, body in template["Resources"].items():
        if body["Type"] == "AWS::IAM::Role":
            every_action |= actions(body)
            for statement in statements(body):
                assert statement["Effect"] == "Allow", name
    assert not [action for action in every_action if "*" in action]

    assert actions(resource(template, "IngestRole")) == {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:Query",
        "iot:DescribeThing",
        "iot:ListThingPrincipals",
        "iot:DescribeCertificate",
        "sqs:SendMessage",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    }
    assert actions(resource(template, "SilenceRole")) == {
        "dynamodb:Scan",
        "cloudwatch:PutMetricData",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    }

    logs_role = resource(template, "GatewayLogsRole")
    (trust,) = logs_role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "credentials.iot.amazonaws.com"}
    assert actions(logs_role) == {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "logs:DescribeLogStreams",
    }
    for statement in statements(logs_role):
        for arn in statement["Resource"]:
            assert "${GatewayLogGroup}" in arn["Fn::Sub"]
    log_group = resource(template, "GatewayLogGroup")["Properties"]
    assert log_group["LogGroupName"] == {"Ref": "GatewayLogGroupName"}
    assert template["Parameters"]["GatewayLogGroupName"]["Default"] == "/wsn-gateway"
    assert "RetentionInDays" in log_group
    alias = resource(template, "GatewayRoleAlias")["Properties"]
    assert alias["CredentialDurationSeconds"] == 3600
    assert alias["RoleArn"] == {"Fn::GetAtt": ["GatewayLogsRole", "Arn"]}


def test_outputs_name_what_a_gateway_and_an_operator_need(template: dict[str, Any]) -> None:
    assert {
        "RoleAliasName",
        "RoleAliasArn",
        "BatchesTableName",
        "GatewaysTableName",
        "RejectsQueueUrl",
        "TelemetryRuleName",
    } <= set(template["Outputs"])


def _substitute(value: Any, names: dict[str, str]) -> Any:
    """Resolve the template's ``Fn::Sub`` strings with ``names`` (deeply)."""
    if isinstance(value, dict):
        if set(value) == {"Fn::Sub"}:
            text = value["Fn::Sub"]
            for name, replacement in names.items():
                text = text.replace("${" + name + "}", replacement)
            assert "${" not in text.replace("${iot:", ""), text
            return text
        return {key: _substitute(item, names) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, names) for item in value]
    return value


def test_fleet_provisioning_resources_are_the_documents_the_gateway_code_makes(
    template: dict[str, Any],
) -> None:
    parameters = template["Parameters"]
    names = {
        "AWS::Partition": "aws",
        "AWS::Region": "eu-west-1",
        "AWS::AccountId": "123456789012",
        **{
            name: str(parameters[name]["Default"])
            for name in ("FleetTemplateName", "FleetThingPrefix", "GatewayPolicyName")
        },
    }
    for name in ("FleetProvisioningRole", "FleetProvisioningTemplate", "ClaimPolicy"):
        assert resource(template, name)["Condition"] == "WithFleetProvisioning"
    assert parameters["FleetProvisioning"]["Default"] == "false"  # opt-in

    body = _substitute(resource(template, "FleetProvisioningTemplate")["Properties"], names)
    assert json.loads(body["TemplateBody"]) == provisioning_template_document(
        policy_name=names["GatewayPolicyName"], thing_name_prefix=names["FleetThingPrefix"]
    )
    policy = _substitute(resource(template, "ClaimPolicy")["Properties"]["PolicyDocument"], names)
    assert policy == claim_policy_document("eu-west-1", "123456789012", names["FleetTemplateName"])
    role = resource(template, "FleetProvisioningRole")["Properties"]
    principal = role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]
    assert principal == {"Service": "iot.amazonaws.com"}
    assert _substitute(role["ManagedPolicyArns"], names) == [
        "arn:aws:iam::aws:policy/service-role/AWSIoTThingsRegistration"
    ]
