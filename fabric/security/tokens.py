"""JWT bearer tokens: verification against pinned algorithms and local keys, and dev minting.

Verification is deliberately narrow (the classic JWT mistakes are all configuration
choices a token must never be able to make for us):

- The algorithm list is pinned by `TokenConfig`; the token's `alg` header only selects
  among them, so `alg: none` and algorithm confusion (an HS256 token "signed" with the
  RS256 public key as HMAC secret) are refused before any key is touched. HMAC tokens are
  checked with the configured secret only, never with a public key.
- Keys come from configuration only: an HS256 secret, PEM public keys by `kid`, and a
  JWKS *file* read once at start-up. An unknown `kid` is refused; nothing is fetched over
  the network, ever (no `jku`, `x5u` or `jwk` header is honoured).
- `exp`, `iss`, `aud`, `sub` and the Fabric claims `tenant`, `stage` and `role` are
  required; `nbf` and `iat` are honoured when present. A token may live at most
  `max_lifetime` (`exp - iat`, or `exp - now` without `iat`): a leaked token whose `exp`
  is far in the future is refused, not honoured for years. Times are checked against an
  injectable `WallClock` (PyJWT checks the signature, issuer and audience; the times are
  ours, so tests move "now" without sleeping), with a small leeway for clock skew.
- Every refusal is `Unauthenticated` with a fixed message: never the token, never a claim
  value taken from it.

`mint_token` and `LocalKey` serve local development: a random 32-byte HS256 key kept in a
file only its owner may read, and tokens signed with it (`fabric token`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jwt
from cachetools import LRUCache
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from fabric.clock import SYSTEM_CLOCK, WallClock
from fabric.context import RequestContext, Role
from fabric.errors import AlreadyExists, FailedPrecondition, NotFound, Unauthenticated

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "DEFAULT_LEEWAY",
    "DEFAULT_MAX_LIFETIME",
    "HMAC_ALGORITHMS",
    "LOCAL_AUDIENCE",
    "LOCAL_ISSUER",
    "SUPPORTED_ALGORITHMS",
    "LocalKey",
    "TokenConfig",
    "TokenVerifier",
    "mint_token",
]

HMAC_ALGORITHMS: frozenset[str] = frozenset({"HS256"})
"""Shared-secret algorithms (local development)."""

_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_CURVES: Mapping[str, type[ec.EllipticCurve]] = MappingProxyType(
    {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
)

ASYMMETRIC_ALGORITHMS: frozenset[str] = _RSA_ALGORITHMS | frozenset(_EC_CURVES)
"""Public-key algorithms (production): RSA PKCS#1 v1.5, RSA-PSS and ECDSA."""

SUPPORTED_ALGORITHMS: frozenset[str] = HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS
"""Everything a configuration may pin. `none` is not, and never will be, among them."""

DEFAULT_LEEWAY = 30.0
"""Seconds of clock skew tolerated on `exp`, `nbf` and `iat`."""

DEFAULT_MAX_LIFETIME = 24 * 3600.0
"""Seconds a token may be valid for at most (`exp - iat`)."""

LOCAL_ISSUER = "fabric-local"
"""Issuer of development tokens minted with the local key."""

LOCAL_AUDIENCE = "fabric"
"""Audience of development tokens minted with the local key."""

_MIN_HMAC_KEY_BYTES = 32
_MIN_RSA_BITS = 2048
_LOCAL_KEY_BYTES = 32
_MAX_LEEWAY = 300.0

# Claim values end up in cache keys, metric labels and log fields: keep them plain.
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}")
_STAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SUBJECT = re.compile(r"[^\x00-\x1f\x7f]{1,256}")
_ROLE_VALUES = frozenset(role.value for role in Role)
_ROLES = ", ".join(role.value for role in Role)

_REQUIRED_CLAIMS = ("exp", "iss", "aud", "sub", "tenant", "stage", "role")


