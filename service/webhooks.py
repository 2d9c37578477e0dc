"""Webhooks: a project's endpoints (OpenAI's webhook endpoints: `/v1/webhook_endpoints`) and the delivery of
events to them, signed as the Standard Webhooks specification says (as OpenAI signs its own).

Events are OpenAI's: `fine_tuning.job.succeeded|failed|cancelled` and `eval.run.succeeded|failed|canceled`, each
`{"object": "event", "id": "evt_...", "type": ..., "created_at": ..., "data": {"id": <job or run id>}}`.

Nothing is sent from the transaction that ends a job or a run: it writes one `webhook_deliveries` row per subscribed
endpoint (the outbox, `enqueue`), in that same transaction, so an event is recorded exactly when its status change
commits. The `webhooks` background loop (leader only, `Deliverer.tick`) then sends due deliveries, and records each
attempt in the row (the delivery log): 2xx delivered; a 4xx other than 408 and 429 given up at once; anything else
(another status, a timeout, a refused connection) retried after HONE_WEBHOOK_BACKOFF_S * 2^(n-1) seconds until
HONE_WEBHOOK_MAX_ATTEMPTS. Delivery is at least once: a leader that stops between sending and recording sends
again, with the same `webhook-id` (receivers de-duplicate on it).

Another project's endpoints do not exist for a project: every read and write is scoped to the caller's."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from service import __version__
from service.auth import ProjectPrincipal
from service.context import AppContext
from service.db.tables import WebhookDelivery, WebhookEndpoint
from service.errors import ErrorCode, InvalidRequest, NotFound, excerpt
from service.ids import new_id
from service.pagination import list_envelope, paginate
from service.secret_box import SecretBox, open_box
from service.webhook_schemas import CreateWebhookEndpoint, UpdateWebhookEndpoint
from service.webhook_states import DeliveryStatus, move

log = logging.getLogger("hone.webhooks")

# The events Hone sends, by what ended: a job's status, an eval run's status (OpenAI's names for both).
JOB_EVENTS = {
    "succeeded": "fine_tuning.job.succeeded",
    "failed": "fine_tuning.job.failed",
    "cancelled": "fine_tuning.job.cancelled",
}
RUN_EVENTS = {"completed": "eval.run.succeeded", "failed": "eval.run.failed", "canceled": "eval.run.canceled"}
EVENT_TYPES = (*JOB_EVENTS.values(), *RUN_EVENTS.values())

BATCH = 64  # due deliveries one step sends (in parallel, SENDERS at a time)
SENDERS = 8
RETRIED_4XX = frozenset({408, 429})  # a 4xx worth another try: a timeout and "too many requests"


def box(ctx: AppContext) -> SecretBox:
    """Where signing secrets are sealed: the key external models' keys are sealed with (service/secret_box.py)."""
    return _box(ctx.settings.server.secret_key, ctx.settings.server.data_dir)


@functools.cache
def _box(secret_key: str | None, data_dir: Path) -> SecretBox:
    return open_box(secret_key, data_dir)


# --- signing (Standard Webhooks) --------------------------------------------------------------------------------


def new_secret() -> str:
    """A signing secret as Standard Webhooks writes them: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` under the
    secret's bytes (the base64 after `whsec_`)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")


def signed_headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": f"Hone-Webhooks/{__version__}",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }


# --- URLs ---------------------------------------------------------------------------------------------------------


def _refused_address(host: str) -> str | None:
    """Why `host` (a name or an address) may not receive webhooks, or None: every address it resolves to must be a
    global one (no loopback, private, link-local, shared or reserved range). A name that does not resolve is no
    reason here: the attempt then fails, and is retried, on its own."""
    try:
        addresses = {ipaddress.ip_address(host.strip("[]"))}
    except ValueError:
        if host == "localhost" or host.endswith(".localhost"):
            return f"{host} is this machine"
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            return None
        addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    for address in addresses:
        if not address.is_global:
            return f"{host} is (or resolves to) {address}, which is not a public address"
    return None


def check_url(ctx: AppContext, url: str) -> str:
    """The URL as stored, or 400 naming `url`: http or https, a host, and (unless HONE_WEBHOOK_ALLOW_PRIVATE) a
    public address."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018  # raises ValueError for a port out of range
    except ValueError:
        host = None
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidRequest(
            f"'{excerpt(url, 200)}' is not an http or https URL with a host.", param="url", code=ErrorCode.INVALID_VALUE
        )
    if not ctx.settings.webhooks.webhook_allow_private:
        why = _refused_address(host)
        if why:
            raise InvalidRequest(
                f"Webhooks are sent to public addresses only: {why} (HONE_WEBHOOK_ALLOW_PRIVATE allows others).",
                param="url",
                code=ErrorCode.INVALID_VALUE,
            )
    return url


