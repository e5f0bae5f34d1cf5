"""Provider adapters: the OpenAI and Anthropic SDK clients behind one Protocol.

Clients are built once per container, with the SDK's own retries off
(``max_retries=0``) because the chain owns the retry policy. The SDKs are
imported on first use. :func:`preload_sdks` imports them and builds the
clients in a background thread during the Lambda init phase, so that a
request that falls back does not wait for the fallback SDK's import
(``anthropic`` 2.17 took 1.2 s to 4.1 s on Python 3.12 with
``python -X importtime`` on the shared development machine).

Where a client points (environment):

- ``OPENAI_BASE_URL`` / ``ANTHROPIC_BASE_URL`` when set (OpenAI's ends in
  ``/v1``, Anthropic's is the server root).
- Otherwise, when ``LLM_MOCK=1`` or the provider has no key, the local LLM
  server at ``LLM_MOCK_URL`` (default ``http://127.0.0.1:8788``), so a
  missing key never sends a request to the real provider.
- Otherwise the SDK's default URL.

Keys: ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY``, else the ``openai`` /
``anthropic`` fields of the JSON secret named by ``PROVIDER_KEYS_SECRET``.
With ``LLM_MOCK=1`` the clients send a placeholder key instead.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from resilience.errors import ResilienceError
from resilience.llm.classify import translate_anthropic, translate_openai
from resilience.llm.types import ProviderAnswer, Usage
from resilience.secrets import get_secret_value

__all__ = [
    "AnthropicProvider",
    "ClientSettings",
    "OpenAIProvider",
    "Provider",
    "StreamDelta",
    "get_provider",
    "preload_sdks",
    "reset_providers",
]

logger = logging.getLogger(__name__)

ENV_MOCK = "LLM_MOCK"
ENV_MOCK_URL = "LLM_MOCK_URL"
ENV_KEYS_SECRET = "PROVIDER_KEYS_SECRET"
DEFAULT_MOCK_URL = "http://127.0.0.1:8788"
MOCK_API_KEY = "local-mock-key"
# A reachable server accepts a connection quickly, so the rest of the attempt
# is left for the response.
CONNECT_TIMEOUT_S = 2.0

_ENV = {
    "openai": ("OPENAI_API_KEY", "OPENAI_BASE_URL", "/v1"),
    "anthropic": ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", ""),
}


@dataclass(frozen=True)
class StreamDelta:
    """One piece of a streamed response: text, or the final usage."""

    text: str = ""
    usage: Usage | None = None


class Provider(Protocol):
    """One provider's API, called with a per-attempt timeout in seconds."""

    name: str

    def warm(self) -> None: ...

    def complete(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int,
        timeout_s: float,
        temperature: float | None = None,
    ) -> ProviderAnswer: ...

    def stream(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int,
        timeout_s: float,
        temperature: float | None = None,
    ) -> Iterator[StreamDelta]: ...


@dataclass(frozen=True)
class ClientSettings:
    """Base URL and key of one provider's client."""

    provider: str
    api_key: str
    base_url: str | None
    mock: bool

    @classmethod
    def from_env(cls, provider: str) -> ClientSettings:
        key_env, url_env, mock_suffix = _ENV[provider]
        key = get_secret_value(key_env, secret_env=ENV_KEYS_SECRET, field=provider)
        mock = os.environ.get(ENV_MOCK, "") in ("1", "true") or not key
        base_url = os.environ.get(url_env) or None
        if base_url is None and mock:
            mock_url = os.environ.get(ENV_MOCK_URL) or DEFAULT_MOCK_URL
            base_url = mock_url.rstrip("/") + mock_suffix
        # In mock mode the real key is not sent to the local stand-in.
        api_key = MOCK_API_KEY if mock or not key else key
        return cls(provider, api_key, base_url, mock)


def _timeout(timeout_s: float) -> Any:
    import httpx2

    return httpx2.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s))


def _split_system(
    messages: list[dict[str, Any]],
) -> tuple[str | None, list[dict[str, Any]]]:
    system = [m["content"] for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    return ("\n\n".join(system) if system else None), rest


class OpenAIProvider:
    """Chat Completions through the ``openai`` SDK."""

    name = "openai"

    def __init__(self, client: Any) -> None:
        self.client = client

    def warm(self) -> None:
        """Load the SDK's lazily imported resource modules."""
        _ = self.client.chat.completions

    def complete(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int,
        timeout_s: float,
        temperature: float | None = None,
    ) -> ProviderAnswer:
        service = f"openai:{model}"
        try:
            response = self.client.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=max_tokens,
                timeout=_timeout(timeout_s),
                **_optional(temperature=temperature),
            )
            choice = response.choices[0]
            text = choice.message.content or ""
            usage = _openai_usage(response.usage)
        except Exception as exc:
            raise translate_openai(exc, service) from exc
        return ProviderAnswer(
            text, usage, response.model or model, choice.finish_reason
        )

    def stream(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int,
        timeout_s: float,
        temperature: float | None = None,
    ) -> Iterator[StreamDelta]:
        service = f"openai:{model}"
        try:
            chunks = self.client.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=max_tokens,
                stream=True,
                stream_options={"include_usage": True},
                timeout=_timeout(timeout_s),
                **_optional(temperature=temperature),
            )
            with chunks:
                for chunk in chunks:
                    if chunk.usage is not None:
                        yield StreamDelta(usage=_openai_usage(chunk.usage))
                    if chunk.choices and chunk.choices[0].delta.content:
                        yield StreamDelta(text=chunk.choices[0].delta.content)
        except ResilienceError:
            raise
        except Exception as exc:
            raise translate_openai(exc, service) from exc