# -- configuration -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenConfig:
    """How the gateway verifies bearer tokens. Immutable; validated on construction.

    `algorithms` is the pinned list: ("HS256",) for local development, for example
    ("RS256", "ES256") in production. Keys: `hs256_secret` for HS256; `public_keys` (PEM
    text by kid) and/or `jwks_path` (a JWKS JSON file, read once when the verifier is
    built) for the public-key algorithms.
    """

    issuer: str
    """The only accepted `iss`."""
    audience: str
    """The `aud` this gateway answers to (a token's `aud` may be a list containing it)."""
    algorithms: tuple[str, ...] = ("HS256",)
    """Pinned signing algorithms; the token's `alg` header must be one of them."""
    leeway: float = DEFAULT_LEEWAY
    """Seconds of clock skew tolerated on `exp`, `nbf` and `iat`."""
    hs256_secret: bytes | None = field(default=None, repr=False)
    """The HS256 shared secret (at least 32 bytes); required when HS256 is pinned."""
    public_keys: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """PEM-encoded RSA or EC public keys by key id (`kid`)."""
    jwks_path: Path | None = None
    """A JWKS file with the public keys (RSA, EC) by `kid`; never fetched from a URL."""
    max_token_length: int = 8192
    """Longer bearer tokens are refused before they are decoded."""
    max_lifetime: float = DEFAULT_MAX_LIFETIME
    """Seconds a token may be valid for at most: `exp - iat`, or `exp - now` for a token
    without `iat` (beyond `leeway`)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "algorithms", tuple(self.algorithms))
        object.__setattr__(self, "public_keys", MappingProxyType(dict(self.public_keys)))
        if self.jwks_path is not None:
            object.__setattr__(self, "jwks_path", Path(self.jwks_path))
        if not isinstance(self.issuer, str) or not self.issuer:
            raise ValueError("TokenConfig.issuer must be a non-empty string")
        if not isinstance(self.audience, str) or not self.audience:
            raise ValueError("TokenConfig.audience must be a non-empty string")
        if not self.algorithms:
            raise ValueError("TokenConfig.algorithms must pin at least one algorithm")
        unknown = [a for a in self.algorithms if a not in SUPPORTED_ALGORITHMS]
        if unknown:
            supported = ", ".join(sorted(SUPPORTED_ALGORITHMS))
            raise ValueError(
                f"TokenConfig.algorithms: {unknown[0]!r} is not supported (use {supported})"
            )
        if (
            isinstance(self.leeway, bool)
            or not isinstance(self.leeway, int | float)
            or not math.isfinite(self.leeway)
            or not 0 <= self.leeway <= _MAX_LEEWAY
        ):
            raise ValueError(f"TokenConfig.leeway must be between 0 and {_MAX_LEEWAY:g} seconds")
        if (
            isinstance(self.max_lifetime, bool)
            or not isinstance(self.max_lifetime, int | float)
            or not math.isfinite(self.max_lifetime)
            or self.max_lifetime <= 0
        ):
            raise ValueError("TokenConfig.max_lifetime must be a positive number of seconds")
        if self.max_token_length < 256:
            raise ValueError("TokenConfig.max_token_length must be at least 256")
        pinned = set(self.algorithms)
        if pinned & HMAC_ALGORITHMS:
            if not isinstance(self.hs256_secret, bytes):
                raise ValueError("HS256 is pinned but TokenConfig.hs256_secret is not set")
            if len(self.hs256_secret) < _MIN_HMAC_KEY_BYTES:
                raise ValueError(
                    f"TokenConfig.hs256_secret must be at least {_MIN_HMAC_KEY_BYTES} bytes"
                )
        elif self.hs256_secret is not None:
            raise ValueError("TokenConfig.hs256_secret is set but HS256 is not pinned")
        has_public = bool(self.public_keys) or self.jwks_path is not None
        if pinned & ASYMMETRIC_ALGORITHMS and not has_public:
            raise ValueError(
                "a public-key algorithm is pinned but no public_keys or jwks_path is configured"
            )
        if has_public and not pinned & ASYMMETRIC_ALGORITHMS:
            raise ValueError("public keys are configured but no public-key algorithm is pinned")

    @classmethod
    def for_local_key(
        cls,
        key: LocalKey | bytes,
        *,
        issuer: str = LOCAL_ISSUER,
        audience: str = LOCAL_AUDIENCE,
        leeway: float = DEFAULT_LEEWAY,
        max_lifetime: float = DEFAULT_MAX_LIFETIME,
    ) -> TokenConfig:
        """The local-development configuration: HS256 with the local key, nothing else."""
        secret = key.secret if isinstance(key, LocalKey) else key
        return cls(
            issuer=issuer,
            audience=audience,
            algorithms=("HS256",),
            leeway=leeway,
            hs256_secret=secret,
            max_lifetime=max_lifetime,
        )


# -- verification --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PublicKey:
    kid: str
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    alg: str | None
    """The JWK's own `alg`, when it names one: the key is then used for that one only."""

    def accepts(self, alg: str) -> bool:
        if self.alg is not None and self.alg != alg:
            return False
        if alg in _RSA_ALGORITHMS:
            return isinstance(self.key, rsa.RSAPublicKey)
        curve = _EC_CURVES.get(alg)
        return (
            curve is not None
            and isinstance(self.key, ec.EllipticCurvePublicKey)
            and isinstance(self.key.curve, curve)
        )


