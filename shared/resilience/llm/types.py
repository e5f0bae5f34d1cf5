"""Requests, results and token usage of the fallback chain."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from resilience.api import (
    json_text,
    json_type_name,
    truncate_for_message,
    validate_org_id,
)
from resilience.errors import ValidationError

__all__ = [
    "CompletionRequest",
    "CompletionResult",
    "ProviderAnswer",
    "Usage",
    "estimate_tokens",
]

ROLES = ("system", "user", "assistant")
MAX_TOKENS_LIMIT = 32_000
MAX_PROMPT_CHARS = 400_000


def estimate_tokens(text: str) -> int:
    """Estimate a token count as one token per four characters (an estimate)."""
    return (len(text) + 3) // 4


@dataclass(frozen=True)
class Usage:
    """Tokens of one call, split the way providers bill them.

    ``input_tokens`` counts the prompt tokens billed at the full input price;
    ``cached_input_tokens`` those read from the provider's prompt cache and
    ``cache_write_tokens`` those written to it. ``estimated`` is True when the
    provider sent no usage (a broken stream) and the counts are estimates.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    estimated: bool = False

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cached_input_tokens + self.cache_write_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


@dataclass(frozen=True)
class ProviderAnswer:
    """Text, usage and model returned by one provider call."""

    text: str
    usage: Usage
    model: str
    finish_reason: str | None = None


@dataclass(frozen=True)
class CompletionRequest:
    """One prompt (or message list) to complete through a tier of the chain.

    ``run_id`` is the Lambda request id recorded in ``llm_usage``. The chain
    takes it from the Lambda context when it is empty, and rejects the request
    when neither is given. ``deadline_s`` is the caller's own limit in seconds
    from now. ``cache=False`` skips the response cache for this request.
    """

    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    max_tokens: int = 500
    org_id: str = "default"
    run_id: str = ""
    tier: str = "default"
    cache: bool = True
    deadline_s: float | None = None
    temperature: float | None = None
    system: str | None = None

    def validated(self) -> CompletionRequest:
        """Return the request with ``messages`` built, or raise ValidationError."""
        messages = self.normalized_messages()
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool):
            raise ValidationError(
                f"maxTokens must be an integer, got {json_text(self.max_tokens)}",
                field="maxTokens",
            )
        if not 1 <= self.max_tokens <= MAX_TOKENS_LIMIT:
            raise ValidationError(
                f"maxTokens must be between 1 and {MAX_TOKENS_LIMIT}, "
                f"got {_describe_number(self.max_tokens)}",
                field="maxTokens",
            )
        deadline_s = _finite_float(self.deadline_s, "deadlineS", "a number of seconds")
        if deadline_s is not None and deadline_s <= 0:
            raise ValidationError(
                f"deadline must be positive seconds, got {deadline_s}",
                field="deadlineS",
            )
        temperature = _finite_float(
            self.temperature, "temperature", "a number between 0 and 2"
        )
        if temperature is not None and not 0 <= temperature <= 2:
            raise ValidationError(
                f"temperature must be between 0 and 2, got {temperature}",
                field="temperature",
            )
        org_id = validate_org_id(self.org_id, field="orgId")
        return replace(
            self,
            messages=messages,
            prompt=None,
            org_id=org_id,
            deadline_s=deadline_s,
            temperature=temperature,
        )

    def normalized_messages(self) -> list[dict[str, Any]]:
        if self.messages is None:
            return [{"role": "user", "content": self._checked_prompt()}]
        if self.prompt is not None:
            raise ValidationError(
                "send either prompt or messages, not both", field="messages"
            )
        if not isinstance(self.messages, list) or not self.messages:
            raise ValidationError(
                "messages must be a non-empty list of {role, content} objects",
                field="messages",
            )
        total = 0
        for index, message in enumerate(self.messages):
            where = f"messages[{index}]"
            if not isinstance(message, dict):
                raise ValidationError(f"{where} must be an object", field=where)
            if message.get("role") not in ROLES:
                raise ValidationError(
                    f"{where}.role must be one of {ROLES}, got "
                    f"{json_text(message.get('role'))}",
                    field=f"{where}.role",
                )
            content = message.get("content")
            if not isinstance(content, str) or not content:
                raise ValidationError(
                    f"{where}.content must be a non-empty string",
                    field=f"{where}.content",
                )
            _check_encodable(content, f"{where}.content")
            total += len(content)
        self._check_length(total, "messages")
        return [{"role": m["role"], "content": m["content"]} for m in self.messages]

    def _checked_prompt(self) -> str:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValidationError(
                "prompt is missing or empty: send a non-empty string", field="prompt"
            )
        self._check_length(len(self.prompt), "prompt")
        _check_encodable(self.prompt, "prompt")
        return self.prompt

    @staticmethod
    def _check_length(chars: int, name: str) -> None:
        if chars > MAX_PROMPT_CHARS:
            raise ValidationError(
                f"{name} is {chars} characters, over the limit of {MAX_PROMPT_CHARS}",
                field=name,
            )


