"""The local template answer: the last step of every tier, which always works."""

from __future__ import annotations

import os

__all__ = ["TEMPLATE_ANSWER", "template_answer"]

ENV_TEMPLATE = "LLM_TEMPLATE_ANSWER"

TEMPLATE_ANSWER = (
    "The AI assistant is temporarily unavailable, so this is an automatic "
    "reply. Your request was received and was not processed: please try again "
    "in a few minutes."
)


def template_answer() -> str:
    """Return the template text (``LLM_TEMPLATE_ANSWER`` when set)."""
    return os.environ.get(ENV_TEMPLATE) or TEMPLATE_ANSWER
