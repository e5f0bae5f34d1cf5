"""The escalation service: start, look up, decide, cancel and deliver.

Single use under concurrency: :meth:`EscalationService.decide` runs one
conditional UPDATE (``WHERE resolved_at IS NULL AND expires_at > now()``), so
exactly one decision wins, and only the winner's decision reaches the outbox
and Step Functions. Every attempt, refused ones included, writes an audit row.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from botocore.config import Config

from resilience.api import validate_org_id
from resilience.audit import record_audit, write_audit
from resilience.db import Database, get_database
from resilience.errors import (
    ForbiddenError,
    GoneError,
    NotFoundError,
)
from resilience.escalation import delivery, validation
from resilience.escalation.config import (
    ANYONE,
    EscalationConfig,
    link_signing_key,
)
from resilience.escalation.crypto import Encryptor, encryptor_from_env
from resilience.escalation.links import LinkClaims, LinkSigner, hash_secret
from resilience.escalation.models import (
    DECISIONS,
    Decision,
    DecisionResult,
    EscalationRecord,
    EscalationResolvedError,
    EscalationStarted,
)
from resilience.escalation.starter import start_execution
from resilience.escalation.store import (
    encrypt_json,
    fetch_record,
    insert_escalation,
    insert_link,
    link_hash,
)

__all__ = ["EscalationService", "get_service", "reset_service"]

logger = logging.getLogger(__name__)

_WIN = """
    UPDATE escalation_token
    SET status = %(status)s, decision = %(decision)s, reason = %(reason)s,
        resolved_at = now(), resolved_by = %(actor)s,
        decided_channel = %(channel)s, decided_data = %(decided_data)s,
        updated_at = now()
    WHERE task_run_id = %(id)s AND resolved_at IS NULL AND expires_at > now()
    RETURNING task_run_id
