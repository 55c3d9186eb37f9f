"""The token suite: every way a bearer token can be wrong is refused, with a fake clock."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from fabric.clock import FakeClock
from fabric.context import RequestContext, Role
from fabric.errors import AlreadyExists, FailedPrecondition, NotFound, Unauthenticated
from fabric.security.tokens import (
    LocalKey,
    TokenConfig,
    TokenVerifier,
    mint_token,
)

NOW = 1_700_000_000
ISSUER = "https://id.example.test"
AUDIENCE = "fabric-gateway"
SECRET = b"0123456789abcdef0123456789abcdef"  # 32 bytes: local development only


# -- keys and helpers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice@example.test",
        "tenant": "acme",
        "stage": "production",
        "role": "app",
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 300,
    }
    for key, value in overrides.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(value: object) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def hs256_config(**overrides: Any) -> TokenConfig:
    values: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "algorithms": ("HS256",),
        "hs256_secret": SECRET,
    }
    values.update(overrides)
    return TokenConfig(**values)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW + 10)


@pytest.fixture
def hs_verifier(clock: FakeClock) -> TokenVerifier:
    return TokenVerifier(hs256_config(), clock=clock)


@pytest.fixture
def pk_verifier(
    clock: FakeClock, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> TokenVerifier:
    config = TokenConfig(
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=("RS256", "ES256"),
        public_keys={"rsa-1": public_pem(rsa_key), "ec-1": public_pem(ec_key)},
    )
    return TokenVerifier(config, clock=clock)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Verification never opens a socket (no JWKS URL, no jku/x5u fetch)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("token verification tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield


def rejected(verifier: TokenVerifier, token: str, match: str) -> Unauthenticated:
    with pytest.raises(Unauthenticated, match=match) as caught:
        verifier.verify(token)
    message = str(caught.value)
    # The message never carries the token or any of its parts.
    for part in token.split("."):
        if len(part) >= 8:
            assert part not in message
    return caught.value


# -- the happy paths -----------------------------------------------------------------


def test_valid_hs256_token_gives_the_claimed_context(hs_verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(role="developer"), SECRET, algorithm="HS256")
    assert hs_verifier.verify(token) == RequestContext(
        tenant="acme", stage="production", role=Role.DEVELOPER, principal="alice@example.test"
    )


def test_valid_rs256_token(pk_verifier: TokenVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(claims(role="admin"), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    ctx = pk_verifier.verify(token)
    assert (ctx.tenant, ctx.stage, ctx.role) == ("acme", "production", Role.ADMIN)


def test_valid_es256_token(pk_verifier: TokenVerifier, ec_key: ec.EllipticCurvePrivateKey) -> None:
    token = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec-1"})
    assert pk_verifier.verify(token).role is Role.APP


def test_kid_may_be_omitted_when_only_one_key_fits(
    pk_verifier: TokenVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert pk_verifier.verify(token).tenant == "acme"


def test_audience_list_containing_ours_is_accepted(hs_verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(aud=["other", AUDIENCE]), SECRET, algorithm="HS256")
    assert hs_verifier.verify(token).tenant == "acme"


def test_jwks_file(
    tmp_path: Path,
    clock: FakeClock,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    rsa_jwk = RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True)
    ec_jwk = ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True)
    rsa_jwk.update(kid="2024-rsa", use="sig", alg="RS256")
    ec_jwk.update(kid="2024-ec")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [rsa_jwk, ec_jwk]}), encoding="utf-8")
    verifier = TokenVerifier(
        TokenConfig(ISSUER, AUDIENCE, algorithms=("RS256", "ES256"), jwks_path=path), clock=clock
    )
    assert verifier.key_ids == {"2024-rsa", "2024-ec"}
    rs = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "2024-rsa"})
    es = jwt.encode(claims(tenant="globex"), ec_key, algorithm="ES256", headers={"kid": "2024-ec"})
    assert verifier.verify(rs).tenant == "acme"
    assert verifier.verify(es).tenant == "globex"
    # The file is read once, at start-up: deleting it changes nothing.
    path.unlink()
    assert verifier.verify(rs).tenant == "acme"
    # An unknown kid is refused, not looked up anywhere.
    other = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "2025-rsa"})
    rejected(verifier, other, "key id")


# -- algorithm attacks ---------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_refused(hs_verifier: TokenVerifier, alg: str) -> None:
    for signature in ("", b64(b"x")):
        token = f"{b64json({'alg': alg, 'typ': 'JWT'})}.{b64json(claims(role='admin'))}.{signature}"
        rejected(hs_verifier, token, "signing algorithm is not accepted")


def test_hs256_signed_with_the_rs256_public_key_is_refused(
    pk_verifier: TokenVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    # The classic confusion attack: the public key (known to everyone) as HMAC secret.
    pem = public_pem(rsa_key).encode()
    signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT', 'kid': 'rsa-1'})}." + b64json(
        claims(role="admin")
    )
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64(signature)}"
    rejected(pk_verifier, token, r"signing algorithm is not accepted \(accepted: RS256, ES256\)")


def test_confusion_refused_even_when_hs256_is_also_pinned(
    clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    # With HS256 pinned too, HS256 tokens are checked with the HS secret only.
    config = TokenConfig(
        ISSUER,
        AUDIENCE,
        algorithms=("HS256", "RS256"),
        hs256_secret=SECRET,
        public_keys={"rsa-1": public_pem(rsa_key)},
    )
    verifier = TokenVerifier(config, clock=clock)
    pem = public_pem(rsa_key).encode()
    signing_input = f"{b64json({'alg': 'HS256', 'kid': 'rsa-1'})}.{b64json(claims())}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    rejected(verifier, f"{signing_input}.{b64(signature)}", "signature does not verify")


def test_algorithm_not_pinned_is_refused(
    hs_verifier: TokenVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    rejected(hs_verifier, token, "signing algorithm is not accepted")
    hs512 = jwt.encode(claims(), SECRET * 2, algorithm="HS512")
    rejected(hs_verifier, hs512, "signing algorithm is not accepted")


def test_kid_of_another_algorithm_is_refused(
    pk_verifier: TokenVerifier, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    token = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "rsa-1"})
    rejected(pk_verifier, token, "names a key of another algorithm")


def test_signature_by_another_key_is_refused(
    pk_verifier: TokenVerifier, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(claims(), other_rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    rejected(pk_verifier, token, "signature does not verify")


def test_unknown_kid_is_refused_without_network(
    pk_verifier: TokenVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    headers = {"kid": "rotated-away", "jku": "https://attacker.test/jwks.json"}
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers=headers)
    rejected(pk_verifier, token, "key id .kid. is not one of this gateway's keys")


def test_embedded_jwk_header_is_not_trusted(
    pk_verifier: TokenVerifier, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    jwk = RSAAlgorithm.to_jwk(other_rsa_key.public_key(), as_dict=True)
    token = jwt.encode(claims(), other_rsa_key, algorithm="RS256", headers={"jwk": jwk})
    rejected(pk_verifier, token, "cannot pick its key|signature does not verify")


def test_crit_header_is_refused(hs_verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS256", headers={"crit": ["exp"]})
    rejected(hs_verifier, token, "header extensions|malformed")


# -- tampering and malformed input ---------------------------------------------------


def test_tampered_payload_is_refused(hs_verifier: TokenVerifier) -> None:
    header, _, signature = jwt.encode(claims(), SECRET, algorithm="HS256").split(".")
    forged = f"{header}.{b64json(claims(tenant='globex', role='admin'))}.{signature}"
    rejected(hs_verifier, forged, "signature does not verify")


def test_tampered_signature_and_header_are_refused(hs_verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    header, payload, signature = token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    rejected(hs_verifier, f"{header}.{payload}.{flipped}", "signature does not verify")
    other_header = b64json({"alg": "HS256", "typ": "JWT", "kid": "x"})
    rejected(hs_verifier, f"{other_header}.{payload}.{signature}", "signature does not verify")


@pytest.mark.parametrize(
    ("token", "match"),
    [
        ("", "no bearer token"),
        ("not-a-jwt", "not a JWT"),
        ("a.b", "not a JWT"),
        ("a.b.c.d", "not a JWT"),
        ("!!!.???.###", "malformed"),
        (b64(b"not json") + ".e30.sig", "malformed"),
        (b64json(["alg", "HS256"]) + ".e30.sig", "malformed"),
        (b64json({"alg": "HS256"}) + ".bm90IGpzb24.c2ln", "signature does not verify"),
        (b64json({"typ": "JWT"}) + ".e30.c2ln", "signing algorithm is not accepted"),
        ("é.é.é", "not a JWT"),
    ],
)
def test_malformed_tokens(hs_verifier: TokenVerifier, token: str, match: str) -> None:
    with pytest.raises(Unauthenticated, match=match):
        hs_verifier.verify(token)


def test_payload_that_is_not_an_object(hs_verifier: TokenVerifier) -> None:
    signing_input = f"{b64json({'alg': 'HS256'})}.{b64json([1, 2])}"
    signature = hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest()
    rejected(hs_verifier, f"{signing_input}.{b64(signature)}", "could not be verified|object")


def test_oversized_token_is_refused_before_decoding(hs_verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(padding="x" * 20_000), SECRET, algorithm="HS256")
    rejected(hs_verifier, token, "longer than 8192 characters")


# -- claims --------------------------------------------------------------------------


def test_wrong_audience(hs_verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(aud="another-service"), SECRET, algorithm="HS256")
    rejected(hs_verifier, token, "another audience")


def test_wrong_issuer(hs_verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(iss="https://evil.test"), SECRET, algorithm="HS256")
    rejected(hs_verifier, token, "issuer this gateway does not trust")


@pytest.mark.parametrize("claim", ["exp", "iss", "aud", "sub", "tenant", "stage", "role"])
def test_missing_required_claim(hs_verifier: TokenVerifier, claim: str) -> None:
    token = jwt.encode(claims(**{claim: None}), SECRET, algorithm="HS256")
    rejected(hs_verifier, token, f"lacks the required claim '{claim}'")


@pytest.mark.parametrize("role", ["root", "Admin", "ADMIN", "", "app ", 2, ["admin"]])
def test_unknown_role(hs_verifier: TokenVerifier, role: object) -> None:
    token = jwt.encode(claims(role=role), SECRET, algorithm="HS256")
    with pytest.raises(Unauthenticated, match=r"not a known role|required claim 'role'") as caught:
        hs_verifier.verify(token)
    assert "root" not in str(caught.value)


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("tenant", ""),
        ("tenant", "acme; DROP"),
        ("tenant", "a" * 200),
        ("tenant", 42),
        ("stage", "prod/../dev"),
        ("stage", ["production"]),
        ("sub", "line\nbreak"),
        ("sub", 7),
    ],
)
def test_malformed_identity_claims(hs_verifier: TokenVerifier, claim: str, value: object) -> None:
    token = jwt.encode(claims(**{claim: value}), SECRET, algorithm="HS256")
    with pytest.raises(Unauthenticated) as caught:
        hs_verifier.verify(token)
    assert "DROP" not in str(caught.value)


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
def test_time_claims_must_be_numbers(hs_verifier: TokenVerifier, claim: str) -> None:
    token = jwt.encode(claims(**{claim: "tomorrow"}), SECRET, algorithm="HS256")
    with pytest.raises(Unauthenticated):
        hs_verifier.verify(token)


# -- time, with the controllable clock -----------------------------------------------


def test_expired(hs_verifier: TokenVerifier, clock: FakeClock) -> None:
    token = jwt.encode(claims(exp=NOW + 60), SECRET, algorithm="HS256")
    assert hs_verifier.verify(token).tenant == "acme"
    clock.advance(3600)
    rejected(hs_verifier, token, "has expired")


def test_not_yet_valid(hs_verifier: TokenVerifier, clock: FakeClock) -> None:
    token = jwt.encode(claims(nbf=NOW + 600, exp=NOW + 3600), SECRET, algorithm="HS256")
    rejected(hs_verifier, token, "not valid yet")
    clock.advance(600)
    assert hs_verifier.verify(token).tenant == "acme"


def test_issued_in_the_future(hs_verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(iat=NOW + 3600, nbf=None), SECRET, algorithm="HS256")
    rejected(hs_verifier, token, "issued in the future")


def test_leeway_edges_are_exact(clock: FakeClock) -> None:
    verifier = TokenVerifier(hs256_config(leeway=30), clock=clock)
    exp = NOW + 100
    token = jwt.encode(claims(exp=exp), SECRET, algorithm="HS256")
    clock.set(exp + 29.999)
    assert verifier.verify(token).tenant == "acme"
    clock.set(exp + 30)  # exp + leeway is the first instant it is expired
    rejected(verifier, token, "has expired")

    nbf = NOW + 500
    early = jwt.encode(claims(iat=None, nbf=nbf, exp=nbf + 100), SECRET, algorithm="HS256")
    clock.set(nbf - 30)  # nbf - leeway is the first instant it is valid
    assert verifier.verify(early).tenant == "acme"
    clock.set(nbf - 30.001)
    rejected(verifier, early, "not valid yet")


def test_zero_leeway(clock: FakeClock) -> None:
    verifier = TokenVerifier(hs256_config(leeway=0), clock=clock)
    token = jwt.encode(claims(exp=NOW + 100), SECRET, algorithm="HS256")
    clock.set(NOW + 99.999)
    assert verifier.verify(token).tenant == "acme"
    clock.set(NOW + 100)
    rejected(verifier, token, "has expired")


# -- configuration -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"algorithms": ()}, "at least one"),
        ({"algorithms": ("none",)}, "'none' is not supported"),
        ({"algorithms": ("HS256", "none")}, "'none' is not supported"),
        ({"hs256_secret": None}, "hs256_secret is not set"),
        ({"hs256_secret": b"short"}, "at least 32 bytes"),
        ({"algorithms": ("RS256",), "hs256_secret": None}, "no public_keys or jwks_path"),
        ({"issuer": ""}, "issuer"),
        ({"audience": ""}, "audience"),
        ({"leeway": -1}, "leeway"),
        ({"leeway": 3600}, "leeway"),
        ({"public_keys": {"k": "x"}}, "no public-key algorithm"),
    ],
)
def test_bad_configuration(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        hs256_config(**overrides)


def test_secret_is_not_in_repr() -> None:
    assert SECRET.decode() not in repr(hs256_config())


def test_bad_keys_fail_at_start_up(tmp_path: Path, clock: FakeClock) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    for pem, match in (("not a pem", "not a PEM public key"), (public_pem(weak), "2048 bits")):
        config = TokenConfig(ISSUER, AUDIENCE, algorithms=("RS256",), public_keys={"k": pem})
        with pytest.raises(ValueError, match=match):
            TokenVerifier(config, clock=clock)
    missing = TokenConfig(ISSUER, AUDIENCE, algorithms=("RS256",), jwks_path=tmp_path / "nope")
    with pytest.raises(ValueError, match="does not exist"):
        TokenVerifier(missing, clock=clock)


@pytest.mark.parametrize(
    ("jwk", "match"),
    [
        ({"kty": "oct", "kid": "s", "k": b64(SECRET)}, "not an RSA or EC key"),
        ({"kty": "RSA", "n": "AQAB", "e": "AQAB"}, "has no 'kid'"),
        ({"kty": "RSA", "kid": "bad", "n": "AQAB", "e": "AQAB"}, "key 'bad'"),
    ],
)
def test_bad_jwks_entries(
    tmp_path: Path, clock: FakeClock, jwk: dict[str, str], match: str
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")
    config = TokenConfig(ISSUER, AUDIENCE, algorithms=("RS256",), jwks_path=path)
    with pytest.raises(ValueError, match=match):
        TokenVerifier(config, clock=clock)


def test_jwks_with_private_key_is_refused(
    tmp_path: Path, clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    private = RSAAlgorithm.to_jwk(rsa_key, as_dict=True)
    private["kid"] = "oops"
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [private]}), encoding="utf-8")
    config = TokenConfig(ISSUER, AUDIENCE, algorithms=("RS256",), jwks_path=path)
    with pytest.raises(ValueError, match="private parts") as caught:
        TokenVerifier(config, clock=clock)
    assert private["d"] not in str(caught.value)


# -- minting and the local key -------------------------------------------------------


def test_minted_token_round_trips(clock: FakeClock) -> None:
    config = hs256_config()
    token = mint_token(
        config,
        tenant="acme",
        stage="development",
        role=Role.DEVELOPER,
        subject="dev",
        ttl=3600,
        now=NOW,
    )
    verifier = TokenVerifier(config, clock=clock)
    assert verifier.verify(token) == RequestContext("acme", "development", Role.DEVELOPER, "dev")
    clock.set(NOW + 3600 + config.leeway)
    rejected(verifier, token, "has expired")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ttl": 0}, "ttl"),
        ({"role": "root"}, "role"),
        ({"tenant": ""}, "tenant"),
        ({"stage": "a b"}, "stage"),
    ],
)
def test_mint_refuses_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    values: dict[str, Any] = {
        "tenant": "acme",
        "stage": "development",
        "role": "app",
        "subject": "dev",
        "ttl": 60,
    }
    values.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mint_token(hs256_config(), **values)


def test_mint_needs_an_hs256_configuration(rsa_key: rsa.RSAPrivateKey) -> None:
    config = TokenConfig(
        ISSUER, AUDIENCE, algorithms=("RS256",), public_keys={"k": public_pem(rsa_key)}
    )
    with pytest.raises(ValueError, match="HS256"):
        mint_token(config, tenant="a", stage="b", role="app", subject="c", ttl=60)


def test_local_key_is_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "token.key"
    key = LocalKey.generate(path)
    assert len(key.secret) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key.secret.hex() not in repr(key)
    assert LocalKey.load(path) == key
    assert LocalKey.load_or_generate(path) == key
    assert len(key.kid) == 16 and key.kid not in key.secret.hex()
    with pytest.raises(AlreadyExists):
        LocalKey.generate(path)
    assert LocalKey.load(path) == key  # not overwritten
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_local_key_load_or_generate_creates_once(tmp_path: Path) -> None:
    path = tmp_path / "token.key"
    first = LocalKey.load_or_generate(path)
    assert LocalKey.load_or_generate(path) == first
    assert LocalKey.generate(tmp_path / "other.key").secret != first.secret


def test_local_key_refuses_exposed_or_garbled_files(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        LocalKey.load(tmp_path / "missing.key")
    path = tmp_path / "token.key"
    LocalKey.generate(path)
    os.chmod(path, 0o644)
    with pytest.raises(FailedPrecondition, match="group or others"):
        LocalKey.load(path)
    garbled = tmp_path / "garbled.key"
    garbled.write_bytes(b"too short\n")
    os.chmod(garbled, 0o600)
    with pytest.raises(FailedPrecondition, match="32-byte key"):
        LocalKey.load(garbled)


def test_local_key_drives_a_local_configuration(tmp_path: Path, clock: FakeClock) -> None:
    key = LocalKey.load_or_generate(tmp_path / "token.key")
    config = TokenConfig.for_local_key(key)
    token = mint_token(
        config, tenant="default", stage="development", role="admin", subject="me", ttl=60, now=NOW
    )
    assert TokenVerifier(config, clock=clock).verify(token).role is Role.ADMIN
    other = TokenConfig.for_local_key(LocalKey.generate(tmp_path / "other.key"))
    rejected(TokenVerifier(other, clock=clock), token, "signature does not verify")


def test_a_verified_token_is_remembered_but_still_expires(
    hs_verifier: TokenVerifier, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    first = hs_verifier.verify(token)
    decodes = 0
    real_decode = jwt.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        nonlocal decodes
        decodes += 1
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    assert hs_verifier.verify(token) == first  # from memory: no second signature check
    assert decodes == 0
    clock.set(NOW + 300 + hs_verifier.config.leeway)  # the exact instant it expires
    with pytest.raises(Unauthenticated, match="expired"):
        hs_verifier.verify(token)
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    with pytest.raises(Unauthenticated):
        hs_verifier.verify(tampered)  # a different string is verified in full
    assert decodes == 1
