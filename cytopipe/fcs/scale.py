"""Value decoding: ``$PnE`` log amplification and ``$PnG`` gain (:data:`SCALES`)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np

from cytopipe.memo import Memo

from .text import _File

#: Value decodings of :func:`read_fcs`: what each does, as recorded in ``manifest.json``.
SCALES = {
    "log": "$PnE log channels decoded to 10**(f1*x/$PnR)*f2 (f2=0 -> 1); linear channels as stored",
    "gain": "$PnE log channels decoded to 10**(f1*x/$PnR)*f2 (f2=0 -> 1); linear channels divided by $PnG",
    "raw": "channel values as stored",
}


def _scale_mode(fcs: _File, scale: bool | str) -> str:
    if scale is True:
        return "gain"
    if scale is False:
        return "raw"
    if scale not in SCALES:
        raise fcs.error(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    return str(scale)


def channel_decoding(metadata: Mapping[str, str], index: int, scale: str) -> tuple[float, float, float] | None:
    """How channel ``index`` (0-based) is decoded under ``scale``: ``(decades, offset, gain)`` or None (as stored).

    ``decades > 0``: ``10**(decades * x / $PnR) * offset``; else ``x / gain``. Unreadable keywords count as absent
    here (the reader reports them when it needs them).
    """
    if scale == "raw":
        return None
    n = index + 1
    decades, offset = _amplification(metadata.get(f"$P{n}E", "0,0"))
    if decades > 0:
        return decades, (offset if offset > 0 else 1.0), 1.0
    if scale == "gain":
        try:
            gain = float(metadata.get(f"$P{n}G", "").strip() or 1.0)
        except ValueError:
            return None
        if gain > 0 and gain != 1.0 and math.isfinite(gain):
            return 0.0, 0.0, gain
    return None


def top_of_scale(metadata: Mapping[str, str], index: int, scale: str) -> float | None:
    """The top of scale of channel ``index`` in the units :func:`read_fcs` returns under ``scale``.

    ``$PnR`` for a channel read as stored; ``10**decades * offset`` for a decoded log channel; ``$PnR / $PnG`` for
    a gain-scaled one. None when ``$PnR`` is missing or not a positive number.
    """
    try:
        prange = float(metadata.get(f"$P{index + 1}R", "").strip())
    except ValueError:
        return None
    if not (math.isfinite(prange) and prange > 0):
        return None
    decoding = channel_decoding(metadata, index, scale)
    if decoding is None:
        return prange
    decades, offset, gain = decoding
    return 10.0 ** decades * offset if decades > 0 else prange / gain


def to_scale(metadata: Mapping[str, str], index: int, scale: str, value: float) -> float:
    """A stored channel value of channel ``index`` in the units :func:`read_fcs` returns under ``scale``."""
    decoding = channel_decoding(metadata, index, scale)
    if decoding is None:
        return value
    decades, offset, gain = decoding
    if decades <= 0:
        return value / gain
    try:
        prange = float(metadata.get(f"$P{index + 1}R", "").strip())
    except ValueError:
        return value
    return 10.0 ** (decades * value / prange) * offset if prange > 0 else value


def _decode_values(fcs: _File, events: np.ndarray, metadata: Mapping[str, str], scale: str,
                   exact: bool) -> np.ndarray:
    """Apply the ``scale`` decoding: float32 in place (copy-on-write pages are private), float64 when ``exact``."""
    plan = _decoding_plan(metadata, events.shape[1], scale)
    if exact and scale != "raw":
        with np.errstate(invalid="ignore"):  # signalling NaNs, see _decode_bytes
            out = np.array(events, dtype=np.float64, order="C")
    elif not plan:
        return events
    else:
        out = events
    for i, (decades, offset, gain) in plan:
        column = out[:, i].astype(np.float64)
        if decades > 0:
            prange = _float_keyword(fcs, metadata, f"$P{i + 1}R")
            if not 0 < prange < math.inf:
                raise fcs.error(f"$P{i + 1}E={metadata[f'$P{i + 1}E']} is logarithmic but $P{i + 1}R is not a "
                                f"positive range")
            if decades > _MAX_DECADES:
                raise fcs.error(f"$P{i + 1}E={metadata[f'$P{i + 1}E']}: {decades:g} decades is beyond any "
                                f"amplifier (at most {_MAX_DECADES})")
            column = _antilog(column, decades, offset, prange)
        else:
            column /= gain
        out[:, i] = column
    return out


# Decoding plans by the keywords they depend on: the files of a study share them (see _decoding_plan).
_PLANS: Memo[list[tuple[int, tuple[float, float, float]]]] = Memo(256)


def _decoding_plan(metadata: Mapping[str, str], n_channels: int, scale: str) -> list[tuple[int, tuple]]:
    """``(channel index, channel_decoding)`` of every channel that is decoded, once per set of ``$PnE``/``$PnG``."""
    if scale == "raw":
        return []
    key = (scale, *(metadata.get(f"$P{i}{k}") for i in range(1, n_channels + 1) for k in "EG"))
    return _PLANS.get(key, lambda: [(i, d) for i in range(n_channels)
                                    if (d := channel_decoding(metadata, i, scale)) is not None])


_MAX_DECADES = 300  # 10**300 is still a finite float64
_MAX_POW_TABLE = 1 << 16  # entries of a scalar-pow table (about 20 ms to build)


def _antilog(column: np.ndarray, decades: float, offset: float, prange: float) -> np.ndarray:
    """``10**(decades * x / prange) * offset`` in float64, identical for every x to the scalar C ``pow``.

    Log channels hold integers below ``$PnR``: a table of the scalar results (the C library's ``pow``, which
    flowCore and FlowIO's truth use) is both faster and independent of numpy's vectorised ``pow``, whose last
    bit can differ on contiguous arrays; a value on a gate boundary must not move with memory layout.
    """
    size = int(prange) + 1
    if column.size and np.array_equal(column, np.floor(column)) and column.min() >= 0 and column.max() < size:
        # The table costs one scalar pow per entry: over the whole range for the usual 8-16 bit log channels,
        # over the values present when a (possibly hostile) $PnR is larger, never more than _MAX_POW_TABLE.
        if size <= _MAX_POW_TABLE:
            table = np.array([10.0 ** (decades * k / prange) * offset for k in range(size)])
            return table[column.astype(np.int64)]
        present, inverse = np.unique(column.astype(np.int64), return_inverse=True)
        if present.size <= _MAX_POW_TABLE:
            table = np.array([10.0 ** (decades * int(k) / prange) * offset for k in present])
            return table[inverse.reshape(-1)]
    return 10.0 ** (decades * column / prange) * offset  # non-integer (float-stored) log channel: rare


def _amplification(value: str) -> tuple[float, float]:
    parts = [p for p in re.split(r"[,\s]+", value.strip()) if p]
    try:
        decades = float(parts[0]) if parts else 0.0
        offset = float(parts[1]) if len(parts) > 1 else 0.0
    except ValueError:
        return 0.0, 0.0
    return decades, offset


def _float_keyword(fcs: _File, metadata: Mapping[str, str], key: str) -> float:
    try:
        return float(metadata.get(key, "").strip())
    except ValueError:
        raise fcs.error(f"keyword {key} is not a number: {metadata.get(key, '')[:40]!r}") from None
