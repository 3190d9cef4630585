"""Work in a forked child (cytopipe.forked): results, failures and deaths come back; no fork beside threads."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from cytopipe import forked

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="children are forked only on Linux")


def _needs_one_thread() -> None:
    if threading.active_count() != 1:
        pytest.skip("another thread runs in this test process")


def test_the_childs_result_comes_back_and_its_writes_are_done() -> None:
    _needs_one_thread()
    shared = {"n": 41}
    child = forked.start(lambda: (os.getpid(), shared["n"] + 1, "x" * 200_000))
    assert child is not None
    ok, (pid, value, big) = child.result()
    assert ok and pid != os.getpid() and value == 42 and len(big) == 200_000


def test_a_failing_or_dying_child_is_reported() -> None:
    _needs_one_thread()

    def fail() -> None:
        raise OSError(28, "No space left on device")

    child = forked.start(fail)
    assert child is not None
    assert child.result() == (False, "OSError: [Errno 28] No space left on device")
    child = forked.start(lambda: os._exit(3))
    assert child is not None
    assert child.result() == (False, "child process ended with status 3")


def test_no_child_beside_another_thread() -> None:
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert forked.start(lambda: 1) is None
    finally:
        stop.set()
        other.join()
