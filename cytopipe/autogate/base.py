"""The base of the data-driven gates: :class:`AutoGate`, units and ``T: auto``, and the YAML spec helpers the
gate families share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

import numpy as np

from ..errors import GateError
from ..gates import Dimension, Gate
from ..transforms import Transform, friendly_units

SCOPES = ("sample", "subject", "baseline")
#: Events kept per sample (every k-th event) for fitting and sensitivity: their cost stays flat above this size.
DEFAULT_MAX_EVENTS = 50_000
#: A threshold fitted on fewer events than this raises GateError rather than guessing.
MIN_EVENTS = 50


# Units: YAML coordinates are "friendly" (logicle decades 0..M, raw for linear); gates work in Gating-ML units


def to_units(value: float, transform: Transform | None) -> float:
    """Friendly units (logicle decades 0..M, raw for linear; see :func:`cytopipe.transforms.friendly_units`) ->
    Gating-ML units."""
    scale, offset = friendly_units(transform)
    return (float(value) - offset) / scale


def from_units(value: float, transform: Transform | None) -> float:
    """Gating-ML units -> friendly units (the inverse of :func:`to_units`)."""
    scale, offset = friendly_units(transform)
    return float(value) * scale + offset


def channel_top(sample: Any, channel: str) -> float | None:
    """Top of scale of a channel: ``$PnR`` (or the decoded top of a log-amplified ``$PnE`` channel).

    Returns ``None`` when the keyword is missing or not a positive number.
    """
    index = sample.find_channel(channel)
    meta = sample.metadata
    try:
        top = float(meta.get(f"$P{index + 1}R", ""))
    except ValueError:
        return None
    if not top > 0:
        return None
    decades, offset = 0.0, 0.0
    try:
        decades, offset = (float(v) for v in meta.get(f"$P{index + 1}E", "0,0").split(",")[:2])
    except ValueError:
        pass
    if decades > 0 and sample.n_events and float(np.nanmax(sample.events[:, index])) > top:
        top = 10.0 ** decades * (offset if offset > 0 else 1.0)  # the data were decoded to linear (scale=True)
    return top


def resolve_dimension(dim: Dimension, sample: Any) -> Dimension:
    """``T: auto``: a logicle/hyperlog dimension whose top of scale follows the channel's ``$PnR`` in ``sample``.

    A 1,048,576-channel instrument then shows the same decades as a 262,144-channel one, so bounds written in
    decades hold for both.
    """
    transform = dim.transform
    if transform is None or getattr(transform, "kind", "") not in ("logicle", "hyperlog") or dim.ratio is not None:
        return dim
    top = channel_top(sample, str(dim.channel))
    if top is None or top == transform.T:
        return dim
    return replace(dim, transform=replace(transform, T=top))


def _check(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise GateError(f"{where}: {message}")


@dataclass(frozen=True)
class AutoGate(Gate):
    """Base of the data-driven gates: settings only; :meth:`fit` returns a fixed gate.

    Parameters
    ----------
    name, dimensions
        As for every gate.
    scope : {"sample", "subject", "baseline"}
        What a fit pools: each sample alone, all of a subject's samples, or the subject's baseline sample (the
        gate is then applied unchanged to later timepoints). :func:`fit_strategy` fits on the samples it is given;
        the batch runner chooses them by scope.
    auto_top : bool
        Resolve the logicle/hyperlog top of scale ``T`` from each file's ``$PnR`` (YAML ``T: auto``, the default).
    max_events : int
        At most about this many of the pooled parent population's events (every k-th) are used for the fit
        (>= 1000).
    random_state : int
        Seed of any random initialisation (the scatter gate's mixture).
    """

    scope: str = "sample"
    auto_top: bool = True
    max_events: int = 50_000
    random_state: int = 0

    #: YAML ``type`` of the gate.
    kind: ClassVar[str] = "auto"

    def __post_init__(self) -> None:
        where = f"gate '{self.name}'"
        _check(self.scope in SCOPES, where, f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        _check(isinstance(self.max_events, int) and self.max_events >= 1000, where,
               f"max_events must be an integer >= 1000, got {self.max_events!r}")

    def mask(self, values: np.ndarray) -> np.ndarray:
        """Data-driven gates cannot mask before they are fitted."""
        raise GateError(f"gate '{self.name}' is data-driven and has not been fitted (use autogate.fit_strategy)")

    def fit(self, values: np.ndarray, *, reference: Mapping[str, np.ndarray] | None = None,
            controls: Mapping[str, np.ndarray] | None = None) -> Gate:
        """Learn the boundary and return it as an immutable fixed gate.

        Parameters
        ----------
        values : numpy.ndarray
            ``(n, ndim)`` transformed values of the parent population's events (pooled over the samples of the
            scope), columns in ``dimensions`` order.
        reference : dict of str to numpy.ndarray, optional
            Reference population name -> its events' values on this gate's dimensions.
        controls : dict of str to numpy.ndarray, optional
            Control role (``fmo:CD25``) -> the control's parent-population events on this gate's dimensions.

        Returns
        -------
        Gate
            An :class:`EllipsoidGate`, :class:`PolygonGate` or :class:`RectangleGate` with this gate's name and
            dimensions.

        Raises
        ------
        GateError
            Too few events, or a reference/control the gate needs is missing.
        """
        return self.fit_with_info(values, reference=reference, controls=controls)[0]

    def fit_with_info(self, values: np.ndarray, *, reference: Mapping[str, np.ndarray] | None = None,
                      controls: Mapping[str, np.ndarray] | None = None) -> tuple[Gate, dict[str, Any]]:
        """:meth:`fit`, plus the fitted parameters in friendly units (one ``gates_fitted.csv`` row)."""
        raise NotImplementedError(f"{type(self).__name__} does not define fit_with_info()")

    def to_spec(self) -> dict[str, Any]:
        """The YAML gate spec of this gate (used by :func:`cytopipe.gatefile.dump_yaml`); settings left at their
        defaults are omitted."""
        spec: dict[str, Any] = {"type": self.kind, "channels": [str(d.channel) for d in self.dimensions]}
        defaults = {f.name: f.default for f in fields(self)}
        for name in self._settings:
            value = getattr(self, name)
            if value != defaults[name]:
                spec[name] = value
        if not self.auto_top:
            spec["T"] = "keep"
        for name in ("scope", "max_events", "random_state"):
            if getattr(self, name) != defaults[name]:
                spec[name] = getattr(self, name)
        return spec

    #: Type-specific settings written by :meth:`to_spec`.
    _settings: ClassVar[tuple[str, ...]] = ()

    def _subsample(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=float)
        finite = np.isfinite(values[:, 0])
        for j in range(1, values.shape[1]):
            finite &= np.isfinite(values[:, j])
        if not finite.all():
            values = values[finite]
        if values.shape[0] > self.max_events:
            values = values[:: -(-values.shape[0] // self.max_events)]
        return values


_COMMON_KEYS = {"scope", "T", "max_events", "random_state"}
# Keys cytopipe.gatefile handles itself for every gate type.
_LOADER_KEYS = {"type", "channels", "name", "id", "transform", "transforms", "compensation"}


def _number(spec: Mapping[str, Any], key: str, where: str, default: float, *, integer: bool = False) -> Any:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        kind = "an integer" if integer else "a number"
        raise GateError(f"{where}.{key}: expected {kind}, got {value!r}")
    return int(value) if integer else float(value)


def _common(spec: Mapping[str, Any], where: str, allowed: set[str], defaults: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(spec) - allowed - _COMMON_KEYS - _LOADER_KEYS)
    if unknown:
        listed = ", ".join(sorted(allowed | _COMMON_KEYS))
        raise GateError(f"{where}.{unknown[0]}: unknown setting for {spec.get('type')} (allowed: {listed})")
    top = spec.get("T", "auto")
    if top not in ("auto", "keep"):
        raise GateError(f"{where}.T: expected 'auto' (follow each file's $PnR) or 'keep', got {top!r}")
    scope = spec.get("scope", "sample")
    if scope not in SCOPES:
        raise GateError(f"{where}.scope: expected one of {', '.join(SCOPES)}, got {scope!r}")
    return {"scope": scope, "auto_top": top == "auto",
            "max_events": _number(spec, "max_events", where, defaults["max_events"], integer=True),
            "random_state": _number(spec, "random_state", where, 0, integer=True)}


def control_roles(control: str | Sequence[str] | None) -> tuple[str, ...]:
    """The sample-sheet roles of a ``control:`` setting, in order of preference (one role or a list of them)."""
    if not control:
        return ()
    return (control,) if isinstance(control, str) else tuple(control)


def parse_control(value: Any, where: str) -> str | tuple[str, ...] | None:
    """A YAML ``control:`` setting: one sample-sheet role (``isotype:CD25``) or a list of acceptable roles in order
    of preference (``[isotype:CD25, fmo:CD25, unstained]``); a list of one role is that role."""
    if value is None or isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        roles = tuple(dict.fromkeys(value))
        return roles[0] if len(roles) == 1 else roles
    raise GateError(f"{where}.control: expected a sample-sheet role such as isotype:CD25, or a list of them in order "
                    f"of preference, got {value!r}")


def pick_control(roles: Sequence[str], controls: Mapping[str, np.ndarray] | None) -> tuple[str | None, Any]:
    """The first of ``roles`` (compared without case) present in ``controls``: ``(role, values)``, or
    ``(None, None)`` when none is."""
    present = {str(k).casefold(): v for k, v in (controls or {}).items()}
    for role in roles:
        if role.casefold() in present:
            return role, present[role.casefold()]
    return None, None


def missing_control(roles: Sequence[str]) -> str:
    """The message for a control none of whose ``roles`` is given (after "population 'X': ")."""
    if len(roles) == 1:
        role = roles[0].casefold()
        return f"needs the control '{role}' (a sample-sheet row with role {role}); none given"
    listed = ", ".join(f"'{r.casefold()}'" for r in roles)
    return f"needs one of the controls {listed} (a sample-sheet row with one of these roles); none given"


def _gate_name(where: str) -> str:
    """The population name in a loader's ``where`` ("gates/x.yaml: population 'CD3+'"), or ''."""
    start = where.find("population '")
    if start < 0:
        return ""
    rest = where[start + len("population '"):]
    return rest[: rest.find("'")] if "'" in rest else ""


def _build(cls: type[AutoGate], settings: dict[str, Any], dims: tuple[Dimension, ...], where: str) -> AutoGate:
    try:
        return cls(_gate_name(where), tuple(dims), **settings)
    except GateError as err:
        detail = str(err).split(": ", 1)[-1]
        raise GateError(f"{where}: gate: {detail}") from None
