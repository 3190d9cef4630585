"""Read FlowJo workspaces (FlowJo 7.6 PC ``.wsp``, FlowJo 8/9 Mac ``.xml``/``.wsp``, FlowJo 10 ``.wsp``).

The XML is turned into plain objects (:class:`Workspace`, :class:`WorkspaceSample`, :class:`Node`) and from there
into a :class:`cytopipe.gates.GatingStrategy`; the gate models never see XML.

How FlowJo's gates become cytopipe gates
----------------------------------------
* Rectangles, ranges, quadrants and bifurcations are stored in data units (compensated values, ``$PnE``-decoded):
  they are gated on those values directly (FlowJo's axis transforms are monotone, so the same events fall inside).
* Polygons have straight edges *on FlowJo's display*: their vertices are mapped through the axis transform (FlowJo
  10: the sample's ``Transformations``; FlowJo 7.6/8/9: log for ``$PnE`` log channels, FlowJo's biex for
  compensated fluorescence of linear instruments -- in FlowJo 9 the biex it tabulated for that parameter in
  ``CalibrationTables``, with its own width basis -- linear otherwise) and the events are gated in that space.
  FlowJo 9 piles events below a biex table on its bottom channel; a gate limit at or below that channel takes
  them all (FlowJo 9 rectangles and ranges lose that lower limit, polygon vertices move half a channel below).
* Ellipses are stored in FlowJo's 256 x 256 display grid (FlowJo 7.6/10: two foci and four edge points) or as the
  four ends of their axes in data units (FlowJo 8/9); both become an :class:`~cytopipe.gates.EllipsoidGate` on the
  transformed axes.
* Magnetic gates (FlowJo 8/9 ``magnetic="1"``) are gated where they are stored: FlowJo moves them on each sample to
  where they hold the most events without storing the move, by a search its documentation does not specify, so
  their counts can differ from FlowJo's (:attr:`Node.magnetic`; ``flowjo check`` says how many populations this
  concerns).
* Boolean nodes (``AndNode``/``OrNode``/``NotNode``, FlowJo 9 ``BooleanGate`` specifications ``G0 & !G1``) become
  Boolean gates over the named sibling populations; their parent is the node they hang under.
* Compensated parameters (``Comp-FITC-A``, ``<FITC-A>``) read the workspace's spillover matrix (matrix id
  :data:`~cytopipe.flowjo.constants.MATRIX_ID`); plain names are uncompensated.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cytopipe.compensate import Spillover
from cytopipe.errors import CytopipeError, GateError
from cytopipe.gates import (
    UNCOMPENSATED,
    BooleanGate,
    Dimension,
    EllipsoidGate,
    Gate,
    GatingStrategy,
    PolygonGate,
    Population,
    RectangleGate,
)
from cytopipe.transforms import Arcsinh, Linear, Logicle, Transform

from . import constants as C
from .transforms import FlowJoBiex, FlowJoLog, biex_from_table

__all__ = ["OWN", "Node", "Workspace", "WorkspaceSample", "default_tree_notice", "is_workspace",
           "load_workspace_strategy", "own_sample", "own_strategies", "read_workspace"]


class WorkspaceError(GateError):
    """A FlowJo workspace cytopipe cannot read (one line naming the file and the element)."""


# ----------------------------------------------------------------------------------------------------------------
# plain objects


@dataclass
class Node:
    """One FlowJo population (gate or Boolean node) with its children.

    ``path`` is FlowJo's gate path below the sample, e.g. ``/Lymphocytes/CD4 T``; ``count`` the events FlowJo
    computed (``None`` when the workspace does not say, -1 when FlowJo never computed it).
    """

    name: str
    path: str
    gate: Gate | None  # None for Boolean nodes until resolved
    count: int | None
    children: list[Node] = field(default_factory=list)
    boolean: tuple[str, tuple[str, ...], tuple[bool, ...]] | None = None  # (op, operand names, complements)
    #: A FlowJo *magnetic* gate (FlowJo 8/9 ``<PolygonGate magnetic="1">``): FlowJo moves it on each sample to where it
    #: holds the most events (FlowJo manual, "Magnetic gates") but stores the gate where it was set, not where it
    #: moved it (FlowJo 10 adds the move as ``adjustX``/``adjustY``); cytopipe gates the stored position.
    magnetic: bool = False


@dataclass
class WorkspaceSample:
    """A sample of the workspace: its identity, its compensation and transforms, and its gating tree."""

    sample_id: str
    name: str
    fil: str
    keywords: dict[str, str]
    count: int | None
    nodes: list[Node]
    spillover: Spillover | None = None


@dataclass
class Workspace:
    """A parsed FlowJo workspace."""

    path: str
    flowjo_version: str
    samples: list[WorkspaceSample]
    groups: dict[str, list[Node]]
    source: str = ""
    #: The sample whose keywords, transforms and matrix a group's gates are read with (its first member).
    group_samples: dict[str, str] = field(default_factory=dict)

    def sample(self, name: str) -> WorkspaceSample:
        """The sample whose name (or ``$FIL``, or file stem) is ``name``; a :class:`WorkspaceError` suggests others."""
        for sample in self.samples:
            if name in (sample.name, sample.fil, sample.sample_id):
                return sample
        for sample in self.samples:
            if name.casefold() in (Path(sample.name).stem.casefold(), Path(sample.fil).stem.casefold()):
                return sample
        names = [s.name for s in self.samples] + [g for g in self.groups]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; samples: {', '.join(names[:8])}"
        raise WorkspaceError(f"{self.path}: sample '{name}' is not in the workspace{hint}")

    def group_sample(self, group: str) -> WorkspaceSample | None:
        """The sample a group's gates were read with (its matrix compensates the group's tree)."""
        wanted = self.group_samples.get(group, "")
        return next((s for s in self.samples if s.sample_id == wanted), self.samples[0] if self.samples else None)

    def tree(self, choice: str | None = None) -> tuple[str, list[Node], WorkspaceSample | None]:
        """The gating tree ``--wsp-sample`` chooses: ``(label, nodes, sample or None for a group)``.

        Default: the group "All Samples" if it has gates, else the first sample with gates.
        """
        if choice:
            if choice in self.groups and self.groups[choice]:
                return f"group '{choice}'", self.groups[choice], self.group_sample(choice)
            sample = self.sample(choice)
            return f"sample '{sample.name}'", sample.nodes, sample
        if self.groups.get(C.ALL_SAMPLES):
            return f"group '{C.ALL_SAMPLES}'", self.groups[C.ALL_SAMPLES], self.group_sample(C.ALL_SAMPLES)
        for sample in self.samples:
            if sample.nodes:
                return f"sample '{sample.name}'", sample.nodes, sample
        raise WorkspaceError(f"{self.path}: the workspace holds no gates")


# ----------------------------------------------------------------------------------------------------------------
# XML helpers (namespace-agnostic: FlowJo 7.6 writes Gating-ML 1.5 names, FlowJo 10 Gating-ML 2.0)


def _local(tag: Any) -> str:
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def _attr(element: ET.Element, name: str, default: str | None = None) -> str | None:
    """Attribute by local name, whatever its namespace prefix."""
    if name in element.attrib:
        return element.attrib[name]
    for key, value in element.attrib.items():
        if _local(key) == name:
            return value
    return default


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if _local(child.tag) == name]


def _child(element: ET.Element, name: str) -> ET.Element | None:
    return next((child for child in element if _local(child.tag) == name), None)


def _float(value: str | None, where: str) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise WorkspaceError(f"{where}: not a number: {value!r}") from None


def _count(element: ET.Element) -> int | None:
    value = _attr(element, "count")
    try:
        return int(float(value)) if value not in (None, "") else None
    except ValueError:
        return None


def is_workspace(path: str | os.PathLike[str], text: str | None = None) -> bool:
    """True for a FlowJo workspace: ``.wsp``, or XML whose root element is ``Workspace``."""
    where = os.fspath(path)
    if where.lower().endswith(".wsp"):
        return True
    if text is None:
        try:
            with open(where, "rb") as handle:
                head = handle.read(4096).decode("latin-1")
        except OSError:
            return False
    else:
        head = text[:4096]
    return re.search(r"<Workspace[\s>]", head) is not None


# ----------------------------------------------------------------------------------------------------------------
# reading


def read_workspace(path: str | os.PathLike[str]) -> Workspace:
    """Parse a FlowJo workspace.

    Parameters
    ----------
    path : str or path-like
        A FlowJo 7.6, 8/9 or 10 workspace (``.wsp`` or FlowJo 9 ``.xml``).

    Returns
    -------
    Workspace

    Raises
    ------
    WorkspaceError
        The file is missing or not XML, the FlowJo version or a gate type is not one cytopipe reads (the message
        names the element and the file).
    """
    where = os.fspath(path)
    try:
        data = Path(where).read_bytes()
    except OSError as exc:
        raise WorkspaceError(f"{where}: cannot read the workspace: {exc.strerror or exc}") from None
    try:
        root = ET.fromstring(re.sub(rb"<!DOCTYPE[^>]*>", b"", data, count=1))
    except ET.ParseError as exc:
        raise WorkspaceError(f"{where}: not a FlowJo workspace (not XML: {exc})") from None
    if _local(root.tag) != "Workspace":
        raise WorkspaceError(f"{where}: not a FlowJo workspace (root element <{_local(root.tag)}>, not <Workspace>)")
    version = _attr(root, C.FLOWJO_VERSION_ATTR) or ""
    match = re.match(r"\s*(\d+)", version)
    major = int(match.group(1)) if match else 0
    if major not in C.SUPPORTED_MAJOR:
        raise WorkspaceError(f"{where}: <Workspace flowJoVersion={version!r}>: FlowJo version not supported "
                             f"(cytopipe reads FlowJo 7.6, 8, 9 and 10 workspaces)")
    reader = _V9Reader(where, root) if major in (8, 9) else _GmlReader(where, root)
    samples = reader.samples()
    groups = reader.groups()
    return Workspace(where, version, samples, groups, source=data.decode("utf-8", errors="replace"),
                     group_samples=reader.group_samples)


class _Reader:
    """What both layouts share: keywords, compensation naming, transforms for polygons, node assembly."""

    prefix = C.COMP_PREFIX
    suffix = C.COMP_SUFFIX

    def __init__(self, path: str, root: ET.Element) -> None:
        self.path = path
        self.root = root
        self.keywords: dict[str, str] = {}
        self.transforms: dict[str, Transform] = {}
        self.spillover: Spillover | None = None
        self.contexts: dict[str, tuple] = {}
        self.group_samples: dict[str, str] = {}

    def context(self) -> tuple:
        return self.keywords, self.transforms, self.spillover, self.prefix, self.suffix

    def use(self, context: tuple) -> None:
        self.keywords, self.transforms, self.spillover, self.prefix, self.suffix = context

    def group_context(self, element: ET.Element, contexts: dict[str, tuple]) -> str:
        """A group's gates are drawn on its samples' axes: read them with its first sample's keywords and matrix.

        Returns that sample's id ('' when the workspace has no samples).
        """
        refs = [(_attr(r, "sampleID") or "") for r in element.iter() if _local(r.tag) == "SampleRef"]
        chosen = next((r for r in refs if r in contexts), None) or next(iter(contexts), "")
        if chosen:
            self.use(contexts[chosen])
        return chosen

    def error(self, element: ET.Element | str, message: str) -> WorkspaceError:
        tag = element if isinstance(element, str) else _local(element.tag)
        return WorkspaceError(f"{self.path}: <{tag}>: {message}")

    # names ------------------------------------------------------------------------------------------------------
    def dimension_name(self, name: str) -> tuple[str, str]:
        """``(detector, compensation)`` of a FlowJo parameter name (``Comp-FITC-A`` -> ``("FITC-A", MATRIX_ID)``)."""
        name = name.strip()
        if self.prefix and name.startswith(self.prefix) and (not self.suffix or name.endswith(self.suffix)):
            bare = name[len(self.prefix):len(name) - len(self.suffix) if self.suffix else None]
            return bare, C.MATRIX_ID
        return name, UNCOMPENSATED

    def channel_keyword(self, detector: str, key: str) -> str:
        for n in range(1, 1000):
            pnn = self.keywords.get(f"$P{n}N")
            if pnn is None:
                break
            if pnn.strip() == detector:
                return self.keywords.get(f"$P{n}{key}", "").strip()
        return ""

    def log_decoded(self, detector: str) -> bool:
        return self.log_axis(detector) is not None

    def log_axis(self, detector: str) -> FlowJoLog | None:
        """A ``$PnE`` log channel's display: its stored channel numbers, i.e. ``log10(x / f2) / f1`` (0..1)."""
        parts = [p for p in re.split(r"[,\s]+", self.channel_keyword(detector, "E")) if p]
        try:
            decades = float(parts[0]) if parts else 0.0
            offset = float(parts[1]) if len(parts) > 1 else 0.0
        except ValueError:
            return None
        if not decades > 0:
            return None
        return FlowJoLog(offset=offset if offset > 0 else 1.0, decades=decades)

    def linear_top(self, detector: str) -> float:
        """Top of a linear axis in gain-scaled values: ``$PnR / $PnG`` (FlowJo scales by the gain)."""
        top = _float(self.channel_keyword(detector, "R") or "262144", f"{self.path}: $PnR of {detector}")
        gain = self.channel_keyword(detector, "G")
        try:
            g = float(gain) if gain else 1.0
        except ValueError:
            g = 1.0
        return top / g if g > 0 else top

    def axis(self, detector: str, compensated: bool) -> Transform | None:
        """The display transform of an axis (for polygons and ellipses)."""
        transform = self.transforms.get(detector) or self.transforms.get(self.prefix + detector + self.suffix)
        if transform is not None:
            return transform
        return self.log_axis(detector)

    def dims(self, names: list[str]) -> tuple[tuple[Dimension, ...], list[Transform | None]]:
        dims, axes = [], []
        for name in names:
            detector, comp = self.dimension_name(name)
            dims.append(Dimension(detector, None, comp))
            axes.append(self.axis(detector, comp != UNCOMPENSATED))
        return tuple(dims), axes

    # gates in display space -------------------------------------------------------------------------------------
    @staticmethod
    def on_axes(dims: tuple[Dimension, ...], axes: list[Transform | None]) -> tuple[Dimension, ...]:
        return tuple(Dimension(d.channel, a, d.compensation) for d, a in zip(dims, axes, strict=True))

    def polygon(self, name: str, dims: tuple[Dimension, ...], axes: list[Transform | None],
                vertices: list[tuple[float, float]]) -> Gate:
        if len(dims) != 2 or len(vertices) < 3:
            raise self.error("PolygonGate", f"population '{name}': a polygon needs 2 dimensions and 3 vertices")
        # A linear axis is affine: the polygon is the same in data units, and gating them skips a transform.
        axes = [None if isinstance(axis, Linear) else axis for axis in axes]
        v = np.array(vertices, dtype=np.float64)
        for k, axis in enumerate(axes):
            if axis is not None:
                v[:, k] = axis.apply(v[:, k])
        return PolygonGate(name, self.on_axes(dims, axes), tuple(map(tuple, v)))

    def ellipse(self, name: str, dims: tuple[Dimension, ...], axes: list[Transform | None], centre: np.ndarray,
                major: np.ndarray, a: float, b: float) -> Gate:
        """Ellipse in transformed units: ``centre``, unit ``major`` direction, semi-axes ``a >= b``."""
        if not (a > 0 and b > 0):
            raise self.error("EllipsoidGate", f"population '{name}': degenerate ellipse")
        u = major / np.linalg.norm(major)
        w = np.array([-u[1], u[0]])
        cov = a * a * np.outer(u, u) + b * b * np.outer(w, w)
        return EllipsoidGate(name, self.on_axes(dims, axes), tuple(centre), tuple(map(tuple, cov)), 1.0)

    # tree -------------------------------------------------------------------------------------------------------
    def complement(self, gate: Gate, inside: str | None) -> Gate:
        """FlowJo's ``eventsInside="0"``: the population is everything outside the gate."""
        if inside not in ("0", "false"):
            return gate
        return _Outside(gate.name, gate.dimensions, inner=gate)


