"""Signed approval links: ``/approvals/{id}?approver=…&expires=…&signature=…``.

The signature is HMAC-SHA256 over the escalation id, the approver and the
expiry (Unix seconds), so none of them can be changed without the key. A link
never contains the Step Functions task token. The database stores only the
SHA-256 of each signature. A link counts only when that hash matches the row
issued for its approver, so a correctly signed link that was never issued (or
was issued for another escalation) is rejected too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from resilience.errors import ForbiddenError, GoneError

__all__ = [
    "LinkClaims",
    "LinkSigner",
    "hash_secret",
]

# The expiry of an issued link has 10 digits until the year 2286, and 19
# digits fit a signed 64-bit integer.
MAX_EXPIRES_DIGITS = 19
_EXPIRES_PATTERN = re.compile(rf"[0-9]{{1,{MAX_EXPIRES_DIGITS}}}")


def hash_secret(secret: str) -> str:
    """Return the hex SHA-256 of a link secret, the only form that is stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class LinkClaims:
    """Claims of a verified link: escalation id, approver and expiry."""

    escalation_id: str
    approver: str
    expires: int
    signature: str


class LinkSigner:
    """Create and verify approval links with one HMAC key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the link signing key must be at least 32 bytes long")
        self._key = key

    def __repr__(self) -> str:
        return "<LinkSigner>"

    def sign(self, escalation_id: str, approver: str, expires: int) -> str:
        """Return the URL-safe signature of one link."""
        message = f"link\n{escalation_id}\n{approver}\n{expires}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def build_url(
        self, base_url: str, escalation_id: str, approver: str, expires: int
    ) -> tuple[str, str]:
        """Return the approval URL and its signature."""
        signature = self.sign(escalation_id, approver, expires)
        query = urlencode(
            {"approver": approver, "expires": expires, "signature": signature}
        )
        path = f"/approvals/{quote(escalation_id, safe='')}"
        return f"{base_url.rstrip('/')}{path}?{query}", signature

    def verify(
        self,
        escalation_id: str,
        params: dict[str, str],
        *,
        now: float | None = None,
    ) -> LinkClaims:
        """Check a link's query parameters and return its claims.

        Raises:
            ForbiddenError: a parameter is missing or malformed, or the
                signature does not match (tampered or forged link).
            GoneError: the link is genuine but its expiry has passed.
        """
        approver = params.get("approver", "")
        expires_raw = params.get("expires", "")
        signature = params.get("signature", "")
        if not approver or not signature or not expires_raw:
            raise ForbiddenError(
                "approval link is incomplete: it needs approver, expires and "
                "signature parameters; open the link exactly as it was sent"
            )
        # str.isdigit() also accepts digits that int() rejects (such as "²"),
        # and int() raises ValueError past 4,300 digits.
        if not _EXPIRES_PATTERN.fullmatch(expires_raw):
            raise ForbiddenError(
                "approval link is malformed: expires must be Unix seconds (at "
                f"most {MAX_EXPIRES_DIGITS} digits 0-9); open the link exactly "
                "as it was sent"
            )

        expires = int(expires_raw)
        expected = self.sign(escalation_id, approver, expires)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise ForbiddenError(
                "approval link signature is invalid: the link was changed or "
                "not issued by this service"
            )
        if expires <= (time.time() if now is None else now):
            raise GoneError("approval link has expired")
        return LinkClaims(escalation_id, approver, expires, signature)

    def csrf_token(self, claims: LinkClaims, cookie_value: str) -> str:
        """Return the form token that must accompany ``cookie_value`` on POST.

        The double-submit cookie is bound to the link by the HMAC, so a token
        from one link or browser session cannot be used with another.
        """
        message = (
            f"csrf\n{claims.escalation_id}\n{claims.approver}\n{cookie_value}"
        ).encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def check_csrf(self, claims: LinkClaims, cookie_value: str, token: str) -> bool:
        """Return True when the form token matches the cookie (constant time)."""
        if not cookie_value or not token:
            return False
        expected = self.csrf_token(claims, cookie_value)
        return hmac.compare_digest(expected.encode(), token.encode())
