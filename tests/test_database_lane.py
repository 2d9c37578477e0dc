"""The lane that database reads run in (service/api/routing.py ThreadLane), and how many threads it gets."""

from __future__ import annotations

import asyncio
import threading
import time

from service.api.routing import ThreadLane
from service.settings import Settings


def test_reads_run_on_the_loop_on_a_local_database_and_in_two_threads_across_a_network(tmp_path):
    assert Settings(data_dir=tmp_path).resolved_database_threads == 0
    for local in (
        "postgresql+psycopg://u@127.0.0.1:5432/db",
        "postgresql+psycopg://u@localhost/db",
        "postgresql+psycopg:///db?host=/var/run/postgresql",
    ):
        assert Settings(data_dir=tmp_path, database_url=local).resolved_database_threads == 0, local
    remote = Settings(data_dir=tmp_path, database_url="postgresql+psycopg://u@db.internal:5432/db")
    assert remote.resolved_database_threads == 2
    assert Settings(data_dir=tmp_path, database_threads=5).resolved_database_threads == 5


def test_a_lane_never_runs_more_reads_at_once_than_its_size():
    lane, running, peak, lock = ThreadLane(2), 0, 0, threading.Lock()

    def read():
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return threading.get_ident()

    async def main():
        return await asyncio.gather(*[lane.run(read) for _ in range(8)])

    threads = asyncio.run(main())
    assert peak == 2
    assert threading.get_ident() not in threads


def test_a_lane_of_size_zero_runs_on_the_event_loop():
    async def main():
        return await ThreadLane(0).run(threading.get_ident)

    assert asyncio.run(main()) == threading.get_ident()
