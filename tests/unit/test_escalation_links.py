"""Approval link signing, CSRF tokens, decision bodies and local encryption."""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from cryptography.exceptions import InvalidTag

from resilience.errors import ConfigError, ForbiddenError, GoneError, ValidationError
from resilience.escalation.config import (
    ANYONE,
    EscalationConfig,
    link_signing_key,
    parse_types,
)
from resilience.escalation.crypto import LocalKeyEncryptor, encryptor_from_env
from resilience.escalation.links import LinkSigner, hash_secret
from resilience.escalation.validation import parse_decision, validate_start

KEY = b"x" * 32
NOW = 1_700_000_000
EXPIRES = NOW + 3600


def link_params(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def test_link_round_trip() -> None:
    signer = LinkSigner(KEY)
    url, signature = signer.build_url("https://a.test/", "esc-1", "bob@x.io", EXPIRES)

    claims = signer.verify("esc-1", link_params(url), now=NOW)

    assert urlsplit(url).path == "/approvals/esc-1"
    assert claims.approver == "bob@x.io"
    assert claims.expires == EXPIRES
    assert claims.signature == signature


def test_link_contains_no_task_token_or_key() -> None:
    url, _ = LinkSigner(KEY).build_url("https://a.test", "esc-1", "bob", EXPIRES)

    assert set(link_params(url)) == {"approver", "expires", "signature"}
    assert KEY.decode() not in url


@pytest.mark.parametrize(
    ("name", "value"),
    [("approver", "mallory"), ("expires", str(EXPIRES + 1)), ("signature", "AAAA")],
)
def test_changed_parameter_is_forbidden(name: str, value: str) -> None:
    signer = LinkSigner(KEY)
    url, _ = signer.build_url("https://a.test", "esc-1", "bob", EXPIRES)
    params = link_params(url) | {name: value}

    with pytest.raises(ForbiddenError, match="signature is invalid"):
        signer.verify("esc-1", params, now=NOW)


def test_link_for_other_escalation_is_forbidden() -> None:
    signer = LinkSigner(KEY)
    url, _ = signer.build_url("https://a.test", "esc-1", "bob", EXPIRES)

    with pytest.raises(ForbiddenError, match="signature is invalid"):
        signer.verify("esc-2", link_params(url), now=NOW)


def test_link_from_other_key_is_forbidden() -> None:
    url, _ = LinkSigner(b"y" * 32).build_url("https://a.test", "esc-1", "bob", EXPIRES)

    with pytest.raises(ForbiddenError, match="signature is invalid"):
        LinkSigner(KEY).verify("esc-1", link_params(url), now=NOW)


@pytest.mark.parametrize("missing", ["approver", "expires", "signature"])
def test_incomplete_link_is_forbidden(missing: str) -> None:
    signer = LinkSigner(KEY)
    url, _ = signer.build_url("https://a.test", "esc-1", "bob", EXPIRES)
    params = link_params(url)
    del params[missing]

    with pytest.raises(ForbiddenError, match="incomplete"):
        signer.verify("esc-1", params, now=NOW)


@pytest.mark.parametrize(
    "expires",
    [
        "1" + "0" * 5_000,  # past int()'s 4,300-digit limit
        "9" * 20,
        "\u00b2",  # str.isdigit() accepts it, int() does not
        "\u0661\u0662",  # Arabic-Indic digits
        "-1",
        "1e9",
        " 1",
        "1\n",
    ],
)
def test_malformed_expires_is_forbidden(expires: str) -> None:
    signer = LinkSigner(KEY)
    url, _ = signer.build_url("https://a.test", "esc-1", "bob", EXPIRES)
    params = link_params(url) | {"expires": expires}

    with pytest.raises(ForbiddenError, match="expires must be Unix seconds"):
        signer.verify("esc-1", params, now=NOW)


def test_expired_link_is_gone() -> None:
    signer = LinkSigner(KEY)
    url, _ = signer.build_url("https://a.test", "esc-1", "bob", EXPIRES)

    with pytest.raises(GoneError):
        signer.verify("esc-1", link_params(url), now=EXPIRES)


def test_short_key_rejected() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        LinkSigner(b"short")


def test_only_hash_of_signature_is_stored() -> None:
    _, signature = LinkSigner(KEY).build_url("https://a.test", "esc-1", "b", EXPIRES)

    digest = hash_secret(signature)

    assert len(digest) == 64
    assert signature not in digest


def test_csrf_token_bound_to_cookie_and_link() -> None:
    signer = LinkSigner(KEY)
    url, _ = signer.build_url("https://a.test", "esc-1", "bob", EXPIRES)
    claims = signer.verify("esc-1", link_params(url), now=NOW)
    other_url, _ = signer.build_url("https://a.test", "esc-1", "carol", EXPIRES)
    other = signer.verify("esc-1", link_params(other_url), now=NOW)
    token = signer.csrf_token(claims, "cookie-1")

    assert signer.check_csrf(claims, "cookie-1", token)
    assert not signer.check_csrf(claims, "cookie-2", token)
    assert not signer.check_csrf(other, "cookie-1", token)
    assert not signer.check_csrf(claims, "", token)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"decision_": "approve"}, "decision_"),
        ({"decision": "approved"}, "decision"),
        ({}, "decision"),
        ({"decision": "reject"}, "reason"),
        ({"decision": "approve", "data": "[1, 2]"}, "data"),
        ({"decision": "approve", "data": "{bad"}, "data"),
    ],
)
def test_invalid_decision_body(body: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_decision(body, original={"a": 1})

    assert caught.value.field == field


def test_edited_data_only_when_changed() -> None:
    same = parse_decision(
        {"decision": "approve", "data": '{"a": 1}'}, original={"a": 1}
    )
    edited = parse_decision(
        {"decision": "approve", "data": {"a": 2}}, original={"a": 1}
    )

    assert same.data is None
    assert edited.data == {"a": 2}


def test_start_defaults_to_one_link_for_anyone() -> None:
    request = validate_start(
        EscalationConfig(app_url="https://a.test"),
        data={},
        reason="why",
        org_id="default",
        escalation_type="default",
        requested_by=None,
        approvers=None,
        timeout_seconds=None,
        source=None,
        app_url=None,
    )

    assert request.approvers == [ANYONE]
    assert request.timeout_seconds == 86400


def test_start_uses_type_allow_list_without_requester() -> None:
    types = parse_types(
        '{"deploy": {"approvers": ["a", "b", "slack:U1"], "forbidSelfApproval": true,'
        ' "timeoutSeconds": 600}}'
    )
    request = validate_start(
        EscalationConfig(app_url="https://a.test", types=types),
        data={},
        reason="why",
        org_id="default",
        escalation_type="deploy",
        requested_by="a",
        approvers=None,
        timeout_seconds=None,
        source=None,
        app_url=None,
    )

    assert request.approvers == ["b"]
    assert request.timeout_seconds == 600


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[]",
        '{"t": {"approvers": "a"}}',
        '{"t": {"timeoutSeconds": 0}}',
    ],
)
def test_invalid_escalation_types_setting(raw: str) -> None:
    with pytest.raises(ConfigError, match="ESCALATION_TYPES"):
        parse_types(raw)


