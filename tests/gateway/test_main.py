"""``forgeline-gateway`` as operators run it: settings from the environment, the first key made
from the command line, the ports it serves the API and ``/metrics`` on in its log, a metrics port
that is taken named as the gRPC services name it, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

GATEWAY = [sys.executable, "-m", "forgeline_gateway"]
START_DEADLINE_S = 60.0


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGELINE_GATEWAY_")}
    env |= {
        "FORGELINE_GATEWAY_DATABASE_URL": f"sqlite:///{tmp_path / 'gateway.sqlite3'}",
        "FORGELINE_GATEWAY_HTTP_PORT": "0",
        "FORGELINE_GATEWAY_METRICS_PORT": "0",
        "FORGELINE_GATEWAY_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    }
    return env | settings


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - a fixed argument list
        GATEWAY + args, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_keys_from_the_command_line(tmp_path: Path) -> None:
    env = _env(tmp_path)
    created = _run(["keys", "create", "ops", "--scope", "admin", "--scope", "inference"], env)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["key"].startswith("flk-")
    assert key["scopes"] == ["admin", "inference"]

    listed = _run(["keys", "list"], env)
    assert key["id"] in listed.stdout
    assert key["key"] not in listed.stdout
    assert "active" in listed.stdout

    assert _run(["keys", "revoke", key["id"]], env).returncode == 0
    assert "revoked" in _run(["keys", "list"], env).stdout
    missing = _run(["keys", "revoke", "key_nope"], env)
    assert missing.returncode == 1
    assert "key_nope" in missing.stderr


def test_a_bad_setting_exits_2_naming_the_variable(tmp_path: Path) -> None:
    done = _run([], _env(tmp_path, FORGELINE_GATEWAY_HTTP_PROT="8080"))

    assert done.returncode == 2
    assert "FORGELINE_GATEWAY_HTTP_PROT" in done.stderr
    assert "did you mean FORGELINE_GATEWAY_HTTP_PORT" in done.stderr


def test_a_database_url_it_cannot_open_exits_2_saying_what_it_accepts(tmp_path: Path) -> None:
    env = _env(tmp_path, FORGELINE_GATEWAY_DATABASE_URL="mysql://forgeline:pw@db/forgeline")

    done = _run(["keys", "list"], env)

    assert done.returncode == 2
    assert done.stderr.splitlines()[1:] == [
        "  FORGELINE_GATEWAY_DATABASE_URL='mysql://forgeline:***@db/forgeline' is refused: "
        "mysql:// is not supported: expected sqlite:///relative/path or sqlite:////absolute/path "
        "(or postgresql://USER:PASSWORD@HOST/DATABASE)"
    ]


@pytest.mark.parametrize("command", [["keys", "list"], []])
def test_a_postgresql_database_it_cannot_reach_is_named_without_its_password(
    tmp_path: Path, command: list[str]
) -> None:
    # Nothing listens on this socket directory: the server is "down".
    url = f"postgresql://forgeline:s3cret@/forgeline?host={tmp_path}"
    done = _run(command, _env(tmp_path, FORGELINE_GATEWAY_DATABASE_URL=url))

    assert done.returncode == 1
    assert "s3cret" not in done.stderr
    (error,) = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert error["level"] == "ERROR"
    assert error["message"].startswith(
        f"cannot reach the database postgresql://forgeline:***@/forgeline?host={tmp_path}: "
    )
    assert error["message"].endswith(
        "Check that the server is running and that the URL's host, port, user and password are "
        "right. (FORGELINE_GATEWAY_DATABASE_URL)"
    )


def test_the_database_set_by_its_old_name_is_found_after_an_upgrade(tmp_path: Path) -> None:
    # FORGELINE_GATEWAY_DATABASE (a file path) is still read for one release, with a warning.
    database = tmp_path / "kept" / "gateway.sqlite3"
    old = {k: v for k, v in _env(tmp_path).items() if k != "FORGELINE_GATEWAY_DATABASE_URL"}
    old["FORGELINE_GATEWAY_DATABASE"] = str(database)

    created = _run(["keys", "create", "ops", "--scope", "admin"], old)

    assert created.returncode == 0, created.stderr
    assert database.is_file()
    (warning,) = [json.loads(line) for line in created.stderr.splitlines() if line.strip()]
    assert warning["level"] == "WARNING"
    assert warning["message"] == (
        "FORGELINE_GATEWAY_DATABASE is deprecated and will stop being read in a coming release: "
        f"set FORGELINE_GATEWAY_DATABASE_URL instead (FORGELINE_GATEWAY_DATABASE_URL=sqlite:///"
        f"{database} is the same setting)"
    )
    key_id = json.loads(created.stdout)["id"]
    # The same file under the new name: the key is there, and nothing is warned of.
    listed = _run(
        ["keys", "list"], _env(tmp_path, FORGELINE_GATEWAY_DATABASE_URL=f"sqlite:///{database}")
    )
    assert key_id in listed.stdout
    assert listed.stderr == ""


def test_the_old_database_variable_naming_another_file_is_refused(tmp_path: Path) -> None:
    # An image's DATABASE_URL must not win silently over a DATABASE set by hand: that would move
    # the gateway off its state.
    env = _env(tmp_path, FORGELINE_GATEWAY_DATABASE=str(tmp_path / "elsewhere.sqlite3"))

    done = _run(["keys", "list"], env)

    assert done.returncode == 2
    assert (
        "FORGELINE_GATEWAY_DATABASE (deprecated) and FORGELINE_GATEWAY_DATABASE_URL are both "
        "set and disagree" in done.stderr
    )
    assert not (tmp_path / "elsewhere.sqlite3").exists()


def test_serves_on_the_port_it_logs_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = _env(tmp_path)
    key = json.loads(_run(["keys", "create", "app", "--scope", "inference"], env).stdout)["key"]
    process = subprocess.Popen(  # noqa: S603 - a fixed argument list
        GATEWAY, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    serving = threading.Event()
    port: list[int] = []
    metrics_port: list[int] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("message") == "gateway serving":
                port.append(int(record["http_port"]))
                metrics_port.append(int(record["metrics_port"]))
                serving.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not serving.wait(START_DEADLINE_S):
            pytest.fail("the gateway did not log that it serves:\n" + "".join(lines))
        url = f"http://127.0.0.1:{port[0]}"
        assert httpx.get(f"{url}/health", trust_env=False).json() == {"status": "ok"}
        models = httpx.get(
            f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, trust_env=False
        )
        assert models.json() == {"object": "list", "data": []}
        # Prometheus scrapes the port of its own; the API port does not serve /metrics.
        assert metrics_port[0] not in (0, port[0])
        scrape = httpx.get(f"http://127.0.0.1:{metrics_port[0]}/metrics", trust_env=False)
        assert scrape.status_code == 200
        assert "forgeline_gateway_requests_total" in scrape.text
        assert httpx.get(f"{url}/metrics", trust_env=False).status_code == 404

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert time.monotonic() - started < 15
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    reader.join(timeout=10)
    assert all(json.loads(line) for line in lines if line.strip())  # JSON logs, one per line


def test_a_taken_metrics_port_stops_it_at_start_naming_the_variables(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run([], _env(tmp_path, FORGELINE_GATEWAY_METRICS_PORT=str(port)))

    assert done.returncode == 1
    records = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    (error,) = [r for r in records if r["level"] == "ERROR"]
    # Word for word what the gRPC services say (tests/kit/test_settings.py).
    assert error["message"] == (
        f"cannot serve /metrics on 127.0.0.1:{port} (set by FORGELINE_GATEWAY_METRICS_HOST and "
        "FORGELINE_GATEWAY_METRICS_PORT): Address already in use"
    )
    assert not [r for r in records if r.get("message") == "gateway serving"]
