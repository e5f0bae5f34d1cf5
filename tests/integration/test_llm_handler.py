"""The graceful_degradation handler with API Gateway HTTP API v2 and SQS events."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from moto import mock_aws

from resilience import messaging
from resilience.db import Database
from resilience.messaging import sqs_client
from tests.llm_fixtures import (
    FakeLambdaContext,
    LLMControl,
    llm,
    llm_env,
    llm_server,
    usage_rows,
)

__all__ = ["llm", "llm_env", "llm_server"]

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "tests" / "events" / "llm"


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def with_body(event: dict[str, Any], body: Any) -> dict[str, Any]:
    changed = copy.deepcopy(event)
    changed["body"] = json.dumps(body)
    return changed


@pytest.fixture
def handler(llm_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("TRUST_ORG_ID_HEADER", "true")
    spec = importlib.util.spec_from_file_location(
        "graceful_degradation_app",
        ROOT / "functions" / "graceful_degradation" / "app.py",
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _invoke(handler: ModuleType, event: dict[str, Any], request_id: str) -> Any:
    context = FakeLambdaContext(aws_request_id=request_id)
    response = handler.lambda_handler(event, context)
    return response


def test_post_completion_answers_and_records(
    handler: ModuleType, database: Database, llm: LLMControl
) -> None:
    response = _invoke(handler, load_event("post_completion.json"), "lambda-req-1")

    assert response["statusCode"] == 200
    body = json.loads(response["body"])
    assert body["ok"] is True
    assert body["provider"] == "openai"
    assert body["model"] == "gpt-4o-mini"
    assert body["degraded"] is False
    assert "graceful degradation" in body["output"]
    rows = usage_rows(database)
    assert len(rows) == 1
    assert rows[0]["task_run_id"] == "lambda-req-1"
    assert rows[0]["org_id"] == "acme"


def test_post_completion_falls_back_to_anthropic_then_template(
    handler: ModuleType,
    database: Database,
    llm: LLMControl,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLM_ATTEMPT_TIMEOUT_S", "1")
    from resilience.llm import reset_default_chain

    reset_default_chain()
    llm.fail("openai", "error", status=500)
    first = json.loads(
        _invoke(handler, load_event("post_completion.json"), "lambda-req-2")["body"]
    )
    llm.fail("anthropic", "hang")

    second = json.loads(
        _invoke(handler, load_event("post_completion.json"), "lambda-req-3")["body"]
    )

    assert first["provider"] == "anthropic"
    assert first["degraded"] is True
    assert second["provider"] == "local"
    assert second["degraded"] is True
    rows = usage_rows(database)
    assert [(r["task_run_id"], r["provider"]) for r in rows] == [
        ("lambda-req-2", "anthropic"),
        ("lambda-req-3", "local"),
    ]


def test_post_prompts_list_keeps_order(
    handler: ModuleType, database: Database, llm: LLMControl
) -> None:
    response = _invoke(handler, load_event("post_completions_list.json"), "lambda-list")

    assert response["statusCode"] == 200
    body = json.loads(response["body"])
    assert body["ok"] is True
    outputs = [result["output"] for result in body["results"]]
    assert len(outputs) == 3
    assert "first prompt" in outputs[0]
    assert "second prompt" in outputs[1]
    assert "third prompt" in outputs[2]
    assert len(usage_rows(database, "lambda-list")) == 3


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"maxTokens": 10}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "hi", "maxTokens": "many"}, "maxTokens"),
        ({"prompt": "hi", "maxTokens": 0}, "maxTokens"),
        ({"prompt": "hi", "tier": "gold"}, "tier"),
        ({"prompt": "hi", "colour": "blue"}, "colour"),
        ({"prompts": []}, "prompts"),
        ({"prompts": ["ok", 3]}, "prompts[1]"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        # Integers beyond the float range (1e309 and up) that JSON still parses.
        ({"prompt": "hi", "deadlineS": 10**309}, "deadlineS"),
        ({"prompt": "hi", "deadlineS": 10**4299}, "deadlineS"),
        ({"prompt": "hi", "temperature": 10**309}, "temperature"),
        ({"prompt": "hi", "temperature": -(10**4299)}, "temperature"),
        ({"prompts": ["a", "b"], "deadlineS": 10**309}, "deadlineS"),
        ({"prompt": "hi", "maxTokens": 10**4299}, "maxTokens"),
    ],
)
def test_bad_input_names_the_field(
    handler: ModuleType, llm: LLMControl, body: dict[str, Any], field: str
) -> None:
    event = with_body(load_event("post_completion.json"), body)

    response = _invoke(handler, event, "lambda-bad")

    assert response["statusCode"] == 400
    error = json.loads(response["body"])
    assert error["error"] == "validation_error"
    assert error["field"] == field
    assert len(error["message"]) < 400
    assert llm.requests() == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"prompt": "hi", "maxTokens": True}, "got true"),
        ({"prompt": "hi", "temperature": "0.5"}, 'got "0.5"'),
        ({"prompt": "hi", "deadlineS": {"a": None}}, 'got {"a": null}'),
    ],
)
def test_bad_value_quoted_as_json(
    handler: ModuleType, llm: LLMControl, body: dict[str, Any], expected: str
) -> None:
    event = with_body(load_event("post_completion.json"), body)

    response = _invoke(handler, event, "lambda-bad")

    assert response["statusCode"] == 400
    assert json.loads(response["body"])["message"].endswith(expected)


def test_sqs_huge_number_rejected_once(
    handler: ModuleType, llm: LLMControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    replies: list[dict[str, Any]] = []
    monkeypatch.setattr(messaging, "send_reply", lambda _, reply: replies.append(reply))
    event = load_event("sqs_completions.json")
    body = '{"prompt": "hi", "deadlineS": 1' + "0" * 400 + "}"
    event["Records"] = [{**event["Records"][0], "body": body}]

    response = _invoke(handler, event, "lambda-sqs-huge")

    assert response == {"batchItemFailures": []}
    assert len(replies) == 1
    assert replies[0]["ok"] is False
    assert replies[0]["field"] == "deadlineS"
    assert llm.requests() == []


def test_hard_budget_refusal_is_429(
    handler: ModuleType,
    database: Database,
    llm: LLMControl,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DAILY_HARD_BUDGET_USD", "0")
    from resilience.llm import reset_default_chain

    reset_default_chain()

    response = _invoke(handler, load_event("post_completion.json"), "lambda-broke")

    assert response["statusCode"] == 429
    assert int(response["headers"]["Retry-After"]) >= 1
    body = json.loads(response["body"])
    assert body["error"] == "budget_exceeded"
    assert "DAILY_HARD_BUDGET_USD" in body["message"]
    assert llm.requests() == []


def test_context_too_long_is_400(handler: ModuleType, llm: LLMControl) -> None:
    llm.fail("openai", "context_length")

    response = _invoke(handler, load_event("post_completion.json"), "lambda-long")

    assert response["statusCode"] == 400
    body = json.loads(response["body"])
    assert body["error"] == "context_length_exceeded"
    assert body["field"] == "prompt"
    assert llm.requests("anthropic") == []


def test_sqs_completions_reply_to_queue(
    handler: ModuleType, database: Database, llm: LLMControl
) -> None:
    with mock_aws():
        sqs_client.cache_clear()
        sqs = boto3.client("sqs", region_name="us-east-1")
        queue_url = sqs.create_queue(QueueName="llm-replies")["QueueUrl"]

        response = _invoke(handler, load_event("sqs_completions.json"), "lambda-sqs")

        messages = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
        )["Messages"]
    sqs_client.cache_clear()

    assert response == {"batchItemFailures": []}
    replies = {
        m["MessageAttributes"]["inReplyTo"]["StringValue"]: json.loads(m["Body"])
        for m in messages
    }
    assert replies["m1"]["ok"] is True
    assert replies["m1"]["provider"] == "openai"
    assert "queued prompt" in replies["m1"]["output"]
    assert replies["m2"]["ok"] is False
    assert replies["m2"]["field"] == "body"
    assert replies["m3"]["ok"] is False
    assert replies["m3"]["field"] == "prompt"
    rows = usage_rows(database)
    assert [(r["task_run_id"], r["org_id"]) for r in rows] == [("lambda-sqs", "acme")]
