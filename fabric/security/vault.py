"""HashiCorp Vault backends (hvac): transit as the `Kms`, KV v2 as the `SecretStore`.

Failure is closed: when Vault cannot be reached, is sealed, answers 5xx or refuses the
token, every call raises `SourceUnavailable` ("the secret service is unavailable ...")
and nothing is served from, or written to, anywhere else. Vault's own error texts are
not passed on (they can echo request content); the message names the address, the
operation and the HTTP status, and the hvac exception is not chained.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import hvac  # type: ignore[import-untyped, unused-ignore]
import hvac.exceptions  # type: ignore[import-untyped, unused-ignore]
import requests  # type: ignore[import-untyped, unused-ignore]

from fabric.errors import (
    FabricError,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    NotFound,
    SourceUnavailable,
)
from fabric.security.kms import DATA_KEY_BYTES, DataKey, validate_context
from fabric.security.secrets import encode_secret, validate_ref

T = TypeVar("T")

DEFAULT_TIMEOUT = 5.0
"""Seconds to wait for Vault before a call fails with `SourceUnavailable`."""

_CIPHERTEXT = re.compile(r"vault:v(\d+):[A-Za-z0-9+/=]+")

# HTTP status behind each hvac error class, for messages.
_STATUS = {
    hvac.exceptions.InvalidRequest: 400,
    hvac.exceptions.Unauthorized: 401,
    hvac.exceptions.Forbidden: 403,
    hvac.exceptions.InvalidPath: 404,
    hvac.exceptions.RateLimitExceeded: 429,
    hvac.exceptions.InternalServerError: 500,
    hvac.exceptions.VaultNotInitialized: 501,
    hvac.exceptions.BadGateway: 502,
    hvac.exceptions.VaultDown: 503,
}


def vault_client(
    url: str,
    token: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    verify: bool | str = True,
    namespace: str | None = None,
) -> Any:
    """An hvac client for `url` with a short timeout. `verify` is True, False (tests
    only) or the path of a CA bundle. The token stays inside the client."""
    return hvac.Client(url=url, token=token, timeout=timeout, verify=verify, namespace=namespace)


def _address(client: Any) -> str:
    """scheme://host:port of the client, without any user info the URL might carry."""
    parts = urlsplit(str(getattr(client, "url", "") or ""))
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme or 'http'}://{host}{port}"


def _unavailable(client: Any, action: str, why: str) -> SourceUnavailable:
    return SourceUnavailable(
        f"the secret service is unavailable: {why} (Vault at {_address(client)}, {action}); "
        "no local fallback is used, retry when Vault is back"
    )


def _translate(
    client: Any,
    action: str,
    exc: Exception,
    *,
    on_missing: FabricError | None,
    on_invalid: FabricError | None,
) -> FabricError:
    if isinstance(exc, FabricError):
        return exc
    if isinstance(exc, requests.exceptions.Timeout):
        return _unavailable(client, action, "Vault did not answer in time")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return _unavailable(client, action, "cannot connect to Vault")
    if isinstance(exc, requests.exceptions.RequestException):
        return _unavailable(client, action, f"the request failed ({type(exc).__name__})")
    if isinstance(exc, hvac.exceptions.InvalidPath) and on_missing is not None:
        return on_missing
    if isinstance(exc, hvac.exceptions.InvalidRequest) and on_invalid is not None:
        return on_invalid
    if isinstance(exc, hvac.exceptions.VaultDown):
        vault_errors = getattr(exc, "errors", None) or []
        if any("sealed" in str(e).lower() for e in vault_errors):
            return _unavailable(client, action, "Vault is sealed; unseal it")
        return _unavailable(client, action, "Vault is down or in standby (HTTP 503)")
    if isinstance(exc, hvac.exceptions.Unauthorized | hvac.exceptions.Forbidden):
        return _unavailable(
            client,
            action,
            f"Vault refused the gateway's token (HTTP {_STATUS[type(exc)]}); "
            "check the token and its policy",
        )
    if isinstance(exc, hvac.exceptions.VaultError):
        status = _STATUS.get(type(exc))
        what = f"HTTP {status}" if status else type(exc).__name__
        return _unavailable(client, action, f"Vault answered with an error ({what})")
    return _unavailable(client, action, f"unexpected failure ({type(exc).__name__})")


