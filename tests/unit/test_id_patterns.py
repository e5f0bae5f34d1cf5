"""Id and name checks match the whole value, so a trailing newline is invalid.

Python's ``$`` also matches before a final newline, so ``re.match`` with a
``^...$`` pattern accepts ``"id\\n"``.
"""

from __future__ import annotations

import json

import pytest

from resilience.api import validate_org_id
from resilience.batch.models import validate_batch_id
from resilience.errors import ConfigError, ValidationError
from resilience.escalation.config import EscalationConfig
from resilience.escalation.validation import validate_start
from resilience.services import ServiceRegistry


@pytest.mark.parametrize("suffix", ["\n", "\r\n", "\nx"])
def test_batch_id_rejects_line_break(suffix: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_batch_id("atk-nl" + suffix)

    assert caught.value.field == "batchId"


def test_org_id_rejects_trailing_newline() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_org_id("acme\n", field="X-Org-Id header")

    assert caught.value.field == "X-Org-Id header"


def test_escalation_type_rejects_trailing_newline() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_start(
            EscalationConfig(app_url="https://a.test"),
            data={},
            reason="why",
            org_id="default",
            escalation_type="default\n",
            requested_by=None,
            approvers=None,
            timeout_seconds=None,
            source=None,
            app_url=None,
        )

    assert caught.value.field == "escalationType"


def test_service_name_rejects_trailing_newline() -> None:
    services = {"demo\n": {"baseUrl": "http://127.0.0.1:9"}}

    with pytest.raises(ConfigError, match="service name"):
        ServiceRegistry.from_json(json.dumps(services))


def test_valid_ids_still_accepted() -> None:
    assert validate_batch_id("orders-1.a_b") == "orders-1.a_b"
    assert validate_org_id("acme:eu-1") == "acme:eu-1"
