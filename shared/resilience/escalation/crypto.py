"""Envelope encryption of escalation data and task tokens at rest.

Each value gets a fresh AES-256-GCM data key from KMS (``GenerateDataKey``),
and the KMS-encrypted data key is stored next to the ciphertext. Without a KMS
key (``make dev``, tests), one local AES key from ``ESCALATION_LOCAL_KEY``
encrypts every value. Both bind the ciphertext to the escalation id and the
purpose (AES-GCM associated data, and the KMS encryption context), so a value
copied to another row or column does not decrypt.

Blob layout: version byte ``1`` (local key) followed by nonce and ciphertext;
version ``2`` (KMS) followed by a 2-byte length, the encrypted data key, nonce
and ciphertext.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from functools import cache
from typing import Any, Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from resilience.errors import ConfigError

__all__ = [
    "Encryptor",
    "KmsEncryptor",
    "LocalKeyEncryptor",
    "encryptor_from_env",
]

ENV_KMS_KEY = "ESCALATION_KMS_KEY_ARN"
ENV_LOCAL_KEY = "ESCALATION_LOCAL_KEY"
_LOCAL = 1
_KMS = 2
_NONCE_BYTES = 12


class Encryptor(Protocol):
    def encrypt(self, plaintext: bytes, *, escalation_id: str, purpose: str) -> bytes:
        """Encrypt ``plaintext`` for one escalation and purpose."""
        ...

    def decrypt(self, blob: bytes, *, escalation_id: str, purpose: str) -> bytes:
        """Decrypt a blob made by :meth:`encrypt` with the same id and purpose."""
        ...


def _associated_data(escalation_id: str, purpose: str) -> bytes:
    return f"escalation:{escalation_id}:{purpose}".encode()


class LocalKeyEncryptor:
    """AES-256-GCM with one key held by the process (development and tests)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ConfigError(
                f"{ENV_LOCAL_KEY} must decode to 32 bytes, got {len(key)}",
                setting=ENV_LOCAL_KEY,
            )
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "<LocalKeyEncryptor>"

    def encrypt(self, plaintext: bytes, *, escalation_id: str, purpose: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        aad = _associated_data(escalation_id, purpose)
        return bytes([_LOCAL]) + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, blob: bytes, *, escalation_id: str, purpose: str) -> bytes:
        if not blob or blob[0] != _LOCAL:
            raise ConfigError(
                "value was not encrypted with the local key: set "
                f"{ENV_KMS_KEY} to the KMS key that encrypted it",
                setting=ENV_LOCAL_KEY,
            )
        nonce = blob[1 : 1 + _NONCE_BYTES]
        aad = _associated_data(escalation_id, purpose)
        return self._aead.decrypt(nonce, blob[1 + _NONCE_BYTES :], aad)


class KmsEncryptor:
    """Envelope encryption: a KMS data key per value, AES-256-GCM locally."""

    def __init__(self, key_id: str, client: Any) -> None:
        self.key_id = key_id
        self._kms = client

    def __repr__(self) -> str:
        return f"<KmsEncryptor key_id={self.key_id!r}>"

    def encrypt(self, plaintext: bytes, *, escalation_id: str, purpose: str) -> bytes:
        context = {"escalationId": escalation_id, "purpose": purpose}
        response = self._kms.generate_data_key(
            KeyId=self.key_id, KeySpec="AES_256", EncryptionContext=context
        )
        encrypted_key: bytes = response["CiphertextBlob"]
        nonce = secrets.token_bytes(_NONCE_BYTES)
        aad = _associated_data(escalation_id, purpose)
        ciphertext = AESGCM(response["Plaintext"]).encrypt(nonce, plaintext, aad)
        header = bytes([_KMS]) + len(encrypted_key).to_bytes(2, "big")
        return header + encrypted_key + nonce + ciphertext

    def decrypt(self, blob: bytes, *, escalation_id: str, purpose: str) -> bytes:
        if not blob or blob[0] != _KMS:
            raise ConfigError(
                "value was not encrypted with KMS: set "
                f"{ENV_LOCAL_KEY} to the local key that encrypted it",
                setting=ENV_KMS_KEY,
            )
        key_length = int.from_bytes(blob[1:3], "big")
        encrypted_key = blob[3 : 3 + key_length]
        rest = blob[3 + key_length :]
        context = {"escalationId": escalation_id, "purpose": purpose}
        data_key = self._kms.decrypt(
            CiphertextBlob=encrypted_key, EncryptionContext=context
        )["Plaintext"]
        aad = _associated_data(escalation_id, purpose)
        return AESGCM(data_key).decrypt(rest[:_NONCE_BYTES], rest[_NONCE_BYTES:], aad)


@cache
def encryptor_from_env() -> Encryptor:
    """Return the container's encryptor: KMS when a key is set, else the local key."""
    key_id = os.environ.get(ENV_KMS_KEY, "")
    if key_id:
        import boto3

        return KmsEncryptor(key_id, boto3.client("kms"))

    encoded = os.environ.get(ENV_LOCAL_KEY, "")
    if not encoded:
        raise ConfigError(
            f"escalation data cannot be encrypted: set {ENV_KMS_KEY} (AWS) or "
            f"{ENV_LOCAL_KEY} to a base64-encoded 32-byte key, e.g. the output of "
            "`python -c 'import os, base64; "
            "print(base64.b64encode(os.urandom(32)).decode())'`",
            setting=ENV_LOCAL_KEY,
        )
    try:
        key = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ConfigError(
            f"{ENV_LOCAL_KEY} is not valid base64", setting=ENV_LOCAL_KEY
        ) from None
    return LocalKeyEncryptor(key)
