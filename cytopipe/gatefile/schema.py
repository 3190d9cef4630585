"""The gate-file vocabulary: keys, transform parameters, compensation references, friendly units."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from cytopipe.gates import (
    FCS,
    UNCOMPENSATED,
)
from cytopipe.transforms import (
    Transform,
    friendly_units,
)

TOP_KEYS = ("name", "treg", "parent", "compensation", "scale", "transforms", "populations")
POPULATION_KEYS = ("name", "parent", "gate", "optional")
CHANNEL_KEYS = ("channel", "transform", "compensation", "ratio")
#: Keys each fixed gate type accepts (``type`` included).
GATE_KEYS: dict[str, tuple[str, ...]] = {
    "range": ("type", "channels", "min", "max"),
    "rectangle": ("type", "channels", "min", "max"),
    "polygon": ("type", "channels", "vertices"),
    "ellipse": ("type", "channels", "center", "covariance", "distance"),
    "quadrant": ("type", "channels", "at", "quadrant"),
    "and": ("type", "of"),
    "or": ("type", "of"),
    "not": ("type", "of"),
}
#: Transform types, their parameters and defaults (``None`` = no default).
TRANSFORM_PARAMS: dict[str, dict[str, float | None]] = {
    "logicle": {"T": 262144.0, "W": 0.5, "M": 4.5, "A": 0.0},
    "hyperlog": {"T": 262144.0, "W": 0.5, "M": 4.5, "A": 0.0},
    "arcsinh": {"cofactor": None, "T": None, "M": 4.5, "A": 0.0},
    "linear": {"T": 262144.0, "A": 0.0},
    "log": {"T": 262144.0, "M": 4.5},
    "ratio": {"A": 1.0, "B": 0.0, "C": 0.0},
    # FlowJo's own axes (read from workspaces; coordinates in display fractions 0..1): cytopipe.flowjo.transforms
    "flowjo_biex": {"pos": 4.41854, "neg": 0.0, "width": -10.0, "max_value": 262144.0},
    "flowjo_log": {"offset": 1.0, "decades": 4.0},
}
#: Optional clamps of any transform's output (Gating-ML ``boundMin``/``boundMax``), in friendly units.
BOUND_PARAMS = ("boundMin", "boundMax")
#: A coordinate whose raw equivalent exceeds this (or is infinite) is a unit mistake: detectors top out near 1e7.
MAX_RAW = 1e9
#: Scatter and time channels default to linear (raw units); everything else to ``logicle``.
LINEAR_BY_DEFAULT = re.compile(r"^(FSC|SSC)|^time$", re.IGNORECASE)
#: YAML ``compensation`` values with a fixed meaning, and their Gating-ML ``compensation-ref``.
COMPENSATION_REFS = {"file": FCS, "none": UNCOMPENSATED}
_DEFAULT_ARCSINH_M = 4.5


class _Problem(Exception):
    """One validation problem (already formatted, one line); collected, never shown as a traceback."""


def _to_gatingml(value: float, transform: Transform | None) -> float:
    scale, offset = friendly_units(transform)
    return (value - offset) / scale


def _tidy(value: float) -> float | int:
    """A number for a message: 12 significant digits, integral values without ``.0``."""
    return _plain(float(f"{float(value):.12g}"))


def _plain(value: float) -> float | int:
    """A number as written to YAML (exactly): integral values without ``.0``."""
    value = float(value)
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def _shortest(exact: float, back: Callable[[float], float], target: float) -> float | int:
    """The shortest decimal near ``exact`` that ``back`` maps onto exactly ``target``.

    Numbers typed in a gate file (2.6 decades) come back as typed after a trip through Gating-ML units; when no
    decimal maps back exactly (the unit conversion is not always invertible in floating point), the nearest
    value is written in full.
    """
    candidates = [float(f"{exact:.{digits}g}") for digits in (12, 15, 16, 17)]
    up = down = exact
    for _ in range(4):
        up, down = math.nextafter(up, math.inf), math.nextafter(down, -math.inf)
        candidates += [up, down]
    return _plain(next((c for c in candidates if back(c) == target), exact))


def _to_friendly(value: float | None, transform: Transform | None) -> float | int | None:
    if value is None:
        return None
    scale, offset = friendly_units(transform)
    return _shortest(value * scale + offset, lambda f: (f - offset) / scale, value)


def _suggest(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate (case-insensitive), or ``""``."""
    options = {str(c).casefold(): str(c) for c in candidates if c}
    match = difflib.get_close_matches(str(word).casefold(), list(options), n=1, cutoff=0.6)
    return f" (did you mean '{options[match[0]]}'?)" if match else ""


def _show(value: Any) -> str:
    """A short readable rendering of a YAML value for a message."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return "null" if value is None else str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
