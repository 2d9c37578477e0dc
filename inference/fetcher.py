"""`python -m inference.fetcher --root /adapters`: the adapter fetcher beside an engine in a cluster.

vLLM's `POST /v1/load_lora_adapter` takes a path on the engine's own filesystem, and a pod cannot see the
control plane's disk. So each engine pod runs this sidecar on a volume it shares with vLLM. The control plane
asks it for an adapter, then hot-loads the path it answers:

    POST /fetch {"source": "s3://bucket/prefix/jobs/ftjob-x/adapter/", "name": "ep-..."}
        -> 200 {"path": "/adapters/ep-...", "files": N, "cached": bool}
    POST /evict {"name": "ep-..."} -> 200 {"removed": bool}
    GET /health -> 200

The same image runs it once as the pod's init container when the engine's base weights are not a Hugging Face
id or a folder every node sees: `--once SOURCE --name NAME` copies SOURCE into ROOT/NAME and exits (SOURCE may
also be `builtin:hone-tiny`, which the trainer's code builds, deterministically, as it does for training).

Sources are `s3://bucket/prefix/` (boto3, with the standard AWS_* variables and AWS_ENDPOINT_URL) or
`file:///dir/` (a volume shared with the control plane). A copy is made in a hidden folder and renamed into
place, so vLLM never sees half an adapter; asking again for the same name and source answers the copy at once.
With HONE_FETCHER_API_KEY set (the engine's API key), /fetch and /evict need `Authorization: Bearer <key>`.
Standard library only (plus boto3 for s3://), so it runs in the vLLM image."""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger("inference.fetcher")

MARKER = ".hone-source"  # in a complete copy: the source it came from
NOT_SERVED = ("trainer_state.pt", "COMPLETE")  # trainer bookkeeping beside checkpoints
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,200}$")


class FetchError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _objects(source: str) -> list[tuple[str, Callable[..., Any]]]:
    """(relative path, opener returning a binary stream) for every file under `source`."""
    parsed = urlparse(source)
    if parsed.scheme == "file":
        root = Path(parsed.path)
        if not root.is_dir():
            raise FetchError(404, f"No folder at {source}")
        return [(str(p.relative_to(root)), (lambda p=p: open(p, "rb"))) for p in sorted(root.rglob("*")) if p.is_file()]
    if parsed.scheme != "s3" or not parsed.netloc:
        raise FetchError(400, f"source must be s3://bucket/prefix/ or file:///dir/, got {source!r}")
    import boto3  # only s3:// needs it

    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    found: list[tuple[str, Callable[..., Any]]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            found.append((key[len(prefix) :], (lambda key=key: client.get_object(Bucket=bucket, Key=key)["Body"])))
    return found


class Fetcher:
    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def fetch(self, source: str, name: str) -> dict:
        if not _NAME.match(name or ""):
            raise FetchError(400, f"invalid adapter name {name!r}")
        target = self.root / name
        with self._lock(name):
            marker = target / MARKER
            if marker.is_file() and marker.read_text() == source:
                return {
                    "path": str(target),
                    "files": sum(1 for p in target.rglob("*") if p.is_file()) - 1,
                    "cached": True,
                }
            work = self.root / f".{name}.{uuid.uuid4().hex[:8]}.partial"
            work.mkdir(parents=True)
            try:
                objects = [
                    (rel, open_) for rel, open_ in _objects(source) if rel and rel.rsplit("/", 1)[-1] not in NOT_SERVED
                ]
                if not objects:
                    raise FetchError(404, f"No files under {source}")
                for rel, open_ in objects:
                    path = (work / rel).resolve()
                    if not path.is_relative_to(work.resolve()):
                        raise FetchError(400, f"refusing a key outside the folder: {rel!r}")
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with open_() as body, open(path, "wb") as out:
                        shutil.copyfileobj(body, out, 1 << 20)
                (work / MARKER).write_text(source)
                if target.exists():  # another source under the same name: swap the whole folder
                    old = self.root / f".{name}.{uuid.uuid4().hex[:8]}.old"
                    target.rename(old)
                    shutil.rmtree(old, ignore_errors=True)
                work.rename(target)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        log.info("fetched %s into %s (%d files)", source, target, len(objects))
        return {"path": str(target), "files": len(objects), "cached": False}

    def evict(self, name: str) -> bool:
        if not _NAME.match(name or ""):
            raise FetchError(400, f"invalid adapter name {name!r}")
        with self._lock(name):
            target = self.root / name
            if not target.exists():
                return False
            shutil.rmtree(target, ignore_errors=True)
            return True


def prepare_once(root: Path, source: str, name: str) -> Path:
    """The init container's job: the engine's weights complete in ROOT/NAME (built-in models built there)."""
    if source.startswith("builtin:"):
        # the inference image carries the trainer's code; builds are atomic
        from hone_kernel.builtin_models import UnknownBuiltin, build

        try:
            return Path(build(source.split(":", 1)[1], root / name))
        except UnknownBuiltin as exc:
            raise FetchError(400, str(exc)) from exc
    return Path(Fetcher(root).fetch(source, name)["path"])


def make_handler(fetcher: Fetcher, api_key: str | None):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            log.debug(fmt, *args)

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                self._reply(200, {"status": "ok"})
            else:
                self._reply(404, {"error": {"message": "Not Found", "type": "NotFoundError", "code": 404}})

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if api_key and not hmac.compare_digest(self.headers.get("Authorization", ""), f"Bearer {api_key}"):
                self._reply(401, {"error": "Unauthorized"})
                return
            try:
                body = json.loads(raw or b"{}")
                if not isinstance(body, dict):
                    raise FetchError(400, "body must be a JSON object")
                if self.path == "/fetch":
                    self._reply(200, fetcher.fetch(str(body.get("source") or ""), str(body.get("name") or "")))
                elif self.path == "/evict":
                    self._reply(200, {"removed": fetcher.evict(str(body.get("name") or ""))})
                else:
                    raise FetchError(404, "Not Found")
            except FetchError as exc:
                self._reply(exc.status, {"error": {"message": str(exc), "type": "FetchError", "code": exc.status}})
            except ValueError as exc:
                self._reply(400, {"error": {"message": f"invalid JSON: {exc}", "type": "BadRequest", "code": 400}})
            except Exception as exc:  # storage errors: the caller retries the deploy
                log.exception("fetch failed")
                self._reply(
                    502, {"error": {"message": f"{type(exc).__name__}: {exc}", "type": "FetchError", "code": 502}}
                )

    return Handler


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m inference.fetcher", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--root", default="/adapters", help="folder shared with the engine")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--once", metavar="SOURCE", help="copy SOURCE into ROOT/NAME, then exit (an init container)")
    p.add_argument("--name", help="with --once: the folder under ROOT")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.once:
        if not args.name:
            p.error("--once needs --name")
        try:
            log.info("weights ready in %s", prepare_once(Path(args.root), args.once, args.name))
        except FetchError as exc:
            log.error("%s", exc)
            return 1
        return 0
    server = ThreadingHTTPServer(
        (args.host, args.port), make_handler(Fetcher(Path(args.root)), os.environ.get("HONE_FETCHER_API_KEY") or None)
    )
    log.info("adapter fetcher on http://%s:%d, root %s", args.host, args.port, args.root)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