def _check_event_types(types: list[str]) -> list[str]:
    unknown = sorted(set(types) - set(EVENT_TYPES))
    if unknown:
        raise InvalidRequest(
            f"Hone does not send {', '.join(unknown)}; the event types it sends are {', '.join(EVENT_TYPES)}.",
            param="event_types",
            code=ErrorCode.INVALID_VALUE,
        )
    if not types:
        raise InvalidRequest(
            "event_types must name at least one event type.", param="event_types", code=ErrorCode.INVALID_VALUE
        )
    return list(dict.fromkeys(types))


# --- endpoints (the API) ----------------------------------------------------------------------------------------


def endpoint_api(row: WebhookEndpoint, secret: str | None = None) -> dict[str, Any]:
    """OpenAI's WebhookEndpoint; with `secret`, WebhookEndpointWithSecret (made or rotated: the one time it shows)."""
    body: dict[str, Any] = {
        "id": row.id,
        "object": "webhook_endpoint",
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "name": row.name,
        "url": row.url,
        "event_types": list(row.event_types or []),
        "signing_secret_hint": row.secret_hint,
    }
    if secret is not None:
        body["signing_secret"] = secret
    return body


def _hint(secret: str) -> str:
    return f"whsec_...{secret[-4:]}"


def create(ctx: AppContext, principal: ProjectPrincipal, body: CreateWebhookEndpoint) -> dict[str, Any]:
    url = check_url(ctx, body.url)
    types = _check_event_types(body.event_types)
    secret, now = new_secret(), int(time.time())
    row = WebhookEndpoint(
        id=new_id("whep_"),
        project_id=principal.project_id,
        name=body.name,
        url=url,
        event_types=types,
        secret_sealed=box(ctx).seal(secret),
        secret_hint=_hint(secret),
        created_at=now,
        updated_at=now,
    )
    with ctx.db.write() as session:
        session.add(row)
        session.flush()
        return endpoint_api(row, secret)


def _row(session: Session, project_id: str, endpoint_id: str) -> WebhookEndpoint:
    row = session.execute(
        select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.project_id == project_id)
    ).scalar()
    if row is None:
        raise NotFound(
            f"No such webhook endpoint: {excerpt(endpoint_id)}", param="webhook_endpoint_id", code=ErrorCode.NOT_FOUND
        )
    return row


def get(ctx: AppContext, principal: ProjectPrincipal, endpoint_id: str) -> dict[str, Any]:
    with ctx.db.read() as session:
        return endpoint_api(_row(session, principal.project_id, endpoint_id))


def list_endpoints(ctx: AppContext, principal: ProjectPrincipal, *, after: str | None, limit: int) -> dict[str, Any]:
    with ctx.db.read() as session:
        stmt = select(WebhookEndpoint).where(WebhookEndpoint.project_id == principal.project_id)
        rows, has_more = paginate(session, stmt, WebhookEndpoint, after=after, limit=limit)
        return list_envelope([endpoint_api(r) for r in rows], has_more, with_ids=True)


