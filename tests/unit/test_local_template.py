"""The local stack's template reader, on the real template.yaml."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from local.cfn import IntrinsicResolver, TemplateError, load_template
from local.environment import LocalValues, function_environment
from local.gateway import _compile, build_http_event, match_route
from local.model import HttpRoute, read_functions, resources_of_type
from local.pollers import sqs_record

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def resolver() -> IntrinsicResolver:
    return IntrinsicResolver(load_template(ROOT / "template.yaml"))


def test_short_tags_become_long_forms() -> None:
    template = load_template(ROOT / "template.yaml")
    queue = template["Resources"]["BatchItemsQueue"]["Properties"]

    assert queue["QueueName"] == {"Fn::Sub": "${QueuePrefix}batch-items"}
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["BatchItemsDeadLetterQueue", "Arn"]
    }


def test_sub_with_pseudo_parameters(resolver: IntrinsicResolver) -> None:
    value = resolver.resolve({"Fn::Sub": "${AWS::StackName}-alerts-${Environment}"})

    assert value == "agent-resilience-alerts-dev"


def test_sub_with_variables_and_escape(resolver: IntrinsicResolver) -> None:
    value = resolver.resolve({"Fn::Sub": ["${Name}/${!Literal}", {"Name": "x"}]})

    assert value == "x/${Literal}"


def test_if_uses_template_conditions(resolver: IntrinsicResolver) -> None:
    resolver.attributes[("EscalationKey", "Arn")] = "arn:aws:kms:local:key/1"
    value = resolver.resolve(
        {
            "Fn::If": [
                "CreateEscalationKey",
                {"Fn::GetAtt": ["EscalationKey", "Arn"]},
                {"Ref": "EscalationKmsKeyArn"},
            ]
        }
    )

    assert value == "arn:aws:kms:local:key/1"


def test_no_value_removes_property(resolver: IntrinsicResolver) -> None:
    value = resolver.resolve({"A": {"Ref": "AWS::NoValue"}, "B": 1})

    assert value == {"B": 1}


def test_unknown_ref_names_it(resolver: IntrinsicResolver) -> None:
    with pytest.raises(TemplateError, match="!Ref Missing"):
        resolver.resolve({"Ref": "Missing"})


def test_unknown_parameter_override() -> None:
    template = load_template(ROOT / "template.yaml")

    with pytest.raises(TemplateError, match="unknown template parameters"):
        IntrinsicResolver(template, parameters={"Nope": "1"})


def test_queue_names_without_prefix(resolver: IntrinsicResolver) -> None:
    queues = resources_of_type(resolver, "AWS::SQS::Queue")
    names = {resolver.resolve(q["Properties"]["QueueName"]) for q in queues.values()}

    for name in (
        "breaker-calls",
        "batch-items",
        "batch-items.fifo",
        "completions",
        "escalation-requests",
        "escalation-notify",
        "escalation-resume",
    ):
        base, fifo = name.removesuffix(".fifo"), name.endswith(".fifo")
        assert name in names
        assert f"{base}-dlq{'.fifo' if fifo else ''}" in names


def test_functions_get_globals_and_events(resolver: IntrinsicResolver) -> None:
    functions = {f.logical_id: f for f in read_functions(resolver, ROOT)}
    batch = functions["PartialSuccessFunction"]

    assert batch.environment["POWERTOOLS_SERVICE_NAME"] == "partial-success"
    assert batch.environment["POWERTOOLS_METRICS_NAMESPACE"] == "AgentResilience"
    assert batch.timeout_s == 29
    assert {r.route_key for r in batch.routes} == {
        "POST /batches",
        "GET /batches/{batchId}",
    }
    mapping = next(e for e in batch.sqs_events if e.event_name == "BatchItems")
    assert mapping.batch_size == 10
    assert mapping.batching_window_s == 1.0
    assert mapping.report_batch_item_failures is True
    reminder = functions["EscalationReminderFunction"].schedules[0]
    assert reminder.interval_s == 900.0


def test_literal_route_wins_over_parameter() -> None:
    routes = [
        _compile(HttpRoute("F", "a", "GET", "/breaker/{service}")),
        _compile(HttpRoute("F", "b", "POST", "/breaker/{service}/reset")),
        _compile(HttpRoute("F", "c", "POST", "/breaker/calls")),
        _compile(HttpRoute("F", "d", "POST", "/breaker/{service}")),
    ]
    routes.sort(key=lambda compiled: compiled.specificity)

    calls = match_route(routes, "POST", "/breaker/calls")
    reset = match_route(routes, "POST", "/breaker/demo/reset")
    state = match_route(routes, "GET", "/breaker/my%20service")

    assert calls is not None
    assert calls[0].event_name == "c"
    assert reset is not None
    assert reset[1] == {"service": "demo"}
    assert state is not None
    assert state[1] == {"service": "my service"}
    assert match_route(routes, "DELETE", "/breaker/demo") is None


def test_http_event_shape_for_form_post() -> None:
    event = build_http_event(
        route=HttpRoute("F", "Decide", "POST", "/approvals/{id}"),
        path_parameters={"id": "esc-1"},
        method="POST",
        raw_path="/approvals/esc-1",
        raw_query="approver=anyone&x=1&x=2",
        headers=[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", "csrf=abc; theme=dark"),
            ("X-Org-Id", "acme"),
        ],
        body=b"decision=approve",
        source_ip="127.0.0.1",
        domain_name="127.0.0.1:3000",
        request_id="req-1",
    )

    assert event["version"] == "2.0"
    assert event["routeKey"] == "POST /approvals/{id}"
    assert event["cookies"] == ["csrf=abc", "theme=dark"]
    assert "cookie" not in event["headers"]
    assert event["headers"]["x-org-id"] == "acme"
    assert event["queryStringParameters"] == {"approver": "anyone", "x": "1,2"}
    assert event["pathParameters"] == {"id": "esc-1"}
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"decision=approve"
    assert event["requestContext"]["http"]["method"] == "POST"
    assert event["requestContext"]["requestId"] == "req-1"


def _json_post_event(body: bytes) -> dict[str, Any]:
    return build_http_event(
        route=HttpRoute("F", "Create", "POST", "/batches"),
        path_parameters={},
        method="POST",
        raw_path="/batches",
        raw_query="",
        headers=[("content-type", "application/json")],
        body=body,
        source_ip="127.0.0.1",
        domain_name="127.0.0.1:3000",
        request_id="req-2",
    )


def test_http_event_keeps_json_as_text() -> None:
    event = _json_post_event(b'{"batchId": "b1"}')

    assert event["isBase64Encoded"] is False
    assert json.loads(event["body"]) == {"batchId": "b1"}
    assert "pathParameters" not in event
    assert "queryStringParameters" not in event


def test_http_event_keeps_bytes_of_invalid_json_text() -> None:
    body = b'{"batchId": "caf\xe9"}'
    event = _json_post_event(body)

    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == body


def test_sqs_record_shape() -> None:
    message = {
        "MessageId": "m1",
        "ReceiptHandle": "rh",
        "MD5OfBody": "md5",
        "Body": "{}",
        "Attributes": {"ApproximateReceiveCount": "2"},
        "MessageAttributes": {"orgId": {"DataType": "String", "StringValue": "acme"}},
    }

    record = sqs_record(message, "arn:aws:sqs:us-east-1:123456789012:q", "us-east-1")

    assert record["messageId"] == "m1"
    assert record["eventSource"] == "aws:sqs"
    assert record["attributes"]["ApproximateReceiveCount"] == "2"
    assert record["messageAttributes"]["orgId"] == {
        "stringValue": "acme",
        "stringListValues": [],
        "binaryListValues": [],
        "dataType": "String",
    }


def _local_values(**overrides: object) -> LocalValues:
    values = {
        "root": ROOT,
        "region": "us-east-1",
        "moto_url": "http://127.0.0.1:3001",
        "app_url": "http://127.0.0.1:3000",
        "database_url": "postgresql://postgres@127.0.0.1:5/db",
        "redis_url": "redis://127.0.0.1:6/0",
        "llm_url": "http://127.0.0.1:7",
        "demo_url": "http://127.0.0.1:8",
        "slack_url": "http://127.0.0.1:9",
        "pagerduty_url": "http://127.0.0.1:10",
        "secrets": {"LINK_SIGNING_KEY": "k" * 40},
    }
    values.update(overrides)
    return LocalValues(**values)  # type: ignore[arg-type]


def test_function_environment_overrides(
    resolver: IntrinsicResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real")
    monkeypatch.setenv("LLM_MOCK", "1")
    spec = next(
        f
        for f in read_functions(resolver, ROOT)
        if f.logical_id == "CircuitBreakerFunction"
    )

    env = function_environment(
        spec, _local_values(extra_env={"BATCH_MAX_ATTEMPTS": "2"})
    )

    assert env["POWERTOOLS_SERVICE_NAME"] == "circuit-breaker"
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:3001"
    assert env["DATABASE_URL"] == "postgresql://postgres@127.0.0.1:5/db"
    assert env["TRUST_ORG_ID_HEADER"] == "true"
    assert env["APP_URL"] == "http://127.0.0.1:3000"
    assert env["LINK_SIGNING_KEY"] == "k" * 40
    assert env["BATCH_MAX_ATTEMPTS"] == "2"
    assert "DATABASE_URL_SECRET" not in env
    assert "ALERTING_SECRET" not in env
    assert "ESCALATION_KMS_KEY_ARN" not in env
    # LLM_MOCK=1 keeps the local LLM server even though a real key is set.
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:7/v1"
    assert env["OPENAI_API_KEY"] == "sk-local"
    assert env["PYTHONPATH"].split(":") == [
        str(ROOT / "functions" / "circuit_breaker"),
        str(ROOT / "shared"),
    ]
    demo = json.loads(env["BREAKER_SERVICES"])["demo"]
    assert demo["baseUrl"] == "http://127.0.0.1:8"


def test_admin_token_only_from_env_setting(
    resolver: IntrinsicResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The docs tell users to pass ADMIN_API_TOKEN with --env, not the shell."""
    monkeypatch.setenv("ADMIN_API_TOKEN", "from-shell")
    spec = next(
        f
        for f in read_functions(resolver, ROOT)
        if f.logical_id == "CircuitBreakerFunction"
    )

    plain = function_environment(spec, _local_values())
    configured = function_environment(
        spec, _local_values(extra_env={"ADMIN_API_TOKEN": "local-admin-token"})
    )

    assert "ADMIN_API_TOKEN" not in plain
    assert configured["ADMIN_API_TOKEN"] == "local-admin-token"


def test_real_llm_keys_without_mock(
    resolver: IntrinsicResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-real")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("LLM_MOCK", raising=False)
    spec = read_functions(resolver, ROOT)[0]

    env = function_environment(spec, _local_values())

    assert env["ANTHROPIC_API_KEY"] == "sk-ant-real"
    assert "ANTHROPIC_BASE_URL" not in env
    assert "OPENAI_BASE_URL" not in env


def test_list_parameter_resolves_to_list() -> None:
    template = {
        "Parameters": {"Subnets": {"Type": "CommaDelimitedList", "Default": "a,b"}},
        "Resources": {},
    }

    resolver = IntrinsicResolver(template)

    assert resolver.resolve({"Ref": "Subnets"}) == ["a", "b"]
    assert resolver.resolve({"Fn::Join": ["-", {"Ref": "Subnets"}]}) == "a-b"