def _finite_float(value: object, name: str, description: str) -> float | None:
    """Convert an optional number to float, or raise ValidationError.

    An int beyond the float range (about 1.8e308) raises OverflowError in
    ``float()``, and NaN or infinity would pass the ``deadline_s <= 0`` check.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(
            f"{name} must be {description}, got {json_type_name(value)}",
            field=name,
        )
    try:
        number = float(value)
    except OverflowError:
        raise ValidationError(
            f"{name} must be {description}, got {_describe_number(value)}",
            field=name,
        ) from None
    if not math.isfinite(number):
        raise ValidationError(f"{name} must be {description}, got {number}", field=name)
    return number


def _describe_number(value: float) -> str:
    """Quote a number for an error message, cut by truncate_for_message."""
    try:
        return truncate_for_message(str(value))
    except ValueError:
        # str() raises ValueError past this many digits (4,300 by default).
        return f"an integer of more than {sys.get_int_max_str_digits()} digits"


def _check_encodable(text: str, name: str) -> None:
    """Raise ValidationError when ``text`` cannot be encoded as UTF-8.

    A lone surrogate (from a JSON escape such as ``\\ud800`` without its
    pair) is the only way a Python string fails here. The SDKs would raise
    UnicodeEncodeError while building the request body, before sending it.
    A NUL character encodes and is sent: no text of the prompt is stored in
    PostgreSQL, and a provider that rejects it answers 4xx, which is returned.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(
            f"{name} contains a lone surrogate {text[exc.start]!r} at character "
            f"{exc.start}, which is not valid UTF-8: send a complete surrogate "
            "pair (for example \\ud83d\\ude00) or remove the character",
            field=name,
        ) from None


@dataclass(frozen=True)
class CompletionResult:
    """The chain's answer to one request.

    ``provider`` is ``openai``, ``anthropic`` or ``local`` (the template
    answer). ``degraded`` is True when the tier's first step did not answer.
    ``incomplete`` is True when a stream broke after content arrived: then
    ``output`` is the partial text and ``reason`` names the error class.
    ``cost`` is None when the model has no price.
    """

    ok: bool
    output: str
    provider: str
    model: str
    degraded: bool
    cached: bool
    incomplete: bool = False
    reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost: Decimal | None = None
    latency_ms: int = 0
    attempts: int = 0
    price_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Shape the result for the HTTP and SQS responses."""
        body: dict[str, Any] = {
            "ok": self.ok,
            "model": self.model,
            "provider": self.provider,
            "output": self.output,
            "degraded": self.degraded,
            "cached": self.cached,
            "usage": {
                "promptTokens": self.usage.prompt_tokens,
                "completionTokens": self.usage.output_tokens,
                "totalTokens": self.usage.total_tokens,
            },
            "cost": str(self.cost) if self.cost is not None else None,
        }
        if self.incomplete:
            body["incomplete"] = True
        if self.reason:
            body["reason"] = self.reason
        return body