def _call(
    client: Any,
    action: str,
    fn: Callable[[], T],
    *,
    on_missing: FabricError | None = None,
    on_invalid: FabricError | None = None,
) -> T:
    """Run one hvac call; any failure becomes a gateway error raised with no chained
    hvac/requests exception (their texts may carry request content)."""
    try:
        return fn()
    except Exception as exc:  # every failure is translated, none escapes raw
        error = _translate(client, action, exc, on_missing=on_missing, on_invalid=on_invalid)
    raise error


def _or_none(fn: Callable[[], T]) -> Callable[[], T | None]:
    """`fn`, answering None where Vault says 404 ("nothing there")."""

    def run() -> T | None:
        try:
            return fn()
        except hvac.exceptions.InvalidPath:
            return None

    return run


def _data(response: Any, action: str, client: Any) -> dict[str, Any]:
    data = response.get("data") if isinstance(response, dict) else None
    if not isinstance(data, dict):
        raise _unavailable(client, action, "Vault's answer had no data")
    return data


class VaultTransitKms:
    """The production `Kms`: Vault's transit engine wraps data keys; keys never leave it.

    Data keys come from ``<mount>/datakey/plaintext/<key>`` (one round trip returns the
    key and its wrapped form), unwrap is ``<mount>/decrypt/<key>``, rotation
    ``<mount>/keys/<key>/rotate``, rewrap ``<mount>/rewrap/<key>``. With `derived` (the
    default) the transit key is a derived key and each tenant gets its own key derived
    from the context ``base64(tenant)``: a wrapped key cannot be unwrapped as another
    tenant's even inside Vault.
    """

    def __init__(
        self,
        client: Any,
        *,
        key_name: str = "fabric",
        mount_point: str = "transit",
        derived: bool = True,
    ) -> None:
        """`client` is an authenticated hvac client (see `vault_client`)."""
        self._client = client
        self._key_name = key_name
        self._mount = mount_point
        self._derived = derived

    def __repr__(self) -> str:
        return (
            f"VaultTransitKms(address={_address(self._client)!r}, "
            f"key={self._mount}/{self._key_name!s}, derived={self._derived})"
        )

    @property
    def key_id(self) -> str:
        """``vault-transit:<mount>/<key>``."""
        return f"vault-transit:{self._mount}/{self._key_name}"

    @property
    def current_version(self) -> int:
        """The transit key's latest version (one round trip)."""
        data = _data(self._read_key(), "read transit key", self._client)
        version = data.get("latest_version")
        if not isinstance(version, int):
            raise _unavailable(self._client, "read transit key", "no latest_version in answer")
        return version

    def ensure_key(self) -> None:
        """Create the transit key (aes256-gcm96, derived as configured) if it is missing."""
        transit = self._client.secrets.transit
        existing = _call(
            self._client,
            "read transit key",
            _or_none(lambda: transit.read_key(name=self._key_name, mount_point=self._mount)),
        )
        if existing is None:
            _call(
                self._client,
                "create transit key",
                lambda: transit.create_key(
                    name=self._key_name,
                    key_type="aes256-gcm96",
                    derived=self._derived,
                    mount_point=self._mount,
                ),
            )

    def generate_data_key(self, context: Mapping[str, str]) -> DataKey:
        """A fresh 256-bit data key from Vault, wrapped by the transit key."""
        derivation = self._derivation(context)
        transit = self._client.secrets.transit
        response = _call(
            self._client,
            "generate data key",
            lambda: transit.generate_data_key(
                name=self._key_name,
                key_type="plaintext",
                context=derivation,
                bits=256,
                mount_point=self._mount,
            ),
            on_missing=self._missing_key(),
            on_invalid=FailedPrecondition(
                f"Vault refused to generate a data key with transit key {self.key_id}; "
                "check that the key exists and is derived as configured"
            ),
        )
        data = _data(response, "generate data key", self._client)
        ciphertext, plaintext_b64 = data.get("ciphertext"), data.get("plaintext")
        if not isinstance(ciphertext, str) or not isinstance(plaintext_b64, str):
            raise _unavailable(self._client, "generate data key", "incomplete answer")
        plaintext = base64.b64decode(plaintext_b64)
        if len(plaintext) != DATA_KEY_BYTES:
            raise _unavailable(self._client, "generate data key", "wrong key length")
        return DataKey(plaintext, ciphertext.encode("ascii"), _version_of(ciphertext), self.key_id)

    def unwrap(self, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        """The data key in `wrapped` (a transit ciphertext); `IntegrityError` if Vault
        cannot decrypt it (altered, or another tenant's)."""
        plaintext_b64 = self._send_wrapped(
            "unwrap data key",
            "decrypt_data",
            wrapped,
            context,
            answer="plaintext",
            on_invalid=IntegrityError(
                "the wrapped data key does not open: it was altered, or it belongs to "
                "another tenant or transit key"
            ),
        )
        return base64.b64decode(plaintext_b64)

    def rewrap(self, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        """The same data key wrapped by the latest transit key version, inside Vault."""
        rewrapped = self._send_wrapped(
            "rewrap data key",
            "rewrap_data",
            wrapped,
            context,
            answer="ciphertext",
            on_invalid=IntegrityError("the wrapped data key does not open (altered?)"),
        )
        return rewrapped.encode("ascii")

    def _send_wrapped(
        self,
        what: str,
        operation: str,
        wrapped: bytes,
        context: Mapping[str, str],
        *,
        answer: str,
        on_invalid: FabricError,
    ) -> str:
        """Send a wrapped data key through a transit operation that takes a ciphertext
        (`decrypt_data`, `rewrap_data`) under the tenant's derivation context; the text
        of the answer's `answer` field."""
        derivation = self._derivation(context)
        ciphertext = _ciphertext_text(wrapped)
        transit = self._client.secrets.transit
        response = _call(
            self._client,
            what,
            lambda: getattr(transit, operation)(
                name=self._key_name,
                ciphertext=ciphertext,
                context=derivation,
                mount_point=self._mount,
            ),
            on_missing=self._missing_key(),
            on_invalid=on_invalid,
        )
        value = _data(response, what, self._client).get(answer)
        if not isinstance(value, str):
            raise _unavailable(self._client, what, "incomplete answer")
        return value

    def rotate(self) -> int:
        """Rotate the transit key; returns the new latest version."""
        transit = self._client.secrets.transit
        _call(
            self._client,
            "rotate transit key",
            lambda: transit.rotate_key(name=self._key_name, mount_point=self._mount),
            on_missing=self._missing_key(),
        )
        return self.current_version

    def _read_key(self) -> Any:
        transit = self._client.secrets.transit
        return _call(
            self._client,
            "read transit key",
            lambda: transit.read_key(name=self._key_name, mount_point=self._mount),
            on_missing=self._missing_key(),
        )

    def _missing_key(self) -> NotFound:
        return NotFound(
            f"transit key {self.key_id} does not exist; create it "
            f"(vault write -f {self._mount}/keys/{self._key_name} derived=true)"
        )

    def _derivation(self, context: Mapping[str, str]) -> str | None:
        tenant = validate_context(context)["tenant"]
        if not self._derived:
            return None
        return base64.b64encode(tenant.encode("utf-8")).decode("ascii")


def _ciphertext_text(wrapped: bytes) -> str:
    try:
        text = bytes(wrapped).decode("ascii")
    except (UnicodeDecodeError, TypeError):
        raise IntegrityError("the wrapped data key is not a Vault transit ciphertext") from None
    if not _CIPHERTEXT.fullmatch(text):
        raise IntegrityError("the wrapped data key is not a Vault transit ciphertext")
    return text


def _version_of(ciphertext: str) -> int:
    match = _CIPHERTEXT.fullmatch(ciphertext)
    if match is None:
        raise InvalidArgument("Vault returned a ciphertext in an unknown format")
    return int(match.group(1))


class VaultKvSecretStore:
    """The production `SecretStore`: Vault KV version 2.

    A secret under reference ``r`` lives at ``<mount>/data/<path_prefix>/r`` as
    ``{"value": <secret>}``; `delete` removes the metadata and every version. Failures
    raise `SourceUnavailable`; there is no fallback.
    """

    def __init__(
        self, client: Any, *, mount_point: str = "secret", path_prefix: str = "fabric"
    ) -> None:
        """`client` is an authenticated hvac client (see `vault_client`); `path_prefix`
        (slash-separated, may be empty) keeps the gateway's secrets apart."""
        self._client = client
        self._mount = mount_point
        self._prefix = path_prefix.strip("/")
        if self._prefix:
            validate_ref(self._prefix)

    def __repr__(self) -> str:
        return (
            f"VaultKvSecretStore(address={_address(self._client)!r}, "
            f"mount={self._mount!r}, prefix={self._prefix!r})"
        )

    def put(self, ref: str, secret: str) -> None:
        """Write `secret` under `ref` (a new KV version)."""
        path = self._path(ref)
        value = encode_secret(secret).decode("utf-8")
        kv = self._client.secrets.kv.v2
        _call(
            self._client,
            "write secret",
            lambda: kv.create_or_update_secret(
                path=path, secret={"value": value}, mount_point=self._mount
            ),
            on_invalid=InvalidArgument(f"Vault refused the secret for reference {ref!r}"),
        )

    def get(self, ref: str) -> str:
        """The latest version of the secret under `ref`; `NotFound` if none."""
        path = self._path(ref)
        kv = self._client.secrets.kv.v2
        response = _call(
            self._client,
            "read secret",
            lambda: kv.read_secret_version(
                path=path, mount_point=self._mount, raise_on_deleted_version=True
            ),
            on_missing=NotFound(f"no secret is stored under reference {ref!r}"),
        )
        data = _data(response, "read secret", self._client).get("data")
        value = data.get("value") if isinstance(data, dict) else None
        if not isinstance(value, str):
            raise FailedPrecondition(
                f"the Vault secret for reference {ref!r} has no string 'value' field; "
                "write it through the gateway"
            )
        return value

    def delete(self, ref: str) -> None:
        """Remove every version of `ref`; succeed quietly if it does not exist."""
        path = self._path(ref)
        kv = self._client.secrets.kv.v2
        _call(
            self._client,
            "delete secret",
            _or_none(
                lambda: kv.delete_metadata_and_all_versions(path=path, mount_point=self._mount)
            ),
        )

    def refs(self) -> list[str]:
        """Every reference under the prefix, sorted (walks sub-folders)."""
        found: list[str] = []
        pending = [""]
        kv = self._client.secrets.kv.v2
        while pending:
            folder = pending.pop()
            listed = self._prefix + "/" + folder if self._prefix else folder
            response = _call(
                self._client,
                "list secrets",
                _or_none(partial(kv.list_secrets, path=listed, mount_point=self._mount)),
            )
            if response is None:
                continue
            keys = _data(response, "list secrets", self._client).get("keys") or []
            for key in keys:
                if not isinstance(key, str):
                    continue
                if key.endswith("/"):
                    pending.append(folder + key)
                else:
                    found.append(folder + key)
        return sorted(found)

    def _path(self, ref: str) -> str:
        validate_ref(ref)
        return f"{self._prefix}/{ref}" if self._prefix else ref