def test_local_encryption_bound_to_id_and_purpose() -> None:
    encryptor = LocalKeyEncryptor(base64.b64decode(base64.b64encode(b"k" * 32)))
    blob = encryptor.encrypt(b"token", escalation_id="esc-1", purpose="task_token")

    assert b"token" not in blob
    assert encryptor.decrypt(blob, escalation_id="esc-1", purpose="task_token") == (
        b"token"
    )
    with pytest.raises(InvalidTag):
        encryptor.decrypt(blob, escalation_id="esc-2", purpose="task_token")
    with pytest.raises(InvalidTag):
        encryptor.decrypt(blob, escalation_id="esc-1", purpose="data")


def test_link_key_file_created_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "keys" / "link.key"
    monkeypatch.delenv("LINK_SIGNING_KEY", raising=False)
    monkeypatch.delenv("ALERTING_SECRET", raising=False)
    monkeypatch.setenv("LINK_SIGNING_KEY_FILE", str(key_file))

    first = link_signing_key()
    second = link_signing_key()

    assert first == second
    assert len(base64.b64decode(first)) == 32
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_missing_link_key_names_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LINK_SIGNING_KEY", "LINK_SIGNING_KEY_FILE", "ALERTING_SECRET"):
        monkeypatch.delenv(name, raising=False)

    with pytest.raises(ConfigError, match="LINK_SIGNING_KEY_FILE"):
        link_signing_key()


def test_missing_encryption_key_names_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ESCALATION_KMS_KEY_ARN", raising=False)
    monkeypatch.delenv("ESCALATION_LOCAL_KEY", raising=False)
    encryptor_from_env.cache_clear()

    with pytest.raises(ConfigError, match="ESCALATION_LOCAL_KEY"):
        encryptor_from_env()
    encryptor_from_env.cache_clear()


def test_local_key_of_wrong_length_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ESCALATION_KMS_KEY_ARN", raising=False)
    monkeypatch.setenv("ESCALATION_LOCAL_KEY", base64.b64encode(b"short").decode())
    encryptor_from_env.cache_clear()

    with pytest.raises(ConfigError, match="32 bytes"):
        encryptor_from_env()
    encryptor_from_env.cache_clear()
