"""Progress of a run: a bar on a terminal, plain lines, or one JSON object per line (``--log-json``)."""

from __future__ import annotations

import json
import math
import sys
import time
from typing import IO, Any

from cytopipe.outputs import printable
from cytopipe.pipeline import (
    SampleResult,
)

#: Seconds between two redraws of the progress bar on a terminal (the last sample is always drawn).
TTY_REDRAW = 0.1


class Progress:
    """Progress reporting on stderr: a one-line bar on a terminal, log lines otherwise, JSON lines or nothing.

    Parameters
    ----------
    total
        Number of samples in the run.
    mode
        ``"tty"`` (one line rewritten with ``\\r``), ``"plain"``, ``"json"`` or ``"quiet"`` (errors only).
    stream
        Where to write (default ``sys.stderr``).
    """

    def __init__(self, total: int, mode: str, stream: IO[str] | None = None) -> None:
        self.total = total
        self.mode = mode
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.processed = 0  # samples computed in this run (cached ones take no time and would skew the ETA)
        self.events = 0
        self.start = time.perf_counter()
        self._drawn = -math.inf  # when the tty line was last drawn

    def log(self, message: str, **fields: Any) -> None:
        """An informational message (not shown with ``quiet``)."""
        if self.mode == "json":
            self._json({"event": "info", "message": message, **fields})
        elif self.mode in ("plain", "tty"):
            self._line(f"cytopipe: {message}")

    def warning(self, message: str, **fields: Any) -> None:
        """Something the user should know that does not fail the run (shown in every mode)."""
        if self.mode == "json":
            self._json({"event": "warning", "message": message, **fields})
        else:
            self._line(f"cytopipe: warning: {message}")

    def error(self, message: str, **fields: Any) -> None:
        """An error message, shown in every mode."""
        if self.mode == "json":
            self._json({"event": "error", "message": message, **fields})
        else:
            self._line(f"cytopipe: error: {message}")

    def sample(self, result: SampleResult) -> None:
        """Record one finished sample."""
        self.done += 1
        if not result.cached:
            self.processed += 1
            self.events += result.n_events
        elapsed = time.perf_counter() - self.start
        rate = self.events / elapsed if elapsed > 0 else 0.0
        if result.failure is not None:
            f = result.failure
            self.error(f"{f['sample']}: {f['stage']} failed: {f['reason']}", sample=f["sample"], stage=f["stage"],
                       done=self.done, total=self.total)
        if self.mode == "json":
            self._json({"event": "sample", "sample": result.sample, "ok": result.ok, "cached": result.cached,
                        "events": result.n_events, "seconds": round(result.timings.get("total", 0.0), 4),
                        "done": self.done, "total": self.total, "events_per_s": round(rate)})
        elif self.mode == "plain":
            how = "cached" if result.cached else f"{result.n_events} events in {result.timings.get('total', 0):.2f} s"
            status = "ok" if result.ok else "FAILED"
            self._line(f"cytopipe: [{self.done}/{self.total}] {result.sample} {status} ({how})")
        elif self.mode == "tty" and (elapsed - self._drawn >= TTY_REDRAW or self.done == self.total):
            # Redrawn a few times a second, not per sample: 500 samples in 2 s were 500 terminal writes.
            self._drawn = elapsed
            eta = elapsed / self.processed * (self.total - self.done) if self.processed else 0.0
            self.stream.write(f"\r\x1b[K{self.done}/{self.total} samples  {rate / 1e6:6.2f} M events/s  "
                              f"ETA {int(eta) // 60:d}:{int(eta) % 60:02d}")
            self.stream.flush()

    def finish(self) -> None:
        """End the progress line."""
        if self.mode == "tty":
            self.stream.write("\n")
            self.stream.flush()

    def _line(self, text: str) -> None:
        text = printable(text)
        if self.mode == "tty":
            text = "\r\x1b[K" + text
        self.stream.write(text + "\n")
        self.stream.flush()

    def _json(self, record: dict) -> None:
        self.stream.write(json.dumps({"time": round(time.time(), 3), **record}, default=str) + "\n")
        self.stream.flush()


def _progress_mode(progress: bool | None, log_json: bool, quiet: bool, stream: IO[str]) -> str:
    if quiet:
        return "quiet"
    if log_json:
        return "json"
    if progress is None:
        progress = bool(getattr(stream, "isatty", lambda: False)())
    return "tty" if progress else "plain"
