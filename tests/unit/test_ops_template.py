"""template.yaml against the deployment contract: queues, timeouts, handlers, alarms.

cfn-lint and ``sam validate`` check that the template is valid CloudFormation.
These tests check the choices it makes. Every queue has a dead-letter queue,
visibility timeouts cover their consumers, and HTTP functions finish inside
API Gateway's limit. Every handler the template names exists.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"

QUEUE_NAMES = (
    "breaker-calls",
    "batch-items",
    "batch-items.fifo",
    "completions",
    "escalation-requests",
    "escalation-notify",
    "escalation-resume",
)

# API Gateway HTTP APIs end an integration after 30 s, so 29 leaves time for
# the function's own response to travel back.
HTTP_TIMEOUT_LIMIT_S = 29

# The AWS Lambda Developer Guide ("Creating and configuring an Amazon SQS event
# source mapping") asks for a visibility timeout of at least six times the
# function timeout. The batching window is added because messages are already
# received, and so invisible, while Lambda gathers a batch.
VISIBILITY_FACTOR = 6

# SQS keeps a message at most 14 days.
MAX_RETENTION_S = 1_209_600
DEFAULT_RETENTION_S = 345_600


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that reads CloudFormation short tags as their long form."""


def _construct_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_tag)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)


def _resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {
        name: resource
        for name, resource in template["Resources"].items()
        if resource["Type"] == kind
    }


def _queue_by_name(template: dict[str, Any], queue_name: str) -> tuple[str, dict]:
    for logical_id, queue in _resources(template, "AWS::SQS::Queue").items():
        name = queue["Properties"].get("QueueName", {})
        if name == {"Fn::Sub": f"${{QueuePrefix}}{queue_name}"}:
            return logical_id, queue
    raise AssertionError(f"no AWS::SQS::Queue named ${{QueuePrefix}}{queue_name}")


def _function_timeout(template: dict[str, Any], function: dict[str, Any]) -> int:
    default = template["Globals"]["Function"]["Timeout"]
    return int(function["Properties"].get("Timeout", default))


def _sqs_consumers(
    template: dict[str, Any], queue_id: str
) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    consumers = []
    for name, function in _resources(template, "AWS::Serverless::Function").items():
        for event in function["Properties"].get("Events", {}).values():
            source = (
                event["Properties"].get("Queue") if event["Type"] == "SQS" else None
            )
            if source == {"Fn::GetAtt": [queue_id, "Arn"]}:
                consumers.append((name, function, event["Properties"]))
    return consumers


@pytest.mark.parametrize("queue_name", QUEUE_NAMES)
def test_queue_has_dead_letter_queue(template: dict[str, Any], queue_name: str) -> None:
    _, queue = _queue_by_name(template, queue_name)

    redrive = queue["Properties"].get("RedrivePolicy")
    assert redrive is not None, f"{queue_name} has no RedrivePolicy"
    target = redrive["deadLetterTargetArn"]
    assert target["Fn::GetAtt"][1] == "Arn"
    dead_letter = template["Resources"][target["Fn::GetAtt"][0]]
    assert dead_letter["Type"] == "AWS::SQS::Queue"
    assert "RedrivePolicy" not in dead_letter["Properties"]
    assert 1 <= int(redrive["maxReceiveCount"]) <= 10


