"""Gating-ML 2.0 import and export.

``read_gatingml(path)`` turns a Gating-ML 2.0 file into a :class:`~cytopipe.gates.GatingStrategy`;
``write_gatingml(strategy, path)`` writes one back (atomically). Supported: rectangle/range, polygon, ellipsoid,
quadrant (each ``Quadrant`` becomes a population named by its id), boolean (``and``/``or``/``not`` with
``use-as-complement``) gates; ``parent_id`` chains; the transforms ``flin``, ``flog``, ``fasinh``, ``logicle``,
``hyperlog`` and ``fratio`` (as a ``new-dimension``) with ``boundMin``/``boundMax``; compensation references
``FCS``, ``uncompensated`` and ``spectrumMatrix`` ids (square, non-square and ``matrix-inverted-already``).

The XML lives here only: the gate models in :mod:`cytopipe.gates` know nothing about it.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np

from cytopipe.errors import GateError
from cytopipe.gates import (
    FCS,
    MAX_VERTICES,
    UNCOMPENSATED,
    BooleanGate,
    Dimension,
    EllipsoidGate,
    Gate,
    GatingStrategy,
    PolygonGate,
    Population,
    QuadrantGate,
    RectangleGate,
    SpectrumMatrix,
)
from cytopipe.outputs import atomic_write
from cytopipe.transforms import Arcsinh, Hyperlog, Linear, Log, Logicle, Ratio, Transform

__all__ = ["read_gatingml", "write_gatingml", "gate_ids", "GATING_NS", "TRANSFORMS_NS", "DATATYPES_NS"]

GATING_NS = "http://www.isac-net.org/std/Gating-ML/v2.0/gating"
TRANSFORMS_NS = "http://www.isac-net.org/std/Gating-ML/v2.0/transformations"
DATATYPES_NS = "http://www.isac-net.org/std/Gating-ML/v2.0/datatypes"
_G = "{" + GATING_NS + "}"
_T = "{" + TRANSFORMS_NS + "}"
_D = "{" + DATATYPES_NS + "}"

#: Largest Gating-ML file read (FlowJo writes ~100 bytes per polygon vertex).
MAX_XML_BYTES = 64 * 2**20
_GATE_TAGS = {_G + t for t in ("RectangleGate", "PolygonGate", "EllipsoidGate", "QuadrantGate", "BooleanGate")}
_SIMPLE_TRANSFORMS: dict[str, tuple[type[Transform], tuple[str, ...]]] = {
    "flin": (Linear, ("T", "A")),
    "flog": (Log, ("T", "M")),
    "fasinh": (Arcsinh, ("T", "M", "A")),
    "logicle": (Logicle, ("T", "W", "M", "A")),
    "hyperlog": (Hyperlog, ("T", "W", "M", "A")),
    "fratio": (Ratio, ("A", "B", "C")),
}


def _attr(element: ET.Element, ns: str, name: str) -> str | None:
    """An attribute in namespace ``ns`` (``_G``/``_T``/``_D``), accepting an unqualified one as well."""
    value = element.get(ns + name)
    return element.get(name) if value is None else value


class _Reader:
    """Parses one Gating-ML document; every error names the file and, where known, the element id."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.transforms: dict[str, Transform] = {}
        self.matrices: dict[str, SpectrumMatrix] = {}
        self.ratio_channels: dict[str, tuple[str, str]] = {}
        self.names: dict[str, str] = {}

    def remember_name(self, element: ET.Element, xid: str) -> None:
        """Original population names that :func:`write_gatingml` could not use as ids (custom_info)."""
        info = element.find(_D + "custom_info")
        for tag in info.findall("cytopipe") if info is not None else ():
            name = tag.get("population")
            if name:
                self.names[tag.get("quadrant", xid)] = name

    def error(self, what: str, message: str) -> GateError:
        # Model errors already name the gate ("gate 'P1': ..."): add only the file then.
        return GateError(f"{self.path}: {message}" if message.startswith(what) else f"{self.path}: {what}: {message}")

    def number(self, value: str | None, what: str, name: str, required: bool = True) -> float | None:
        if value is None:
            if required:
                raise self.error(what, f"missing {name}")
            return None
        try:
            result = float(value)
        except ValueError:
            raise self.error(what, f"{name} is not a number: {value!r}") from None
        if not math.isfinite(result):
            raise self.error(what, f"{name} must be a finite number, got {value!r}")
        return result

    def read(self, text: str) -> GatingStrategy:
        try:
            root = ET.fromstring(text)
        except ET.ParseError as exc:
            raise GateError(f"{self.path}: malformed XML: {exc}") from None
        if root.tag != _G + "Gating-ML":
            raise GateError(f"{self.path}: not a Gating-ML 2.0 file (root element {root.tag!r})")
        for element in root.iter(_T + "transformation"):
            transform = self.transform(element)
            if transform.name in self.transforms:
                raise self.error(f"transformation '{transform.name}'", "duplicate transforms:id")
            self.transforms[transform.name] = transform
        for element in root.iter(_T + "spectrumMatrix"):
            matrix = self.spectrum_matrix(element)
            if matrix.source in self.matrices:
                raise self.error(f"spectrumMatrix '{matrix.source}'", "duplicate transforms:id")
            self.matrices[matrix.source] = matrix
        populations: list[Population] = []
        for element in root.iter():
            if element.tag in _GATE_TAGS:
                populations.extend(self.gate(element))
        if not populations:
            raise GateError(f"{self.path}: no gates found")
        self.restore_names(populations)
        self.check_references(populations)
        try:
            return GatingStrategy(
                tuple(populations), matrices=dict(self.matrices), transforms=dict(self.transforms),
                name=self.strategy_name(root), source=text, scale="gain",  # the compliance suite's reading of the data
            )
        except GateError as exc:
            raise GateError(f"{self.path}: {exc}") from None

    def strategy_name(self, root: ET.Element) -> str:
        """The name :func:`write_gatingml` kept in the document's ``custom_info``, else the file name."""
        info = root.find(_D + "custom_info")
        tag = info.find("cytopipe") if info is not None else None
        name = tag.get("name") if tag is not None else None
        return name if name else Path(self.path).stem

    def transform(self, element: ET.Element) -> Transform:
        tid = _attr(element, _T, "id")
        what = f"transformation '{tid}'"
        if not tid:
            raise self.error("transformation", "missing transforms:id")
        bounds = {
            "bound_min": self.number(_attr(element, _T, "boundMin"), what, "boundMin", required=False),
            "bound_max": self.number(_attr(element, _T, "boundMax"), what, "boundMax", required=False),
        }
        kinds = [child for child in element if child.tag.startswith(_T)]
        if len(kinds) != 1:
            raise self.error(what, "needs exactly one transform element (flin, flog, fasinh, logicle, ...)")
        body = kinds[0]
        kind = body.tag[len(_T):]
        if kind not in _SIMPLE_TRANSFORMS:
            raise self.error(what, f"unsupported transform '{kind}'")
        cls, names = _SIMPLE_TRANSFORMS[kind]
        params = {n: self.number(_attr(body, _T, n), what, n) for n in names}
        try:
            transform = cls(**params, name=tid, **bounds)
        except GateError as exc:
            raise self.error(what, str(exc)) from None
        if kind == "fratio":
            channels = tuple(_attr(d, _D, "name") or "" for d in body.iter(_D + "fcs-dimension"))
            if len(channels) != 2 or not all(channels):
                raise self.error(what, "fratio needs exactly two fcs-dimension channels")
            self.ratio_channels[tid] = (channels[0], channels[1])
        return transform

    def spectrum_matrix(self, element: ET.Element) -> SpectrumMatrix:
        mid = _attr(element, _T, "id")
        what = f"spectrumMatrix '{mid}'"
        if not mid:
            raise self.error("spectrumMatrix", "missing transforms:id")
        inverted = (_attr(element, _T, "matrix-inverted-already") or "false").strip().lower() in ("true", "1")

        def names(tag: str) -> tuple[str, ...]:
            block = element.find(_T + tag)
            if block is None:
                raise self.error(what, f"missing {tag}")
            return tuple(_attr(d, _D, "name") or "" for d in block.iter(_D + "fcs-dimension"))

        fluorochromes, detectors = names("fluorochromes"), names("detectors")
        rows = [
            [self.number(_attr(c, _T, "value"), what, "coefficient") for c in spectrum.iter(_T + "coefficient")]
            for spectrum in element.iter(_T + "spectrum")
        ]
        if not rows or len({len(r) for r in rows}) != 1:
            raise self.error(what, "spectra must be non-empty rows of equal length")
        try:
            return SpectrumMatrix(fluorochromes, detectors, np.array(rows, dtype=float), inverted, source=mid)
        except GateError as exc:
            raise self.error(what, str(exc)) from None

    def dimension(self, element: ET.Element, what: str) -> Dimension:
        compensation = _attr(element, _G, "compensation-ref")
        if not compensation:
            raise self.error(what, "dimension without gating:compensation-ref")
        if compensation not in (FCS, UNCOMPENSATED) and compensation not in self.matrices:
            raise self.error(what, f"unknown compensation-ref '{compensation}'")
        transform = None
        tref = _attr(element, _G, "transformation-ref")
        if tref:
            transform = self.transforms.get(tref)
            if transform is None:
                raise self.error(what, f"unknown transformation-ref '{tref}'")
            if isinstance(transform, Ratio):
                raise self.error(what, f"transformation-ref '{tref}' is an fratio; use it as a new-dimension")
        fcs = element.find(_D + "fcs-dimension")
        new = element.find(_D + "new-dimension")
        if fcs is not None:
            name = _attr(fcs, _D, "name")
            if not name:
                raise self.error(what, "fcs-dimension without data-type:name")
            return Dimension(name, transform, compensation)
        if new is not None:
            rref = _attr(new, _D, "transformation-ref")
            ratio = self.transforms.get(rref or "")
            if not isinstance(ratio, Ratio):
                raise self.error(what, f"new-dimension references '{rref}', which is not an fratio transformation")
            return Dimension(self.ratio_channels[ratio.name], transform, compensation, ratio)
        raise self.error(what, "dimension needs an fcs-dimension or new-dimension")

    def gate(self, element: ET.Element) -> list[Population]:
        gid = _attr(element, _G, "id")
        kind = element.tag[len(_G):]
        if not gid:
            raise self.error(kind, "missing gating:id")
        what = f"gate '{gid}'"
        self.remember_name(element, gid)
        parent = _attr(element, _G, "parent_id") or None
        try:
            if kind == "QuadrantGate":
                return self.quadrants(element, gid, what, parent)
            if kind == "BooleanGate":
                gate: Gate = self.boolean(element, gid, what)
            else:
                dims = tuple(self.dimension(d, what) for d in element.findall(_G + "dimension"))
                if not dims:
                    raise self.error(what, "no dimensions")
                if kind == "RectangleGate":
                    gate = RectangleGate(
                        gid, dims,
                        tuple(self.number(_attr(d, _G, "min"), what, "min", False)
                              for d in element.findall(_G + "dimension")),
                        tuple(self.number(_attr(d, _G, "max"), what, "max", False)
                              for d in element.findall(_G + "dimension")),
                    )
                elif kind == "PolygonGate":
                    found = element.findall(_G + "vertex")
                    if len(found) > MAX_VERTICES:
                        raise self.error(what, f"a polygon of {len(found)} vertices; at most {MAX_VERTICES}")
                    vertices = [self.coordinates(v, what) for v in found]
                    if any(len(v) != 2 for v in vertices):
                        raise self.error(what, "every vertex needs two coordinates")
                    gate = PolygonGate(gid, dims, tuple(tuple(v) for v in vertices))
                else:
                    mean_el = element.find(_G + "mean")
                    cov_el = element.find(_G + "covarianceMatrix")
                    dist_el = element.find(_G + "distanceSquare")
                    if mean_el is None or cov_el is None or dist_el is None:
                        raise self.error(what, "ellipsoid needs mean, covarianceMatrix and distanceSquare")
                    cov = [[self.number(_attr(e, _D, "value"), what, "entry") for e in row.findall(_G + "entry")]
                           for row in cov_el.findall(_G + "row")]
                    gate = EllipsoidGate(gid, dims, tuple(self.coordinates(mean_el, what)),
                                         tuple(tuple(r) for r in cov),
                                         self.number(_attr(dist_el, _D, "value"), what, "distanceSquare"))
        except GateError as exc:
            message = str(exc)
            raise (exc if message.startswith(self.path) else self.error(what, message)) from None
        return [Population(gid, gate, parent)]

    def coordinates(self, element: ET.Element, what: str) -> list[float]:
        return [self.number(_attr(c, _D, "value"), what, "coordinate") for c in element.findall(_G + "coordinate")]

    def boolean(self, element: ET.Element, gid: str, what: str) -> BooleanGate:
        ops = [child for child in element if child.tag in (_G + "and", _G + "or", _G + "not")]
        if len(ops) != 1:
            raise self.error(what, "boolean gate needs exactly one of and/or/not")
        refs = ops[0].findall(_G + "gateReference")
        operands = tuple(_attr(r, _G, "ref") or "" for r in refs)
        if not all(operands):
            raise self.error(what, "gateReference without gating:ref")
        complement = tuple((_attr(r, _G, "use-as-complement") or "false").strip().lower() in ("true", "1")
                           for r in refs)
        return BooleanGate(gid, (), ops[0].tag[len(_G):], operands, complement)

    def quadrants(self, element: ET.Element, gid: str, what: str, parent: str | None) -> list[Population]:
        ids: list[str] = []
        dims: list[Dimension] = []
        values: list[tuple[float, ...]] = []
        for divider in element.findall(_G + "divider"):
            did = _attr(divider, _G, "id")
            if not did:
                raise self.error(what, "divider without gating:id")
            ids.append(did)
            dims.append(self.dimension(divider, what))
            numbers = tuple(self.number(v.text, what, f"divider '{did}' value") for v in divider.findall(_G + "value"))
            if not numbers:
                raise self.error(what, f"divider '{did}' has no value")
            values.append(numbers)
        if not dims:
            raise self.error(what, "quadrant gate without dividers")
        populations = []
        for quadrant in element.findall(_G + "Quadrant"):
            qid = _attr(quadrant, _G, "id")
            if not qid:
                raise self.error(what, "Quadrant without gating:id")
            location: list[float | None] = [None] * len(ids)
            for position in quadrant.findall(_G + "position"):
                ref = _attr(position, _G, "divider_ref")
                if ref not in ids:
                    raise self.error(f"quadrant '{qid}'", f"unknown divider_ref '{ref}'")
                location[ids.index(ref)] = self.number(_attr(position, _G, "location"), what, "location")
            gate = QuadrantGate(qid, tuple(dims), tuple(values), tuple(location), gid, tuple(ids))
            populations.append(Population(qid, gate, parent))
        if not populations:
            raise self.error(what, "quadrant gate without Quadrant elements")
        return populations

    def restore_names(self, populations: list[Population]) -> None:
        """Rename populations whose original (non-xs:ID) name was kept in custom_info by write_gatingml."""
        renames = {old: new for old, new in self.names.items() if new != old}
        if not renames:
            return
        for k, pop in enumerate(populations):
            gate = pop.gate
            if isinstance(gate, BooleanGate):
                gate = replace(gate, operands=tuple(renames.get(r, r) for r in gate.operands))
            name = renames.get(pop.name, pop.name)
            parent = renames.get(pop.parent, pop.parent) if pop.parent is not None else None
            populations[k] = Population(name, replace(gate, name=name), parent)

    def check_references(self, populations: list[Population]) -> None:
        names = {p.name for p in populations}
        for pop in populations:
            if pop.parent is not None and pop.parent not in names:
                raise self.error(f"gate '{pop.name}'", f"unknown parent_id '{pop.parent}'")
            if isinstance(pop.gate, BooleanGate):
                for ref in pop.gate.operands:
                    if ref not in names:
                        raise self.error(f"gate '{pop.name}'", f"gateReference to unknown gate '{ref}'")


