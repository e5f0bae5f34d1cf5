"""Requests that cannot be sent: rejected or returned, never counted by a breaker.

A lone surrogate in a prompt once made both SDKs raise UnicodeEncodeError,
which counted as a provider failure: three such requests opened both
breakers for every org. The template answers that followed gave no reason.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import openai
import pytest
from moto import mock_aws

from resilience.db import Database
from resilience.errors import ValidationError
from resilience.llm import CompletionRequest, default_chain
from resilience.llm.classify import RequestNotSentError
from resilience.llm.providers import OpenAIProvider, get_provider
from resilience.messaging import sqs_client
from tests.llm_fixtures import (
    FakeLambdaContext,
    LLMControl,
    llm,
    llm_env,
    llm_server,
    make_chain,
    usage_rows,
)

__all__ = ["llm", "llm_env", "llm_server", "make_chain"]

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "tests" / "events" / "llm"
EVENT = EVENTS / "post_completion.json"


def _event(body_json: str, org_id: str) -> dict[str, Any]:
    event = copy.deepcopy(json.loads(EVENT.read_text()))
    event["body"] = body_json
    event["headers"]["x-org-id"] = org_id
    return event


@pytest.fixture
def handler(llm_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("TRUST_ORG_ID_HEADER", "true")
    spec = importlib.util.spec_from_file_location(
        "graceful_degradation_app_not_sent",
        ROOT / "functions" / "graceful_degradation" / "app.py",
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _breaker_failures(chain: Any) -> dict[str, tuple[str, int]]:
    snapshots = {}
    for step in chain.config.tiers["default"]:
        if not step.is_template:
            snapshot = chain.breaker(step).snapshot()
            snapshots[step.name] = (snapshot.state.value, snapshot.failure_count)
    return snapshots


CLOSED = {
    "openai:gpt-4o-mini": ("closed", 0),
    "anthropic:claude-haiku-4-5": ("closed", 0),
}


def test_lone_surrogate_is_400_and_opens_no_breaker(
    handler: ModuleType, database: Database, llm: LLMControl
) -> None:
    # The JSON escape \ud800 without its pair decodes to a lone surrogate.
    attack = '{"prompt": "\\ud800 1", "cache": false}'

    responses = [
        handler.lambda_handler(
            _event(attack, "attacker"), FakeLambdaContext(f"attack-{index}")
        )
        for index in range(3)
    ]
    normal = handler.lambda_handler(
        _event('{"prompt": "What is a breaker?"}', "acme"), FakeLambdaContext("ok-1")
    )

    for response in responses:
        assert response["statusCode"] == 400
        error = json.loads(response["body"])
        assert error["error"] == "validation_error"
        # The HTTP body check names it body.prompt, the library check prompt.
        assert error["field"].endswith("prompt")
        assert "lone" in error["message"]
    # Only the normal prompt reached a provider.
    assert [call["provider"] for call in llm.requests()] == ["openai"]
    assert _breaker_failures(default_chain()) == CLOSED
    body = json.loads(normal["body"])
    assert normal["statusCode"] == 200
    assert body["provider"] == "openai"
    assert body["degraded"] is False
    assert [row["task_run_id"] for row in usage_rows(database)] == ["ok-1"]


def test_queued_lone_surrogate_is_rejected(
    handler: ModuleType, database: Database, llm: LLMControl
) -> None:
    # Queued bodies get the shared body check (field body.prompt); library
    # callers get CompletionRequest's own check (field prompt).
    event = json.loads((EVENTS / "sqs_completions.json").read_text())
    for record in event["Records"]:
        record["body"] = '{"prompt": "\\ud800 1", "cache": false}'
    with mock_aws():
        sqs_client.cache_clear()
        sqs = boto3.client("sqs", region_name="us-east-1")
        queue_url = sqs.create_queue(QueueName="llm-replies")["QueueUrl"]

        response = handler.lambda_handler(event, FakeLambdaContext("sqs-attack"))

        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)[
            "Messages"
        ]
    sqs_client.cache_clear()

    assert response == {"batchItemFailures": []}
    replies = [json.loads(message["Body"]) for message in messages]
    assert len(replies) == len(event["Records"])
    assert all(reply["field"].endswith("prompt") for reply in replies)
    assert llm.requests() == []
    assert _breaker_failures(default_chain()) == CLOSED
    assert usage_rows(database) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            '{"messages": [{"role": "user", "content": "ok"}, '
            '{"role": "assistant", "content": "x\\udc00"}]}',
            "messages[1].content",
        ),
        ('{"prompts": ["fine", "\\ud83d"]}', "prompts[1]"),
    ],
)
def test_lone_surrogate_field_is_named(
    handler: ModuleType, llm: LLMControl, body: str, field: str
) -> None:
    response = handler.lambda_handler(_event(body, "acme"), FakeLambdaContext("bad"))

    assert response["statusCode"] == 400
    error = json.loads(response["body"])
    assert error["field"].endswith(field)
    assert llm.requests() == []


def test_unsendable_request_is_returned_uncounted(
    make_chain, database: Database, llm: LLMControl
) -> None:
    # A header value with a newline makes the HTTP client (h11) refuse to
    # write the request: the real SDK raises before anything is sent.
    bad_client = openai.OpenAI(
        api_key="test-openai-key",
        base_url=f"{llm.base_url}/v1",
        max_retries=0,
        default_headers={"x-trace": "a\nb"},
    )
    providers = {"openai": OpenAIProvider(bad_client)}
    chain = make_chain()
    chain._providers = lambda name: providers.get(name) or get_provider(name)

    for index in range(4):
        request = CompletionRequest(prompt="hello", run_id=f"not-sent-{index}")
        with pytest.raises(RequestNotSentError) as caught:
            chain.complete(request)
        assert caught.value.status == 400
        assert "LocalProtocolError" in str(caught.value)

    assert llm.requests() == []
    assert _breaker_failures(chain) == CLOSED
    assert usage_rows(database) == []


def test_validation_runs_before_any_provider(make_chain, llm: LLMControl) -> None:
    chain = make_chain()

    with pytest.raises(ValidationError) as caught:
        chain.complete(CompletionRequest(prompt="\udfff", run_id="run-surrogate"))

    assert caught.value.field == "prompt"
    assert llm.requests() == []
    assert _breaker_failures(chain) == CLOSED


def test_template_reason_names_open_breakers(
    make_chain, database: Database, llm: LLMControl
) -> None:
    chain = make_chain()
    for step in chain.config.tiers["default"][:2]:
        chain.breaker(step).open_until(time.time() + 60)
    request = CompletionRequest(prompt="hello", run_id=f"req-{uuid.uuid4()}")

    result = chain.complete(request)

    assert result.provider == "local"
    assert result.reason is not None
    assert "openai:gpt-4o-mini: breaker open" in result.reason
    assert "anthropic:claude-haiku-4-5: breaker open" in result.reason
    assert result.to_json()["reason"] == result.reason
    assert llm.requests() == []
    rows = usage_rows(database, request.run_id)
    assert rows[0]["reason"] == result.reason


def test_degraded_answer_reason_names_failed_step(
    make_chain, database: Database, llm: LLMControl
) -> None:
    llm.fail("openai", "error", status=503)
    request = CompletionRequest(prompt="hello", run_id=f"req-{uuid.uuid4()}")

    result = make_chain().complete(request)

    assert result.provider == "anthropic"
    assert result.degraded is True
    assert result.reason == "openai:gpt-4o-mini: transient"
    assert usage_rows(database, request.run_id)[0]["reason"] == result.reason