@pytest.mark.parametrize("queue_name", QUEUE_NAMES)
def test_dead_letter_queue_outlives_source(
    template: dict[str, Any], queue_name: str
) -> None:
    # SQS keeps a message's original enqueue time when it moves to a standard
    # DLQ, so a DLQ with a shorter retention would drop it early.
    _, queue = _queue_by_name(template, queue_name)
    target = queue["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]
    dead_letter = template["Resources"][target["Fn::GetAtt"][0]]

    source_retention = queue["Properties"].get(
        "MessageRetentionPeriod", DEFAULT_RETENTION_S
    )
    dead_letter_retention = dead_letter["Properties"].get(
        "MessageRetentionPeriod", DEFAULT_RETENTION_S
    )
    assert dead_letter_retention == MAX_RETENTION_S
    assert dead_letter_retention > source_retention


def test_fifo_queue_has_fifo_dead_letter_queue(template: dict[str, Any]) -> None:
    _, queue = _queue_by_name(template, "batch-items.fifo")
    target = queue["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]
    dead_letter = template["Resources"][target["Fn::GetAtt"][0]]

    assert queue["Properties"]["FifoQueue"] is True
    assert dead_letter["Properties"].get("FifoQueue") is True
    assert dead_letter["Properties"]["QueueName"]["Fn::Sub"].endswith(".fifo")


@pytest.mark.parametrize("queue_name", QUEUE_NAMES)
def test_visibility_timeout_covers_consumer(
    template: dict[str, Any], queue_name: str
) -> None:
    queue_id, queue = _queue_by_name(template, queue_name)
    consumers = _sqs_consumers(template, queue_id)

    assert consumers, f"no function consumes {queue_name}"
    visibility = int(queue["Properties"]["VisibilityTimeout"])
    for function_name, function, event in consumers:
        timeout = _function_timeout(template, function)
        window = int(event.get("MaximumBatchingWindowInSeconds", 0))
        required = VISIBILITY_FACTOR * timeout + window
        assert visibility >= required, (
            f"{queue_name}: VisibilityTimeout {visibility} s < 6 x {function_name} "
            f"Timeout {timeout} s + batching window {window} s"
        )


@pytest.mark.parametrize("queue_name", QUEUE_NAMES)
def test_sqs_consumer_reports_item_failures(
    template: dict[str, Any], queue_name: str
) -> None:
    queue_id, _ = _queue_by_name(template, queue_name)

    for _, _, event in _sqs_consumers(template, queue_id):
        assert event.get("FunctionResponseTypes") == ["ReportBatchItemFailures"]


def test_http_functions_finish_within_api_gateway_limit(
    template: dict[str, Any],
) -> None:
    http_functions = {
        name: function
        for name, function in _resources(template, "AWS::Serverless::Function").items()
        if any(
            event["Type"] in ("HttpApi", "Api")
            for event in function["Properties"].get("Events", {}).values()
        )
    }

    assert len(http_functions) >= 4
    for name, function in http_functions.items():
        assert _function_timeout(template, function) <= HTTP_TIMEOUT_LIMIT_S, name


def test_every_function_runs_python_3_12(template: dict[str, Any]) -> None:
    functions = _resources(template, "AWS::Serverless::Function")

    assert template["Globals"]["Function"]["Runtime"] == "python3.12"
    for name, function in functions.items():
        assert function["Properties"].get("Runtime", "python3.12") == "python3.12", name


def test_every_function_uses_layer(template: dict[str, Any]) -> None:
    layer = template["Resources"]["ResilienceLayer"]
    layers = template["Globals"]["Function"]["Layers"]

    assert {"Ref": "ResilienceLayer"} in layers
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.12"]
    assert layer["Metadata"]["BuildMethod"] == "makefile"
    makefile = REPO / layer["Metadata"]["ContextPath"] / "Makefile"
    assert "build-ResilienceLayer:" in makefile.read_text()


def test_state_machine_is_standard_from_asl_file(template: dict[str, Any]) -> None:
    machines = _resources(template, "AWS::Serverless::StateMachine")
    machine = machines["EscalationStateMachine"]["Properties"]

    assert machine["Type"] == "STANDARD"
    assert machine["DefinitionUri"] == "statemachines/escalation.asl.json"
    definition_text = (REPO / machine["DefinitionUri"]).read_text()
    definition = json.loads(definition_text)
    assert definition["StartAt"] in definition["States"]
    placeholders = set(re.findall(r"\$\{(\w+)\}", definition_text))
    assert placeholders
    assert placeholders <= set(machine["DefinitionSubstitutions"])


def test_state_machine_waits_on_sqs_task_token(template: dict[str, Any]) -> None:
    machine = template["Resources"]["EscalationStateMachine"]["Properties"]
    definition = json.loads((REPO / machine["DefinitionUri"]).read_text())

    resources = {state.get("Resource") for state in definition["States"].values()} - {
        None
    }
    assert "arn:aws:states:::sqs:sendMessage.waitForTaskToken" in resources
    assert resources <= {
        "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
        "arn:aws:states:::sqs:sendMessage",
    }


def _handler_cases() -> list[tuple[str, str, str]]:
    template = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    cases = []
    for name, function in _resources(template, "AWS::Serverless::Function").items():
        properties = function["Properties"]
        cases.append((name, properties["CodeUri"], properties["Handler"]))
    return cases


HANDLER_CASES = _handler_cases()


@pytest.mark.parametrize(
    ("function_name", "code_uri", "handler"),
    HANDLER_CASES,
    ids=[case[0] for case in HANDLER_CASES],
)
def test_handler_exists(function_name: str, code_uri: str, handler: str) -> None:
    module_name, _, attribute = handler.rpartition(".")
    path = REPO / code_uri / f"{module_name.replace('.', '/')}.py"

    assert path.is_file(), f"{function_name}: {path.relative_to(REPO)} is missing"
    tree = ast.parse(path.read_text(), filename=str(path))
    defined = {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    } | {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    assert attribute in defined, f"{function_name}: {path.name} has no {attribute}"


def test_every_alarm_notifies_alert_topic(template: dict[str, Any]) -> None:
    alarms = _resources(template, "AWS::CloudWatch::Alarm")

    assert len(alarms) >= 5
    for name, alarm in alarms.items():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": "AlertTopic"}], name
        assert alarm["Properties"]["OKActions"] == [{"Ref": "AlertTopic"}], name


def test_alarm_metrics_have_no_dimensions(template: dict[str, Any]) -> None:
    # The library emits the alarm metrics without dimensions, and CloudWatch
    # matches an alarm only to a metric with exactly its dimensions.
    alarms = _resources(template, "AWS::CloudWatch::Alarm").values()
    project_metrics = [
        alarm["Properties"]
        for alarm in alarms
        if alarm["Properties"].get("Namespace") == "AgentResilience"
    ]

    assert {metric["MetricName"] for metric in project_metrics} >= {
        "BreakerOpened",
        "BatchFailureRate",
        "EscalationsPendingOver2h",
        "SpendOverBudget",
    }
    for metric in project_metrics:
        assert "Dimensions" not in metric, metric["MetricName"]


def test_alert_topic_feeds_forwarder(template: dict[str, Any]) -> None:
    forwarder = template["Resources"]["AlertForwarderFunction"]["Properties"]
    events = forwarder["Events"].values()

    assert {"Type": "SNS", "Properties": {"Topic": {"Ref": "AlertTopic"}}} in events
    assert forwarder["Handler"] == "alerts.lambda_handler"
