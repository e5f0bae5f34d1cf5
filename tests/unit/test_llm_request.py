"""CompletionRequest validation of the text it sends to the providers."""

from __future__ import annotations

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
