"""One piece of work in a forked child process while this process does another (the report's PDF beside its HTML).

At the end of a run the worker processes are idle and this process renders the report alone; the PDF and the HTML
are independent, so the PDF is laid out and written by a child forked from this process, which shares every object
already built (no pickling of the report context) and sends back only a small result through a pipe.

Forking is safe only without other threads (a lock another thread holds would stay locked in the child forever):
:func:`start` returns None then, and on systems without ``fork``, and the caller does the work itself. A child that
fails or dies is reported as such by :meth:`Child.result`, so the caller can do the work itself then too.
"""

from __future__ import annotations

import gc
import os
import pickle
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Child", "start"]


class Child:
    """A forked child running one function (see :func:`start`)."""

    def __init__(self, pid: int, fd: int) -> None:
        self._pid, self._fd = pid, fd

    def result(self) -> tuple[bool, Any]:
        """Wait for the child.

        Returns
        -------
        tuple
            ``(True, value)`` with the function's return value, or ``(False, reason)`` when it raised, or the child
            died before sending its result.
        """
        chunks = []
        try:
            while chunk := os.read(self._fd, 1 << 16):
                chunks.append(chunk)
        finally:
            os.close(self._fd)
            _, status = os.waitpid(self._pid, 0)
            gc.unfreeze()
        try:
            ok, value = pickle.loads(b"".join(chunks))
        except Exception:  # noqa: BLE001 - nothing or a torn message: the child died
            return False, f"child process ended with status {os.waitstatus_to_exitcode(status)}"
        return bool(ok), value


def start(work: Callable[[], Any]) -> Child | None:
    """Run ``work()`` in a child forked from this process.

    Parameters
    ----------
    work : callable
        Takes nothing; its return value (small, picklable) is sent back. It must not need anything done by this
        process after the fork, and whatever it writes must not be written by this process meanwhile.

    Returns
    -------
    Child or None
        The running child; None when forking is not safe here (another thread runs, or no ``fork``): the caller
        then calls ``work()`` itself.
    """
    if not hasattr(os, "fork") or sys.platform != "linux" or threading.active_count() != 1:
        return None
    read, write = os.pipe()
    # Objects that exist now are left out of garbage collections until the child is done: a collection walks
    # (writes to) every object it tracks, which would make the kernel copy each page the two processes share.
    gc.freeze()
    pid = os.fork()
    if pid:
        os.close(write)
        return Child(pid, read)
    # The child: never returns into the caller's code, never runs its exit handlers or flushes its buffers.
    status = 1
    try:
        gc.disable()  # it lives a fraction of a second
        os.close(read)
        try:
            message = pickle.dumps((True, work()))
        except BaseException as err:  # noqa: BLE001 - anything, even an interrupt, goes back as a failure
            message = pickle.dumps((False, f"{type(err).__name__}: {err}"))
        view = memoryview(message)
        while view:
            view = view[os.write(write, view):]
        status = 0
    finally:
        os._exit(status)
