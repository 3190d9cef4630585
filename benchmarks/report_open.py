"""How long a report takes to open: headless Chromium (started beforehand, as a browser already open) navigates to
each ``report.html`` given and waits for its load event; medians of 5 loads each (issue 12: a 500-sample report
must open in under 3 s).

Run ``python benchmarks/report_open.py RESULTS/report.html [...]`` (e.g. the ``_out_default`` folders that
``benchmarks/bench.py`` leaves under ``benchmarks/_data/``). Needs Chromium (``cytopipe.printer.find_chromium``).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from cytopipe.printer import Printer, find_chromium


def open_seconds(printer: Printer, html: str) -> float:
    """Seconds from ``Page.navigate`` to ``Page.loadEventFired`` in a fresh tab."""
    deadline = time.monotonic() + 120
    target = printer._call("Target.createTarget", {"url": "about:blank"}, deadline=deadline)["targetId"]
    session = printer._call("Target.attachToTarget", {"targetId": target, "flatten": True},
                            deadline=deadline)["sessionId"]
    printer._call("Page.enable", session=session, deadline=deadline)
    t = time.perf_counter()
    printer._call("Page.navigate", {"url": Path(html).resolve().as_uri()}, session=session, deadline=deadline)
    while True:
        event = printer._receive(deadline)
        if event.get("method") == "Page.loadEventFired" and event.get("sessionId") == session:
            break
    seconds = time.perf_counter() - t
    printer._call("Target.closeTarget", {"targetId": target}, deadline=deadline)
    return seconds

def main(paths: list[str]) -> int:
    chromium = find_chromium()
    if chromium is None:
        print("chromium not found", file=sys.stderr)
        return 1
    with Printer(chromium) as printer:
        for html in paths:
            times = [open_seconds(printer, html) for _ in range(5)]
            print(f"{html}: {Path(html).stat().st_size / 1e6:.1f} MB, load event after "
                  f"{statistics.median(times):.2f} s (median of 5; {min(times):.2f}-{max(times):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
