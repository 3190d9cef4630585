"""The per-worker memo tables: a value is built once per key, failures are not kept, the table stays bounded."""

from __future__ import annotations

import pytest

from cytopipe.memo import Memo


def test_a_value_is_built_once_per_key_and_none_is_a_value() -> None:
    built = []
    memo: Memo[object] = Memo(8)

    def build(value: object) -> object:
        built.append(value)
        return value

    assert memo.get("a", lambda: build(None)) is None
    assert memo.get("a", lambda: build("other")) is None  # None was kept, not built again
    assert memo.get("b", lambda: build(2)) == 2
    assert built == [None, 2] and "a" in memo and len(memo) == 2


def test_a_failing_build_raises_each_time_and_keeps_nothing() -> None:
    memo: Memo[int] = Memo(8)

    def bad() -> int:
        raise ValueError("bad keyword")

    for _ in range(2):
        with pytest.raises(ValueError, match="bad keyword"):
            memo.get("k", bad)
    assert "k" not in memo and len(memo) == 0


def test_the_table_is_emptied_when_it_reaches_its_limit() -> None:
    memo: Memo[int] = Memo(3)
    for k in range(3):
        memo.get(k, lambda k=k: k)
    assert len(memo) == 3
    assert memo.get(3, lambda: 3) == 3
    assert len(memo) == 1 and 3 in memo and 0 not in memo
