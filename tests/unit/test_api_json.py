"""JSON bodies the API accepts: what PostgreSQL and HTTP clients can carry."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pytest

from resilience.api import (
    MAX_JSON_DEPTH,
    json_text,
    parse_json_object,
    reject_unknown_fields,
    validate_json_value,
)
from resilience.batch.models import validate_batch_id
from resilience.errors import ValidationError


def test_parses_plain_object() -> None:
    assert parse_json_object('{"a": [1, "é", {"b": null}]}') == {
        "a": [1, "é", {"b": None}]
    }


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        ("", "body", "not valid JSON"),
        ("{", "body", "not valid JSON"),
        ("[1]", "body", "must be a JSON object, got array"),
        ("null", "body", "must be a JSON object, got null"),
        ('{"items": [{"id": "a\\u0000b"}]}', "items[0].id", "NUL"),
        ('{"prompt": "\\ud800 1"}', "prompt", "lone UTF-16 surrogate"),
        ('{"body": {"a": "\\u0000"}}', "body.a", "NUL"),
        ('{"a\\u0000": 1}', "body key", "NUL"),
    ],
)
def test_rejects_bad_json(raw: str, field: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        parse_json_object(raw)

    assert caught.value.field is not None
    assert caught.value.field.startswith(field)


def test_rejects_deep_nesting_before_recursion() -> None:
    deep = "[" * 3000 + "]" * 3000

    with pytest.raises(ValidationError, match="nested too deeply"):
        parse_json_object('{"a": ' + deep + "}")


def test_depth_limit_is_exact() -> None:
    allowed: object = 1
    for _ in range(MAX_JSON_DEPTH - 1):
        allowed = [allowed]
    validate_json_value(allowed)

    too_deep = [allowed]
    with pytest.raises(ValidationError, match=f"at most {MAX_JSON_DEPTH}"):
        validate_json_value(too_deep)


def test_surrogate_pair_is_accepted() -> None:
    body = parse_json_object(json.dumps({"emoji": "\U0001f600"}))

    assert body["emoji"] == "\U0001f600"


@pytest.mark.parametrize("raw", ['{"a": NaN}', '{"a": Infinity}', '{"a": [-Infinity]}'])
def test_rejects_non_finite_constants(raw: str) -> None:
    with pytest.raises(ValidationError, match="not a finite number"):
        parse_json_object(raw)


def test_rejects_overflowing_float() -> None:
    with pytest.raises(ValidationError, match="1e400"):
        parse_json_object('{"deadlineS": 1e400}')


def test_rejects_non_finite_value_object() -> None:
    with pytest.raises(ValidationError, match=r"^a is nan"):
        validate_json_value({"a": float("nan")})


def test_long_key_is_cut_in_message() -> None:
    key = "k" * 10_000

    with pytest.raises(ValidationError, match="NUL") as caught:
        parse_json_object(json.dumps({"a": {key: "\u0000"}}))

    assert caught.value.field == "a." + "k" * 64 + "…"
    assert len(str(caught.value)) < 200


def test_rejects_integer_beyond_digit_limit() -> None:
    raw = '{"n": ' + "9" * 5000 + "}"
    with pytest.raises(ValidationError) as caught:
        parse_json_object(raw)
    assert caught.value.field == "body"
    assert "integer of more than 4300 digits" in str(caught.value)
    assert "sys." not in str(caught.value)


ITEM_FIELDS = {"id", "data", "processor"}


def test_unknown_field_named_with_prefix() -> None:
    item = {"id": "x", "procesor": "llm", "data": {}}

    with pytest.raises(ValidationError, match="unknown field") as caught:
        reject_unknown_fields(item, ITEM_FIELDS, prefix="items[0].")

    assert caught.value.field == "items[0].procesor"
    assert "The accepted fields are data, id, processor" in str(caught.value)


def test_long_unknown_field_is_cut() -> None:
    body = {"k" * 10_000: 1, "z": 2, "id": "x"}

    with pytest.raises(ValidationError) as caught:
        reject_unknown_fields(body, ITEM_FIELDS)

    assert caught.value.field == "k" * 64 + "…"
    assert "and 1 more" in str(caught.value)
    assert len(str(caught.value)) < 200


def test_known_fields_pass() -> None:
    reject_unknown_fields({"id": "x", "data": {}}, ITEM_FIELDS)
    reject_unknown_fields({}, ITEM_FIELDS)


@pytest.mark.parametrize(
    "raw", ['{"path": "/a", "path": "/b"}', '{"body": {"a": 1, "a": 2}}']
)
def test_rejects_repeated_key(raw: str) -> None:
    with pytest.raises(ValidationError, match="sent more than once") as caught:
        parse_json_object(raw)
    assert caught.value.field in ("path", "a")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "null"),
        (True, "true"),
        (["approve"], '["approve"]'),
        ({"a": None}, '{"a": null}'),
        ("caf\u00e9", '"caf\u00e9"'),
        ({1, 2}, "set"),
    ],
)
def test_json_text_quotes_values_as_json(value: object, expected: str) -> None:
    assert json_text(value) == expected


def test_batch_id_message_names_json_value() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_batch_id(None)

    assert str(caught.value).endswith("got null")


def test_wide_deep_value_checked_in_little_memory() -> None:
    # A path string per element would take 100,000 x 60 levels x 66 bytes.
    value: Any = [0] * 100_000
    for _ in range(60):
        value = {"k" * 64: value}

    tracemalloc.start()
    try:
        validate_json_value(value, field="output")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 50 * 1024 * 1024


def test_error_path_names_keys_and_indexes() -> None:
    value = {"items": [{"id": "ok"}, {"id": "a\x00"}]}

    with pytest.raises(ValidationError) as caught:
        validate_json_value(value)

    assert caught.value.field == "items[1].id"
    assert str(caught.value).startswith("items[1].id contains the NUL character")