class TokenVerifier:
    """Verifies bearer tokens and turns their claims into a `RequestContext`.

    Keys are loaded once, here; building a verifier with a bad key or JWKS file raises
    ValueError (a start-up error, with the file named but never its content). `verify` is
    thread-safe and does no I/O.
    """

    def __init__(
        self,
        config: TokenConfig,
        *,
        clock: WallClock = SYSTEM_CLOCK,
        verified_cache_size: int = 10_000,
    ) -> None:
        self.config = config
        self._clock = clock
        self._algorithms = frozenset(config.algorithms)
        keys: dict[str, _PublicKey] = {}
        for kid, pem in config.public_keys.items():
            _add_key(keys, _load_pem(kid, pem))
        if config.jwks_path is not None:
            for key in _load_jwks(config.jwks_path):
                _add_key(keys, key)
        self._keys: Mapping[str, _PublicKey] = MappingProxyType(keys)
        # Verified tokens, so a client reusing its token costs a dictionary lookup and a
        # time check, not a signature check per call. Only successes are kept, with the
        # claims' times, which are checked again on every hit against the clock.
        self._verified: LRUCache[str, tuple[RequestContext, dict[str, Any]]] = LRUCache(
            maxsize=verified_cache_size
        )
        self._verified_lock = threading.Lock()

    @property
    def key_ids(self) -> frozenset[str]:
        """The `kid`s of the public keys this verifier accepts."""
        return frozenset(self._keys)

    def verify(self, token: str) -> RequestContext:
        """The verified identity in `token`, or Unauthenticated saying what was wrong."""
        if isinstance(token, str):
            with self._verified_lock:
                known = self._verified.get(token)
            if known is not None:
                ctx, times = known
                self._check_times(times)
                return ctx
        ctx, times = self._verify_fully(token)
        with self._verified_lock:
            self._verified[token] = (ctx, times)
        return ctx

    def _verify_fully(self, token: str) -> tuple[RequestContext, dict[str, Any]]:
        if not isinstance(token, str) or not token:
            raise Unauthenticated("no bearer token was presented")
        if len(token) > self.config.max_token_length:
            raise Unauthenticated(
                f"the bearer token is longer than {self.config.max_token_length} characters"
            )
        if token.count(".") != 2 or not token.isascii():
            raise Unauthenticated("the bearer token is not a JWT (header.payload.signature)")
        try:
            header = jwt.get_unverified_header(token)
        except Exception:  # any decoding problem: the header is not trusted either way
            raise Unauthenticated(
                "the bearer token is malformed (its header is unreadable)"
            ) from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            pinned = ", ".join(self.config.algorithms)
            raise Unauthenticated(
                f"the bearer token's signing algorithm is not accepted (accepted: {pinned})"
            )
        if "crit" in header or "b64" in header:
            raise Unauthenticated("the bearer token uses header extensions this gateway refuses")
        key = self._key_for(alg, header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.config.audience,
                issuer=self.config.issuer,
                options={
                    "verify_signature": True,
                    "verify_aud": True,
                    "verify_iss": True,
                    "verify_sub": True,
                    # Times are checked below against the injected clock.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": list(_REQUIRED_CLAIMS),
                },
            )
        except jwt.InvalidSignatureError:
            raise Unauthenticated("the bearer token's signature does not verify") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                "the bearer token is for another audience (its 'aud' does not name this gateway)"
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(
                "the bearer token was issued by an issuer this gateway does not trust"
            ) from None
        except jwt.MissingRequiredClaimError as error:
            claim = error.claim if error.claim in _REQUIRED_CLAIMS else "?"
            raise Unauthenticated(f"the bearer token lacks the required claim '{claim}'") from None
        except Exception:  # DecodeError, a key/algorithm mismatch, anything: fail closed
            raise Unauthenticated("the bearer token could not be verified") from None
        if not isinstance(claims, dict):
            raise Unauthenticated("the bearer token's payload is not a JSON object")
        self._check_times(claims)
        times: dict[str, Any] = {
            name: claims[name] for name in ("exp", "nbf", "iat") if name in claims
        }
        return _context(claims), times

    def _key_for(self, alg: str, kid: object) -> Any:
        if alg in HMAC_ALGORITHMS:
            # The configured secret only: a token cannot pick a public key as HMAC secret.
            return self.config.hs256_secret
        if kid is not None:
            if not isinstance(kid, str):
                raise Unauthenticated("the bearer token's key id (kid) is malformed")
            key = self._keys.get(kid)
            if key is None:
                raise Unauthenticated(
                    "the bearer token's key id (kid) is not one of this gateway's keys"
                )
            if not key.accepts(alg):
                raise Unauthenticated(
                    "the bearer token's key id (kid) names a key of another algorithm"
                )
            return key.key
        fitting = [key for key in self._keys.values() if key.accepts(alg)]
        if len(fitting) != 1:
            raise Unauthenticated(
                "the bearer token names no key id (kid) and the gateway cannot pick its key"
            )
        return fitting[0].key

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock.time()
        leeway = self.config.leeway
        exp = _numeric_date(claims, "exp")
        assert exp is not None  # required above
        if now >= exp + leeway:
            raise Unauthenticated("the bearer token has expired; get a new one")
        nbf = _numeric_date(claims, "nbf")
        if nbf is not None and now < nbf - leeway:
            raise Unauthenticated("the bearer token is not valid yet (nbf is in the future)")
        iat = _numeric_date(claims, "iat")
        if iat is not None and iat > now + leeway:
            raise Unauthenticated("the bearer token was issued in the future (check clocks)")
        # Checked on every use, not only the first: without `iat`, `exp - now` shrinks
        # as the token ages, and a cached token is judged like a new one.
        lifetime = exp - (now if iat is None else iat)
        if lifetime > self.config.max_lifetime + leeway:
            raise Unauthenticated(
                f"the bearer token is valid for longer than the gateway accepts "
                f"(at most {self.config.max_lifetime:g}s from issue, FABRIC_JWT_MAX_LIFETIME); "
                "get a shorter-lived one"
            )


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Unauthenticated(f"the bearer token's '{name}' claim is not a number of seconds")
    return float(value)


