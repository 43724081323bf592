"""API keys (Bearer, hashed at rest, scoped) and the request body limit."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import openai
import pytest
from fakes.server import FakeServer
from fakes.vllm import FakeVllm

from forgeline_gateway.security import keys
from forgeline_gateway.security.keys import hash_key
from forgeline_gateway.settings import GatewaySettings
from forgeline_kit.databases import Database, connect
from forgeline_kit.settings import SettingsError, load_settings

from .conftest import Served, StartGateway

CHAT = [{"role": "user", "content": "hello"}]
LIMIT = 4096


@pytest.fixture
def vllm() -> Iterator[FakeServer]:
    server = FakeServer(FakeVllm("base").app).start()
    yield server
    server.stop()


@pytest.fixture
def served(start_gateway: StartGateway, vllm: FakeServer) -> Served:
    served = start_gateway({"key_cache_seconds": 0, "max_body_bytes": LIMIT})
    served.deploy({"name": "m", "backend": "vllm", "base_model": "base", "urls": [vllm.url]})
    return served


def _chat(served: Served, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        f"{served.url}/v1/chat/completions",
        json={"model": "m", "messages": CHAT, "max_tokens": 2},
        headers=headers,
        trust_env=False,
    )


def _error(response: httpx.Response) -> dict[str, object]:
    error: dict[str, object] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_no_key_or_a_wrong_key_is_401(served: Served) -> None:
    missing = _chat(served, {})
    wrong = _chat(served, {"Authorization": "Bearer flk-not-a-real-key-at-all"})
    basic = _chat(served, {"Authorization": "Basic dXNlcjpwYXNz"})

    for response in (missing, wrong, basic):
        assert response.status_code == 401
        assert _error(response)["type"] == "authentication_error"
    assert "Authorization: Bearer" in str(_error(missing)["message"])
    assert "flk-not-a-real-key-at-all" not in wrong.text  # masked
    with pytest.raises(openai.AuthenticationError):
        served.client("flk-wrong").models.list()


def test_scopes_separate_inference_from_admin(served: Served) -> None:
    inference = {"Authorization": f"Bearer {served.inference_key}"}
    admin_only = served.admin("POST", "/v1/keys", json={"name": "ops", "scopes": ["admin"]})
    assert admin_only.status_code == 201
    admin = {"Authorization": f"Bearer {admin_only.json()['key']}"}

    assert _chat(served, inference).status_code == 200
    denied_admin = httpx.get(f"{served.url}/v1/deployments", headers=inference, trust_env=False)
    denied_inference = _chat(served, admin)
    allowed_admin = httpx.get(f"{served.url}/v1/deployments", headers=admin, trust_env=False)

    assert denied_admin.status_code == 403
    assert _error(denied_admin)["type"] == "permission_error"
    assert "'admin' scope" in str(_error(denied_admin)["message"])
    assert denied_inference.status_code == 403
    assert "'inference' scope" in str(_error(denied_inference)["message"])
    assert allowed_admin.status_code == 200


def test_keys_are_stored_hashed_and_revocation_takes_effect(served: Served) -> None:
    created = served.admin("POST", "/v1/keys", json={"name": "app-2", "scopes": ["inference"]})
    key = created.json()["key"]
    key_id = created.json()["id"]
    headers = {"Authorization": f"Bearer {key}"}
    assert _chat(served, headers).status_code == 200

    database = connect(served.gateway.settings.database_url)
    try:
        stored = database.execute(
            "SELECT hash, prefix FROM api_keys WHERE id = ?", (key_id,)
        ).fetchone()
        dump = _dump(database)
    finally:
        database.close()
    assert tuple(stored) == (hash_key(key), key[:10])
    assert "api_keys" in dump
    assert key not in dump

    listed = served.admin("GET", "/v1/keys").json()["data"]
    assert key_id in {k["id"] for k in listed}
    assert all("key" not in k for k in listed)

    assert served.admin("DELETE", f"/v1/keys/{key_id}").json()["revoked"] is not None
    assert _chat(served, headers).status_code == 401
    assert served.admin("DELETE", "/v1/keys/key_nope").status_code == 404


def test_a_body_over_the_limit_is_413(served: Served) -> None:
    headers = {"Authorization": f"Bearer {served.inference_key}"}
    big = [{"role": "user", "content": "x" * LIMIT}]
    declared = httpx.post(
        f"{served.url}/v1/chat/completions",
        json={"model": "m", "messages": big},
        headers=headers,
        trust_env=False,
    )

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(LIMIT // 512 + 1):
            yield b"x" * 512
        yield b'"}]}'

    chunked = httpx.post(
        f"{served.url}/v1/chat/completions", content=chunks(), headers=headers, trust_env=False
    )

    for response in (declared, chunked):
        assert response.status_code == 413
        assert _error(response)["code"] == "request_too_large"
    assert "transfer-encoding" not in declared.request.headers
    assert chunked.request.headers["transfer-encoding"] == "chunked"
    assert _chat(served, headers).status_code == 200  # a normal body still passes


def test_health_needs_no_key_and_metrics_are_not_published_on_the_api_port(
    served: Served,
) -> None:
    assert httpx.get(f"{served.url}/health", trust_env=False).json() == {"status": "ok"}
    # /metrics has a listener of its own (test_metrics): the API port, the one published to
    # clients, answers it as any unknown path, with or without a key.
    for headers in ({}, {"Authorization": f"Bearer {served.admin_key}"}):
        response = httpx.get(f"{served.url}/metrics", headers=headers, trust_env=False)
        assert response.status_code == 404
        assert _error(response)["type"] == "invalid_request_error"
    assert httpx.get(served.metrics_url, trust_env=False).status_code == 200


def test_without_auth_required_no_key_is_needed(
    start_gateway: StartGateway, vllm: FakeServer
) -> None:
    served = start_gateway({"auth_required": False})
    served.deploy({"name": "m", "backend": "vllm", "base_model": "base", "urls": [vllm.url]})

    assert _chat(served, {}).status_code == 200


def test_keys_cannot_be_switched_off_on_an_address_others_reach(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FORGELINE_GATEWAY_HTTP_HOST", "0.0.0.0")
    monkeypatch.setenv("FORGELINE_GATEWAY_AUTH_REQUIRED", "false")

    with pytest.raises(SettingsError) as refused:
        load_settings(GatewaySettings)

    message = str(refused.value)
    assert "FORGELINE_GATEWAY_AUTH_REQUIRED='false' is not valid" in message
    assert "only on a loopback address" in message
    assert "forgeline-gateway keys create" in message


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_keys_may_be_switched_off_on_loopback(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.setenv("FORGELINE_GATEWAY_HTTP_HOST", host)
    monkeypatch.setenv("FORGELINE_GATEWAY_AUTH_REQUIRED", "false")

    assert load_settings(GatewaySettings).auth_required is False


def _models(served: Served, host: str, key: str | None = None) -> httpx.Response:
    headers = {"Host": host} | ({"Authorization": f"Bearer {key}"} if key else {})
    return httpx.get(f"{served.url}/v1/models", headers=headers)


def test_a_keyless_gateway_answers_only_to_loopback_names(start_gateway: StartGateway) -> None:
    # DNS rebinding: a web page at attacker.example, its name re-pointed at 127.0.0.1, sends
    # requests from the user's browser carrying its own name as Host.
    served = start_gateway({"auth_required": False})
    port = served.url.rpartition(":")[2]

    refused = _models(served, f"attacker.example:{port}")

    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "invalid_host"
    for name in ("localhost", "127.0.0.1", "[::1]"):
        assert _models(served, f"{name}:{port}").status_code == 200, name


def test_trusted_hosts_limit_the_names_a_gateway_answers_to(start_gateway: StartGateway) -> None:
    served = start_gateway({"trusted_hosts": ["api.example.com", "*.internal.example"]})
    key = served.inference_key

    assert _models(served, "api.example.com", key).status_code == 200
    assert _models(served, "gw.internal.example:8080", key).status_code == 200
    assert _models(served, "elsewhere.example", key).status_code == 400


def test_a_request_without_a_valid_key_is_refused_before_its_body_is_read(
    served: Served,
) -> None:
    # Declares a body far over the limit and sends none of it: an answer can only come before
    # the body is read, and without a key it must be the 401, not the 413.
    with socket.create_connection(("127.0.0.1", int(served.url.rpartition(":")[2]))) as conn:
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer flk-made-up\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        conn.settimeout(10)
        head = conn.recv(65536).decode(errors="replace")
    assert head.startswith("HTTP/1.1 401"), head


def test_made_up_keys_do_not_push_real_ones_out_of_the_cache(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys, "_CACHE_LIMIT", 10)
    authenticator = served.gateway.app.state.authenticator
    monkeypatch.setattr(authenticator, "cache_seconds", 3600)
    assert _chat(served, {"Authorization": f"Bearer {served.inference_key}"}).status_code == 200
    known = dict(authenticator._known)

    for attempt in range(50):  # five times what the cache holds
        _chat(served, {"Authorization": f"Bearer flk-made-up-{attempt}"})

    assert authenticator._known == known  # the real key is still answered from the cache
    assert len(authenticator._unknown) == 10  # and the made-up ones stay bounded


def _dump(database: Database) -> str:
    """Every row of every table of the gateway's database, as text."""
    if database.postgresql:
        query = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    else:
        query = "SELECT name FROM sqlite_master WHERE type = 'table'"
    tables = [row[0] for row in database.execute(query).fetchall()]
    # Table names come from the database itself, not from input.
    return "\n".join(
        f"{table}: {database.execute(f'SELECT * FROM {table}').fetchall()!r}" for table in tables
    )
