"""Following an endpoint's replicas while it is ready: the engines it asked for (`replicas`) against those that
run, without taking it out of `ready` while at least one serves.

Each tick the deployer hands over a ready endpoint and its engine's handle (the live replicas). The endpoint's
row is brought up to date (`urls` the gateway spreads requests over, `ready_replicas`), so a dead replica leaves
the gateway's rotation within a tick (the gateway itself skips it sooner, on the first refused connection). When
fewer run than asked (one died, or the endpoint asked for more), or a replica has not had the adapter loaded,
the engine is ensured again in a worker: the backend starts what is missing, keeping the replicas that run, and
the adapter is loaded into the new ones. A replica that cannot start is retried after RETRY_S, the endpoint
serving on the others meanwhile. Only when none is left does the deployer redeploy it (`deploying`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from inference.client import AdapterLoadError, AdapterNotFound, EngineUnavailable
from service.db.tables import Endpoint
from service.deploy import DeployError
from service.endpoint_states import EndpointState
from service.engines import EngineHandle, EngineStartError

if TYPE_CHECKING:
    from service.deploy.deployer import EndpointDeployer

log = logging.getLogger("hone.deployer")

RETRY_S = 10.0  # between attempts to start a replica that would not


class Replicas:
    def __init__(self, deployer: EndpointDeployer):
        self.deployer = deployer
        self.loaded: dict[str, set[str]] = {}  # endpoint id -> replica urls its adapter is loaded into
        self._retry_at: dict[str, float] = {}

    def forget(self, endpoint_id: str) -> None:
        self.loaded.pop(endpoint_id, None)
        self._retry_at.pop(endpoint_id, None)

    def follow(self, ep: Endpoint, handle: EngineHandle) -> None:
        self._record(ep, handle)
        wanted = ep.replicas or 1
        missing_adapter = ep.kind == "adapter" and any(r.url not in self.loaded.get(ep.id, set()) for r in handle.ready)
        short = len(handle.ready) < wanted or handle.spec.replicas != wanted
        if (short or missing_adapter) and time.monotonic() >= self._retry_at.get(ep.id, 0.0):
            self.deployer._submit(ep.id, lambda: self._scale(ep.id))

    def _record(self, ep: Endpoint, handle: EngineHandle) -> None:
        """The row's view of the replicas, written only when it changed (and only while the endpoint is ready)."""
        urls, ready = list(handle.request_urls), len(handle.ready)
        known = self.loaded.get(ep.id)  # None: not known to this process (a restart); loaded before it
        if ep.kind == "adapter" and known is not None:
            # A replica the backend started is in the handle before its adapter is loaded (in _scale, in a
            # worker): until then it would answer 404 for the model, so it joins the rotation only after.
            replica_urls = {r.url for r in handle.ready}
            urls = [u for u in urls if u not in replica_urls or u in known] or urls
            ready = sum(1 for r in handle.ready if r.url in known)
        if ep.urls == urls and ep.ready_replicas == ready and ep.url == handle.url:
            return
        with self.deployer.ctx.db.write() as session:
            session.execute(
                update(Endpoint)
                .where(Endpoint.seq == ep.seq, Endpoint.state == EndpointState.READY.value)
                .values(url=handle.url, urls=urls, ready_replicas=ready)
            )
        log.info(
            "endpoint replicas",
            extra={"endpoint_id": ep.id, "ready_replicas": ready, "replicas": ep.replicas, "urls": urls},
        )

    def _scale(self, endpoint_id: str) -> None:
        deployer = self.deployer
        with deployer.ctx.db.read() as session:
            ep = session.execute(select(Endpoint).where(Endpoint.id == endpoint_id)).scalar()
            if ep is None or ep.state != EndpointState.READY.value:
                return
            session.expunge(ep)
        try:
            weights: Path | None = deployer.adapters.fetch(ep) if ep.weights_prefix else None
            handle = deployer.backend.ensure(deployer.placement.endpoint_spec(ep, weights))
            self.loaded[ep.id] = deployer.adapters.load_everywhere(handle, ep, weights, self.loaded.get(ep.id, set()))
        except (DeployError, EngineStartError, EngineUnavailable, AdapterNotFound, AdapterLoadError) as exc:
            log.warning("could not bring an endpoint's replicas up", extra={"endpoint_id": ep.id, "reason": str(exc)})
            self._retry_at[ep.id] = time.monotonic() + RETRY_S
            return
        if len(handle.ready) < (ep.replicas or 1):  # the backend started what it could; the rest later
            self._retry_at[ep.id] = time.monotonic() + RETRY_S
        self._record(ep, handle)
