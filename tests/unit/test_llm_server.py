"""The local LLM server's control API and its deterministic responses."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from local.llm_server import LLMServer, serve_llm


@pytest.fixture
def server() -> Iterator[LLMServer]:
    server, _ = serve_llm("127.0.0.1", 0)
    yield server
    server.shutdown()
    server.server_close()


def _base(server: LLMServer) -> str:
    return f"http://127.0.0.1:{server.server_port}"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"provider": "mistral", "mode": "ok"}, "provider must be one of"),
        ({"provider": "openai", "mode": "explode"}, "mode must be one of"),
    ],
)
def test_control_rejects_bad_rule(server: LLMServer, body: dict, message: str) -> None:
    response = httpx.post(f"{_base(server)}/_control/failures", json=body)

    assert response.status_code == 400
    assert message in response.json()["error"]


def test_rule_with_times_expires(server: LLMServer) -> None:
    base = _base(server)
    rule = {"provider": "openai", "mode": "529", "times": 1}
    httpx.post(f"{base}/_control/failures", json=rule).raise_for_status()
    client = openai.OpenAI(api_key="k", base_url=f"{base}/v1", max_retries=0)
    messages = [{"role": "user", "content": "same prompt"}]

    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    first = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    second = client.chat.completions.create(model="gpt-4o-mini", messages=messages)

    assert first.choices[0].message.content == second.choices[0].message.content
    calls = httpx.get(f"{base}/_control/requests").json()["requests"]
    assert [call["mode"] for call in calls] == ["529", "ok", "ok"]
    rules = httpx.get(f"{base}/_control/failures").json()["failures"]
    assert rules[0]["applied"] == 1


def test_model_rule_wins_over_provider_rule(server: LLMServer) -> None:
    base = _base(server)
    httpx.post(
        f"{base}/_control/failures", json={"provider": "openai", "mode": "529"}
    ).raise_for_status()
    httpx.post(
        f"{base}/_control/failures",
        json={"provider": "openai", "model": "gpt-4.1-mini", "mode": "ok"},
    ).raise_for_status()
    client = openai.OpenAI(api_key="k", base_url=f"{base}/v1", max_retries=0)
    messages = [{"role": "user", "content": "hello"}]

    answer = client.chat.completions.create(model="gpt-4.1-mini", messages=messages)

    assert "gpt-4.1-mini" in (answer.choices[0].message.content or "")
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=messages)