@dataclass(frozen=True)
class _Outside(Gate):
    """The complement of a geometric gate (FlowJo ``eventsInside="0"``)."""

    inner: Gate | None = None

    def mask(self, values: np.ndarray) -> np.ndarray:
        assert self.inner is not None
        return ~self.inner.mask(values)

    def outline(self) -> np.ndarray | None:
        return self.inner.outline() if self.inner is not None else None


class _GmlReader(_Reader):
    """FlowJo 7.6 (PC) and FlowJo 10: ``Population``/``Gate`` nodes holding Gating-ML gate elements."""

    def samples(self) -> list[WorkspaceSample]:
        out = []
        sample_list = _child(self.root, "SampleList")
        if sample_list is None:
            return out
        shared_matrix = self.comp_editor_matrix()
        for element in _children(sample_list, "Sample"):
            node = _child(element, "SampleNode")
            dataset = _child(element, "DataSet")
            if node is None:
                raise self.error("Sample", "has no <SampleNode>")
            sid = _attr(node, "sampleID") or (_attr(dataset, "sampleID") if dataset is not None else "") or ""
            self.keywords = {(_attr(k, "name") or "").strip().upper(): _attr(k, "value") or ""
                             for k in _children(_child(element, "Keywords") or ET.Element("x"), "Keyword")}
            self.transforms = self.read_transforms(_child(element, "Transformations"))
            self.spillover = self.read_matrix(element) or shared_matrix
            name = _attr(node, "name") or ""
            nodes = self.subpopulations(node, "")
            self.contexts[sid] = self.context()
            out.append(WorkspaceSample(sid, name, self.keywords.get("$FIL", "").strip(), dict(self.keywords),
                                       _count(node), nodes, self.spillover))
        return out

    def groups(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        groups = _child(self.root, "Groups")
        for element in _children(groups, "GroupNode") if groups is not None else []:
            name = _attr(element, "name") or ""
            self.group_samples[name] = self.group_context(element, self.contexts)
            out[name] = self.subpopulations(element, "")
        return out

    def comp_editor_matrix(self) -> Spillover | None:
        editor = _child(self.root, "CompensationEditor")
        comp = _child(editor, "Compensation") if editor is not None else None
        return self.read_matrix(comp) if comp is not None else None

    def read_matrix(self, element: ET.Element) -> Spillover | None:
        """A ``spilloverMatrix`` (FlowJo 10 ``transforms:``, FlowJo 7.6 ``comp:``) under ``element``."""
        matrix_el = next((m for m in element.iter() if _local(m.tag) == "spilloverMatrix"), None)
        if matrix_el is None:
            return None
        self.prefix = _attr(matrix_el, "prefix", C.COMP_PREFIX) or ""
        self.suffix = _attr(matrix_el, "suffix", C.COMP_SUFFIX) or ""
        rows: dict[str, dict[str, float]] = {}
        for spill in _children(matrix_el, "spillover"):
            source = _attr(spill, "parameter") or ""
            rows[source] = {(_attr(c, "parameter") or ""): _float(_attr(c, "value"), f"{self.path}: <coefficient>")
                            for c in _children(spill, "coefficient")}
        if not rows:
            return None
        names = list(rows)
        matrix = np.array([[rows[r].get(c, 1.0 if r == c else 0.0) for c in names] for r in names])
        return Spillover(tuple(names), matrix, source=f"workspace:{_attr(matrix_el, 'name') or 'matrix'}")

    def read_transforms(self, element: ET.Element | None) -> dict[str, Transform]:
        out: dict[str, Transform] = {}
        for xform in list(element) if element is not None else []:
            kind = _local(xform.tag)
            param = _child(xform, "parameter")
            name = (_attr(param, "name") or "") if param is not None else ""
            if not name:
                continue  # FlowJo 7.6's "Logicle-of-*" display preference: no parameter, not an axis transform
            out[name] = self.transform(xform, kind)
        return out

    def transform(self, xform: ET.Element, kind: str) -> Transform:
        def num(attr: str, default: float | None = None) -> float:
            value = _attr(xform, attr)
            if value is None:
                if default is None:
                    raise self.error(xform, f"missing attribute {attr}")
                return default
            return _float(value, f"{self.path}: <{kind}> {attr}")

        if kind == C.TRANSFORM_LINEAR:
            low, high = num("minRange", 0.0), num("maxRange", 262144.0)
            return Linear(T=high, A=max(-low, 0.0), name="linear")
        if kind == C.TRANSFORM_LOG:
            return FlowJoLog(offset=num("offset", 1.0), decades=num("decades", 4.0))
        if kind == C.TRANSFORM_BIEX:
            return FlowJoBiex(pos=num("pos", C.BIEX_DEFAULT_POS), neg=num("neg", C.BIEX_DEFAULT_NEG),
                              width=num("width", C.BIEX_DEFAULT_WIDTH), max_value=num("maxRange", C.BIEX_DEFAULT_MAX))
        if kind == C.TRANSFORM_ARCSINH:
            return Arcsinh(T=num("T"), M=num("M"), A=num("A", 0.0), name="fasinh")
        if kind == C.TRANSFORM_LOGICLE:
            return Logicle(T=num("T"), W=num("W"), M=num("M"), A=num("A", 0.0), name="logicle")
        raise self.error(xform, f"FlowJo transform '{kind}' is not supported (use {', '.join(C.TRANSFORMS)})")

    def subpopulations(self, element: ET.Element, path: str) -> list[Node]:
        holder = _child(element, "Subpopulations")
        out: list[Node] = []
        for child in list(holder) if holder is not None else []:
            kind = _local(child.tag)
            if kind == "Population":
                out.append(self.population(child, path))
            elif kind in C.BOOLEAN_NODES:
                out.append(self.boolean(child, path, C.BOOLEAN_NODES[kind]))
        return out

    def population(self, element: ET.Element, path: str) -> Node:
        name = _attr(element, "name") or ""
        gate_holder = _child(element, "Gate")
        gate_el = next(iter(gate_holder), None) if gate_holder is not None else None
        if gate_el is None:
            raise self.error("Population", f"population '{name}' has no gate")
        node = Node(name, f"{path}/{name}", self.gate(gate_el, name), _count(element))
        node.children = self.subpopulations(element, node.path)
        return node

    def boolean(self, element: ET.Element, path: str, op: str) -> Node:
        name = _attr(element, "name") or ""
        deps = _child(element, "Dependents")
        refs = tuple((_attr(d, "name") or "").rsplit("/", 1)[-1] for d in _children(deps, "Dependent")) \
            if deps is not None else ()
        node = Node(name, f"{path}/{name}", None, _count(element), boolean=(op, refs, (False,) * len(refs)))
        node.children = self.subpopulations(element, node.path)
        return node

    def gate(self, element: ET.Element, name: str) -> Gate:
        kind = _local(element.tag)
        names = []
        for dim in _children(element, "dimension"):
            param = next(iter(dim), None)
            names.append((_attr(param, "name") or "") if param is not None else "")
        dims, axes = self.dims(names)
        inside = _attr(element, "eventsInside")
        if kind == "RectangleGate":
            bounds = []
            for dim in _children(element, "dimension"):
                lo, hi = _attr(dim, "min"), _attr(dim, "max")
                bounds.append((None if lo is None else _float(lo, f"{self.path}: {name} min"),
                               None if hi is None else _float(hi, f"{self.path}: {name} max")))
            gate: Gate = RectangleGate(name, dims, tuple(b[0] for b in bounds), tuple(b[1] for b in bounds))
        elif kind == "PolygonGate":
            vertices = [tuple(_float(_attr(c, "value"), f"{self.path}: {name} vertex")
                              for c in _children(v, "coordinate")) for v in _children(element, "vertex")]
            gate = self.polygon(name, dims, axes, vertices)  # type: ignore[arg-type]
        elif kind == "EllipsoidGate":
            gate = self.display_ellipse(element, name, dims, axes)
        else:
            raise self.error(element, f"population '{name}': gate type not supported "
                                      f"(cytopipe reads {', '.join(C.GML_GATES[:3])})")
        return self.complement(gate, inside)

    def display_ellipse(self, element: ET.Element, name: str, dims: tuple[Dimension, ...],
                        axes: list[Transform | None]) -> Gate:
        def points(holder: str) -> np.ndarray:
            el = _child(element, holder)
            if el is None:
                raise self.error(element, f"population '{name}': ellipse without <{holder}>")
            return np.array([[_float(_attr(c, "value"), f"{self.path}: {name}") for c in _children(v, "coordinate")]
                             for v in _children(el, "vertex")], dtype=np.float64)

        foci, edge = points("foci") / C.DISPLAY_BINS, points("edge") / C.DISPLAY_BINS
        if foci.shape != (2, 2) or edge.shape[0] < 4:
            raise self.error(element, f"population '{name}': an ellipse needs 2 foci and 4 edge points in 2-D")
        centre = foci.mean(axis=0)
        axis = foci[1] - foci[0]
        if not np.any(axis):
            axis = edge[0] - edge[1]
        u = axis / np.linalg.norm(axis)
        a = float(max(abs((edge[k] - centre) @ u) for k in range(4)))
        c = float(np.linalg.norm(foci[1] - foci[0]) / 2)
        b = math.sqrt(max(a * a - c * c, 0.0))
        # Display units are fractions of the axis; an axis without a transform spans FlowJo's linear 0..$PnR.
        scaled = []
        for k, axis_t in enumerate(axes):
            if axis_t is None:
                axis_t = Linear(T=self.linear_top(dims[k].channel), A=0.0, name="linear")
            scaled.append(axis_t)
        return self.ellipse(name, dims, scaled, centre, u, a, b)


class _V9Reader(_Reader):
    """FlowJo 8/9 (Mac): ``Population`` nodes holding a ``PolygonGate`` container or a ``BooleanGate``."""

    prefix = C.V9_COMP_PREFIX
    suffix = C.V9_COMP_SUFFIX

    def __init__(self, path: str, root: ET.Element) -> None:
        super().__init__(path, root)
        self.matrix_names: list[str] = []
        self.matrices = self.read_matrices()
        prefs = _child(root, "Preferences")
        settings = {k: _attr(prefs, k) for k in ("DT_32BitCustomDecades", "DT_32BitCustomExtra",
                                                 "DT_32BitCustomWidth")} if prefs is not None else {}
        self.biex = FlowJoBiex(
            pos=_float(settings.get("DT_32BitCustomDecades") or C.BIEX_DEFAULT_POS, f"{path}: <Preferences>"),
            neg=_float(settings.get("DT_32BitCustomExtra") or C.BIEX_DEFAULT_NEG, f"{path}: <Preferences>"),
            width=_float(settings.get("DT_32BitCustomWidth") or C.BIEX_DEFAULT_WIDTH, f"{path}: <Preferences>"))
        self.tables = self.read_tables()
        self.matrix_name = ""
        self.high_values: dict[str, float] = {}
        self.parameter_axes: dict[tuple[str, str, float], FlowJoBiex | None] = {}

    def read_tables(self) -> dict[str, np.ndarray]:
        """FlowJo 9's ``CalibrationTables``: ``name -> value at display channel 0..4096`` (text ``c,v,c,v,...``)."""
        out: dict[str, np.ndarray] = {}
        holder = _child(self.root, "CalibrationTables")
        for table in _children(holder, "Table") if holder is not None else []:
            try:
                pairs = np.array([float(v) for v in (table.text or "").replace("\n", "").split(",") if v.strip()])
            except ValueError:
                continue  # a table cytopipe cannot read only loses its per-parameter axis (the default biex stays)
            if pairs.size >= 4 and pairs.size % 2 == 0:
                out[_attr(table, "name") or ""] = pairs.reshape(-1, 2)[:, 1]
        return out

    def parameter_biex(self, detector: str) -> FlowJoBiex | None:
        """The biex FlowJo 9 fitted to a compensated parameter, from its table ``<matrix name> <prefix><detector>``.

        FlowJo 9 tabulates a biex per compensated parameter with its own width basis (``CalibrationTables``), on the
        parameter's ``highValue`` as top of scale: polygons on these axes are straight there, not on the default.
        """
        values = self.tables.get(f"{self.matrix_name} {self.prefix}{detector}{self.suffix}")
        top = self.high_values.get(detector)
        if values is None or top is None or not self.matrix_name:
            return None
        key = (self.matrix_name, detector, top)
        if key not in self.parameter_axes:
            self.parameter_axes[key] = biex_from_table(values, self.biex.pos, self.biex.neg, top)
        return self.parameter_axes[key]

    def read_matrices(self) -> list[tuple[Spillover, str, str]]:
        out = []
        holder = _child(self.root, "CompensationMatrices")
        for matrix_el in _children(holder, "CompensationMatrix") if holder is not None else []:
            rows: dict[str, dict[str, float]] = {}
            for channel in _children(matrix_el, "Channel"):
                rows[_attr(channel, "name") or ""] = {
                    (_attr(v, "name") or ""): _float(_attr(v, "value"), f"{self.path}: <ChannelValue>")
                    for v in _children(channel, "ChannelValue")}
            names = list(rows)
            matrix = np.array([[rows[r].get(c, 1.0 if r == c else 0.0) for c in names] for r in names])
            out.append((Spillover(tuple(names), matrix, source=f"workspace:{_attr(matrix_el, 'name')}"),
                        _attr(matrix_el, "prefix", C.V9_COMP_PREFIX) or "", _attr(matrix_el, "suffix", "") or ""))
            self.matrix_names.append(_attr(matrix_el, "name") or "")
        return out

    def axis(self, detector: str, compensated: bool) -> Transform | None:
        log = self.log_axis(detector)
        if log is not None:
            return log
        fitted = self.parameter_biex(detector) if compensated else None
        if fitted is not None:
            return fitted
        top = self.channel_keyword(detector, "R")
        is_scatter = detector.upper().startswith(("FSC", "SSC")) or detector.upper() == "TIME"
        if not is_scatter and top and float(top) > 4096:
            return self.biex  # FlowJo 9 shows fluorescence of digital (18-bit) instruments on its biex
        return None

    def samples(self) -> list[WorkspaceSample]:
        out = []
        holder = _child(self.root, "SampleList") or _child(self.root, "Samples")
        for element in _children(holder, "Sample") if holder is not None else []:
            node = _child(element, "SampleNode")
            if node is None:
                raise self.error("Sample", "has no <SampleNode>")
            self.keywords = {(_attr(k, "name") or "").strip().upper(): _attr(k, "value") or ""
                             for k in _children(_child(element, "Keywords") or ET.Element("x"), "Keyword")}
            comp = _attr(element, "compensationID") or "0"
            self.spillover, self.prefix, self.suffix = None, C.V9_COMP_PREFIX, C.V9_COMP_SUFFIX
            self.matrix_name = ""
            if comp.isdigit() and 0 < int(comp) <= len(self.matrices):
                self.spillover, self.prefix, self.suffix = self.matrices[int(comp) - 1]
                self.matrix_name = self.matrix_names[int(comp) - 1]
            self.high_values = {}
            for parameter in _children(_child(element, "SampleParameters") or element, "Parameter"):
                try:
                    self.high_values[(_attr(parameter, "name") or "").strip()] = float(_attr(parameter, "highValue"))
                except (TypeError, ValueError):
                    continue
            name = _attr(node, "name") or _attr(node, "nodeName") or ""
            nodes = [self.population(p, "") for p in _children(node, "Population")]
            self.contexts[_attr(node, "sampleID") or ""] = self.context()
            out.append(WorkspaceSample(_attr(node, "sampleID") or "", name, self.keywords.get("$FIL", "").strip(),
                                       dict(self.keywords), _count(node), nodes, self.spillover))
        return out

    def groups(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        groups = _child(self.root, "Groups")
        for element in _children(groups, "GroupNode") if groups is not None else []:
            name = _attr(element, "name") or _attr(element, "nodeName") or ""
            self.group_samples[name] = self.group_context(element, self.contexts)
            out[name] = [self.population(p, "") for p in _children(element, "Population")]
        return out

    def population(self, element: ET.Element, path: str) -> Node:
        name = _attr(element, "name") or _attr(element, "nodeName") or ""
        node_path = f"{path}/{name}"
        polygon_gate = _child(element, "PolygonGate")
        boolean = _child(element, "BooleanGate")
        if polygon_gate is not None:
            node = Node(name, node_path, self.gate(polygon_gate, name), _count(element),
                        magnetic=(_attr(polygon_gate, "magnetic") or "").strip().lower() in ("1", "true"))
        elif boolean is not None:
            node = Node(name, node_path, None, _count(element), boolean=self.specification(boolean, name))
        else:
            raise self.error("Population", f"population '{name}' has no gate")
        node.children = [self.population(p, node_path) for p in _children(element, "Population")]
        return node

    def specification(self, element: ET.Element, name: str) -> tuple[str, tuple[str, ...], tuple[bool, ...]]:
        spec = (_attr(element, "specification") or "").strip()
        paths_el = _child(element, "GatePaths")
        paths = [s.text or "" for s in paths_el.iter() if _local(s.tag) == "String"] if paths_el is not None else []
        refs = [p.strip().rstrip("/").rsplit("/", 1)[-1] for p in paths]
        terms = re.split(r"\s*([&|])\s*", spec)
        ops = set(terms[1::2])
        operands, flags = [], []
        for term in terms[0::2]:
            match = re.fullmatch(r"(!?)\s*G(\d+)", term.strip())
            if match is None or int(match.group(2)) >= len(refs) or len(ops) > 1:
                raise self.error(element, f"population '{name}': Boolean specification {spec!r} not supported")
            operands.append(refs[int(match.group(2))])
            flags.append(bool(match.group(1)))
        if len(operands) == 1:
            if not flags[0]:
                raise self.error(element, f"population '{name}': Boolean specification {spec!r} not supported")
            return "not", tuple(operands), (False,)
        return ("and" if ops == {"&"} else "or"), tuple(operands), tuple(flags)

    def gate(self, container: ET.Element, name: str) -> Gate:
        gate_el = next((c for c in container if _local(c.tag) in C.V9_GATES), None)
        if gate_el is None:
            kinds = [_local(c.tag) for c in container if _local(c.tag) not in ("ParameterNames", "Graph")]
            raise self.error(kinds[0] if kinds else "PolygonGate",
                             f"population '{name}': gate type not supported (cytopipe reads {', '.join(C.V9_GATES)})")
        kind = _local(gate_el.tag)
        names = [n for n in (_attr(gate_el, "xAxisName"), _attr(gate_el, "yAxisName")) if n]
        polygon = _child(gate_el, "Polygon")
        vertices = [(_float(_attr(v, "x"), f"{self.path}: {name}"), _float(_attr(v, "y"), f"{self.path}: {name}"))
                    for v in _children(polygon, "Vertex")] if polygon is not None else []
        if not names or not vertices:
            raise self.error(gate_el, f"population '{name}': gate without axes or vertices")
        dims, axes = self.dims(names)
        if kind == "Range":
            xs = [v[0] for v in vertices]
            return RectangleGate(name, dims[:1], (self.extended(min(xs), axes[0]),), (max(xs),))
        if kind == "PolyRect":
            v = np.array(vertices)
            lows = tuple(self.extended(float(lo), axis) for lo, axis in zip(v.min(axis=0), axes, strict=False))
            return RectangleGate(name, dims, lows, tuple(v.max(axis=0)))
        if kind == "Ellipse":
            if len(vertices) < 4:
                raise self.error(gate_el, f"population '{name}': an ellipse needs 4 vertices")
            points = np.array(vertices[:4], dtype=np.float64)
            for k, axis in enumerate(axes):
                if axis is not None:
                    points[:, k] = axis.apply(points[:, k])
            # The four points are the ends of two conjugate diameters: x = c + u cos t + w sin t, whatever the
            # scales of the axes (an affine image of an ellipse keeps conjugate diameters conjugate).
            centre = (points[0] + points[1]) / 2
            u, w = (points[1] - points[0]) / 2, (points[3] - points[2]) / 2
            cov = np.outer(u, u) + np.outer(w, w)
            if abs(np.linalg.det(cov)) <= 1e-300:
                raise self.error(gate_el, f"population '{name}': degenerate ellipse")
            return EllipsoidGate(name, self.on_axes(dims, axes), tuple(centre), tuple(map(tuple, cov)), 1.0)
        gate = self.polygon(name, dims, axes, vertices)
        assert isinstance(gate, PolygonGate)
        moved = [tuple(C.V9_BELOW_SCALE if isinstance(d.transform, FlowJoBiex) and c <= 0.0 else c
                       for c, d in zip(vertex, gate.dimensions, strict=True)) for vertex in gate.vertices]
        return PolygonGate(name, gate.dimensions, tuple(moved))

    @staticmethod
    def extended(low: float, axis: Transform | None) -> float | None:
        """A lower limit at or below the bottom of a biex axis takes every event below it (no lower limit).

        FlowJo 9 piles the events below its biex table on the bottom channel, and a gate drawn down to that
        channel holds them all (flowWorkspace extends such gates to the data minimum for the same reason).
        """
        if isinstance(axis, FlowJoBiex) and float(axis.apply(np.array([low]))[0]) <= 0.0:
            return None
        return low


# ----------------------------------------------------------------------------------------------------------------
# to a GatingStrategy


def strategy_from_nodes(nodes: list[Node], workspace: Workspace, label: str,
                        sample: WorkspaceSample | None) -> tuple[GatingStrategy, dict[str, str]]:
    """A :class:`GatingStrategy` of a FlowJo tree and ``{FlowJo path: population name}``.

    Population names are FlowJo's names where unique in the tree, else the path below the sample
    (``CD4 T/M1``).
    """
    flat: list[Node] = []

    def walk(level: list[Node]) -> None:
        for node in level:
            flat.append(node)
            walk(node.children)

    walk(nodes)
    leaf_counts: dict[str, int] = {}
    for node in flat:
        leaf_counts[node.name] = leaf_counts.get(node.name, 0) + 1
    names = {node.path: node.name if leaf_counts[node.name] == 1 else node.path.lstrip("/") for node in flat}
    parents: dict[str, str | None] = {}

    def parent_walk(level: list[Node], parent: str | None) -> None:
        for node in level:
            parents[node.path] = parent
            parent_walk(node.children, node.path)

    parent_walk(nodes, None)
    populations = []
    for node in flat:
        parent_path = parents[node.path]
        parent = names[parent_path] if parent_path is not None else None
        if node.boolean is not None:
            op, refs, flags = node.boolean
            prefix = parent_path or ""
            operands = []
            for ref in refs:
                target = f"{prefix}/{ref}"
                if target not in names:  # FlowJo may also name a dependent by a path from the sample
                    target = next((p for p in names if p.endswith("/" + ref)), "")
                if not target:
                    raise WorkspaceError(f"{workspace.path}: Boolean population '{node.path}' refers to unknown "
                                         f"gate '{ref}'")
                operands.append(names[target])
            gate: Gate = BooleanGate(names[node.path], (), op=op, operands=tuple(operands), complement=flags)
        else:
            assert node.gate is not None
            gate = _renamed(node.gate, names[node.path])
        populations.append(Population(names[node.path], gate, parent))
    matrices = {C.MATRIX_ID: sample.spillover} if sample is not None and sample.spillover is not None else {}
    populations = [_without_matrix(p) if not matrices else p for p in populations]
    try:
        strategy = GatingStrategy(tuple(populations), matrices=matrices, name=f"{Path(workspace.path).name} {label}",
                                  source=workspace.source, scale="gain")
    except CytopipeError as exc:
        raise WorkspaceError(f"{workspace.path}: {label}: {exc}") from None
    return strategy, names


def _renamed(gate: Gate, name: str) -> Gate:
    from dataclasses import replace

    if isinstance(gate, _Outside) and gate.inner is not None:
        return replace(gate, name=name, inner=replace(gate.inner, name=name))
    return replace(gate, name=name)


def _without_matrix(pop: Population) -> Population:
    """A tree read without its sample's matrix (a group's tree) compensates with the FCS file's own spillover."""
    from dataclasses import replace

    gate = pop.gate
    if not any(d.compensation == C.MATRIX_ID for d in gate.dimensions):
        return pop
    dims = tuple(Dimension(d.channel, d.transform, "FCS" if d.compensation == C.MATRIX_ID else d.compensation)
                 for d in gate.dimensions)
    if isinstance(gate, _Outside) and gate.inner is not None:
        return replace(pop, gate=replace(gate, dimensions=dims, inner=replace(gate.inner, dimensions=dims)))
    return replace(pop, gate=replace(gate, dimensions=dims))


def load_workspace_strategy(path: str | os.PathLike[str], wsp_sample: str | None = None,
                            fcs: str | os.PathLike[str] | None = None) -> GatingStrategy:
    """The gating strategy ``--gates analysis.wsp [--wsp-sample NAME]`` applies.

    Parameters
    ----------
    path
        The workspace.
    wsp_sample
        A sample or group name; ``None`` = group "All Samples" if it has gates, else the first sample's tree (see
        :func:`default_tree_notice`); ``"own"`` = the tree of the workspace sample that ``fcs`` is (matched by
        ``$FIL``, then by file name).
    fcs
        The FCS file, for ``"own"``.

    Raises
    ------
    WorkspaceError
        Unreadable workspace, unknown sample (with a suggestion), or ``own`` for a file that is no sample of it.
    """
    workspace = read_workspace(path)
    if wsp_sample == OWN:
        if fcs is None:
            raise WorkspaceError(f"{workspace.path}: --wsp-sample own needs the FCS file the gates are for")
        sample = own_sample(workspace, fcs)
        label, nodes = f"sample '{sample.name}'", sample.nodes
    else:
        label, nodes, sample = workspace.tree(wsp_sample)
    strategy, _ = strategy_from_nodes(nodes, workspace, label, sample)
    return strategy


#: ``--wsp-sample own``: every FCS file uses the tree of its own workspace sample.
OWN = "own"


def own_sample(workspace: Workspace, fcs: str | os.PathLike[str]) -> WorkspaceSample:
    """The workspace sample an FCS file is: its ``$FIL`` keyword, then its file name (never the stale URI)."""
    from cytopipe.fcs import read_fcs

    name = Path(fcs).name
    fil = read_fcs(fcs, scale="raw").metadata.get("$FIL", "").strip()
    for key in (fil, name):
        for sample in workspace.samples:
            if key and key in (sample.fil, sample.name):
                return sample
    raise WorkspaceError(f"{workspace.path}: --wsp-sample own: {name} ($FIL {fil or 'absent'}) is not a sample of "
                         f"the workspace")


def own_strategies(path: str | os.PathLike[str], files: list[str]) -> dict[str, GatingStrategy | str]:
    """``--wsp-sample own`` for many files (the workspace parsed once): each file's own tree, or why not."""
    workspace = read_workspace(path)
    out: dict[str, GatingStrategy | str] = {}
    for fcs in files:
        try:
            sample = own_sample(workspace, fcs)
            out[fcs] = strategy_from_nodes(sample.nodes, workspace, f"sample '{sample.name}'", sample)[0]
        except CytopipeError as exc:
            out[fcs] = str(exc)
    return out


def default_tree_notice(path: str | os.PathLike[str]) -> str:
    """The one-line notice saying which tree a workspace applies when ``--wsp-sample`` is not given."""
    workspace = read_workspace(path)
    label, _, _ = workspace.tree(None)
    return f"{workspace.path}: applying the gates of {label} (choose another tree with --wsp-sample)"


def with_matrix_file(strategy: GatingStrategy, yaml_path: str | os.PathLike[str]) -> GatingStrategy:
    """For ``gates convert --to yaml``: write the workspace's matrix beside the YAML file and refer to it.

    The matrix goes to ``<yaml stem>.spillover.csv`` (header of detector names, one row per spilling detector), the
    YAML's top-level ``compensation:`` names that file, and the dimensions the matrix compensated refer to it.
    Strategies without the workspace matrix are returned unchanged.
    """
    from dataclasses import replace

    from cytopipe.gatefile.parse import _matrix_id
    from cytopipe.outputs import atomic_write

    spill = strategy.matrices.get(C.MATRIX_ID)
    if spill is None:
        return strategy
    target = Path(yaml_path)
    csv_path = target.with_name(target.stem + ".spillover.csv")
    lines = [",".join(spill.channels)] + [",".join(repr(float(v)) for v in row) for row in spill.matrix]
    atomic_write(csv_path, "\n".join(lines) + "\n")
    key = _matrix_id(csv_path.name)

    def moved(gate: Gate) -> Gate:
        dims = tuple(Dimension(d.channel, d.transform, key if d.compensation == C.MATRIX_ID else d.compensation,
                               d.ratio) for d in gate.dimensions)
        if isinstance(gate, _Outside) and gate.inner is not None:
            return replace(gate, dimensions=dims, inner=moved(gate.inner))
        return replace(gate, dimensions=dims) if gate.dimensions else gate

    populations = tuple(replace(p, gate=moved(p.gate)) for p in strategy.populations)
    return replace(strategy, populations=populations, matrices={key: spill}, compensation=csv_path.name)

