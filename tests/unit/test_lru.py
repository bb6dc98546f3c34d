"""The bounded memory the runtime's caches and counters share: writes refresh a key,
reads do not, and a write past the bound forgets the oldest written."""

from __future__ import annotations

import pytest

from config.lru import BoundedLRU


def test_a_write_past_the_bound_forgets_the_oldest_written() -> None:
    lru: BoundedLRU[str, int] = BoundedLRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    lru.put("c", 3)
    assert (len(lru), list(lru)) == (2, ["b", "c"])
    assert "a" not in lru and lru.get("a") is None


def test_writing_a_key_again_makes_it_the_newest() -> None:
    lru: BoundedLRU[str, int] = BoundedLRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    lru.put("a", 10)
    lru.put("c", 3)
    assert list(lru) == ["a", "c"]
    assert lru.get("a") == 10


def test_reading_a_key_does_not_refresh_it() -> None:
    lru: BoundedLRU[str, int] = BoundedLRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1 and "a" in lru
    lru.put("c", 3)
    assert list(lru) == ["b", "c"]


def test_get_and_pop_take_a_default() -> None:
    lru: BoundedLRU[str, int] = BoundedLRU(3)
    assert lru.get("x", 0) == 0
    lru.put("x", 5)
    assert lru.get("x", 0) == 5
    assert lru.pop("x") == 5
    assert lru.pop("x", None) is None
    with pytest.raises(KeyError):
        lru.pop("x")


def test_clear_forgets_everything_and_the_bound_stays() -> None:
    lru: BoundedLRU[int, str] = BoundedLRU(2)
    for i in range(5):
        lru.put(i, str(i))
    lru.clear()
    assert len(lru) == 0 and list(lru) == []
    for i in range(5):
        lru.put(i, str(i))
    assert (lru.maxsize, list(lru)) == (2, [3, 4])


def test_a_bound_of_zero_keeps_nothing_and_a_negative_one_is_refused() -> None:
    lru: BoundedLRU[str, int] = BoundedLRU(0)
    lru.put("a", 1)
    assert len(lru) == 0
    with pytest.raises(ValueError, match="0 or more"):
        BoundedLRU(-1)
