"""A token may live at most `max_lifetime` (FABRIC_JWT_MAX_LIFETIME): an `exp` far in the
future is refused, with or without `iat`, on first use and from the verified cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
import pytest

from fabric.app.parts import local_token, token_verifier
from fabric.clock import FakeClock
from fabric.config import Settings
from fabric.errors import InvalidArgument, Unauthenticated
from fabric.security.tokens import DEFAULT_MAX_LIFETIME, TokenConfig, TokenVerifier, mint_token

NOW = 1_700_000_000
DAY = 24 * 3600
SECRET = b"0123456789abcdef0123456789abcdef"


def config(**overrides: Any) -> TokenConfig:
    return TokenConfig(
        issuer="https://id.example.test",
        audience="fabric-gateway",
        hs256_secret=SECRET,
        **overrides,
    )


def signed(cfg: TokenConfig, **times: int | None) -> str:
    claims: dict[str, Any] = {
        "iss": cfg.issuer,
        "aud": cfg.audience,
        "sub": "alice",
        "tenant": "acme",
        "stage": "production",
        "role": "app",
    }
    claims.update({name: value for name, value in times.items() if value is not None})
    return jwt.encode(claims, SECRET, algorithm="HS256")


def test_the_default_is_a_day() -> None:
    assert DEFAULT_MAX_LIFETIME == DAY
    assert config().max_lifetime == DAY
    assert Settings().jwt_max_lifetime == DAY


def test_a_token_valid_for_years_is_refused_and_says_why() -> None:
    cfg = config()
    verifier = TokenVerifier(cfg, clock=FakeClock(NOW))
    with pytest.raises(Unauthenticated) as refused:
        verifier.verify(signed(cfg, iat=NOW, exp=NOW + 10 * 365 * DAY))
    assert "valid for longer than the gateway accepts" in refused.value.message
    assert "86400s" in refused.value.message


def test_without_iat_the_lifetime_counts_from_now() -> None:
    cfg = config()
    clock = FakeClock(NOW)
    verifier = TokenVerifier(cfg, clock=clock)
    token = signed(cfg, exp=NOW + 2 * DAY)
    with pytest.raises(Unauthenticated):
        verifier.verify(token)
    clock.advance(DAY + 60)  # a day later the same token has less than a day left
    assert verifier.verify(token).tenant == "acme"


def test_a_token_within_the_limit_is_accepted_and_the_limit_is_settable() -> None:
    cfg = config()
    clock = FakeClock(NOW)
    verifier = TokenVerifier(cfg, clock=clock)
    assert verifier.verify(signed(cfg, iat=NOW, exp=NOW + DAY)).principal == "alice"
    short = config(max_lifetime=600)
    strict = TokenVerifier(short, clock=clock)
    hour = signed(short, iat=NOW, exp=NOW + 3600)
    with pytest.raises(Unauthenticated):
        strict.verify(hour)
    assert strict.verify(signed(short, iat=NOW, exp=NOW + 600)).principal == "alice"


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan")])
def test_a_nonsense_limit_is_a_configuration_error(bad: float) -> None:
    with pytest.raises(ValueError, match="max_lifetime"):
        config(max_lifetime=bad)


def test_the_setting_reaches_the_verifier_and_the_local_minter(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="jwt_max_lifetime"):
        Settings.from_env({"FABRIC_JWT_MAX_LIFETIME": "0"}, home=tmp_path)
    settings = Settings.from_env({"FABRIC_JWT_MAX_LIFETIME": "3600"}, home=tmp_path)
    verifier = token_verifier(settings)
    assert verifier is not None and verifier.config.max_lifetime == 3600
    with pytest.raises(InvalidArgument, match="ttl must be at most 3600"):
        local_token(settings, ttl=2 * 3600)
    assert verifier.verify(local_token(settings, ttl=3600)).principal == "local"


def test_minting_refuses_a_lifetime_the_verifier_would_refuse() -> None:
    with pytest.raises(ValueError, match="ttl must be at most"):
        mint_token(
            config(), tenant="acme", stage="production", role="app", subject="a", ttl=2 * DAY
        )