def update(
    ctx: AppContext, principal: ProjectPrincipal, endpoint_id: str, body: UpdateWebhookEndpoint
) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if body.url is not None:
        changes["url"] = check_url(ctx, body.url)
    if body.event_types is not None:
        changes["event_types"] = _check_event_types(body.event_types)
    if body.name is not None:
        changes["name"] = body.name
    with ctx.db.write() as session:
        row = _row(session, principal.project_id, endpoint_id)
        changed = {k: v for k, v in changes.items() if getattr(row, k) != v}
        for key, value in changed.items():
            setattr(row, key, value)
        if changed:  # OpenAI: unchanged updates do not advance updated_at
            row.updated_at = int(time.time())
        session.flush()
        return endpoint_api(row)


def rotate_secret(ctx: AppContext, principal: ProjectPrincipal, endpoint_id: str) -> dict[str, Any]:
    """A new signing secret, answered once; deliveries from now on (retries of earlier events too) are signed with it."""
    secret = new_secret()
    with ctx.db.write() as session:
        row = _row(session, principal.project_id, endpoint_id)
        row.secret_sealed, row.secret_hint, row.updated_at = box(ctx).seal(secret), _hint(secret), int(time.time())
        session.flush()
        return endpoint_api(row, secret)


def delete(ctx: AppContext, principal: ProjectPrincipal, endpoint_id: str) -> dict[str, Any]:
    """Deletes the endpoint and its delivery log; pending deliveries to it are not sent."""
    with ctx.db.write() as session:
        row = _row(session, principal.project_id, endpoint_id)
        session.execute(WebhookDelivery.__table__.delete().where(WebhookDelivery.endpoint_id == row.id))  # type: ignore[attr-defined]
        session.delete(row)
    return {"id": endpoint_id, "object": "webhook_endpoint.deleted", "deleted": True}


def delivery_api(row: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "webhook_endpoint.delivery",
        "webhook_endpoint_id": row.endpoint_id,
        "event_id": row.event_id,
        "event_type": row.event_type,
        "status": row.status,
        "created_at": row.created_at,
        "next_attempt_at": int(row.next_attempt_at) if row.next_attempt_at is not None else None,
        "finished_at": row.finished_at,
        "attempts": list(row.attempts or []),
    }


def list_deliveries(
    ctx: AppContext, principal: ProjectPrincipal, endpoint_id: str, *, after: str | None, limit: int
) -> dict[str, Any]:
    """Hone: the endpoint's delivery log, newest event first, each with its attempts."""
    with ctx.db.read() as session:
        _row(session, principal.project_id, endpoint_id)
        stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
        rows, has_more = paginate(session, stmt, WebhookDelivery, after=after, limit=limit)
        return list_envelope([delivery_api(r) for r in rows], has_more, with_ids=True)


# --- the outbox -------------------------------------------------------------------------------------------------


def enqueue(session: Session, project_id: str, event_type: str, object_id: str, now: int) -> None:
    """In the caller's transaction (the one that changes the status the event reports): one pending delivery per
    endpoint of the project subscribed to `event_type`, due at once. Nothing when none is."""
    subscribed = [
        endpoint_id
        for endpoint_id, types in session.execute(
            select(WebhookEndpoint.id, WebhookEndpoint.event_types).where(WebhookEndpoint.project_id == project_id)
        ).all()
        if event_type in (types or [])
    ]
    if not subscribed:
        return
    event_id = new_id("evt_")
    event = {"object": "event", "id": event_id, "type": event_type, "created_at": now, "data": {"id": object_id}}
    payload = json.dumps(event, separators=(",", ":"))
    session.execute(
        insert(WebhookDelivery),
        [
            {
                "id": new_id("wh_"),
                "endpoint_id": endpoint_id,
                "project_id": project_id,
                "event_id": event_id,
                "event_type": event_type,
                "payload": payload,
                "status": DeliveryStatus.PENDING.value,
                "created_at": now,
                "next_attempt_at": float(now),
                "finished_at": None,
                "attempts": [],
            }
            for endpoint_id in subscribed
        ],
    )


# --- delivery (the `webhooks` loop) -----------------------------------------------------------------------------


