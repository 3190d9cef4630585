"""PDF printing with headless Chromium, for the reports the native writer cannot set.

``report.pdf`` is written by :mod:`cytopipe.pdf` (no browser). Its standard Helvetica holds WinAnsi characters
only, so a report whose names hold others (CJK, emoji, right-to-left scripts) is printed from the HTML by Chromium
when it is installed (:func:`cytopipe.report.write_pdf`): it shows them as written. :class:`Printer` drives one
headless Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages separated by
NUL bytes on file descriptors 3 and 4; no network port, no websocket). Chromium exits when the pipe closes, so it
never outlives cytopipe.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

__all__ = ["Printer", "PrinterError", "find_chromium"]


class PrinterError(RuntimeError):
    """Chromium did not start, answer or print (the caller logs a warning: the PDF is optional)."""


def _stop(process: subprocess.Popen, fds: tuple[int, ...], profile: str) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    if process.poll() is None:
        process.kill()  # a polite Browser.close takes most of a second; there is nothing to save
    process.wait()
    # A killed Chromium's helper processes exit tens of milliseconds after it and may still write into the profile
    # while it is removed: remove it again until it is gone (at most 5 s), never leaving a profile behind.
    deadline = time.monotonic() + 5.0
    while True:
        shutil.rmtree(profile, ignore_errors=True)
        if not os.path.exists(profile) or time.monotonic() > deadline:
            break
        time.sleep(0.02)


class Printer:
    """A headless Chromium waiting for print jobs.

    Parameters
    ----------
    chromium : str
        Path of the Chromium executable.
    """

    def __init__(self, chromium: str) -> None:
        self._profile = tempfile.mkdtemp(prefix="cytopipe-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        # In the child, Chromium reads commands on fd 3 and writes answers on fd 4; every other descriptor is
        # closed (Chromium must hold no pipe of the worker pool).
        def wire() -> None:
            # Through descriptors above 10 first: the pipes themselves may sit on 3 or 4.
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_chrome_r, from_chrome_w)]
            for target, fd in zip((3, 4), high, strict=True):
                os.dup2(fd, target)
                os.set_inheritable(target, True)

        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                   "--remote-debugging-pipe", f"--user-data-dir={self._profile}", "about:blank"]
        try:
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL, preexec_fn=wire, close_fds=True,
                                             pass_fds=(3, 4))
        except OSError as err:
            self._cleanup_pipes()
            shutil.rmtree(self._profile, ignore_errors=True)
            raise PrinterError(f"chromium did not start: {err}") from None
        finally:
            os.close(to_chrome_r)
            os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self._finalizer = weakref.finalize(self, _stop, self._process, (self._to_chrome, self._from_chrome),
                                           self._profile)

    def _cleanup_pipes(self) -> None:
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass

    def _send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> int:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        try:
            while data:
                data = data[os.write(self._to_chrome, data):]
        except OSError as err:
            raise PrinterError(f"chromium closed its pipe: {err}") from None
        return self._next_id

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PrinterError("chromium did not answer in time")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise PrinterError("chromium exited")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
              deadline: float = 0.0) -> dict[str, Any]:
        wanted = self._send(method, params, session)
        while True:
            message = self._receive(deadline)
            if message.get("id") == wanted:
                if "error" in message:
                    raise PrinterError(f"{method}: {message['error'].get('message', message['error'])}")
                return message.get("result", {})

    def print_pdf(self, html_path: str | os.PathLike, timeout: float = 180.0) -> bytes:
        """Load a local HTML file and print it (A4 or the page's CSS ``@page`` size, backgrounds on).

        Returns
        -------
        bytes
            The PDF.

        Raises
        ------
        PrinterError
            Chromium failed, exited or timed out.
        """
        deadline = time.monotonic() + timeout
        target = self._call("Target.createTarget", {"url": "about:blank"}, deadline=deadline)["targetId"]
        session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True},
                             deadline=deadline)["sessionId"]
        self._call("Page.enable", session=session, deadline=deadline)
        self._call("Page.navigate", {"url": Path(html_path).resolve().as_uri()}, session=session, deadline=deadline)
        while True:  # the navigation answers before the page has loaded
            event = self._receive(deadline)
            if event.get("method") == "Page.loadEventFired" and event.get("sessionId") == session:
                break
        result = self._call("Page.printToPDF", {"printBackground": True, "preferCSSPageSize": True,
                                                "displayHeaderFooter": False}, session=session, deadline=deadline)
        pdf = base64.b64decode(result.get("data", ""))
        if pdf[:5] != b"%PDF-":
            raise PrinterError("chromium returned no PDF")
        return pdf

    def close(self) -> None:
        """Stop Chromium (its helper processes exit with it when the pipe closes); remove its profile folder.

        Also run when the printer is garbage-collected or at interpreter exit, so an exception in the caller never
        leaves Chromium running."""
        self._finalizer()

    def __enter__(self) -> Printer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable (``CYTOPIPE_CHROMIUM`` first), or None."""
    override = os.environ.get("CYTOPIPE_CHROMIUM")
    if override:
        return shutil.which(override)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None
