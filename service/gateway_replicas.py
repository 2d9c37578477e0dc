"""Which replica of an endpoint a request goes to: the one with the fewest requests outstanding from this
gateway worker, ties going to the one chosen least recently.

Why least outstanding rather than round robin: requests to a model differ in length by orders of magnitude (a
one-token label against a 2,000-token essay, streamed for a minute). Round robin hands each replica the same
number of requests however long they run, so a replica holding three long generations still gets every other
short one, which then waits in its batch. Counting what is still running sends new requests where the work has
finished. The tie-break makes it round robin when nothing is outstanding (sequential callers), so replicas warm
up and stay in use evenly.

A replica that refused a connection is passed over for DOWN_S (its successor, if the deployer starts one, has
a new address): requests go to the others meanwhile. When every replica is marked down the marks are ignored,
the request still tries, and a replica that came back is found."""

from __future__ import annotations

import itertools
import time
from collections import defaultdict

DOWN_S = 10.0
_PRUNE_AT = 1024  # addresses remembered before idle ones are forgotten (engines come and go with new ports)


class ReplicaPicker:
    def __init__(self) -> None:
        self._outstanding: dict[str, int] = defaultdict(int)
        self._last_chosen: dict[str, int] = {}
        self._down_until: dict[str, float] = {}
        self._order = itertools.count()

    def pick(self, urls: tuple[str, ...], exclude: set[str]) -> str | None:
        """The replica for the next attempt (None: every one was tried). Counts it outstanding: call done()."""
        candidates = [u for u in urls if u not in exclude]
        if not candidates:
            return None
        now = time.monotonic()
        up = [u for u in candidates if self._down_until.get(u, 0.0) <= now] or candidates
        chosen = min(up, key=lambda u: (self._outstanding.get(u, 0), self._last_chosen.get(u, -1)))
        self._last_chosen[chosen] = next(self._order)
        self._outstanding[chosen] += 1
        return chosen

    def done(self, url: str) -> None:
        self._outstanding[url] -= 1
        if len(self._outstanding) > _PRUNE_AT:
            for idle in [u for u, n in self._outstanding.items() if n <= 0]:
                del self._outstanding[idle]
                self._last_chosen.pop(idle, None)
                self._down_until.pop(idle, None)

    def down(self, url: str) -> None:
        self._down_until[url] = time.monotonic() + DOWN_S

    def outstanding(self, url: str) -> int:
        return self._outstanding.get(url, 0)
