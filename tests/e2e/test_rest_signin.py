"""Signing in to the portal end to end (`fabric portal`'s link, exchanged once over the
REST API), HTTPS with the gateway's TLS settings, the guard against plain HTTP off
loopback, and calls refused while the gateway drains."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import jwt
import pytest

from fabric.cli import main
from fabric.security.signin import SIGN_IN_AUDIENCE, SIGN_IN_PURPOSE, mint_sign_in_code
from fabric.security.tokens import LOCAL_ISSUER
from tests.e2e.rest_support import RestGateway, start_rest_gateway
from tests.support.certs import TestAuthority


@pytest.fixture
def rest(tmp_path: Path, postgres_url: str) -> Iterator[RestGateway]:
    yield from start_rest_gateway(tmp_path, postgres_url)


def _portal_link(
    rest: RestGateway,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    role: str,
) -> str:
    monkeypatch.setenv("FABRIC_HOME", str(rest.home))
    monkeypatch.setenv("FABRIC_HTTP_LISTEN", f"127.0.0.1:{rest.gateway.http_port}")
    assert main(["portal", "--role", role, "--subject", "grace@example.com"]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_the_portal_link_signs_in_once(
    rest: RestGateway, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    link = _portal_link(rest, monkeypatch, capsys, "developer")
    parts = urlsplit(link)
    assert f"{parts.scheme}://{parts.netloc}" == rest.background.http_url
    assert parts.path == "/" and parts.query == "" and parts.fragment.startswith("signin=")
    code = parts.fragment.removeprefix("signin=")

    as_bearer = rest.call("GET", "/api/v1/me", None, headers={"Authorization": f"Bearer {code}"})
    assert as_bearer.status_code == 401

    started = time.time()
    session = rest.call("POST", "/api/v1/session", None, json={"code": code})
    assert session.status_code == 200, session.text
    body = session.json()
    assert {k: body[k] for k in ("principal", "role", "tenant", "stage")} == {
        "principal": "grace@example.com",
        "role": "developer",
        "tenant": "default",
        "stage": "development",
    }
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims["exp"] - started <= 8 * 3600 + 1
    me = rest.call("GET", "/api/v1/me", None, headers={"Authorization": f"Bearer {body['token']}"})
    assert me.status_code == 200 and me.json()["role"] == "developer"

    reused = rest.call("POST", "/api/v1/session", None, json={"code": code})
    assert reused.status_code == 401
    assert "used already" in reused.json()["error"]["message"]


def test_expired_and_app_codes_do_not_sign_in(rest: RestGateway) -> None:
    expired = mint_sign_in_code(
        rest.key.secret, tenant="default", stage="development", role="admin",
        subject="late", ttl=60, now=time.time() - 600,
    )  # fmt: skip
    response = rest.call("POST", "/api/v1/session", None, json={"code": expired})
    assert response.status_code == 401 and "expired" in response.json()["error"]["message"]

    now = int(time.time())
    app_code = jwt.encode(
        {
            "iss": LOCAL_ISSUER, "aud": SIGN_IN_AUDIENCE, "sub": "robot", "tenant": "default",
            "stage": "development", "role": "app", "purpose": SIGN_IN_PURPOSE,
            "iat": now, "exp": now + 60, "jti": "app-code",
        },
        rest.key.secret,
        algorithm="HS256",
    )  # fmt: skip
    refused = rest.call("POST", "/api/v1/session", None, json={"code": app_code})
    assert refused.status_code == 403
    assert "app tokens cannot sign in" in refused.json()["error"]["message"]

    api_token = rest.token("admin")
    not_a_code = rest.call("POST", "/api/v1/session", None, json={"code": api_token})
    assert not_a_code.status_code == 401


def test_the_cli_refuses_links_it_cannot_make(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FABRIC_HOME", str(tmp_path))
    monkeypatch.delenv("FABRIC_HTTP_LISTEN", raising=False)
    assert main(["portal"]) == 2
    assert "set FABRIC_HTTP_LISTEN" in capsys.readouterr().err
    monkeypatch.setenv("FABRIC_HTTP_LISTEN", "127.0.0.1:8443")
    monkeypatch.setenv("FABRIC_AUTH", "none")
    assert main(["portal"]) == 2
    assert "need FABRIC_AUTH=local" in capsys.readouterr().err


def test_https_with_the_gateways_certificate(tmp_path: Path, postgres_url: str) -> None:
    authority = TestAuthority(tmp_path)
    (tmp_path / "home").mkdir()
    server = authority.issue_server()
    trusted = ssl.create_default_context(cafile=str(authority.ca.cert))
    for rest in start_rest_gateway(
        tmp_path / "home", postgres_url, verify=trusted,
        tls_cert=str(server.cert), tls_key=str(server.key),
    ):  # fmt: skip
        assert rest.background.http_url.startswith("https://")
        assert rest.ok("GET", "/api/v1/me")["role"] == "admin"
        plain = rest.background.http_url.replace("https://", "http://")
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{plain}/api/v1/me", timeout=10)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{rest.background.http_url}/api/v1/me", timeout=10)  # untrusted CA

        # Draining: a new call is refused with 503 and a retry hint, not cut off.
        rest.background.call(rest.gateway.stop_taking_calls())
        draining = rest.call("GET", "/api/v1/me")
        assert draining.status_code == 503
        assert draining.json()["error"]["code"] == "gateway_unavailable"
        assert draining.headers["retry-after"] == "1"


def test_plain_http_off_loopback_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FABRIC_HOME", str(tmp_path))
    monkeypatch.setenv("FABRIC_HTTP_LISTEN", "0.0.0.0:0")
    assert main(["serve", "--listen", "127.0.0.1:0"]) == 2
    assert "refusing to listen on 0.0.0.0:0 without TLS" in capsys.readouterr().err


def test_the_demo_serves_the_portal_and_prints_a_sign_in_link(tmp_path: Path) -> None:
    env = {**os.environ, "FABRIC_HOME": str(tmp_path)}
    with subprocess.Popen(
        [sys.executable, "-m", "fabric.cli", "demo", "--serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as demo:
        try:
            assert demo.stdout is not None
            link = ""
            for line in demo.stdout:  # ends when the demo does: bounded by the test timeout
                if line.startswith("sign in"):
                    link = line.rsplit(" ", 1)[-1].strip()
                if line.startswith("serving until interrupted"):
                    break
            assert link, "the demo printed no sign-in link"
            parts = urlsplit(link)
            base = f"{parts.scheme}://{parts.netloc}"
            page = httpx.get(f"{base}/", timeout=10)
            assert page.status_code == 200 and "Fabric portal" in page.text
            code = parts.fragment.removeprefix("signin=")
            session = httpx.post(f"{base}/api/v1/session", json={"code": code}, timeout=10)
            assert session.status_code == 200, session.text
            token = session.json()["token"]
            connections = httpx.get(
                f"{base}/api/v1/connections",
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
            assert [c["name"] for c in connections.json()["connections"]] == ["retail"]
        finally:
            demo.send_signal(signal.SIGINT)
            rest_of_output = demo.communicate(timeout=60)[0]
        assert demo.returncode == 0, rest_of_output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_fabric_serve_serves_the_portal_and_stops_cleanly(tmp_path: Path) -> None:
    http_port = _free_port()
    env = {
        **os.environ,
        "FABRIC_HOME": str(tmp_path),
        "FABRIC_LISTEN": f"127.0.0.1:{_free_port()}",
        "FABRIC_METRICS_PORT": "0",
        "FABRIC_HTTP_LISTEN": f"127.0.0.1:{http_port}",
        "FABRIC_SHUTDOWN_GRACE": "2",
    }
    base = f"http://127.0.0.1:{http_port}"
    with (
        open(tmp_path / "serve.log", "w") as log,
        subprocess.Popen(
            [sys.executable, "-m", "fabric.cli", "serve"], env=env, stdout=log, stderr=log
        ) as server,
    ):
        try:
            deadline = time.monotonic() + 60
            while True:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()
                try:
                    answer = httpx.get(f"{base}/api/v1/me", timeout=5)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the HTTP port never opened"
                    time.sleep(0.05)
            assert answer.status_code == 401
            portal = subprocess.run(
                [sys.executable, "-m", "fabric.cli", "portal"],
                env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert portal.returncode == 0, portal.stderr
            code = portal.stdout.strip().rsplit("#signin=", 1)[-1]
            session = httpx.post(f"{base}/api/v1/session", json={"code": code}, timeout=10)
            assert session.status_code == 200, session.text
            me = httpx.get(
                f"{base}/api/v1/me",
                headers={"Authorization": f"Bearer {session.json()['token']}"},
                timeout=10,
            )
            assert me.json()["role"] == "admin"
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                assert server.wait(timeout=30) == 0, (tmp_path / "serve.log").read_text()
            finally:
                if server.poll() is None:
                    server.kill()
                    server.wait(timeout=10)
    served = (tmp_path / "serve.log").read_text()
    assert f"REST API and portal on http port {http_port}" in served
    assert code not in served
