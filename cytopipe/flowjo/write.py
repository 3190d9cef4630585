"""FlowJo 10 workspaces out: every sample with its own (fitted) gates, for review in FlowJo.

Writing happens in two steps, so that the data-dependent part runs where the events are:

1. :func:`sample_tree` (in the worker, beside the gated sample) turns one sample's strategy into a plain, JSON-able
   description in FlowJo's terms: ``$PnN`` parameter names (``Comp-`` prefixed when compensated), coordinates in
   raw (untransformed) units, the spillover matrix, one transform per parameter, the file's keywords and cytopipe's
   count of every population. The batch runner caches it with the sample's other results.
2. :func:`cytopipe.flowjo.render.sample_fragment` (in the worker too) renders the description as the sample's
   ``<Sample>`` element, and :func:`write_workspace` (on the client) joins the samples into one workspace
   (:func:`cytopipe.flowjo.render.join_workspace`) and writes it atomically. The text depends only on the
   descriptions and their order (sorted names, shortest round-trip numbers, no dates; sample and gate ids given at
   the join), so the same fitted gates give byte-identical files with any number of workers.

How cytopipe gates map onto FlowJo 10 (the conventions FlowJo itself writes, and FlowKit reads):

* rectangles, ranges and quadrants -> ``gating:RectangleGate`` (1 or 2 dimensions; an open side has no
  ``gating:min``/``gating:max``, as FlowJo writes quadrants and threshold gates). FlowJo stores rectangle limits in
  raw units, so they select the same events whatever the axis transform.
* polygons -> ``gating:PolygonGate`` with raw-unit vertices; FlowJo draws (and FlowKit evaluates) the edges as
  straight lines in the parameter's transformed space, so the parameter carries the transform the gate was drawn in.
* ellipses -> a ``gating:PolygonGate`` (see :func:`ellipse_polygon`). FlowJo's own ``EllipsoidGate`` lives in its
  256-bin display space and both FlowJo and FlowKit evaluate it as a polygon (FlowKit: 128 vertices), so it cannot
  reproduce cytopipe's ellipse event for event; the polygon written selects exactly the events the ellipse selected.
* a gate's outside (FlowJo ``eventsInside="0"``, as read by :mod:`cytopipe.flowjo`) -> the gate with
  ``eventsInside="0"``.
* ``and`` / ``or`` / ``not`` -> ``AndNode`` / ``OrNode`` / ``NotNode`` whose ``Dependent`` names are population paths
  from the sample (``Lymphocytes/Singlets/CD3+``). FlowJo has no complemented operand: an operand written
  ``{not: X}`` becomes an extra ``NotNode`` named ``not X`` (``not X (<population>)`` if that name is taken) beside
  the Boolean node.
* compensation -> ``transforms:spilloverMatrix`` (prefix ``Comp-``) in each ``Sample``; compensated gate dimensions are
  named ``Comp-<$PnN>``. FlowJo applies one matrix per sample.
* transforms -> one per parameter in ``Transformations`` (under its ``$PnN`` and its ``Comp-`` name): linear, logicle
  (Gating-ML ``logicle``), ``fasinh`` and ``log``, and FlowJo's own ``biex`` and ``log`` for gates read from a
  FlowJo workspace. Raw (untransformed) dimensions are written as ``linear`` over ``[0, $PnR]``.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from cytopipe.errors import GateError
from cytopipe.gates import (
    FCS,
    UNCOMPENSATED,
    BooleanGate,
    Dimension,
    EllipsoidGate,
    Gate,
    PolygonGate,
    QuadrantGate,
    RectangleGate,
    SpectrumMatrix,
)
from cytopipe.memo import Memo
from cytopipe.outputs import atomic_open
from cytopipe.transforms import Arcsinh, Linear, Log, Logicle, Transform

from .constants import (
    ALL_SAMPLES,
    COMP_PREFIX,
    TRANSFORM_ARCSINH,
    TRANSFORM_BIEX,
    TRANSFORM_LINEAR,
    TRANSFORM_LOG,
    TRANSFORM_LOGICLE,
)
from .render import join_workspace, render_workspace, sample_fragment, workspace_parts
from .transforms import FlowJoBiex, FlowJoLog

__all__ = [
    "WORKSPACE_NAME",
    "COMP_PREFIX",
    "ALL_SAMPLES",
    "sample_tree",
    "ellipse_polygon",
    "sample_fragment",
    "join_workspace",
    "render_workspace",
    "write_workspace",
    "workspace_for_files",
]

#: The file ``cytopipe run`` writes.
WORKSPACE_NAME = "gates_fitted.wsp"
#: FlowJo's name for the matrix from the file's own ``$SPILLOVER``/``SPILL`` keyword.
ACQUISITION_MATRIX = "Acquisition-defined"

# Matrix records by matrix (name, detectors, coefficients): the samples of a study share one (see matrix_record).
_MATRIX_RECORDS: Memo[dict] = Memo(64)

# Polygon resolution for ellipses: doubled from the first until no event of the sample lies between polygon and
# ellipse; the last is a safety cap (~140 kB of XML for one gate).
_ELLIPSE_VERTICES = (64, 128, 256, 512, 1024, 2048, 4096)
_ELLIPSE_UNSEEN = 256  # vertices of an ellipse written without events to place it
_MARGIN = 1e-9  # relative clearance kept between the polygon and the nearest event on either side
_BAND = 0.99  # slack of the float32 pre-selection of events near an ellipse's boundary


# ----------------------------------------------------------------------------------------------------------------
# step 1: one sample's tree, in FlowJo's terms (runs in the worker)


def sample_tree(strategy: Any, sample: Any, result: Any, spillover: Any = None, *, name: str) -> dict:
    """Describe one gated sample as FlowJo holds it: parameters, matrix, transforms, keywords and gate tree.

    Parameters
    ----------
    strategy : cytopipe.gates.GatingStrategy
        The strategy that gated the sample, with every data-driven gate fitted (fixed gates only).
    sample : cytopipe.fcs.Sample
        The sample (channel lookup, ``$PnR``, keywords).
    result : cytopipe.gates.GatingResult
        ``strategy.apply(sample, spillover)``: its counts are written, and its masks place ellipse polygons.
    spillover : cytopipe.compensate.Spillover, optional
        The matrix used for ``compensation="FCS"`` dimensions (``None``: those dimensions are uncompensated).
    name : str
        The sample's name (the ``SampleNode`` name FlowJo shows).

    Returns
    -------
    dict
        JSON-able: ``name``, ``uri``, ``count``, ``matrix`` (or ``None``), ``transforms``, ``keywords`` and
        ``populations`` (nested nodes with ``node``, ``name``, ``count``, ``gate`` or ``dependents``, ``children``).

    Raises
    ------
    GateError
        A gate FlowJo cannot hold: more than two dimensions, a ratio dimension, an unfitted data-driven gate, a
        bounded or hyperlog transform under a polygon or ellipse, two transforms of one parameter under polygons or
        ellipses, two compensation matrices, or a non-square spectrum matrix.
    MarkerError
        A gate's channel is absent from the sample.
    """
    builder = _TreeBuilder(strategy, sample, result, spillover)
    populations = builder.populations()
    return {
        "name": str(name),
        "uri": file_uri(sample.path) if sample.path else "",
        "count": int(result.n_events),
        "matrix": builder.matrix_record(),
        "transforms": builder.transform_records(),
        "keywords": [[str(k), str(v)] for k, v in sample.metadata.items()],
        "populations": populations,
    }


def file_uri(path: str | os.PathLike[str]) -> str:
    """FlowJo's ``DataSet uri`` of a file: ``file:`` and the absolute path, percent-encoded (``file:/a/b%20c.fcs``)."""
    absolute = os.path.abspath(path)
    posix = absolute if os.sep == "/" else Path(absolute).as_posix()
    if not posix.startswith("/"):
        posix = "/" + posix  # Windows drive: file:/C:/...
    return "file:" + (posix if _URI_SAFE.fullmatch(posix) else quote(posix, safe="/:"))