"""
_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,80}")


def stepfunctions_client() -> Any:
    """Return a Step Functions client with short timeouts (endpoint from env).

    One attempt per call, bounded to about 3 s, because Slack expects the
    response to an action within 3 s. The outbox retries a failed delivery.
    """
    import boto3

    config = Config(
        connect_timeout=1,
        read_timeout=2,
        retries={"total_max_attempts": 1, "mode": "standard"},
    )
    return boto3.client("stepfunctions", config=config)


class EscalationService:
    """Escalation operations over one database, encryptor and Step Functions."""

    def __init__(
        self,
        *,
        config: EscalationConfig,
        database: Database,
        encryptor: Encryptor,
        signer: LinkSigner,
        stepfunctions: Any,
    ) -> None:
        self.config = config
        self.database = database
        self.encryptor = encryptor
        self.signer = signer
        self.stepfunctions = stepfunctions

    def __repr__(self) -> str:
        return f"<EscalationService state_machine={self.config.state_machine_arn!r}>"

    @classmethod
    def from_env(cls) -> EscalationService:
        return cls(
            config=EscalationConfig.from_env(),
            database=get_database(),
            encryptor=encryptor_from_env(),
            signer=LinkSigner(link_signing_key()),
            stepfunctions=stepfunctions_client(),
        )

    # ------------------------------------------------------------ start

    def start(
        self,
        *,
        data: dict[str, Any],
        reason: str,
        org_id: str = "default",
        escalation_type: str = "default",
        requested_by: str | None = None,
        approvers: list[str] | None = None,
        timeout_seconds: int | None = None,
        source: dict[str, Any] | None = None,
        app_url: str | None = None,
    ) -> EscalationStarted:
        """Store a pending escalation with one link per approver, then start it.

        The row and links are committed before StartExecution, so the notify
        step and an early click both find them.
        """
        request = validation.validate_start(
            self.config,
            data=data,
            reason=reason,
            org_id=validate_org_id(org_id),
            escalation_type=escalation_type,
            requested_by=requested_by,
            approvers=approvers,
            timeout_seconds=timeout_seconds,
            source=source,
            app_url=app_url,
        )
        escalation_id = f"esc-{uuid.uuid4().hex}"
        expires = int(time.time()) + request.timeout_seconds

        urls = self._create(escalation_id, request, expires)
        start_execution(
            self,
            escalation_id=escalation_id,
            execution_input={
                "escalationId": escalation_id,
                "data": request.data,
                "reason": request.reason,
                "orgId": request.org_id,
                "escalationType": request.escalation_type,
                "timeoutSeconds": request.timeout_seconds,
                "source": request.source,
                "appUrl": request.app_url,
            },
        )
        first = next(iter(urls.values()))
        return EscalationStarted(
            id=escalation_id,
            status="pending",
            approval_url=first,
            approval_urls=urls,
            expires_at=datetime.fromtimestamp(expires, UTC),
        )

    def register_started_elsewhere(
        self, escalation_id: str, execution_input: dict[str, Any]
    ) -> None:
        """Create the row and links of an execution started without :meth:`start`.

        The expiry is counted from now, so it may be a little later than the
        state machine's timeout.
        """
        request = validation.validate_start(
            self.config,
            data=execution_input.get("data"),
            reason=execution_input.get("reason"),
            org_id=validate_org_id(execution_input.get("orgId")),
            escalation_type=execution_input.get("escalationType") or "default",
            requested_by=execution_input.get("requestedBy"),
            approvers=execution_input.get("approvers"),
            timeout_seconds=execution_input.get("timeoutSeconds"),
            source=execution_input.get("source"),
            app_url=execution_input.get("appUrl"),
        )
        expires = int(time.time()) + request.timeout_seconds
        self._create(escalation_id, request, expires)

    def _create(
        self, escalation_id: str, request: validation.StartRequest, expires: int
    ) -> dict[str, str]:
        urls: dict[str, str] = {}
        with self.database.transaction() as connection:
            insert_escalation(
                connection,
                self.encryptor,
                escalation_id=escalation_id,
                org_id=request.org_id,
                escalation_type=request.escalation_type,
                data=request.data,
                reason=request.reason,
                requested_by=request.requested_by,
                approvers=request.approvers,
                source=request.source,
                app_url=request.app_url,
                expires=expires,
            )
            urls = self._create_links(
                connection, escalation_id, request.approvers, request.app_url, expires
            )
            write_audit(
                connection,
                pattern="escalation",
                action="escalation.created",
                task_id=escalation_id,
                org_id=request.org_id,
                actor=request.requested_by,
                metadata={
                    "escalationType": request.escalation_type,
                    "approvers": request.approvers,
                    "timeoutSeconds": request.timeout_seconds,
                    "source": request.source,
                },
            )
        return urls

    def _create_links(
        self,
        connection: Any,
        escalation_id: str,
        approvers: list[str],
        app_url: str,
        expires: int,
    ) -> dict[str, str]:
        urls: dict[str, str] = {}
        for approver in approvers:
            url, signature = self.signer.build_url(
                app_url, escalation_id, approver, expires
            )
            insert_link(
                connection,
                escalation_id=escalation_id,
                approver=approver,
                signature_hash=hash_secret(signature),
                expires=expires,
            )
            urls[approver] = url
        return urls

    # ------------------------------------------------------------ read

    def get(self, escalation_id: str, *, org_id: str | None = None) -> EscalationRecord:
        """Return one escalation; another org's escalation is not found."""
        if not _ID_PATTERN.fullmatch(escalation_id):
            raise NotFoundError(f"escalation {escalation_id!r} not found")
        with self.database.transaction() as connection:
            record = fetch_record(connection, self.encryptor, escalation_id)
        if record is None or (org_id is not None and record.org_id != org_id):
            raise NotFoundError(
                f"escalation {escalation_id!r} not found", resource="escalation"
            )
        return record

    def check_link(
        self, escalation_id: str, params: dict[str, str]
    ) -> tuple[EscalationRecord, LinkClaims]:
        """Verify an approval link and return its escalation.

        Raises:
            ForbiddenError: tampered, forged or never-issued link (403).
            NotFoundError: no escalation has this id (404).
            GoneError: the link or the escalation has expired (410).
        """
        claims = self.signer.verify(escalation_id, params)
        record = self.get(escalation_id)
        with self.database.transaction() as connection:
            stored = link_hash(connection, escalation_id, claims.approver)
        if stored is None or not hmac.compare_digest(
            stored, hash_secret(claims.signature)
        ):
            raise ForbiddenError(
                "approval link was not issued for this approver and escalation"
            )
        if record.status == "expired" or (
            record.pending and record.expires_at <= datetime.now(UTC)
        ):
            raise GoneError(f"escalation {escalation_id} has expired")
        return record, claims

    # ------------------------------------------------------------ decide

    def decide(self, escalation_id: str, decision: Decision) -> DecisionResult:
        """Record ``decision`` if it is the first, then deliver it.

        Raises:
            ForbiddenError: the actor may not make this decision (audited).
            EscalationResolvedError: another decision won, or it expired.
            GoneError: the escalation expired before anyone decided.
        """
        record = self.get(escalation_id)
        self._check_allowed(record, decision)

        outcome = DECISIONS[decision.kind]
        with self.database.transaction() as connection:
            won = connection.execute(
                _WIN,
                {
                    "status": outcome,
                    "decision": decision.kind,
                    "reason": decision.reason,
                    "actor": decision.actor,
                    "channel": decision.channel,
                    "decided_data": self._encrypted_decided_data(record, decision),
                    "id": escalation_id,
                },
            ).fetchone()
            if won is not None:
                delivery.insert_outbox(
                    connection,
                    escalation_id=escalation_id,
                    decision=decision.kind,
                    payload=self._outbox_payload(record, decision),
                )
                write_audit(
                    connection,
                    pattern="escalation",
                    action="escalation.decided",
                    task_id=escalation_id,
                    org_id=record.org_id,
                    actor=decision.actor,
                    metadata=_decision_metadata(record, decision),
                )

        if won is None:
            self._refuse_lost(escalation_id, decision)

        logger.info(
            "escalation.decided",
            extra={"escalation_id": escalation_id, "outcome": outcome},
        )
        return self.deliver(escalation_id)

    def cancel(
        self, escalation_id: str, *, actor: str, org_id: str, reason: str | None
    ) -> DecisionResult:
        """Cancel a pending escalation on behalf of its requester."""
        record = self.get(escalation_id, org_id=org_id)
        decision = Decision(kind="cancel", actor=actor, channel="api", reason=reason)
        if record.requested_by and record.requested_by != actor:
            self._refuse(record, decision, "not_requester")
            raise ForbiddenError(
                f"only the requester ({record.requested_by}) may cancel escalation "
                f"{escalation_id}"
            )
        return self.decide(escalation_id, decision)

    def _check_allowed(self, record: EscalationRecord, decision: Decision) -> None:
        if decision.kind == "cancel":
            return
        escalation_type = self.config.escalation_type(record.escalation_type)
        actor = decision.actor
        if decision.channel == "slack":
            allowed = actor in escalation_type.approvers or actor in record.approvers
            if not escalation_type.approvers and record.approvers == [ANYONE]:
                allowed = True
        else:
            allowed = actor in record.approvers and escalation_type.allows(actor)
        if not allowed:
            self._refuse(record, decision, "not_allowed")
            raise ForbiddenError(
                f"{actor} is not an approver of escalation {record.id} "
                f"(type {record.escalation_type!r})"
            )
        if (
            decision.kind == "approve"
            and escalation_type.forbid_self_approval
            and record.requested_by is not None
            and actor == record.requested_by
        ):
            self._refuse(record, decision, "self_approval")
            raise ForbiddenError(
                f"{actor} requested escalation {record.id} and may not approve it"
            )

    def _refuse_lost(self, escalation_id: str, decision: Decision) -> None:
        record = self.get(escalation_id)
        if record.pending:
            self._refuse(record, decision, "expired")
            raise GoneError(f"escalation {escalation_id} has expired")
        self._refuse(record, decision, "already_resolved")
        raise EscalationResolvedError(
            escalation_id,
            outcome=record.status,
            decided_by=record.resolved_by,
            decided_at=record.resolved_at,
        )

    def _refuse(self, record: EscalationRecord, decision: Decision, why: str) -> None:
        self.audit_attempt(
            record.id,
            actor=decision.actor,
            channel=decision.channel,
            decision=decision.kind,
            why=why,
            org_id=record.org_id,
        )

    def audit_attempt(
        self,
        escalation_id: str | None,
        *,
        actor: str | None,
        channel: str,
        decision: str | None,
        why: str,
        org_id: str | None = None,
    ) -> None:
        """Write the audit row of a refused decision attempt."""
        record_audit(
            self.database,
            pattern="escalation",
            action="escalation.decision_refused",
            task_id=escalation_id,
            org_id=org_id,
            actor=actor,
            metadata={"channel": channel, "decision": decision, "why": why},
        )
        logger.info(
            "escalation.decision_refused",
            extra={"escalation_id": escalation_id, "why": why, "channel": channel},
        )

    def _encrypted_decided_data(
        self, record: EscalationRecord, decision: Decision
    ) -> bytes | None:
        if decision.kind != "approve":
            return None
        data = decision.data if decision.data is not None else record.data
        return encrypt_json(
            self.encryptor, data, escalation_id=record.id, purpose="decided_data"
        )

    def _outbox_payload(self, record: EscalationRecord, decision: Decision) -> bytes:
        payload: dict[str, Any] = {
            "decision": decision.kind,
            "decidedBy": decision.actor,
            "channel": decision.channel,
        }
        if decision.kind == "approve":
            # The approved data stays in decided_data. In the task output,
            # Step Functions would keep it beside the original data in the
            # state, and the two pass its 256 KiB limit from about 128 KB.
            payload["edited"] = (
                decision.data is not None and decision.data != record.data
            )
        else:
            payload["reason"] = decision.reason
        return encrypt_json(
            self.encryptor, payload, escalation_id=record.id, purpose="outbox"
        )

    # ------------------------------------------------------------ deliver

    def deliver(self, escalation_id: str) -> DecisionResult:
        """Deliver the undelivered decision unless another process has leased it."""
        with self.database.transaction() as connection:
            claimed = delivery.claim(connection, escalation_id)
        if claimed is None:
            return self._delivery_state(escalation_id)

        status, error = delivery.deliver_claimed(
            claimed, encryptor=self.encryptor, stepfunctions=self.stepfunctions
        )
        with self.database.transaction() as connection:
            delivery.record_delivery(
                connection,
                escalation_id,
                status=status,
                error=error,
                attempts=claimed["attempts"],
            )
            write_audit(
                connection,
                pattern="escalation",
                action=f"escalation.delivery_{status}",
                task_id=escalation_id,
                metadata={"attempt": claimed["attempts"], "error": error},
            )
        return self._delivery_state(escalation_id, error=error)

    def _delivery_state(
        self, escalation_id: str, *, error: str | None = None
    ) -> DecisionResult:
        record = self.get(escalation_id)
        delivery_status = record.delivery or "pending"
        if delivery_status == "delivering":
            delivery_status = "pending"
        if delivery_status not in ("delivered", "gone"):
            delivery_status = "pending"
        return DecisionResult(
            escalation_id=escalation_id,
            outcome=record.status,
            delivery=delivery_status,  # type: ignore[arg-type]
            decided_by=record.resolved_by or "",
            error=error,
        )

    def deliver_due(self, *, limit: int = 50) -> list[DecisionResult]:
        """Retry every undelivered decision whose next attempt is due."""
        with self.database.transaction() as connection:
            rows = connection.execute(
                """
                SELECT escalation_id FROM escalation_outbox
                WHERE (status = 'pending' AND next_attempt_at <= now())
                   OR (status = 'delivering' AND lease_until < now())
                ORDER BY next_attempt_at
                LIMIT %s
                """,
                (limit,),
            ).fetchall()
        return [self.deliver(row["escalation_id"]) for row in rows]


def _decision_metadata(record: EscalationRecord, decision: Decision) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "decision": decision.kind,
        "channel": decision.channel,
        "reason": decision.reason,
    }
    if decision.kind == "approve":
        metadata["edited"] = decision.data is not None and decision.data != record.data
    return metadata


_service: EscalationService | None = None
_service_lock = threading.Lock()


def get_service() -> EscalationService:
    """Return the container's service, built from the environment once."""
    global _service
    with _service_lock:
        if _service is None:
            _service = EscalationService.from_env()
        return _service


def reset_service() -> None:
    """Forget the container's service, so the next call re-reads settings."""
    global _service
    with _service_lock:
        _service = None