def _context(claims: Mapping[str, Any]) -> RequestContext:
    tenant = _claim(claims, "tenant", _TENANT)
    stage = _claim(claims, "stage", _STAGE)
    subject = _claim(claims, "sub", _SUBJECT)
    role = claims.get("role")
    if not isinstance(role, str) or role not in _ROLE_VALUES:
        raise Unauthenticated(f"the bearer token's 'role' claim is not a known role ({_ROLES})")
    return RequestContext(tenant=tenant, stage=stage, role=Role(role), principal=subject)


def _claim(claims: Mapping[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise Unauthenticated(f"the bearer token's '{name}' claim is missing or malformed")
    return value


def _add_key(keys: dict[str, _PublicKey], key: _PublicKey) -> None:
    if key.kid in keys:
        raise ValueError(f"public key id {key.kid!r} is configured twice")
    keys[key.kid] = key


def _checked(kid: str, key: object, where: str) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise ValueError(f"{where}: RSA key {kid!r} is shorter than {_MIN_RSA_BITS} bits")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, tuple(_EC_CURVES.values())):
            raise ValueError(f"{where}: EC key {kid!r} is not on P-256, P-384 or P-521")
        return key
    raise ValueError(f"{where}: key {kid!r} is not an RSA or EC public key")


def _load_pem(kid: str, pem: str | bytes) -> _PublicKey:
    if not isinstance(kid, str) or not kid:
        raise ValueError("public_keys: a key id must be a non-empty string")
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError) as error:
        raise ValueError(f"public_keys: key {kid!r} is not a PEM public key") from error
    return _PublicKey(kid, _checked(kid, key, "public_keys"), None)