# Characters quote(..., safe="/:") leaves as they are: a path made of them alone needs no quoting.
_URI_SAFE = re.compile(r"[A-Za-z0-9_.\-~/:]*")



def _matrix_record(name: str, channels: tuple, spill: Any) -> dict:
    """The ``gates_fitted.wsp`` record of a matrix: its name, a UUID-shaped id from its content, detectors, rows."""
    rows = [[float(v) for v in row] for row in spill]
    digest = hashlib.sha256(repr((name, channels, rows)).encode()).hexdigest()
    ident = f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"
    return {"name": name, "id": ident, "channels": list(channels), "rows": rows}

class _TreeBuilder:
    """Converts a strategy's gates for one sample (holds the per-sample lookups)."""

    def __init__(self, strategy: Any, sample: Any, result: Any, spillover: Any) -> None:
        self.strategy = strategy
        self.sample = sample
        self.result = result
        self.where = f"{sample.path or 'sample'}: FlowJo workspace"
        self.fcs_matrix = _square_matrix(spillover, "FCS", self.where) if spillover is not None else None
        self.matrix: tuple[str, tuple[str, ...], np.ndarray] | None = None  # (name, channels, spillover)
        self.matrix_key: str | None = None
        # $PnN -> (transform, drawn): 'drawn' transforms come from polygons/ellipses and must agree.
        self.transforms: dict[str, tuple[Transform | None, bool]] = {}
        self.by_name = {p.name: p for p in strategy.populations}

    # -- parameters --------------------------------------------------------------------------------------------

    def detector(self, channel: str) -> str:
        known = self.result.channels.get(channel)  # resolved once by the gating
        return known if known is not None else self.sample.channels[self.sample.find_channel(channel)]

    def parameter(self, pop: Any, dim: Dimension, drawn: bool) -> str:
        """The FlowJo parameter name of a dimension (``Comp-`` prefixed when compensated); records its transform."""
        if dim.ratio is not None:
            raise GateError(f"{self.where}: population '{pop.name}': ratio dimension {dim.label} has no FlowJo "
                            f"equivalent")
        pnn = self.detector(str(dim.channel))
        mismatch = _not_flowjo_values(self.sample, pnn)
        if mismatch:
            raise GateError(f"{self.where}: population '{pop.name}': {pnn} {mismatch}; FlowJo gates values with "
                            f"$PnE decoded and divided by $PnG (gate with 'scale: gain' to write this workspace)")
        compensated = self.compensates(pop, dim.compensation, pnn)
        transform = dim.transform
        if transform is not None and transform.bounded and drawn:
            raise GateError(f"{self.where}: population '{pop.name}': transform '{transform.name}' has "
                            f"boundMin/boundMax, which FlowJo transforms cannot hold")
        known = self.transforms.get(pnn)
        if drawn:
            if transform is not None and _transform_element(transform, pnn, self.sample) is None:
                raise GateError(f"{self.where}: population '{pop.name}': FlowJo has no {transform.kind} transform "
                                f"to draw this gate on {pnn}")
            if known is not None and known[1] and known[0] != transform:
                raise GateError(f"{self.where}: population '{pop.name}': {pnn} is drawn on two scales "
                                f"({_label(known[0])} and {_label(transform)}); FlowJo holds one transform per "
                                f"parameter")
            if known is None or not known[1]:
                self.transforms[pnn] = (transform, True)
        elif known is None and (transform is None or not transform.bounded):
            self.transforms[pnn] = (transform, False)
        return COMP_PREFIX + pnn if compensated else pnn

    def compensates(self, pop: Any, compensation: str, pnn: str) -> bool:
        if compensation == UNCOMPENSATED:
            return False
        if compensation == FCS:
            if self.fcs_matrix is None:
                return False
            key, matrix = FCS, self.fcs_matrix
        else:
            key = compensation
            matrix = _square_matrix(self.strategy.matrices[compensation], compensation, self.where)
        if pnn not in matrix[1]:
            return False
        if self.matrix_key is not None and self.matrix_key != key:
            raise GateError(f"{self.where}: population '{pop.name}': gates use two compensation matrices "
                            f"('{self.matrix_key}' and '{key}'); FlowJo applies one per sample")
        self.matrix_key, self.matrix = key, matrix
        return True

    def matrix_record(self) -> dict | None:
        if self.matrix is None:
            return None
        name, channels, spill = self.matrix
        found = _MATRIX_RECORDS.get((name, channels, spill.shape, spill.tobytes()),
                                    lambda: _matrix_record(name, channels, spill))
        # A copy for each sample: the record travels in its result and may be changed by whoever receives it.
        return {**found, "channels": list(found["channels"]), "rows": [list(row) for row in found["rows"]]}

    def transform_records(self) -> list[dict]:
        records = []
        compensated = set(self.matrix[1]) if self.matrix is not None else set()
        for pnn in sorted(self.transforms):
            element = _transform_element(self.transforms[pnn][0], pnn, self.sample)
            if element is None:
                continue  # a hyperlog axis under rectangles only: FlowJo shows its default scale
            kind, attrs = element
            names = [pnn, COMP_PREFIX + pnn] if pnn in compensated else [pnn]
            records.extend({"param": n, "kind": kind, "attrs": attrs} for n in names)
        return records

    # -- gates -------------------------------------------------------------------------------------------------

    def path(self, name: str) -> list[str]:
        chain = []
        pop = self.by_name[name]
        while True:
            chain.append(pop.name)
            if pop.parent is None:
                return chain[::-1]
            pop = self.by_name[pop.parent]

    def populations(self) -> list[dict]:
        """The nested nodes, children under their parents, in the strategy's order."""
        by_parent: dict[str | None, list[dict]] = {}
        for pop in self.strategy.populations:
            by_parent.setdefault(pop.parent, []).extend(self.node(pop))

        def attach(parent: str | None) -> list[dict]:
            nodes = by_parent.get(parent, [])
            for node in nodes:  # the extra 'not X' nodes are no population's parent: they get no children
                node["children"] = attach(node["name"])
            return nodes

        return attach(None)

    def node(self, pop: Any) -> list[dict]:
        """The node of one population (plus the ``not X`` nodes its complemented Boolean operands need)."""
        gate = pop.gate
        count = int(self.result.counts[pop.name])
        if isinstance(gate, BooleanGate):
            return self.boolean(pop, gate, count)
        return [{"node": "Population", "name": pop.name, "count": count, "gate": self.gate(pop, gate)}]

    def boolean(self, pop: Any, gate: BooleanGate, count: int) -> list[dict]:
        extra: list[dict] = []
        dependents = []
        parent_path = self.path(pop.parent) if pop.parent is not None else []
        taken = set(self.by_name)
        for operand, complement in zip(gate.operands, gate.complement, strict=True):
            _check_path_names(self.path(operand), self.where, pop.name)
            if not complement:
                dependents.append("/".join(self.path(operand)))
                continue
            aux = f"not {operand}"
            if aux in taken:
                aux = f"not {operand} ({pop.name})"
            taken.add(aux)
            inside = ~self.result.masks[operand]
            if pop.parent is not None:
                inside &= self.result.masks[pop.parent]
            extra.append({"node": "NotNode", "name": aux, "count": int(inside.sum()),
                          "dependents": ["/".join(self.path(operand))]})
            dependents.append("/".join([*parent_path, aux]))
        kind = {"and": "AndNode", "or": "OrNode", "not": "NotNode"}[gate.op]
        return [*extra, {"node": kind, "name": pop.name, "count": count, "dependents": dependents}]

    def gate(self, pop: Any, gate: Any) -> dict:
        inner = getattr(gate, "inner", None)
        if isinstance(inner, Gate):  # the complement of a gate (a FlowJo eventsInside="0" read by cytopipe.flowjo)
            return {**self.shape(pop, inner, complement=True), "outside": True}
        return self.shape(pop, gate)

    def shape(self, pop: Any, gate: Any, complement: bool = False) -> dict:
        """The FlowJo gate element of a geometric gate; ``complement``: the population is the gate's outside."""
        dims = gate.dimensions
        if isinstance(gate, QuadrantGate):
            bounds = gate.intervals()
            return self.rectangle(pop, dims, [lo for lo, _ in bounds], [hi for _, hi in bounds])
        if isinstance(gate, RectangleGate):
            return self.rectangle(pop, dims, list(gate.min), list(gate.max))
        if isinstance(gate, PolygonGate):
            return self.polygon(pop, dims, self.within_scale(pop, gate))
        if isinstance(gate, EllipsoidGate):
            if len(dims) != 2:
                raise GateError(f"{self.where}: population '{pop.name}': a {len(dims)}-dimensional ellipsoid has no "
                                f"FlowJo equivalent (FlowJo gates have 1 or 2 dimensions)")
            values, inside = self.membership(pop, gate)
            return self.polygon(pop, dims, ellipse_polygon(gate, values, ~inside if complement else inside))
        if not dims:
            raise GateError(f"{self.where}: population '{pop.name}' keeps every event of its parent without a gate "
                            f"(pre-gated or optional); FlowJo has no gate without channels")
        raise GateError(f"{self.where}: population '{pop.name}': a {type(gate).__name__} cannot be written to a "
                        f"FlowJo workspace (data-driven gates must be fitted first)")

    def membership(self, pop: Any, gate: Any) -> tuple[np.ndarray, np.ndarray]:
        """The values the gate was evaluated on (its parent's events) and which of them it kept."""
        if pop.parent is None:
            return self.result.values(gate), self.result.masks[pop.name]
        rows = self.result.members.get(pop.parent)
        if rows is None:
            rows = np.flatnonzero(self.result.masks[pop.parent])
        # Only the parent's rows: the very values the gate was evaluated on, nothing recomputed.
        return self.result.values(gate, rows), self.result.masks[pop.name][rows]

    def within_scale(self, pop: Any, gate: PolygonGate) -> np.ndarray:
        """The polygon's vertices, clipped to the axes' range when it reaches far beyond them.

        Data-driven regions may be open polygons closed far outside the data (``auto_tail``), where a vertex has no
        finite raw value. Such a polygon is clipped to a box holding both the scale (0 to 1 in Gating-ML units, 0 to
        ``$PnR`` raw) and every one of the parent's events, with a 1 % margin: no event changes sides.
        """
        vertices = np.asarray(gate.vertices, dtype=np.float64)
        low, high = self.scale_box(gate.dimensions)
        if np.all((vertices >= low) & (vertices <= high)):
            return vertices
        values, _ = self.membership(pop, gate)
        with np.errstate(invalid="ignore"):
            finite = np.where(np.isfinite(values), values, np.nan)
            low = np.fmin(low, np.nanmin(finite, axis=0)) if len(values) else low
            high = np.fmax(high, np.nanmax(finite, axis=0)) if len(values) else high
        margin = 0.01 * (high - low)
        clipped = _clip_to_box(vertices, low - margin, high + margin)
        if len(clipped) < 3:
            raise GateError(f"{self.where}: population '{pop.name}': the polygon lies beyond every event and the "
                            f"axes' range")
        return clipped

    def scale_box(self, dims: Sequence[Dimension]) -> tuple[np.ndarray, np.ndarray]:
        tops = [1.0 if dim.transform is not None else _range(self.sample, self.detector(str(dim.channel)))
                for dim in dims]
        return np.zeros(len(dims)), np.array(tops)

    def rectangle(self, pop: Any, dims: Sequence[Dimension], lows: list, highs: list) -> dict:
        if len(dims) > 2:
            raise GateError(f"{self.where}: population '{pop.name}': a {len(dims)}-dimensional rectangle has no "
                            f"FlowJo equivalent (FlowJo gates have 1 or 2 dimensions)")
        out = []
        for dim, lo, hi in zip(dims, lows, highs, strict=True):
            out.append({"param": self.parameter(pop, dim, drawn=False),
                        "min": _raw(dim, lo, self.where, pop.name), "max": _raw(dim, hi, self.where, pop.name)})
        return {"type": "RectangleGate", "dimensions": out}

    def polygon(self, pop: Any, dims: Sequence[Dimension], vertices: np.ndarray) -> dict:
        params = [self.parameter(pop, dim, drawn=True) for dim in dims]
        raw = np.column_stack([_raw_array(dim, vertices[:, k]) for k, dim in enumerate(dims)])
        if not np.all(np.isfinite(raw)):
            raise GateError(f"{self.where}: population '{pop.name}': a vertex has no raw value on its scale")
        return {"type": "PolygonGate", "params": params, "vertices": raw.tolist()}


