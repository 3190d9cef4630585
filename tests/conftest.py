"""Shared fixtures: the reference data in ``../shared/data`` (never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CYTOPIPE_SHARED_DATA", REPO.parent / "shared" / "data"))


def _require_shared() -> bool:
    return os.environ.get("CYTOPIPE_REQUIRE_SHARED", "") not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data``; skips (or fails under CYTOPIPE_REQUIRE_SHARED=1) when it is absent."""
    if not SHARED_DATA.is_dir():
        message = f"reference data folder {SHARED_DATA} is absent (it sits beside the repo in CI)"
        if _require_shared():
            pytest.fail(message + " and CYTOPIPE_REQUIRE_SHARED=1 demands it")
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
