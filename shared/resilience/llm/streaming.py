"""Streamed completions: fall back only before the first text arrives.

Iterate a :class:`CompletionStream` for the text pieces; when it is
exhausted, ``stream.result`` is the :class:`CompletionResult`. A provider
that fails before sending text is treated like a failed ``complete`` attempt
(the next step is asked). Once text has reached the caller it cannot be taken
back, so a failure after that ends the stream with an explicit incomplete
result: the partial text, ``incomplete=True`` and ``reason`` naming the
error class. Usage is recorded once, estimated from the text when the
provider sent none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

from resilience.errors import ResilienceError, UpstreamTimeoutError
from resilience.llm.attempts import MIN_ATTEMPT_S, Outcome
from resilience.llm.classify import error_class_of
from resilience.llm.template import template_answer
from resilience.llm.types import (
    CompletionRequest,
    CompletionResult,
    ProviderAnswer,
    Usage,
    estimate_tokens,
)

if TYPE_CHECKING:
    from resilience.llm.chain import LLMChain

__all__ = ["CompletionStream"]

logger = logging.getLogger(__name__)


class CompletionStream:
    """An iterator of text pieces whose ``result`` is set when it ends."""

    def __init__(
        self, chain: LLMChain, request: CompletionRequest, context: Any = None
    ) -> None:
        self.chain = chain
        # Validation, run id and deadline errors are raised here, before any text.
        self.state, self.steps = chain._begin(request, context)
        self.result: CompletionResult | None = None
        self._iterator = self._run()

    def __iter__(self) -> Iterator[str]:
        return self._iterator

    def __next__(self) -> str:
        return next(self._iterator)

    def _run(self) -> Iterator[str]:
        from resilience.observability import emit_metric

        emit_metric("LLMRequests")
        state, queue = self.state, list(self.steps)
        state.pending_steps = queue
        while queue:
            step = queue.pop(0)
            if step.is_template or state.remaining() < MIN_ATTEMPT_S:
                break
            attempt = self.chain.make_attempt(state, step)
            skipped = attempt.start()
            if skipped is not None:
                state.fell_back = True
                continue

            state.attempts += 1
            parts: list[str] = []
            outcome = yield from self._consume(attempt, parts)
            if outcome is None:
                return
            if parts:
                self._finish_incomplete(outcome, parts)
                return
            switch = self.chain._next_steps(state, outcome, queue)
            if switch is not None:
                queue[:0] = switch

        text = template_answer()
        self.result = self.chain.recorder.template(state)
        yield text

    def _consume(
        self, attempt: Any, parts: list[str]
    ) -> Generator[str, None, Outcome | None]:
        """Yield the attempt's text; return None on success, else the failed outcome."""
        state, step = self.state, attempt.step
        request = state.request
        started = time.monotonic()
        usage: Usage | None = None
        provider = attempt.provider
        pieces = provider.stream(
            step.model,
            request.messages,
            max_tokens=request.max_tokens,
            timeout_s=attempt.call_timeout(),
            temperature=request.temperature,
        )
        try:
            for delta in pieces:
                if delta.usage is not None:
                    usage = delta.usage
                if delta.text:
                    parts.append(delta.text)
                    yield delta.text
                if state.remaining() <= 0:
                    raise UpstreamTimeoutError(
                        f"{step.name} stream passed the call's deadline",
                        service=step.name,
                    )
        except ResilienceError as error:
            latency_ms = round((time.monotonic() - started) * 1000)
            outcome: Outcome = attempt.failed(error, latency_ms)
            outcome.usage_seen = usage
            return outcome
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()

        attempt.permit.success()
        text = "".join(parts)
        answer = ProviderAnswer(text, usage or self._estimate(text), step.model)
        done = Outcome(step, answer=answer, reserved=attempt.reserved)
        self.result = self.chain.recorder.answered(state, done)
        return None

    def _finish_incomplete(self, outcome: Outcome, parts: list[str]) -> None:
        text = "".join(parts)
        seen = outcome.usage_seen
        error_class = error_class_of(outcome.error) if outcome.error else None
        reason = (
            f"stream_interrupted: {error_class}"
            if error_class
            else "stream_interrupted"
        )
        self.result = self.chain.recorder.answered(
            self.state,
            outcome,
            incomplete=True,
            reason=reason,
            text=text,
            usage=seen or self._estimate(text),
        )
        logger.warning(
            "llm.stream_incomplete",
            extra=self.state.log_extra(outcome.step, reason=reason, chars=len(text)),
        )

    def _estimate(self, text: str) -> Usage:
        messages = self.state.request.messages or []
        prompt = sum(estimate_tokens(m["content"]) + 4 for m in messages)
        return Usage(
            input_tokens=prompt, output_tokens=estimate_tokens(text), estimated=True
        )
