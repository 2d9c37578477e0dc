"""`hone serve` as a process: JSON logs, request ids, readiness, graceful shutdown."""

from __future__ import annotations

import json
import signal
import socket
import time

import httpx

from tests.support import HoneServer, PostgresDatabase


def test_request_ids_and_json_logs(tmp_path):
    server = HoneServer(tmp_path / "srv")
    try:
        resp = httpx.get(server.base_url + "/healthz", headers={"x-request-id": "trace-123"})
        assert resp.status_code == 200 and resp.headers["x-request-id"] == "trace-123"
        generated = httpx.get(server.base_url + "/v1/models").headers["x-request-id"]  # a 401 carries one too
        assert generated.startswith("req_")
        unknown = httpx.get(server.base_url + "/v1/nothing-here")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_url"
        ready = httpx.get(server.base_url + "/readyz").json()
        assert ready["status"] == "ok"
        assert ready["checks"] == {"database": "ok", "storage": "ok", "scheduler": "ok"}
    finally:
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells why it stopped.
        assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    records = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    assert records and all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    access = [r for r in records if r["logger"] == "hone.access"]
    assert any(r["request_id"] == "trace-123" and r["status"] == 200 and r["path"] == "/healthz" for r in access)
    assert any(r["request_id"] == generated and r["status"] == 401 for r in access)
    messages = [r["msg"] for r in records]
    assert "Application shutdown complete." in messages and "hone control plane stopped" in messages


def test_admin_key_is_generated_when_not_configured(tmp_path):
    server = HoneServer(tmp_path / "srv", admin_key="")
    try:
        key_file = tmp_path / "srv" / "admin_api_key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        key = key_file.read_text().strip()
        resp = httpx.get(server.base_url + "/v1/organization/projects", headers={"Authorization": f"Bearer {key}"})
        assert resp.status_code == 200
    finally:
        server.stop()


def test_readiness_fails_when_database_goes_away(tmp_path):
    db = PostgresDatabase()
    server = HoneServer(tmp_path / "srv", {"HONE_DATABASE_URL": db.url})
    try:
        assert httpx.get(server.base_url + "/readyz").status_code == 200
        db.drop()
        resp = httpx.get(server.base_url + "/readyz")
        assert resp.status_code == 503 and resp.json()["checks"]["database"].startswith("error")
        assert httpx.get(server.base_url + "/healthz").status_code == 200
    finally:
        server.stop()
        db.drop()


def _get_on(sock: socket.socket, path: str = "/healthz") -> bytes:
    """One GET on an open keep-alive connection: the whole response (b"" if the server had closed it)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: hone\r\n\r\n".encode())
    response = b""
    try:
        while b"\r\n\r\n" not in response or len(response.split(b"\r\n\r\n", 1)[1]) < int(
            response.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0]
        ):
            if not (data := sock.recv(65536)):
                break
            response += data
    except ConnectionResetError:
        pass
    return response


def test_idle_keep_alive_connections_outlive_client_expiry(tmp_path):
    # httpx and the openai SDK reuse a connection idle up to 5 s: uvicorn's own 5 s default closed connections
    # they were just reusing, and those requests failed (benchmarks/load.py with clients pausing ~5 s).
    server = HoneServer(tmp_path / "srv")
    short = HoneServer(tmp_path / "short", {"HONE_HTTP_KEEP_ALIVE_S": "1"})
    try:
        with (
            socket.create_connection(("127.0.0.1", server.port)) as kept,
            socket.create_connection(("127.0.0.1", short.port)) as dropped,
        ):
            assert _get_on(kept).startswith(b"HTTP/1.1 200") and _get_on(dropped).startswith(b"HTTP/1.1 200")
            time.sleep(6.5)
            assert _get_on(kept).startswith(b"HTTP/1.1 200")  # the same connection, idle 6.5 s
            assert _get_on(dropped) == b""  # the setting is what decides
    finally:
        server.stop()
        short.stop()
