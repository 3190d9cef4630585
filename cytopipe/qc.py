"""Acquisition quality control: is a file's event data plausible, and how much of it sits at the margins?

This is the first check after reading (before compensation), as in flowAI/PeacoQC practice: the FCS reader
decodes what the file says, this stage asks whether what it says can be real.

* **Corrupt data.** A detector cannot produce NaN or infinity, nor values far beyond its range ``$PnR``. A file
  whose events carry them is damaged (typically a binary file passed through a text conversion, which replaces
  bytes >= 0x80 and shifts everything after them). Gating such data gives numbers that mean nothing, so the
  sample fails with a one-line reason.
* **Margin events.** Events at or above ``$PnR - 1`` on a scatter or fluorescence channel are saturated: their
  true value is unknown. A few are normal; many mean the voltages were too high. Flagged, not dropped.
* **No spillover.** A multicolour file without ``$SPILLOVER``/``SPILL``/``$COMP`` is gated uncompensated unless a
  matrix is supplied. Flagged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .compensate import spillover_from_metadata
from .errors import CytopipeError, FCSError
from .fcs import Sample, to_scale, top_of_scale
from .memo import Memo

#: Values beyond this multiple of ``$PnR`` cannot come from the detector. Generous on purpose: some instruments
#: write derived channels (MACSQuant pulse widths reach ~125 x their ``$PnR`` of 1000); damaged files reach 1e20+.
IMPLAUSIBLE_RANGE_FACTOR = 1000.0
#: A sample fails when more than this fraction of its events carry non-finite or implausible values.
MAX_CORRUPT_FRACTION = 0.001
#: Percent of events at the top of scale on one channel above which the sample is flagged.
MAX_MARGIN_PCT = 5.0


@dataclass(frozen=True)
class AcquisitionQC:
    """What :func:`check_acquisition` found in one sample.

    Attributes
    ----------
    n_events
        Events in the sample.
    corrupt_events
        Events with a NaN, an infinity or a value beyond ``IMPLAUSIBLE_RANGE_FACTOR x $PnR`` on any channel.
    margin_pct
        Percent of events at or above ``$PnR - 1``, per scatter/fluorescence channel (``$PnN``).
    spillover
        Whether the file carries a spillover (or compensation) matrix.
    n_fluorescence
        Number of fluorescence channels (not scatter, not Time).
    finite
        Indices of the channels without a NaN or an infinity (their extremes are finite): statistics over their
        values need not look for NaN again.
    """

    n_events: int
    corrupt_events: int
    margin_pct: dict[str, float]
    spillover: bool
    n_fluorescence: int
    finite: frozenset[int] = field(default=frozenset(), repr=False, compare=False)

    @property
    def corrupt(self) -> bool:
        """True when the event data cannot be real (see :data:`MAX_CORRUPT_FRACTION`)."""
        return self.corrupt_events > MAX_CORRUPT_FRACTION * max(self.n_events, 1)

    def flags(self, max_margin_pct: float = MAX_MARGIN_PCT) -> list[str]:
        """Readable QC flags, e.g. ``"FITC-A: 7.2% of events at the top of scale"``."""
        flags = [f"{channel}: {pct:.1f}% of events at the top of scale"
                 for channel, pct in self.margin_pct.items() if pct > max_margin_pct]
        if not self.spillover and self.n_fluorescence > 1:
            flags.append("no spillover matrix in the file")
        if self.corrupt_events:
            flags.append(f"{self.corrupt_events} events with impossible values")
        return flags


def _is_fluorescence_or_scatter(channel: str) -> bool:
    return channel.casefold() not in {"time", "event", "event_count", "eventcount"}


def _is_width(channel: str) -> bool:
    """Pulse-width channels (``FSC-W``) sit at the top of scale by design on several instruments."""
    return channel.upper().endswith(("-W", " W"))


def _is_scatter(channel: str) -> bool:
    name = channel.upper()
    return name.startswith(("FSC", "SSC", "FS ", "SS ", "FS-", "SS-")) or name in {"FS", "SS"}


def check_acquisition(sample: Sample) -> AcquisitionQC:
    """Check a sample's raw events for corruption, saturation and a missing spillover.

    Parameters
    ----------
    sample
        A sample as read by :func:`cytopipe.fcs.read_fcs` (raw values, before compensation).

    Returns
    -------
    AcquisitionQC

    Notes
    -----
    1. For every channel with a valid ``$PnR``, an event is implausible when a value is non-finite or its magnitude
       exceeds ``IMPLAUSIBLE_RANGE_FACTOR x $PnR`` (raw values lie in ``[-small, $PnR)``; baseline restoration
       gives small negatives, never multiples of the range). Channels without ``$PnR`` are checked for
       non-finite values only.
    2. Margin events: ``value >= $PnR - 1`` on each channel except Time and pulse widths.
    3. One pass over the events finds every channel's minimum and maximum (:func:`_column_extremes`); only a
       channel whose extremes are non-finite or out of range, or whose maximum reaches the top of scale, is then
       read again on its own to count the events concerned. A clean file costs one pass, without copies.
    """
    events = sample.events
    n = events.shape[0]
    lowest, highest = _column_extremes(events)
    bad: np.ndarray | None = None
    margin: dict[str, float] = {}
    limits = _channel_limits(sample)
    with np.errstate(invalid="ignore", over="ignore"):
        # Every channel's extremes checked at once (numpy scalars one channel at a time cost ~10x more): most
        # channels need no pass of their own, their extremes being finite and within range.
        bounds = np.array([bound for _, _, bound, _ in limits])
        fine = np.maximum(-lowest.astype(np.float64), highest.astype(np.float64)) <= bounds  # False for NaN
        finite = np.isfinite(lowest) & np.isfinite(highest)
        fine &= finite
        tops = [j for j, (_, _, _, top) in enumerate(limits) if top is not None]
        # NaN extremes: count (NaN compares false, as before); otherwise only when the top is reached.
        at = np.array([limits[j][3] for j in tops], dtype=events.dtype)
        reached = dict(zip(tops, ~(highest[tops] < at), strict=True))
        for j, (channel, limit, bound, top) in enumerate(limits):
            if n and not fine[j]:
                column = events[:, j]
                wrong = ~(np.abs(column) <= bound) if limit is not None else ~np.isfinite(column)
                bad = wrong if bad is None else bad | wrong
            if top is not None and n:
                margin[channel] = (100.0 * np.count_nonzero(events[:, j] >= events.dtype.type(top)) / n
                                   if reached[j] else 0.0)
    try:
        has_spillover = spillover_from_metadata(sample.metadata, sample.channels, path=sample.path) is not None
    except CytopipeError:
        has_spillover = False
    n_fluorescence = sum(1 for c in sample.channels
                         if _is_fluorescence_or_scatter(c) and not _is_scatter(c) and not _is_width(c))
    return AcquisitionQC(n_events=n, corrupt_events=0 if bad is None else int(np.count_nonzero(bad)),
                         margin_pct=margin,
                         spillover=has_spillover, n_fluorescence=n_fluorescence,
                         finite=frozenset(np.flatnonzero(finite).tolist()) if n else frozenset())


# Each channel's limits by the keywords they depend on: the files of a study share them (see _channel_limits).
_LIMITS: Memo[list[tuple[str, float | None, float, float | None]]] = Memo(256)


def _channel_limits(sample: Sample) -> list[tuple[str, float | None, float, float | None]]:
    """Per channel: ``(name, $PnR or None, implausibility bound, top-of-scale value or None)``, the bound and the top
    in the units the events were decoded to (``$PnE`` log channels reach ``10**decades``, not ``$PnR``); the top is
    None for channels not checked for margin events (Time, pulse widths, no ``$PnR``).

    Computed once per distinct set of the keywords they depend on (``$PnR``, ``$PnE``, ``$PnG``) and kept.
    """
    metadata = sample.metadata
    key = (sample.scale, tuple(sample.channels),
           *(metadata.get(f"$P{j}{k}") for j in range(1, len(sample.channels) + 1) for k in "REG"))
    return _LIMITS.get(key, lambda: _build_channel_limits(sample))


def _build_channel_limits(sample: Sample) -> list[tuple[str, float | None, float, float | None]]:
    found = []
    for j, channel in enumerate(sample.channels):
        limit = _range(sample, j)
        bound = np.inf if limit is None else IMPLAUSIBLE_RANGE_FACTOR * (
            top_of_scale(sample.metadata, j, sample.scale) or limit)
        top = None
        if limit is not None and _is_fluorescence_or_scatter(channel) and not _is_width(channel):
            top = to_scale(sample.metadata, j, sample.scale, limit - 1)
        found.append((channel, limit, bound, top))
    return found


def _column_extremes(events: np.ndarray, block: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per-column minimum and maximum (NaN when a column holds a NaN) in one pass over C-ordered events.

    ``events.min(axis=0)`` walks a (n, c) matrix a short row at a time; viewing ``block`` rows as one long row
    lets the reduction run over ``block x c`` values at once (about 7x faster), then folds the blocks.
    """
    n, c = events.shape
    if n == 0 or c == 0:
        return np.full(c, np.nan), np.full(c, np.nan)
    full = n - n % block if events.flags.c_contiguous else 0
    parts_lo, parts_hi = [], []
    if full:
        wide = events[:full].reshape(-1, block * c)
        parts_lo.append(wide.min(axis=0).reshape(block, c).min(axis=0))
        parts_hi.append(wide.max(axis=0).reshape(block, c).max(axis=0))
    if full < n:
        parts_lo.append(events[full:].min(axis=0))
        parts_hi.append(events[full:].max(axis=0))
    return np.min(parts_lo, axis=0), np.max(parts_hi, axis=0)


def require_plausible(sample: Sample, qc: AcquisitionQC) -> None:
    """Raise :class:`FCSError` when the sample's data cannot be real.

    Raises
    ------
    FCSError
        ``"<file>: event data look corrupt: 43,021 of 43,750 events have NaN, infinite or out-of-range values
        (beyond 1000 x $PnR); was the file passed through a text conversion?"``
    """
    if qc.corrupt:
        raise FCSError(
            f"{sample.path or 'sample'}: event data look corrupt: {qc.corrupt_events:,} of {qc.n_events:,} events "
            f"have NaN, infinite or out-of-range values (beyond {IMPLAUSIBLE_RANGE_FACTOR:g} x $PnR); "
            "was the file passed through a text conversion?")


def _range(sample: Sample, index: int) -> float | None:
    value = sample.metadata.get(f"$P{index + 1}R", "")
    try:
        limit = float(value)
    except ValueError:
        return None
    return limit if np.isfinite(limit) and limit > 0 else None
