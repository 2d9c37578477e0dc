"""Progress reports to the control plane's internal API, buffered so an unreachable control plane never stops training.

Events carry ids made here (deterministic for per-step metrics), so a batch resent after a lost reply,
or a step replayed after a resume, is stored once."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid

import httpx

log = logging.getLogger("hone.trainer.report")

RETRY_MAX_S = 5.0


class Superseded(Exception):
    """The control plane no longer wants this trainer (job cancelled, finished, or handed to a newer attempt)."""


class Reporter:
    def __init__(self, callback_url: str, token: str, job_id: str):
        self._url = f"{callback_url.rstrip('/')}/internal/fine_tuning/jobs/{job_id}"
        self._http = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=10.0)
        self._job_id = job_id
        self._lock = threading.Condition()
        self._events: list[dict] = []
        self._checkpoints: list[dict] = []
        self._progress: dict = {}
        self._closing = False
        self.job_status: str | None = None  # what the control plane last said the job is
        self.superseded = False
        self._thread = threading.Thread(target=self._run, name="reporter", daemon=True)
        self._thread.start()

    # --- what the trainer reports ---------------------------------------------------

    def event(self, message: str, *, level: str = "info", type: str = "message", data: dict | None = None,
              key: str | None = None) -> None:
        event_id = "ftevent-" + (hashlib.sha256(f"{self._job_id}:{key}".encode()).hexdigest()[:24] if key
                                 else uuid.uuid4().hex[:24])
        with self._lock:
            self._events.append({"id": event_id, "created_at": int(time.time()), "level": level,
                                 "message": message, "type": type, "data": data})
            self._lock.notify()

    def checkpoint(self, step: int, metrics: dict, prefix: str) -> None:
        with self._lock:
            self._checkpoints.append({"step": step, "metrics": metrics, "storage_prefix": prefix})
            self._lock.notify()

    def progress(self, **fields) -> None:
        with self._lock:
            self._progress.update(fields)

    # --- delivery ---------------------------------------------------------------------

    def _take(self) -> dict | None:
        if not (self._events or self._checkpoints or self._progress):
            return None
        return {"events": list(self._events), "checkpoints": list(self._checkpoints), "progress": dict(self._progress)}

    def _sent(self, batch: dict) -> None:
        del self._events[:len(batch["events"])]
        del self._checkpoints[:len(batch["checkpoints"])]
        if self._progress == batch["progress"]:
            self._progress = {}

    def _run(self) -> None:
        delay = 0.2
        while True:
            with self._lock:
                while not self._closing and self._take() is None:
                    self._lock.wait(timeout=1.0)
                batch = self._take()
                if batch is None:
                    return
            try:
                reply = self._post("/report", batch)
            except Superseded:
                with self._lock:
                    self._events.clear()
                    self._checkpoints.clear()
                    self._progress = {}
                    self._lock.notify_all()
                continue
            except httpx.HTTPError as exc:
                log.warning("control plane unreachable, will retry: %s", exc)
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = 0.2
            with self._lock:
                self.job_status = reply.get("status")
                self._sent(batch)
                self._lock.notify_all()
            time.sleep(0.25)  # lets a burst of steps share one request

    def _post(self, path: str, body: dict) -> dict:
        resp = self._http.post(self._url + path, json=body)
        if resp.status_code in (401, 404, 409):
            self.superseded = True
            raise Superseded(resp.text)
        if resp.status_code >= 500:
            raise httpx.HTTPStatusError(f"control plane answered {resp.status_code}", request=resp.request,
                                        response=resp)
        resp.raise_for_status()
        return resp.json()

    def flush(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._lock.notify()
            while self._take() is not None and not self.superseded:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._lock.wait(timeout=min(remaining or 1.0, 1.0))
        return True

    def call(self, path: str, body: dict) -> dict:
        """A final call (complete/fail): flushes reports first, then retries until the control plane answers."""
        self.flush()
        delay = 0.2
        while True:
            try:
                return self._post(path, body)
            except httpx.HTTPError as exc:
                log.warning("control plane unreachable for %s, will retry: %s", path, exc)
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        self._thread.join(timeout=5)
        self._http.close()
