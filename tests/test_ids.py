"""Public ids: the prefix, then 24 characters drawn evenly from letters and digits."""

import collections
import re

from service.ids import new_id, random_token


def test_ids_have_their_shape_and_do_not_repeat():
    ids = [new_id("ftjob-") for _ in range(2000)]
    assert all(re.fullmatch(r"ftjob-[A-Za-z0-9]{24}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert len(random_token(100)) == 100 and len(random_token(1)) == 1


def test_every_character_is_about_as_likely():
    counts = collections.Counter("".join(random_token() for _ in range(10_000)))  # 240,000 characters
    assert len(counts) == 62
    expected = 240_000 / 62  # ~3871, standard deviation ~62: a biased mapping (b % 62 over all bytes) is off by ~25%
    assert all(abs(n - expected) < 8 * 62 for n in counts.values()), counts