def read_gatingml(path: str | os.PathLike[str]) -> GatingStrategy:
    """Read a Gating-ML 2.0 file.

    Parameters
    ----------
    path : str or path-like
        The XML file.

    Returns
    -------
    GatingStrategy
        One population per gate (one per ``Quadrant`` of a ``QuadrantGate``), named by the Gating-ML id, with the
        file's ``spectrumMatrix`` elements in ``matrices`` and its transformations in ``transforms``; ``source`` is
        the XML text.

    Raises
    ------
    GateError
        Unreadable or malformed XML, an unsupported element, a bad number or an unknown reference; the message
        names the file and the gate (or transformation/matrix) id.
    """
    where = os.fspath(path)
    try:
        size = os.path.getsize(where)
        if size > MAX_XML_BYTES:
            raise GateError(f"{where}: the file is too large: {size / 2**20:.0f} MB; a Gating-ML file is at most "
                            f"{MAX_XML_BYTES // 2**20} MB")
        text = Path(where).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GateError(f"{where}: cannot read Gating-ML file: {exc}") from None
    return _Reader(where).read(text)


def _fmt(value: float) -> str:
    return repr(float(value))


class _Writer:
    """Builds the XML tree for a strategy."""

    def __init__(self, strategy: GatingStrategy, where: str) -> None:
        self.strategy = strategy
        self.where = where
        self.transform_ids: dict[Transform, str] = {}
        self.matrices: dict[str, SpectrumMatrix] = {}
        self.matrix_ids: dict[str, str] = {}
        self.ratio_channels: dict[Ratio, tuple[str, str]] = {}
        # xs:ID values share one namespace in the document: gates, quadrants, dividers, transforms, matrices.
        self.used: set[str] = set()
        self.gate_ids = gate_ids(strategy, self.used)

    def new_id(self, name: str) -> str:
        xid = _unique_id(name, self.used)
        self.used.add(xid)
        return xid

    def transform_id(self, transform: Transform) -> str:
        if transform not in self.transform_ids:
            self.transform_ids[transform] = self.new_id(transform.name or transform.kind)
        return self.transform_ids[transform]

    def build(self) -> ET.Element:
        ET.register_namespace("gating", GATING_NS)
        ET.register_namespace("transforms", TRANSFORMS_NS)
        ET.register_namespace("data-type", DATATYPES_NS)
        root = ET.Element(_G + "Gating-ML")
        if self.strategy.name:  # the strategy's free-text name, restored by read_gatingml
            info = ET.SubElement(root, _D + "custom_info")
            ET.SubElement(info, "cytopipe", {"name": self.strategy.name})
        # Named transforms first, so ids stay stable and readable; then any used only inline.
        for transform in self.strategy.transforms.values():
            if not isinstance(transform, Ratio):  # a ratio is written where a dimension names its channels
                self.transform_id(transform)
        quadrants = self.quadrant_elements()
        gates = []
        for pop in self.strategy.populations:  # document order = population order; a quadrant gate at its first
            if not isinstance(pop.gate, QuadrantGate):
                gates.append(self.gate_element(pop))
            else:
                element = quadrants.pop(pop.gate.group or pop.name, None)
                if element is not None:
                    gates.append(element)
        for transform, tid in self.transform_ids.items():
            root.append(self.transform_element(transform, tid))
        for name, matrix in self.matrices.items():
            root.append(self.matrix_element(self.matrix_ids[name], matrix))
        root.extend(gates)
        return root

    def transform_element(self, transform: Transform, tid: str) -> ET.Element:
        element = ET.Element(_T + "transformation", {_T + "id": tid})
        if transform.bound_min is not None:
            element.set(_T + "boundMin", _fmt(transform.bound_min))
        if transform.bound_max is not None:
            element.set(_T + "boundMax", _fmt(transform.bound_max))
        body = ET.SubElement(element, _T + transform.kind,
                             {_T + k: _fmt(v) for k, v in transform.params().items()})
        if isinstance(transform, Ratio):
            for channel in self.ratio_channels[transform]:
                ET.SubElement(body, _D + "fcs-dimension", {_D + "name": channel})
        return element

    def matrix_element(self, mid: str, matrix: SpectrumMatrix) -> ET.Element:
        attrs = {_T + "id": mid}
        if matrix.inverted:
            attrs[_T + "matrix-inverted-already"] = "true"
        element = ET.Element(_T + "spectrumMatrix", attrs)
        for tag, names in (("fluorochromes", matrix.fluorochromes), ("detectors", matrix.detectors)):
            block = ET.SubElement(element, _T + tag)
            for name in names:
                ET.SubElement(block, _D + "fcs-dimension", {_D + "name": name})
        for row in matrix.matrix:
            spectrum = ET.SubElement(element, _T + "spectrum")
            for value in row:
                ET.SubElement(spectrum, _T + "coefficient", {_T + "value": _fmt(value)})
        return element

    def dimension_attrs(self, dim: Dimension) -> dict[str, str]:
        comp = dim.compensation
        if comp not in (FCS, UNCOMPENSATED):
            source = self.strategy.matrices.get(comp)
            if source is None:
                raise GateError(f"{self.where}: dimension {dim.label} uses unknown matrix '{comp}'")
            if comp not in self.matrices:
                self.matrices[comp] = source if isinstance(source, SpectrumMatrix) else (
                    SpectrumMatrix.from_spillover(source))
                self.matrix_ids[comp] = self.new_id(comp)
            comp = self.matrix_ids[comp]
        attrs = {_G + "compensation-ref": comp}
        if dim.transform is not None:
            attrs[_G + "transformation-ref"] = self.transform_id(dim.transform)
        return attrs

    def dimension_body(self, parent: ET.Element, dim: Dimension) -> None:
        if dim.ratio is not None:
            previous = self.ratio_channels.get(dim.ratio)
            if previous is not None and previous != dim.channels:
                raise GateError(f"{self.where}: fratio '{dim.ratio.name}' is used with two channel pairs")
            self.ratio_channels[dim.ratio] = dim.channel  # type: ignore[assignment]
            ET.SubElement(parent, _D + "new-dimension", {_D + "transformation-ref": self.transform_id(dim.ratio)})
        else:
            ET.SubElement(parent, _D + "fcs-dimension", {_D + "name": dim.channels[0]})

    def gate_element(self, pop: Population) -> ET.Element:
        gate = pop.gate
        tags = {RectangleGate: "RectangleGate", PolygonGate: "PolygonGate", EllipsoidGate: "EllipsoidGate",
                BooleanGate: "BooleanGate"}
        tag = next((t for cls, t in tags.items() if isinstance(gate, cls)), None)
        if tag is None:
            raise GateError(f"{self.where}: population '{pop.name}': {type(gate).__name__} cannot be written to "
                            "Gating-ML (fit data-driven gates first: cytopipe gates fit FILE.fcs --gates G "
                            "--out fitted.xml)")
        element = ET.Element(_G + tag, {_G + "id": self.gate_ids[pop.name]})
        self.name_info(element, pop.name)
        if pop.parent is not None:
            element.set(_G + "parent_id", self.gate_ids[pop.parent])
        if isinstance(gate, BooleanGate):
            op = ET.SubElement(element, _G + gate.op)
            for ref, complement in zip(gate.operands, gate.complement, strict=True):
                attrs = {_G + "ref": self.gate_ids[ref]}
                if complement:
                    attrs[_G + "use-as-complement"] = "true"
                ET.SubElement(op, _G + "gateReference", attrs)
            return element
        for k, dim in enumerate(gate.dimensions):
            attrs = self.dimension_attrs(dim)
            if isinstance(gate, RectangleGate):
                if gate.min[k] is not None:
                    attrs[_G + "min"] = _fmt(gate.min[k])
                if gate.max[k] is not None:
                    attrs[_G + "max"] = _fmt(gate.max[k])
            self.dimension_body(ET.SubElement(element, _G + "dimension", attrs), dim)
        if isinstance(gate, PolygonGate):
            for vertex in gate.vertices:
                v = ET.SubElement(element, _G + "vertex")
                for value in vertex:
                    ET.SubElement(v, _G + "coordinate", {_D + "value": _fmt(value)})
        elif isinstance(gate, EllipsoidGate):
            mean = ET.SubElement(element, _G + "mean")
            for value in gate.mean:
                ET.SubElement(mean, _G + "coordinate", {_D + "value": _fmt(value)})
            cov = ET.SubElement(element, _G + "covarianceMatrix")
            for row in gate.covariance:
                r = ET.SubElement(cov, _G + "row")
                for value in row:
                    ET.SubElement(r, _G + "entry", {_D + "value": _fmt(value)})
            ET.SubElement(element, _G + "distanceSquare", {_D + "value": _fmt(gate.distance_square)})
        return element

    def name_info(self, element: ET.Element, name: str) -> None:
        """Keep a population name that is not a valid xs:ID in custom_info, so import restores it."""
        if self.gate_ids[name] != name:
            info = ET.SubElement(element, _D + "custom_info")
            ET.SubElement(info, "cytopipe", {"population": name})

    def quadrant_elements(self) -> dict[str, ET.Element]:
        groups: dict[str, list[Population]] = {}
        for pop in self.strategy.populations:
            if isinstance(pop.gate, QuadrantGate):
                groups.setdefault(pop.gate.group or pop.name, []).append(pop)
        elements = {}
        for group, pops in groups.items():
            first: QuadrantGate = pops[0].gate  # type: ignore[assignment]
            for pop in pops[1:]:
                gate: QuadrantGate = pop.gate  # type: ignore[assignment]
                if (gate.dimensions, gate.dividers, gate.divider_ids) != (
                        first.dimensions, first.dividers, first.divider_ids) or pop.parent != pops[0].parent:
                    raise GateError(f"{self.where}: quadrants of '{group}' differ in dividers or parent")
            element = ET.Element(_G + "QuadrantGate", {_G + "id": self.new_id(group)})
            if pops[0].parent is not None:
                element.set(_G + "parent_id", self.gate_ids[pops[0].parent])
            divider_ids = [self.new_id(did) for did in first.divider_ids]
            for did, dim, values in zip(divider_ids, first.dimensions, first.dividers, strict=True):
                divider = ET.SubElement(element, _G + "divider", {_G + "id": did, **self.dimension_attrs(dim)})
                self.dimension_body(divider, dim)
                for value in values:
                    ET.SubElement(divider, _G + "value").text = _fmt(value)
            renamed = [pop.name for pop in pops if self.gate_ids[pop.name] != pop.name]
            if renamed:  # Quadrant elements take no custom_info: the names go on the QuadrantGate
                info = ET.Element(_D + "custom_info")
                for name in renamed:
                    ET.SubElement(info, "cytopipe", {"quadrant": self.gate_ids[name], "population": name})
                element.insert(0, info)
            for pop in pops:
                quadrant = ET.SubElement(element, _G + "Quadrant", {_G + "id": self.gate_ids[pop.name]})
                gate = pop.gate  # type: ignore[assignment]
                for did, where in zip(divider_ids, gate.location, strict=True):
                    if where is not None:
                        attrs = {_G + "divider_ref": did, _G + "location": _fmt(where)}
                        ET.SubElement(quadrant, _G + "position", attrs)
            elements[group] = element
        return elements


