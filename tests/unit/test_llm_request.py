"""CompletionRequest validation of the text it sends to the providers."""

from __future__ import annotations

from typing import Any

import pytest

from resilience.errors import ValidationError
from resilience.llm import CompletionRequest


def test_prompt_with_lone_surrogate_is_rejected() -> None:
    request = CompletionRequest(prompt="\ud800 1", run_id="run-1")

    with pytest.raises(ValidationError) as caught:
        request.validated()

    assert caught.value.field == "prompt"
    assert "lone surrogate" in str(caught.value)
    assert "character 0" in str(caught.value)


@pytest.mark.parametrize("text", ["tail \udfff", "\udc00\ud800", "a\ud83d"])
def test_message_with_lone_surrogate_is_rejected(text: str) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": text},
    ]
    request = CompletionRequest(messages=messages, run_id="run-1")

    with pytest.raises(ValidationError) as caught:
        request.validated()

    assert caught.value.field == "messages[1].content"


@pytest.mark.parametrize(
    "text",
    [
        "emoji \U0001f600 as one code point",
        "\ud83d\ude00".encode("utf-16", "surrogatepass").decode("utf-16"),
        "NUL \x00 inside",
        "accents: é ü",
    ],
)
def test_encodable_prompts_are_accepted(text: str) -> None:
    request = CompletionRequest(prompt=text, run_id="run-1").validated()

    assert request.messages == [{"role": "user", "content": text}]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"deadline_s": 10**309}, "deadlineS"),
        ({"deadline_s": 10**5000}, "deadlineS"),
        ({"deadline_s": float("nan")}, "deadlineS"),
        ({"deadline_s": float("inf")}, "deadlineS"),
        ({"deadline_s": "10"}, "deadlineS"),
        ({"temperature": 10**309}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"max_tokens": 10**5000}, "maxTokens"),
    ],
)
def test_out_of_range_numbers_are_rejected(changes: dict[str, Any], field: str) -> None:
    request = CompletionRequest(prompt="hi", run_id="run-1", **changes)

    with pytest.raises(ValidationError) as caught:
        request.validated()

    assert caught.value.field == field
    assert len(str(caught.value)) < 400


def test_integer_numbers_become_floats() -> None:
    request = CompletionRequest(
        prompt="hi", run_id="run-1", deadline_s=10, temperature=1
    ).validated()

    assert request.deadline_s == 10.0
    assert isinstance(request.deadline_s, float)
    assert request.temperature == 1.0
    assert isinstance(request.temperature, float)
