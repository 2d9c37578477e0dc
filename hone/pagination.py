"""Auto-paging over the API's cursor lists: iterate and the next page is fetched when the last one runs out.

for job in client.jobs.list():             # every job, newest first, one request per page
async for job in async_client.jobs.list():  # the same with AsyncClient
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Generic

from hone.types import ItemT, Page


class SyncPager(Generic[ItemT]):
    def __init__(self, fetch: Callable[[str | None], Page[ItemT]]):
        self._fetch = fetch  # fetch(after) -> the page after that cursor (None: the first page)

    def pages(self) -> Iterator[Page[ItemT]]:
        after = None
        while True:
            page = self._fetch(after)
            yield page
            after = page.next_cursor
            if after is None:
                return

    def __iter__(self) -> Iterator[ItemT]:
        for page in self.pages():
            yield from page.data


class AsyncPager(Generic[ItemT]):
    def __init__(self, fetch: Callable[[str | None], Awaitable[Page[ItemT]]]):
        self._fetch = fetch

    async def pages(self) -> AsyncIterator[Page[ItemT]]:
        after = None
        while True:
            page = await self._fetch(after)
            yield page
            after = page.next_cursor
            if after is None:
                return

    async def __aiter__(self) -> AsyncIterator[ItemT]:
        async for page in self.pages():
            for item in page.data:
                yield item

    async def to_list(self) -> list[ItemT]:
        return [item async for item in self]
