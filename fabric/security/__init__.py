"""Security: KMS and envelope encryption, and the secret stores built on them.

Re-exported here: the embedded parts. The Vault backends live in `fabric.security.vault`
(imported on demand: hvac is only needed when Vault is configured).
"""

from __future__ import annotations

from fabric.security.envelope import (
    EnvelopeContext,
    open_sealed,
    reseal,
    seal,
    sealed_key_version,
)
from fabric.security.kms import DataKey, Kms, LocalKeyRing
from fabric.security.secrets import SealedFileSecretStore, SecretStore, validate_ref

__all__ = [
    "DataKey",
    "EnvelopeContext",
    "Kms",
    "LocalKeyRing",
    "SealedFileSecretStore",
    "SecretStore",
    "open_sealed",
    "reseal",
    "seal",
    "sealed_key_version",
    "validate_ref",
]