def _load_jwks(path: Path) -> list[_PublicKey]:
    where = f"JWKS file {path}"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{where} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{where} is not readable JSON ({type(error).__name__})") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{where} has no 'keys' list")
    loaded: list[_PublicKey] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: key #{index} is not an object")
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ValueError(f"{where}: key #{index} has no 'kid'")
        if entry.get("kty") not in ("RSA", "EC"):
            raise ValueError(f"{where}: key {kid!r} is not an RSA or EC key")
        if any(private in entry for private in ("d", "p", "q", "dp", "dq", "qi")):
            raise ValueError(f"{where}: key {kid!r} includes private parts; publish public keys")
        if entry.get("use", "sig") != "sig":
            raise ValueError(f"{where}: key {kid!r} is not a signing key (use={entry['use']!r})")
        alg = entry.get("alg")
        if alg is not None and alg not in ASYMMETRIC_ALGORITHMS:
            raise ValueError(f"{where}: key {kid!r} names an unsupported algorithm")
        try:
            key = jwt.PyJWK(entry).key
        except Exception as error:  # PyJWKError, InvalidKeyError, ValueError
            raise ValueError(f"{where}: key {kid!r} is invalid ({type(error).__name__})") from None
        loaded.append(_PublicKey(kid, _checked(kid, key, where), alg))
    return loaded


# -- local development ---------------------------------------------------------------


