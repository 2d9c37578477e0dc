"""Progress reports to the control plane's internal API, buffered so an unreachable control plane never stops training.

Events carry ids made here (deterministic for per-step metrics), so a batch resent after a lost reply,
or a step replayed after a resume, is stored once.

Heartbeats: the control plane kills a trainer it has not heard from for its stall timeout (`trainer_stalled`),
and says in each reply how often to beat. A report is only ever a sign of the *main* thread's life: the
reporter thread sends an empty one only while the main thread is inside a `busy()` section (a training
step's torch work, model loading, checkpoint uploads: long calls that are bounded by the libraries' own
timeouts or by the work itself) or has marked progress since the last report. A main thread hung anywhere
else (e.g. waiting forever on a lock) goes silent however healthy this thread is, and is killed.

Giving up: a report the control plane refuses as malformed (a 4xx that does not mean "superseded") is dropped
with an error line, since sending it again would be refused again and hold back every report behind it. A
control plane that cannot be reached for `give_up_after_s` (the spec's `control_plane_timeout_s`: twice the stall
timeout after which it replaces a silent trainer) has either replaced this attempt or is gone: the trainer stops
as superseded instead of waiting forever."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import threading
import time
import uuid

import httpx

from hone_kernel import trainer_contract as contract
from hone_kernel.finite import finite

log = logging.getLogger("hone.trainer.report")

RETRY_MAX_S = 5.0
HEARTBEAT_S = 5.0  # until the control plane's first reply says otherwise


class Liveness:
    """What the main thread is doing, for heartbeats. Process-wide: one trainer process runs one job."""

    def __init__(self):
        self._lock = threading.Lock()
        self._busy = 0  # sections counted as alive while they last
        self._marked = time.monotonic()  # when progress was last marked

    @contextlib.contextmanager
    def busy(self):
        """The main thread is working (torch, model loading, uploads): heartbeats go on while this lasts."""
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1
            self.mark()

    def mark(self) -> None:
        self._marked = time.monotonic()

    def alive_since(self, since: float) -> bool:
        return self._busy > 0 or self._marked > since


main_thread = Liveness()


class Superseded(Exception):
    """The control plane no longer wants this trainer (job cancelled, finished, or handed to a newer attempt)."""


class Refused(Exception):
    """The control plane refused a report as malformed: resending the same body would be refused again."""


RETRYABLE_4XX = (408, 429)  # a timeout or rate limit: the same body may be accepted later


class Reporter:
    def __init__(self, callback_url: str, token: str, job_id: str, give_up_after_s: float = 0.0):
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
        self.heartbeat_s = HEARTBEAT_S
        self._last_post = float("-inf")  # when we last tried to reach the control plane: the first beat is at once
        self.give_up_after_s = give_up_after_s  # 0: never
        self._unreachable_since: float | None = None  # the first failed attempt since the last answer
        self.lost = False  # gave up on an unreachable control plane
        self._thread = threading.Thread(target=self._run, name="reporter", daemon=True)
        self._thread.start()

    # --- what the trainer reports ---------------------------------------------------

    def event(
        self,
        message: str,
        *,
        level: str = "info",
        type: str = "message",
        data: dict | None = None,
        key: str | None = None,
    ) -> None:
        event_id = "ftevent-" + (
            hashlib.sha256(f"{self._job_id}:{key}".encode()).hexdigest()[:24] if key else uuid.uuid4().hex[:24]
        )
        with self._lock:
            self._events.append(
                contract.message(contract.ReportedEvent(event_id, int(time.time()), level, message, type, data))
            )
            self._lock.notify()

    def checkpoint(self, step: int, metrics: dict, prefix: str) -> None:
        with self._lock:
            self._checkpoints.append(contract.message(contract.ReportedCheckpoint(step, metrics, prefix)))
            self._lock.notify()

    def progress(self, **fields) -> None:
        with self._lock:
            self._progress.update(fields)
        main_thread.mark()

    def _heartbeat_due(self) -> bool:
        return main_thread.alive_since(self._last_post) and time.monotonic() - self._last_post >= self.heartbeat_s

    # --- delivery ---------------------------------------------------------------------

    def _take(self) -> dict | None:
        if not (self._events or self._checkpoints or self._progress or self._heartbeat_due()):
            return None
        return {"events": list(self._events), "checkpoints": list(self._checkpoints), "progress": dict(self._progress)}

    def _sent(self, batch: dict) -> None:
        del self._events[: len(batch["events"])]
        del self._checkpoints[: len(batch["checkpoints"])]
        if self._progress == batch["progress"]:
            self._progress = {}

    def _run(self) -> None:
        delay = 0.2
        while True:
            with self._lock:
                while not self._closing and self._take() is None:
                    self._lock.wait(timeout=min(1.0, self.heartbeat_s))
                batch = self._take()
                if batch is None or self._closing and self._is_heartbeat(batch):
                    return
            try:
                reply = self._post(contract.REPORT, batch)
            except Superseded:
                with self._lock:
                    self._events.clear()
                    self._checkpoints.clear()
                    self._progress = {}
                    self._lock.notify_all()
                continue
            except Refused as exc:
                log.error("control plane refused a report; it is dropped: %s", exc)
                with self._lock:
                    self._sent(batch)
                    self._lock.notify_all()
                continue
            except httpx.HTTPError as exc:
                if self._lost_for_good():
                    return
                log.warning("control plane unreachable, will retry: %s", exc)
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = 0.2
            with self._lock:
                self.job_status = reply.get("status")
                beat = reply.get("heartbeat_s")
                if isinstance(beat, (int, float)) and math.isfinite(beat) and beat > 0:
                    self.heartbeat_s = float(beat)
                self._sent(batch)
                self._lock.notify_all()
            if batch["progress"]:  # lets a burst of steps share one request; a start's first reports go at once
                time.sleep(0.25)

    @staticmethod
    def _is_heartbeat(batch: dict) -> bool:
        return not (batch["events"] or batch["checkpoints"] or batch["progress"])

    def _post(self, path: str, body: dict) -> dict:
        self._last_post = time.monotonic()  # an attempt paces heartbeats too: a refused one is not resent at once
        try:
            resp = self._http.post(self._url + path, json=finite(body))
        except httpx.HTTPError:
            if self._unreachable_since is None:
                self._unreachable_since = time.monotonic()
            raise
        if resp.status_code >= 500 or resp.status_code in RETRYABLE_4XX:
            if self._unreachable_since is None:
                self._unreachable_since = time.monotonic()
            raise httpx.HTTPStatusError(
                f"control plane answered {resp.status_code}", request=resp.request, response=resp
            )
        self._unreachable_since = None
        if resp.status_code in (401, 404, 409):
            self.superseded = True
            raise Superseded(resp.text)
        if resp.status_code >= 400:
            raise Refused(f"{path} answered {resp.status_code}: {resp.text[:500]}")
        return resp.json()

    def _lost_for_good(self) -> bool:
        """True (and the run superseded, its unsent reports dropped) once the control plane has not answered for
        `give_up_after_s`."""
        since = self._unreachable_since
        if self.give_up_after_s <= 0 or since is None or time.monotonic() - since < self.give_up_after_s:
            return False
        with self._lock:
            if not self.lost:
                log.error(
                    "control plane unreachable for %.0f s: this attempt has been replaced or the control plane is "
                    "gone; stopping",
                    time.monotonic() - since,
                )
            self.lost = self.superseded = True
            self._events.clear()
            self._checkpoints.clear()
            self._progress = {}
            self._lock.notify_all()
        return True

    def flush(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._lock.notify()
            while self._pending() and not self.superseded:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._lock.wait(timeout=min(remaining or 1.0, 1.0))
        return True

    def _pending(self) -> bool:  # reports not yet delivered (a heartbeat is not one to wait for)
        return bool(self._events or self._checkpoints or self._progress)

    def call(self, path: str, body: dict) -> dict:
        """A final call (complete/fail): flushes reports first, then retries until the control plane answers (or
        is given up on: then {}, which the run reads as superseded). Refused raises: the attempt ends as a crash."""
        self.flush()
        delay = 0.2
        while True:
            try:
                return self._post(path, body)
            except httpx.HTTPError as exc:
                if self._lost_for_good():
                    return {}
                log.warning("control plane unreachable for %s, will retry: %s", path, exc)
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        self._thread.join(timeout=5)
        self._http.close()


class QuietReporter:
    """The reporter of a data-parallel rank other than 0 (trainer/distributed.py): rank 0 alone talks to the control
    plane, and tells the others what it heard through the per-step stop agreement."""

    job_status: str | None = None
    superseded = False
    lost = False

    def event(self, message: str, **_) -> None:
        pass

    def checkpoint(self, step: int, metrics: dict, prefix: str) -> None:
        pass

    def progress(self, **fields) -> None:
        main_thread.mark()

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def call(self, path: str, body: dict) -> dict:
        return {}

    def close(self) -> None:
        pass
