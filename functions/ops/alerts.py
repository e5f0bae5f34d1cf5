"""Alert forwarder: CloudWatch alarm notifications from SNS to Slack and PagerDuty.

Every alarm in template.yaml publishes to the stack's alert topic; this
handler turns each notification into one ``resilience.alerts.Alert``. Which
alarm pages and which only posts to Slack is decided in
``resilience.alarms``. A message that is not an alarm notification is
forwarded as a warning with its subject, so nothing published to the topic
is lost.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes import SNSEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from resilience.alarms import alert_for_alarm, parse_alarm_notification
from resilience.alerts import Alert, send_alert
from resilience.observability import route_library_logs

logger = Logger(service="alert-forwarder")
route_library_logs(logger)

# An SNS message can be up to 256 KB. A message that is not an alarm is cut to
# this length so that the Slack post stays readable.
MAX_TEXT_CHARS = 3000


@logger.inject_lambda_context
@event_source(data_class=SNSEvent)
def lambda_handler(event: SNSEvent, context: LambdaContext) -> dict[str, int]:
    """Forward each SNS record as an alert.

    Returns how many alerts were handed to ``send_alert`` and how many records
    were skipped. ``send_alert`` logs delivery failures instead of raising, so
    a failed delivery is not retried by a Lambda error.
    """
    alerts = skipped = 0
    for record in event.records:
        message = record.sns
        alert = _alert_for_message(message.message_id, message.subject, message.message)
        if alert is None:
            skipped += 1
            continue

        send_alert(alert)
        alerts += 1
        logger.info(
            "alarm.forwarded",
            extra={
                "sns_message_id": message.message_id,
                "dedupe_key": alert.dedupe_key,
                "severity": alert.severity,
                "page": alert.page,
            },
        )
    return {"alerts": alerts, "skipped": skipped}


def _alert_for_message(message_id: str, subject: str | None, body: str) -> Alert | None:
    alarm = parse_alarm_notification(body)
    if alarm is not None:
        return alert_for_alarm(alarm)

    logger.warning("alarm.unrecognised_message", extra={"sns_message_id": message_id})
    details: dict[str, Any] = {"snsMessageId": message_id}
    return Alert(
        title=subject or "Message on the alert topic",
        text=body[:MAX_TEXT_CHARS],
        severity="warning",
        source="ops",
        dedupe_key=f"sns:{message_id}",
        details=details,
        page=False,
    )