def backoff_s(ctx: AppContext, attempt: int) -> float:
    """The wait after failed attempt `attempt` (1-based) before the next."""
    settings = ctx.settings.webhooks
    return min(settings.webhook_backoff_max_s, settings.webhook_backoff_s * 2 ** (attempt - 1))


class Deliverer:
    """Sends due deliveries, SENDERS at a time, and records each attempt (leader only: service/app.py)."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx
        timeout = ctx.settings.webhooks.webhook_timeout_s
        # No redirects: a 3xx is an answer that is not 2xx (retried), never a hop to somewhere else.
        self._http = httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)
        self._senders = ThreadPoolExecutor(SENDERS, thread_name_prefix="webhook")

    def close(self) -> None:
        self._senders.shutdown(wait=True)
        self._http.close()

    def tick(self) -> int:
        """One step: sends what is due; returns how many attempts it recorded."""
        now = time.time()
        with self.ctx.db.read() as session:
            due = session.execute(
                select(WebhookDelivery, WebhookEndpoint.url, WebhookEndpoint.secret_sealed)
                .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                .where(WebhookDelivery.status == DeliveryStatus.PENDING.value, WebhookDelivery.next_attempt_at <= now)
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(BATCH)
            ).all()
            session.expunge_all()
        if not due:
            return 0
        return sum(self._senders.map(lambda row: self._attempt(row[0], row[1], row[2]), due))

    def _send(self, url: str, secret: str, delivery: WebhookDelivery) -> tuple[int | None, str | None, bool]:
        """(status code, error, give up): one POST of the delivery's payload, signed now."""
        host = urlsplit(url).hostname or ""
        if not self.ctx.settings.webhooks.webhook_allow_private:
            why = _refused_address(host)  # checked again at each attempt: a name may resolve elsewhere by now
            if why:
                return None, f"not sent: {why} (HONE_WEBHOOK_ALLOW_PRIVATE)", True
        body = delivery.payload.encode()
        headers = signed_headers(secret, delivery.id, int(time.time()), body)
        try:
            response = self._http.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {excerpt(str(exc) or 'no answer', 300)}", False
        code = response.status_code
        if 200 <= code < 300:
            return code, None, False
        error = f"answered {code}: {excerpt(response.text, 300)}" if response.text else f"answered {code}"
        return code, error, 400 <= code < 500 and code not in RETRIED_4XX

    def _attempt(self, delivery: WebhookDelivery, url: str, secret_sealed: str) -> int:
        settings = self.ctx.settings.webhooks
        number = len(delivery.attempts or []) + 1
        started = time.time()
        code: int | None
        error: str | None
        try:
            secret = box(self.ctx).open(secret_sealed)
        except ValueError as exc:  # HONE_SECRET_KEY changed: no signature can be made; an admin can fix the key
            code, error, give_up = None, str(exc), False
        else:
            code, error, give_up = self._send(url, secret, delivery)
        now = time.time()
        attempt = {
            "attempt": number,
            "started_at": int(started),
            "duration_ms": round((now - started) * 1000),
            "status_code": code,
            "error": error,
        }
        if error is None:
            target, next_at = DeliveryStatus.DELIVERED, None
        elif give_up or number >= settings.webhook_max_attempts:
            target, next_at = DeliveryStatus.FAILED, None
        else:
            target, next_at = DeliveryStatus.PENDING, now + backoff_s(self.ctx, number)
        with self.ctx.db.write() as session:
            moved = move(
                session,
                delivery.id,
                DeliveryStatus.PENDING,
                target,
                [*(delivery.attempts or []), attempt],
                due=delivery.next_attempt_at,
                now=now,
                next_attempt_at=next_at,
            )
        level = logging.INFO if target is DeliveryStatus.DELIVERED else logging.WARNING
        log.log(
            level,
            "webhook delivery attempt",
            extra={
                "delivery_id": delivery.id,
                "event_type": delivery.event_type,
                "attempt": number,
                "status_code": code,
                "outcome": target.value,
                "error": error,
                "recorded": moved,
            },
        )
        return 1 if moved else 0
