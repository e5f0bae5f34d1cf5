"""Hedged attempts: after a delay without an answer, ask the next step too.

Off by default (``LLM_HEDGE_DELAY_S``). The first answer wins. The other
call is not cancelled, because the SDKs cannot cancel a request from another
thread, so its usage is recorded when it finishes: both costs are recorded.
"""

from __future__ import annotations

import logging
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING

from resilience.llm.attempts import Attempt, CallState, Outcome
from resilience.llm.config import TierStep

if TYPE_CHECKING:
    from resilience.llm.chain import LLMChain

__all__ = ["run_hedged"]

logger = logging.getLogger(__name__)


def run_hedged(
    chain: LLMChain, state: CallState, step: TierStep, partner: TierStep
) -> tuple[Outcome, bool]:
    """Run ``step``, and ``partner`` too when ``step`` is slow.

    Returns:
        The winning outcome (or a failure when neither succeeded), and whether
        ``partner`` was used, so the chain does not try it again.
    """
    first = chain.make_attempt(state, step)
    skipped = first.start()
    if skipped is not None:
        state.fell_back = True
        return skipped, False

    state.attempts += 1
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="llm-hedge")
    running: dict[Future[Outcome], Attempt] = {pool.submit(first.run): first}
    delay = min(chain.config.hedge_delay_s or 0.0, max(state.remaining(), 0.0))
    done, _ = wait(running, timeout=delay)
    if done:
        pool.shutdown(wait=False)
        return next(iter(done)).result(), False

    second = chain.make_attempt(state, partner)
    if second.start() is None:
        state.attempts += 1
        logger.info("llm.hedged", extra=state.log_extra(partner, after_s=delay))
        running[pool.submit(second.run)] = second

    winner, failures, pending = _first_answer(state, set(running))
    for future in pending:
        future.add_done_callback(lambda f: _record_loser(chain, state, f))
    pool.shutdown(wait=False)

    if winner is not None:
        if winner.step is partner:
            state.fell_back = True
        return winner, True
    state.fell_back = True
    if failures:
        return failures[0], True
    # Neither call ended before the deadline; both time out on their own.
    return Outcome(step, skipped=True), True


def _first_answer(
    state: CallState, pending: set[Future[Outcome]]
) -> tuple[Outcome | None, list[Outcome], set[Future[Outcome]]]:
    failures: list[Outcome] = []
    while pending:
        done, pending = wait(
            pending,
            timeout=max(state.remaining(), 0.0) + 0.5,
            return_when=FIRST_COMPLETED,
        )
        if not done:
            break
        for future in done:
            outcome = future.result()
            if outcome.answer is not None:
                return outcome, failures, pending
            failures.append(outcome)
    return None, failures, pending


def _record_loser(chain: LLMChain, state: CallState, future: Future[Outcome]) -> None:
    try:
        outcome = future.result()
        if outcome.answer is not None:
            chain.recorder.hedge_loser(state, outcome)
    except Exception:
        logger.warning(
            "llm.hedge_record_failed", extra={"request_id": state.run_id}, exc_info=True
        )