def _openai_usage(usage: Any) -> Usage:
    if usage is None:
        return Usage()
    details = getattr(usage, "prompt_tokens_details", None)
    cached = int(getattr(details, "cached_tokens", 0) or 0)
    prompt = int(usage.prompt_tokens or 0)
    return Usage(
        input_tokens=max(0, prompt - cached),
        output_tokens=int(usage.completion_tokens or 0),
        cached_input_tokens=cached,
    )


class AnthropicProvider:
    """Messages through the ``anthropic`` SDK."""

    name = "anthropic"

    def __init__(self, client: Any) -> None:
        self.client = client

    def warm(self) -> None:
        """Load the SDK's lazily imported resource modules."""
        _ = self.client.messages

    def complete(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int,
        timeout_s: float,
        temperature: float | None = None,
    ) -> ProviderAnswer:
        service = f"anthropic:{model}"
        system, rest = _split_system(messages)
        try:
            response = self.client.messages.create(
                model=model,
                messages=rest,
                max_tokens=max_tokens,
                timeout=_timeout(timeout_s),
                **_optional(system=system, temperature=temperature),
            )
            text = "".join(
                block.text for block in response.content if block.type == "text"
            )
            usage = _anthropic_usage(response.usage)
        except Exception as exc:
            raise translate_anthropic(exc, service) from exc
        return ProviderAnswer(
            text, usage, response.model or model, response.stop_reason
        )

    def stream(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int,
        timeout_s: float,
        temperature: float | None = None,
    ) -> Iterator[StreamDelta]:
        service = f"anthropic:{model}"
        system, rest = _split_system(messages)
        try:
            events = self.client.messages.create(
                model=model,
                messages=rest,
                max_tokens=max_tokens,
                stream=True,
                timeout=_timeout(timeout_s),
                **_optional(system=system, temperature=temperature),
            )
            input_usage = Usage()
            with events:
                for event in events:
                    if event.type == "message_start":
                        input_usage = _anthropic_usage(
                            event.message.usage, output=False
                        )
                    elif event.type == "content_block_delta" and event.delta.type == (
                        "text_delta"
                    ):
                        yield StreamDelta(text=event.delta.text)
                    elif event.type == "message_delta":
                        output = int(event.usage.output_tokens or 0)
                        usage = Usage(
                            input_tokens=input_usage.input_tokens,
                            output_tokens=output,
                            cached_input_tokens=input_usage.cached_input_tokens,
                            cache_write_tokens=input_usage.cache_write_tokens,
                        )
                        yield StreamDelta(usage=usage)
        except ResilienceError:
            raise
        except Exception as exc:
            raise translate_anthropic(exc, service) from exc


def _anthropic_usage(usage: Any, *, output: bool = True) -> Usage:
    if usage is None:
        return Usage()
    return Usage(
        input_tokens=int(usage.input_tokens or 0),
        output_tokens=int(usage.output_tokens or 0) if output else 0,
        cached_input_tokens=int(getattr(usage, "cache_read_input_tokens", 0) or 0),
        cache_write_tokens=int(getattr(usage, "cache_creation_input_tokens", 0) or 0),
    )


def _optional(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


# ---------------------------------------------------------------- per container

_providers: dict[str, Provider] = {}
_providers_lock = threading.Lock()
_SDK_MODULES = {"openai": "openai", "anthropic": "anthropic"}


def get_provider(name: str) -> Provider:
    """Return the container's adapter for ``name``, building its client once."""
    with _providers_lock:
        provider = _providers.get(name)
        if provider is None:
            provider = _build_provider(ClientSettings.from_env(name))
            _providers[name] = provider
        return provider


def _build_provider(settings: ClientSettings) -> Provider:
    logger.info(
        "llm.client_built",
        extra={
            "provider": settings.provider,
            "mock": settings.mock,
            "base_url": settings.base_url or "sdk default",
        },
    )
    if settings.provider == "openai":
        import openai

        return OpenAIProvider(
            openai.OpenAI(
                api_key=settings.api_key, base_url=settings.base_url, max_retries=0
            )
        )
    import anthropic

    return AnthropicProvider(
        anthropic.Anthropic(
            api_key=settings.api_key, base_url=settings.base_url, max_retries=0
        )
    )


def reset_providers() -> None:
    """Forget the clients, so the next call re-reads keys and URLs."""
    with _providers_lock:
        _providers.clear()


def preload_sdks(
    providers: list[str], *, also: Callable[[], None] | None = None
) -> threading.Thread | None:
    """Import the SDKs of ``providers`` and build their clients in a daemon thread.

    ``also`` runs in the same thread afterwards, for other lazy imports.
    """
    names = [name for name in providers if name in _SDK_MODULES]
    if not names and also is None:
        return None

    def _preload() -> None:
        for name in names:
            try:
                importlib.import_module(_SDK_MODULES[name])
                get_provider(name).warm()
            except Exception:
                # The request that needs this client builds it again and reports
                # the failure, so a failure here only costs the head start.
                logger.warning("llm.preload_failed", extra={"sdk": name}, exc_info=True)

        if also is not None:
            also()

    thread = threading.Thread(target=_preload, name="llm-sdk-preload", daemon=True)
    thread.start()
    return thread