def mint_token(
    config: TokenConfig,
    *,
    tenant: str,
    stage: str,
    role: Role | str,
    subject: str,
    ttl: float | timedelta,
    now: float | None = None,
) -> str:
    """An HS256 token signed with `config.hs256_secret`, for local development.

    The claims are exactly what `TokenVerifier` requires; `now` (Unix seconds) defaults to
    the system clock. ValueError when the configuration has no HS256 key or an argument
    would produce a token the verifier refuses.
    """
    if "HS256" not in config.algorithms or config.hs256_secret is None:
        raise ValueError("minting needs a configuration with HS256 and its secret")
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("ttl must be a positive number of seconds")
    if seconds > config.max_lifetime:
        raise ValueError(
            f"ttl must be at most {config.max_lifetime:g} seconds (the longest lifetime "
            "the gateway accepts, FABRIC_JWT_MAX_LIFETIME)"
        )
    try:
        role_value = Role(role)
    except ValueError:
        raise ValueError(f"role must be one of {_ROLES}") from None
    for name, value, pattern in (
        ("tenant", tenant, _TENANT),
        ("stage", stage, _STAGE),
        ("subject", subject, _SUBJECT),
    ):
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise ValueError(f"{name} is empty or has characters a token may not carry")
    issued = SYSTEM_CLOCK.time() if now is None else float(now)
    claims = {
        "iss": config.issuer,
        "aud": config.audience,
        "sub": subject,
        "tenant": tenant,
        "stage": stage,
        "role": role_value.value,
        "iat": int(issued),
        "nbf": int(issued),
        "exp": math.ceil(issued + seconds),
        "jti": secrets.token_hex(16),
    }
    return jwt.encode(claims, config.hs256_secret, algorithm="HS256", headers={"typ": "JWT"})


_EXPOSED_BITS = stat.S_IRWXG | stat.S_IRWXO


@dataclass(frozen=True, slots=True)
class LocalKey:
    """The local HS256 key: 32 random bytes in a file only its owner may read (0600).

    The file holds the key base64url-encoded on one line. A file open to group or others
    is refused, not repaired: its key may already have been copied.
    """

    path: Path
    secret: bytes = field(repr=False)

    @property
    def kid(self) -> str:
        """A non-secret identifier of the key (a hash prefix), for logs and key listings."""
        return hashlib.sha256(b"fabric-local-key\x00" + self.secret).hexdigest()[:16]

    @classmethod
    def generate(cls, path: Path | str) -> LocalKey:
        """Create a new key file at `path` (0600, parent created 0700). AlreadyExists if
        one is there: an existing key is never overwritten, since tokens depend on it."""
        target = Path(path)
        secret = secrets.token_bytes(_LOCAL_KEY_BYTES)
        _publish_private(target, base64.urlsafe_b64encode(secret) + b"\n")
        return cls(target, secret)

    @classmethod
    def load(cls, path: Path | str) -> LocalKey:
        """Read the key at `path`: NotFound when missing; FailedPrecondition when the file
        is open to group or others, or does not hold a key."""
        target = Path(path)
        try:
            fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise NotFound(f"local token key {target} does not exist") from None
        except OSError as error:
            raise FailedPrecondition(
                f"local token key {target} cannot be opened ({error.strerror})"
            ) from None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise FailedPrecondition(f"local token key {target} is not a regular file")
            if os.name == "posix" and info.st_mode & _EXPOSED_BITS:
                mode = stat.S_IMODE(info.st_mode)
                raise FailedPrecondition(
                    f"local token key {target} is accessible to group or others "
                    f"(mode {mode:04o}); consider it exposed: delete it and start again "
                    f"(a new key is made 0600), or `chmod 600 {target}`"
                )
            data = handle.read(1024)
        try:
            secret = base64.urlsafe_b64decode(data.strip())
        except (binascii.Error, ValueError):
            secret = b""
        if len(secret) != _LOCAL_KEY_BYTES:
            raise FailedPrecondition(f"local token key {target} does not hold a 32-byte key")
        return cls(target, secret)

    @classmethod
    def load_or_generate(cls, path: Path | str) -> LocalKey:
        """The key at `path`, created first when there is none (safe against a race with
        another process doing the same: both end up with the same key)."""
        try:
            return cls.load(path)
        except NotFound:
            pass
        try:
            return cls.generate(path)
        except AlreadyExists:
            return cls.load(path)


def _publish_private(path: Path, data: bytes) -> None:
    """Write `data` to a 0600 temporary file, then link it to `path` only if `path` does not
    exist: readers never see a partial key and an existing key is never replaced."""
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = directory / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask can only narrow the mode; be explicit anyway
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise AlreadyExists(f"local token key {path} already exists") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