def _unique_id(name: str, used: set[str]) -> str:
    """``name`` made a valid, unused xs:ID (NCName): ``+`` -> ``_pos``, other invalid characters -> ``_``."""
    text = name.replace("+", "_pos")
    text = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "._-") else "_" for ch in text)
    if not text or not (text[0].isalpha() or text[0] == "_"):
        text = "_" + text
    candidate, k = text, 2
    while candidate in used:
        candidate, k = f"{text}_{k}", k + 1
    return candidate


def gate_ids(strategy: GatingStrategy, used: set[str] | None = None) -> dict[str, str]:
    """Population name -> the ``gating:id`` :func:`write_gatingml` gives it (names that are valid xs:IDs are kept).

    The original name travels in the gate's ``custom_info`` and is restored by :func:`read_gatingml`.
    """
    used = set() if used is None else used
    ids: dict[str, str] = {}
    names = [p.name for p in strategy.populations]
    for name in names:  # valid names first, so they never get renamed by a clash with a sanitized one
        if _unique_id(name, set()) == name:
            ids[name] = name
            used.add(name)
    for name in names:
        if name not in ids:
            ids[name] = _unique_id(name, used)
            used.add(ids[name])
    return ids


def write_gatingml(strategy: GatingStrategy, path: str | os.PathLike[str]) -> None:
    """Write a strategy as Gating-ML 2.0 (atomically: a temporary file renamed over ``path``).

    Parameters
    ----------
    strategy : GatingStrategy
        Fixed gates only (fit data-driven gates first).
    path : str or path-like
        Output file.

    Raises
    ------
    GateError
        A gate type Gating-ML cannot express, or inconsistent quadrant/ratio definitions.
    """
    where = os.fspath(path)
    root = _Writer(strategy, where).build()
    ET.indent(root, space="    ")
    data = ET.tostring(root, encoding="UTF-8", xml_declaration=True)
    atomic_write(where, data + b"\n")
