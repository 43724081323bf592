"""Three gateway replicas on one database (`make test-postgres`: PostgreSQL, the case replicas
are for): API calls spread over them all at once lose nothing and create nothing twice, every
replica answers for what another created, and a key revoked on one stops working on all within
`key_cache_seconds`."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Served, StartGateway
from .test_files import CHAT, Registry, registry  # noqa: F401 - the registry fixture

KEY_CACHE_SECONDS = 1.0
CALLS = 200


@pytest.fixture
def replicas(start_gateway: StartGateway, registry: Registry, tmp_path: Path) -> list[Served]:  # noqa: F811
    settings = {
        "registry_target": registry.target,
        "registry_local_files": True,
        "key_cache_seconds": KEY_CACHE_SECONDS,
    }
    database = tmp_path / "shared.sqlite3"
    return [start_gateway(settings, database=database) for _ in range(3)]


def _headers(served: Served) -> dict[str, str]:
    return {"Authorization": f"Bearer {served.admin_key}"}


async def _call(
    http: httpx.AsyncClient, served: Served, method: str, path: str, **kwargs: Any
) -> httpx.Response:
    return await http.request(method, f"{served.url}{path}", headers=_headers(served), **kwargs)


async def test_concurrent_calls_over_three_replicas_lose_nothing(replicas: list[Served]) -> None:
    async with httpx.AsyncClient(timeout=120, trust_env=False) as http:

        async def one(n: int) -> tuple[str, httpx.Response]:
            served = replicas[n % len(replicas)]
            match n % 4:
                case 0:
                    body = {"name": f"app-{n}", "scopes": ["inference"]}
                    return "key", await _call(http, served, "POST", "/v1/keys", json=body)
                case 1:
                    files = {"file": (f"chat-{n}.jsonl", CHAT, "application/jsonl")}
                    data = {"purpose": "fine-tune"}
                    return "file", await _call(
                        http, served, "POST", "/v1/files", files=files, data=data
                    )
                case 2:
                    return "keys", await _call(http, served, "GET", "/v1/keys")
                case _:
                    return "files", await _call(http, served, "GET", "/v1/files?limit=100")

        answers = await asyncio.gather(*(one(n) for n in range(CALLS)))

        for kind, response in answers:
            assert response.status_code in (200, 201), (kind, response.text)
        created_keys = [r.json()["id"] for kind, r in answers if kind == "key"]
        created_files = [r.json()["id"] for kind, r in answers if kind == "file"]
        assert len(created_keys) == len(created_files) == CALLS // 4
        for served in replicas:  # every replica sees everything, once
            keys = (await _call(http, served, "GET", "/v1/keys")).json()["data"]
            names = Counter(key["name"] for key in keys)
            assert {k["id"] for k in keys} >= set(created_keys)
            assert all(names[f"app-{n}"] == 1 for n in range(0, CALLS, 4))
            listed = await _all_files(http, served)
            assert Counter(listed) == Counter(created_files)


async def _all_files(http: httpx.AsyncClient, served: Served) -> list[str]:
    ids: list[str] = []
    after = ""
    while True:
        page = (
            await _call(
                http, served, "GET", f"/v1/files?limit=20{'&after=' + after if after else ''}"
            )
        ).json()
        ids += [item["id"] for item in page["data"]]
        if not page["has_more"]:
            return ids
        after = ids[-1]


async def test_a_key_revoked_on_one_replica_stops_working_on_all(replicas: list[Served]) -> None:
    first, second, third = replicas
    async with httpx.AsyncClient(timeout=60, trust_env=False) as http:
        body = {"name": "to-revoke", "scopes": ["inference"]}
        created = (await _call(http, first, "POST", "/v1/keys", json=body)).json()
        headers = {"Authorization": f"Bearer {created['key']}"}
        for served in replicas:  # known (and cached) everywhere
            response = await http.get(f"{served.url}/v1/models", headers=headers)
            assert response.status_code == 200, response.text

        revoked = await _call(http, third, "DELETE", f"/v1/keys/{created['id']}")
        assert revoked.json()["revoked"] is not None
        since = time.monotonic()
        while (await http.get(f"{second.url}/v1/models", headers=headers)).status_code == 200:
            assert time.monotonic() - since < KEY_CACHE_SECONDS + 2, "still accepted"
            await asyncio.sleep(0.05)
        assert (await http.get(f"{first.url}/v1/models", headers=headers)).status_code == 401
