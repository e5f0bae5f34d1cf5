"""Partial batch responses: exact shape, and safe responses to malformed input."""

from __future__ import annotations

import pytest

from resilience.batch.models import BatchItem, ItemResult, ItemStatus
from resilience.batch.sqs import (
    MalformedBatchResponseError,
    _skip_failed_groups,
    build_partial_response,
    parse_record,
    validate_partial_response,
)
from tests.batch_support import sqs_record

RECORDS = [
    sqs_record(mid, {"batchId": "b1", "item": {"id": mid, "data": {}}})
    for mid in ("m1", "m2", "m3")
]
EVERY_MESSAGE = {
    "batchItemFailures": [
        {"itemIdentifier": "m1"},
        {"itemIdentifier": "m2"},
        {"itemIdentifier": "m3"},
    ]
}


def test_one_failure_exact_shape() -> None:
    """When m2 fails the response names exactly m2."""
    response = build_partial_response(RECORDS, ["m2"])

    assert response == {"batchItemFailures": [{"itemIdentifier": "m2"}]}
    assert validate_partial_response(response, RECORDS) == []


def test_no_failure_empty_list() -> None:
    response = build_partial_response(RECORDS, [])

    assert response == {"batchItemFailures": []}


def test_duplicates_reported_once() -> None:
    response = build_partial_response(RECORDS, ["m3", "m2", "m3", "m2"])

    assert response == {
        "batchItemFailures": [{"itemIdentifier": "m2"}, {"itemIdentifier": "m3"}]
    }


def test_event_order_kept() -> None:
    response = build_partial_response(RECORDS, ["m3", "m1"])

    assert [e["itemIdentifier"] for e in response["batchItemFailures"]] == ["m1", "m3"]


@pytest.mark.parametrize(
    "bad_id",
    [
        "AQEBm2receipt",  # a receipt handle
        "batch:b1:item:m2",  # an internal idempotency key
        "",
        None,
        42,
        "M2",  # wrong casing of a real id
    ],
)
def test_unknown_identifier_reports_every_message(bad_id: object) -> None:
    """Lambda fails the whole batch for an id it cannot match, so report all."""
    response = build_partial_response(RECORDS, ["m2", bad_id])

    assert response == EVERY_MESSAGE
    assert validate_partial_response(response, RECORDS) == []


def test_record_without_message_id_raises() -> None:
    records = [*RECORDS, {"body": "{}"}]

    with pytest.raises(MalformedBatchResponseError, match="without a messageId"):
        build_partial_response(records, ["m1"])


@pytest.mark.parametrize(
    ("response", "problem"),
    [
        ({"BatchItemFailures": []}, "unexpected key 'BatchItemFailures'"),
        ({"batchItemFailures": [{"ItemIdentifier": "m1"}]}, "must be exactly"),
        ({"batchItemFailures": [{"itemIdentifier": "m1", "x": 1}]}, "must be exactly"),
        ({"batchItemFailures": [{"itemIdentifier": ""}]}, "empty identifier"),
        ({"batchItemFailures": [{"itemIdentifier": None}]}, "empty identifier"),
        (
            {"batchItemFailures": [{"itemIdentifier": "AQEBm1receipt"}]},
            "not a messageId",
        ),
        (
            {"batchItemFailures": [{"itemIdentifier": "batch:b1:item:m1"}]},
            "not a messageId",
        ),
        (
            {
                "batchItemFailures": [
                    {"itemIdentifier": "m1"},
                    {"itemIdentifier": "m1"},
                ]
            },
            "repeats 'm1'",
        ),
        ({"batchItemFailures": "m1"}, "must be a list"),
        (["m1"], "must be an object"),
    ],
)
def test_validator_names_each_malformed_shape(response: object, problem: str) -> None:
    problems = validate_partial_response(response, RECORDS)

    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize(
    ("raw_body", "expected"),
    [
        ("not json", "invalid batch-items message"),
        ("[]", "must be a JSON object"),
        ('{"batchId": "b:1", "item": {"id": "x"}}', "batchId must be"),
        ('{"batchId": "b1"}', 'needs "item"'),
        ('{"batchId": "b1", "item": {"id": "x", "processor": 5}}', "processor"),
        ('{"batchId": "b1", "item": {"id": "x", "procesor": "llm"}}', "item.procesor"),
        ('{"batchId": "b1", "item": {"id": "x"}, "itme": {}}', "'itme'"),
    ],
)
def test_unreadable_record_is_final_failure(raw_body: str, expected: str) -> None:
    parsed = parse_record(sqs_record("m9", None, raw_body=raw_body))

    assert isinstance(parsed, ItemResult)
    assert parsed.status is ItemStatus.FAILED
    assert parsed.retryable is False
    assert expected in (parsed.error or "")


def test_record_parsed_into_item() -> None:
    record = sqs_record(
        "m1",
        {"batchId": "b1", "item": {"id": "i1", "data": {"a": 1}}},
        group_id="g1",
        org_id="acme",
    )

    parsed = parse_record(record)

    assert parsed == BatchItem(
        batch_id="b1",
        item_id="i1",
        data={"a": 1},
        message_id="m1",
        group_id="g1",
        org_id="acme",
    )


def test_fifo_group_after_bad_record_not_started() -> None:
    """A bad record fails its group: later items of the group do not run."""
    bad = parse_record(sqs_record("m1", None, raw_body="nope", group_id="g1"))
    later = BatchItem("b1", "i2", message_id="m2", group_id="g1")
    other = BatchItem("b1", "i3", message_id="m3", group_id="g2")

    checked = _skip_failed_groups([bad, later, other], fifo=True)

    assert checked[0] is bad
    assert isinstance(checked[1], ItemResult)
    assert checked[1].status is ItemStatus.NOT_STARTED
    assert checked[1].reason == "group_failed"
    assert checked[2] is other


def test_standard_queue_groups_ignored() -> None:
    bad = parse_record(sqs_record("m1", None, raw_body="nope"))
    later = BatchItem("b1", "i2", message_id="m2")

    checked = _skip_failed_groups([bad, later], fifo=False)

    assert checked[1] is later