def _clip_to_box(vertices: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The part of a polygon inside an axis-aligned box (Sutherland-Hodgman, one box side at a time)."""
    for axis in (0, 1):
        for bound, sign in ((low[axis], 1.0), (high[axis], -1.0)):
            out = []
            m = len(vertices)
            for i in range(m):
                p, q = vertices[i], vertices[(i + 1) % m]
                sp, sq = sign * (p[axis] - bound), sign * (q[axis] - bound)
                if sp >= 0:
                    out.append(p)
                if (sp >= 0) != (sq >= 0):
                    out.append(p + (q - p) * (sp / (sp - sq)))
            vertices = np.array(out, dtype=np.float64).reshape(-1, 2)
    return vertices


def _label(transform: Transform | None) -> str:
    return "raw values" if transform is None else f"{transform.kind} '{transform.name}'"


def _check_path_names(path: list[str], where: str, name: str) -> None:
    for part in path:
        if "/" in part:
            raise GateError(f"{where}: population '{name}': FlowJo names Boolean operands by path, which cannot "
                            f"hold the '/' in population '{part}'")


def _raw_array(dim: Dimension, values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values if dim.transform is None else np.asarray(dim.transform.inverse(values), dtype=np.float64)


def _raw(dim: Dimension, value: float | None, where: str, name: str) -> float | None:
    """A limit in raw units (``None`` stays open)."""
    if value is None or math.isinf(value):
        return None
    if dim.transform is not None and dim.transform.bounded:
        raise GateError(f"{where}: population '{name}': transform '{dim.transform.name}' has boundMin/boundMax, "
                        f"which FlowJo transforms cannot hold")
    raw = float(value) if dim.transform is None else _inverse(dim.transform, float(value))
    if not math.isfinite(raw):
        raise GateError(f"{where}: population '{name}': limit {value} has no raw value on {dim.label}")
    return raw


@lru_cache(maxsize=1024)
def _inverse(transform: Transform, value: float) -> float:
    """``transform.inverse`` of one limit in float64, once per worker: the samples of a study share their gates."""
    return float(np.asarray(transform.inverse(np.array([value])), dtype=np.float64)[0])


def _square_matrix(matrix: Any, key: str, where: str) -> tuple[str, tuple[str, ...], np.ndarray]:
    """``(name, detectors, spillover)`` of a matrix FlowJo can hold (square, outputs named by detector)."""
    if isinstance(matrix, SpectrumMatrix):
        if matrix.fluorochromes != matrix.detectors:
            raise GateError(f"{where}: matrix '{key}' unmixes {len(matrix.detectors)} detectors into named "
                            f"fluorochromes; FlowJo compensates detectors into Comp- detectors only")
        spill = np.linalg.inv(matrix.matrix) if matrix.inverted else matrix.matrix
        channels = matrix.detectors
        source = matrix.source
    else:
        spill = np.asarray(matrix.matrix, dtype=np.float64)
        channels = tuple(matrix.channels)
        source = getattr(matrix, "source", "")
    if key != FCS:
        name = key
    elif source.startswith("file:"):
        name = Path(source[len("file:"):]).name
    else:
        name = ACQUISITION_MATRIX
    return name, tuple(channels), np.asarray(spill, dtype=np.float64)


def _transform_element(transform: Transform | None, pnn: str, sample: Any) -> tuple[str, list] | None:
    """FlowJo's ``transforms:<kind>`` name and attributes for a transform, or None when FlowJo has none."""
    if transform is None:
        top = _range(sample, pnn)
        return TRANSFORM_LINEAR, [["minRange", 0.0], ["maxRange", top], ["gain", 1.0]]
    if isinstance(transform, Linear):
        return TRANSFORM_LINEAR, [["minRange", -float(transform.A)], ["maxRange", float(transform.T)], ["gain", 1.0]]
    if isinstance(transform, Logicle):
        return TRANSFORM_LOGICLE, [["length", 256], ["T", float(transform.T)], ["A", float(transform.A)],
                           ["W", float(transform.W)], ["M", float(transform.M)]]
    if isinstance(transform, Arcsinh):
        return TRANSFORM_ARCSINH, [["length", 256], ["maxRange", float(transform.T)], ["T", float(transform.T)],
                          ["A", float(transform.A)], ["M", float(transform.M)]]
    if isinstance(transform, FlowJoBiex):  # a strategy read from a FlowJo workspace keeps FlowJo's own axes
        return TRANSFORM_BIEX, [["length", 256], ["maxRange", float(transform.max_value)],
                                ["neg", float(transform.neg)], ["width", float(transform.width)],
                                ["pos", float(transform.pos)]]
    if isinstance(transform, FlowJoLog):
        return TRANSFORM_LOG, [["offset", float(transform.offset)], ["decades", float(transform.decades)]]
    if isinstance(transform, Log):
        offset = float(transform.T) / 10.0 ** float(transform.M)
        return TRANSFORM_LOG, [["offset", offset], ["decades", float(transform.M)]]
    return None


def _not_flowjo_values(sample: Any, pnn: str) -> str:
    """Why a channel's values differ from FlowJo's (``$PnE`` decoded, linear channels divided by ``$PnG``), or ''.

    FlowJo's own counts on files with ``$PnG`` other than 1 are reproduced only with gain-divided values (see
    :mod:`cytopipe.flowjo.check`); FlowKit divides too. A sample read with ``scale="gain"`` has FlowJo's values.
    """
    scale = getattr(sample, "scale", "raw")
    if scale == "gain":
        return ""
    k = sample.channels.index(pnn) + 1
    try:
        decades = float(str(sample.metadata.get(f"$P{k}E", "0,0")).split(",")[0])
        gain = float(sample.metadata.get(f"$P{k}G", "1") or "1")
    except ValueError:
        return ""
    if decades > 0:
        return "" if scale != "raw" else "holds log-amplified channel numbers not decoded from $PnE"
    if math.isfinite(gain) and gain > 0 and gain != 1.0:
        return f"was gated as stored, not divided by its $PnG gain ({gain:g})"
    return ""


def _range(sample: Any, pnn: str) -> float:
    k = sample.channels.index(pnn) + 1
    try:
        value = float(sample.metadata.get(f"$P{k}R", ""))
    except ValueError:
        value = 0.0
    return value if math.isfinite(value) and value > 0 else 262144.0


def ellipse_polygon(gate: EllipsoidGate, values: np.ndarray | None = None, inside: np.ndarray | None = None
                    ) -> np.ndarray:
    """A polygon, in the ellipse's (transformed) units, that selects the events the ellipse selected.

    Parameters
    ----------
    gate : EllipsoidGate
        A 2-D ellipse with a positive definite quadratic form.
    values : numpy.ndarray, optional
        ``(n, 2)`` values of the events the gate was applied to.
    inside : numpy.ndarray, optional
        ``(n,)`` bool: which of them the ellipse kept (as cytopipe decided, in its working precision).

    Returns
    -------
    numpy.ndarray
        ``(k, 2)`` vertices (not closed): the affine image of a regular ``k``-gon, vertices on (or just off) the
        ellipse.

    Raises
    ------
    GateError
        The quadratic form is not positive definite (no ellipse).

    Notes
    -----
    In whitened coordinates ``z = R (x - mean) / sqrt(distance_square)`` (``R^T R = C^-1`` symmetrised) the ellipse
    is the unit disc. The regular ``k``-gon with circumradius ``rho`` and vertices at angles ``2 pi j / k`` holds
    ``z`` exactly when its gauge ``s(z) = |z| cos(phi - theta) / cos(pi / k) <= rho``, ``phi`` being the angle of
    ``z`` and ``theta`` the middle of the side facing it; ``|z| <= s(z) <= |z| / cos(pi / k)``.

    1. ``k`` is doubled from 64. Only kept events with ``|z| >= r_in cos(pi / k)`` can have the largest gauge
       ``s_in`` of the kept events, and only rejected events with ``|z| <= r_out / cos(pi / k)`` the smallest
       ``s_out`` of the rejected ones (``r_in``, ``r_out``: largest kept and smallest rejected ``|z|``); those few
       events near the boundary are the only ones whose angle is computed.
    2. When ``s_in < s_out`` (each with a relative clearance of 1e-9 for rounding) the ``k``-gon with
       ``rho`` in between keeps exactly the kept events: ``rho`` is 1 (vertices on the ellipse) when it fits,
       else the decimal with the fewest digits in the interval, so that rounding differences between processes
       do not change the file.

    Without events the 256-gon on the ellipse is returned; when no ``k`` up to 4096 separates the events (e.g.
    float32 ties on the boundary), the 4096-gon on the ellipse.
    """
    precision = np.linalg.inv(np.asarray(gate.covariance, dtype=np.float64))
    precision = 0.5 * (precision + precision.T)
    try:
        upper = np.linalg.cholesky(precision).T  # precision = upper^T upper
    except np.linalg.LinAlgError:
        raise GateError(f"gate '{gate.name}': the ellipse's covariance is not positive definite") from None
    mean = np.asarray(gate.mean, dtype=np.float64)
    radius = math.sqrt(gate.distance_square)
    rho, k = 1.0, _ELLIPSE_UNSEEN
    if values is not None and inside is not None and len(values):
        rho, k = _separating_polygon(values, np.asarray(inside, dtype=bool), mean, precision, upper, radius)
    angles = 2 * math.pi * np.arange(k) / k
    circle = np.column_stack([np.cos(angles), np.sin(angles)]) * (rho * radius)
    return np.linalg.solve(upper, circle.T).T + mean


def _separating_polygon(values: np.ndarray, inside: np.ndarray, mean: np.ndarray, precision: np.ndarray,
                        upper: np.ndarray, radius: float) -> tuple[float, int]:
    """``(rho, k)`` of the regular polygon in whitened units that keeps exactly ``inside`` (see ellipse_polygon).

    Only events near the boundary can decide: a float32 pass keeps the band ``0.99 cos(pi/64) <= |z| <=
    1 / (0.99 cos(pi/64))`` (float32 rounding is far inside the 1 % slack), which is computed in float64. When the
    nearest kept or rejected event lies outside that band, every event is computed in float64 instead.
    """
    edge = _BAND * math.cos(math.pi / _ELLIPSE_VERTICES[0])
    x, y = values[:, 0], values[:, 1]
    if x.dtype == np.float32 and y.dtype == np.float32:
        f = np.float32
        dx32, dy32 = x - f(mean[0]), y - f(mean[1])
        q32 = dx32 * dx32
        q32 *= f(precision[0, 0])
        dx32 *= dy32
        dx32 *= f(2 * precision[0, 1])
        q32 += dx32
        dy32 *= dy32
        dy32 *= f(precision[1, 1])
        q32 += dy32
        d2 = radius * radius
        band = np.flatnonzero((q32 >= f(d2 * edge * edge)) & (q32 <= f(d2 / (edge * edge))))
        found = _radii(values[band], inside[band], mean, precision, radius, subset=True)
        if found is not None:
            return _regular_polygon(*found, upper / radius)
    found = _radii(values, inside, mean, precision, radius)
    assert found is not None
    return _regular_polygon(*found, upper / radius)


def _radii(values: np.ndarray, inside: np.ndarray, mean: np.ndarray, precision: np.ndarray, radius: float,
           subset: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, float] | None:
    """float64 ``(dx, dy, r, inside, r_in, r_out)`` of these events; None when they are a ``subset`` (the band)
    that may miss the nearest kept or rejected event (see _separating_polygon)."""
    dx = np.asarray(values[:, 0], dtype=np.float64) - mean[0]
    dy = np.asarray(values[:, 1], dtype=np.float64) - mean[1]
    q = precision[0, 0] * dx * dx
    q += 2 * precision[0, 1] * dx * dy
    q += precision[1, 1] * dy * dy
    r = np.sqrt(q) / radius  # |z|; NaN (never kept) is ignored below
    r_in = float(np.where(inside, r, 0.0).max(initial=0.0))  # np.where + reduce: faster than where=
    r_out = float(np.where(inside | np.isnan(r), math.inf, r).min(initial=math.inf))
    # From a band subset, the result is the full one when the nearest kept and rejected events (and so every
    # polygon candidate, |z| >= r_in cos(pi/64) or <= r_out / cos(pi/64)) lie in the band, with room for float32.
    if subset and not (r_in >= _BAND * (1 + 1e-5) and r_out <= (1 - 1e-5) / _BAND):
        return None
    return dx, dy, r, inside, r_in, r_out


def _regular_polygon(dx: np.ndarray, dy: np.ndarray, r: np.ndarray, inside: np.ndarray, r_in: float, r_out: float,
                     whiten: np.ndarray) -> tuple[float, int]:
    for k in _ELLIPSE_VERTICES:
        half = math.pi / k
        c = math.cos(half)
        s_in, s_out = 0.0, math.inf
        for kept, near in ((True, inside & (r >= r_in * c)), (False, ~inside & (r <= r_out / c))):
            rows = np.flatnonzero(near)
            if rows.size == 0:
                continue
            z = np.column_stack([dx[rows], dy[rows]]) @ whiten.T
            phi = np.arctan2(z[:, 1], z[:, 0])
            theta = (np.floor(phi / (2 * half)) + 0.5) * (2 * half)
            gauge = np.hypot(z[:, 0], z[:, 1]) * np.cos(phi - theta) / c
            if kept:
                s_in = float(gauge.max())
            else:
                s_out = float(gauge.min())
        low, high = s_in * (1 + _MARGIN), s_out * (1 - _MARGIN)
        if low < high:
            return (1.0 if low <= 1.0 <= high else _shortest_between(low, high)), k
    return 1.0, _ELLIPSE_VERTICES[-1]


def _shortest_between(low: float, high: float) -> float:
    """The midpoint of ``[low, high]`` rounded to the fewest significant digits that stay inside."""
    middle = 0.5 * (low + high)
    for digits in range(1, 18):
        candidate = float(f"{middle:.{digits}g}")
        if low <= candidate <= high:
            return candidate
    return middle


# ----------------------------------------------------------------------------------------------------------------
# step 2: the workspace (rendering: cytopipe.flowjo.render; joined and written on the client)


def write_workspace(path: str | os.PathLike[str], trees: Sequence[dict],
                    groups: dict[str, Sequence[str]] | None = None) -> int:
    """Write :func:`render_workspace` atomically to ``path``; returns the number of bytes written.

    ``trees`` may hold :func:`sample_tree` descriptions or their :func:`sample_fragment` renderings (those with an
    ``xml`` key are joined as they are). The text is written a sample at a time
    (:func:`cytopipe.flowjo.render.workspace_parts`): a run's ~20 kB per sample is never held at once, nor in new
    memory (each page a process touches first costs ~3 us).
    """
    fragments = [tree if "xml" in tree else sample_fragment(tree) for tree in trees]
    size = 0
    with atomic_open(path, "wb") as handle:
        for part in workspace_parts(fragments, groups):
            data = part.encode("utf-8")
            handle.write(data)
            size += len(data)
    return size


def workspace_for_files(gates: str | os.PathLike[str], fcs_files: Sequence[str | os.PathLike[str]],
                        out: str | os.PathLike[str]) -> int:
    """``cytopipe gates convert GATES --to wsp --fcs A.fcs ...``: a workspace of these files gated with a gate file.

    Each file is gated as ``cytopipe gate`` gates it (its own spillover, data-driven gates fitted on it alone) and
    becomes one sample named by its file name (``a.fcs``, ``a.fcs (2)`` for a repeated name).

    Returns
    -------
    int
        Bytes written.

    Raises
    ------
    CytopipeError
        An unreadable file or gate file, or gates FlowJo cannot hold.
    """
    from cytopipe.pipeline import _load_and_gate, choose_spillover

    trees: list[dict] = []
    names: set[str] = set()
    for path in fcs_files:
        sample, strategy, result = _load_and_gate(path, gates)
        name, k = Path(path).name, 1
        while name in names:
            k += 1
            name = f"{Path(path).name} ({k})"
        names.add(name)
        trees.append(sample_tree(strategy, sample, result, choose_spillover(sample, strategy), name=name))
    return write_workspace(out, trees)
