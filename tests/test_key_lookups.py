"""API keys looked up once however many requests carry them at once (service/api/deps.py `_KeyLookups`): when a
cached key expires, the requests in flight with it must not each query the database (a stall for all of them)."""

from __future__ import annotations

import asyncio

import pytest

from service import auth, projects
from service.api import deps
from service.context import AppContext
from service.errors import AuthenticationFailed
from service.settings import Settings


def test_concurrent_requests_with_one_key_share_one_lookup_and_its_answer(tmp_path, monkeypatch):
    ctx = AppContext.build(Settings(data_dir=tmp_path, admin_api_key="adm", key_cache_ttl_s=0))
    project = projects.create_project(ctx, "lookups")
    key = projects.create_service_account(ctx, project["id"], "svc")["api_key"]["value"]
    calls: list[str | None] = []
    real = auth.authenticate_project

    def counted(context, header):
        calls.append(header)
        return real(context, header)

    monkeypatch.setattr(deps, "authenticate_project", counted)
    lookups = deps._KeyLookups()

    async def burst(header: str, n: int):
        return await asyncio.gather(*(lookups.authenticate(ctx, header) for _ in range(n)), return_exceptions=True)

    async def main():
        good = await burst(f"Bearer {key}", 32)
        bad = await burst("Bearer sk-not-a-key", 8)
        later = await burst(f"Bearer {key}", 4)  # a lookup finished is not kept: the next burst looks up again
        return good, bad, later

    good, bad, later = asyncio.run(main())
    assert {p.project_id for p in good} == {project["id"]} and len(good) == 32
    assert all(isinstance(e, AuthenticationFailed) for e in bad) and len(bad) == 8
    assert {p.project_id for p in later} == {project["id"]}
    assert calls == [f"Bearer {key}", "Bearer sk-not-a-key", f"Bearer {key}"]


def test_a_waiter_that_is_cancelled_leaves_the_lookup_to_the_others(tmp_path, monkeypatch):
    ctx = AppContext.build(Settings(data_dir=tmp_path, admin_api_key="adm", key_cache_ttl_s=0))
    project = projects.create_project(ctx, "lookups")
    key = projects.create_service_account(ctx, project["id"], "svc")["api_key"]["value"]
    real = auth.authenticate_project

    def slow(context, header):
        import time

        time.sleep(0.2)
        return real(context, header)

    monkeypatch.setattr(deps, "authenticate_project", slow)
    lookups = deps._KeyLookups()

    async def main():
        first = asyncio.ensure_future(lookups.authenticate(ctx, f"Bearer {key}"))
        second = asyncio.ensure_future(lookups.authenticate(ctx, f"Bearer {key}"))
        await asyncio.sleep(0.05)
        first.cancel()  # a client that went away
        with pytest.raises(asyncio.CancelledError):
            await first
        return await second

    assert asyncio.run(main()).project_id == project["id"]
