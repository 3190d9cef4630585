"""FlowJo 10 workspace XML: each sample's ``<Sample>`` element rendered on its own, then the workspace joined.

:func:`sample_fragment` renders one sample's :func:`cytopipe.flowjo.write.sample_tree` as the lines of its
``<Sample>`` element. The batch runner's workers do it beside the gating (in parallel), so that the client, after the
last sample, only joins the fragments (:func:`join_workspace`). The two numbers of a fragment that depend on the
other samples are left as markers: the ``sampleID`` (the sample's place in the workspace) and the gate ids, which
FlowJo numbers across the whole workspace (``ID1``, ``ID2``... in sample order). The join replaces them, so the text
depends only on the fragments and their order, never on which worker rendered them or when.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from itertools import count
from typing import Any

from cytopipe.errors import GateError

from .constants import ALL_SAMPLES, COMP_PREFIX, GATING_ML_20, WORKSPACE_VERSION_10

__all__ = ["FLOWJO_VERSION", "sample_fragment", "join_workspace", "render_workspace"]

#: The FlowJo release whose workspace layout is written (``Workspace version="20.0"``, FlowJo 10).
FLOWJO_VERSION = "10.8.0"

_NAMESPACES = (("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance"),
               *((f"xmlns:{prefix}", uri) for prefix, uri in GATING_ML_20.items()))
# Characters XML 1.0 cannot hold at all, not even as character references (C0 controls, lone surrogates, U+FFFE/F):
# every character outside XML's Char production (#x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] |
# [#x10000-#x10FFFF]), listed as they are (the same set; compiled in 0.5 instead of 6 ms, before a run can start).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# Text that needs no escaping at all in an attribute value.
_PLAIN = re.compile("[^&<>\"\t\n\r\x00-\x1f\ud800-\udfff\ufffe\uffff]*")
# A fragment's markers: NUL, which no escaped value holds (it becomes U+FFFD), around "s" (the sampleID) or a gate's
# number within the sample (1, 2, ...).
_MARK = "\x00"
_SAMPLE_ID = f"{_MARK}s{_MARK}"
# The lines a worker has rendered, reused by its next samples (keywords, matrices, transforms and axes repeat);
# emptied when it grows past this many entries (a worker may see thousands of samples with distinct keywords).
_MEMO_LIMIT = 20_000
_MEMO: dict[tuple, Any] = {}


class _Marker(str):
    """An attribute value written as it is: a fragment marker that :func:`join_workspace` replaces."""


# ----------------------------------------------------------------------------------------------------------------
# one sample (runs in the worker)


def sample_fragment(tree: dict) -> dict:
    """Render one sample's ``<Sample>`` element, to be joined into a workspace by :func:`join_workspace`.

    Parameters
    ----------
    tree : dict
        A :func:`cytopipe.flowjo.write.sample_tree` description.

    Returns
    -------
    dict
        JSON-able: ``name`` (the sample's name), ``matrix`` (its spillover record or ``None``, for the workspace's
        ``Matrices``), ``gates`` (how many gate ids it uses) and ``xml`` (its lines, NUL markers in place of the
        ``sampleID`` and of the gate ids).
    """
    if len(_MEMO) > _MEMO_LIMIT:
        _MEMO.clear()
    out = _Writer(depth=2, memo=_MEMO)
    numbers = count(1)
    gate_ids = (_Marker(f"ID{_MARK}{k}{_MARK}") for k in numbers)
    _sample(out, tree, _Marker(_SAMPLE_ID), gate_ids)
    return {"name": tree["name"], "matrix": tree["matrix"], "gates": next(numbers) - 1,
            "xml": "\n".join(out.lines)}


# ----------------------------------------------------------------------------------------------------------------
# the workspace (runs on the client)


def render_workspace(trees: Sequence[dict], groups: dict[str, Sequence[str]] | None = None) -> str:
    """The XML text of a FlowJo 10 workspace holding the given samples.

    Parameters
    ----------
    trees : sequence of dict
        :func:`cytopipe.flowjo.write.sample_tree` descriptions, in the order FlowJo should list them (sample IDs
        1, 2, ...).
    groups : dict, optional
        Extra groups besides "All Samples": group name -> sample names (e.g. one group per subject).

    Returns
    -------
    str
        The workspace, UTF-8 ready; every name and value escaped (characters XML cannot hold become U+FFFD).
    """
    return join_workspace([sample_fragment(tree) for tree in trees], groups)


def join_workspace(fragments: Sequence[dict], groups: dict[str, Sequence[str]] | None = None) -> str:
    """The XML text of a FlowJo 10 workspace from its samples' :func:`sample_fragment` renderings.

    Parameters
    ----------
    fragments : sequence of dict
        :func:`sample_fragment` results, in the order FlowJo should list them: sample IDs 1, 2, ... and gate ids
        ``ID1``, ``ID2``... are given in this order.
    groups : dict, optional
        Extra groups besides "All Samples": group name -> sample names (e.g. one group per subject).

    Returns
    -------
    str
        The workspace: the same text as :func:`render_workspace` of the samples' trees.
    """
    return "".join(workspace_parts(fragments, groups))


def workspace_parts(fragments: Sequence[dict], groups: dict[str, Sequence[str]] | None = None) -> Iterator[str]:
    """:func:`join_workspace` in consecutive pieces: the text before the samples, each sample's (numbered), the rest.

    A caller writing them one at a time never holds the whole workspace (~20 kB per sample) in memory.
    """
    out = _Writer()
    out.text('<?xml version="1.0" encoding="UTF-8"?>')
    out.text("<!-- Written by cytopipe: each sample with the gates cytopipe applied to it (fitted gates as fitted); "
             "population counts are cytopipe's. -->")
    out.open("Workspace", [("version", WORKSPACE_VERSION_10), ("flowJoVersion", FLOWJO_VERSION),
                           ("curGroup", ALL_SAMPLES), *_NAMESPACES])
    ids = {fragment["name"]: k for k, fragment in enumerate(fragments, start=1)}
    matrices = {}
    for fragment in fragments:
        if fragment["matrix"] is not None:
            matrices.setdefault(fragment["matrix"]["id"], fragment["matrix"])
    if matrices:
        out.open("Matrices")
        for matrix in matrices.values():
            _matrix(out, matrix)
        out.close("Matrices")
    else:
        out.empty("Matrices")
    out.open("Groups")
    for group, names in [(ALL_SAMPLES, list(ids)), *(groups or {}).items()]:
        out.open("GroupNode", [("name", group), ("annotation", ""), ("owningGroup", group), ("expanded", "1"),
                               ("sortPriority", "10"), ("count", "-1")])
        out.open("Group", [("name", group), ("live", "1"), ("role", "ws.group.dlog.test" if group == ALL_SAMPLES
                                                                  else "ws.group.dlog.undefined")])
        out.empty("Criteria")
        out.open("SampleRefs")
        for name in names:
            out.empty("SampleRef", [("sampleID", str(ids[name]))])
        out.close("SampleRefs")
        out.close("Group")
        out.close("GroupNode")
    out.close("Groups")
    out.open("SampleList")
    yield "\n".join(out.lines)
    out.lines = []
    gates = 0
    for fragment in fragments:
        pieces = fragment["xml"].split(_MARK)
        sample_id = str(ids[fragment["name"]])
        for k in range(1, len(pieces), 2):  # the markers, between the text pieces
            mark = pieces[k]
            pieces[k] = sample_id if mark == "s" else str(gates + int(mark))
        pieces[0] = "\n" + pieces[0]
        yield "".join(pieces)
        gates += fragment["gates"]
    out.close("SampleList")
    out.close("Workspace")
    yield "\n" + out.result()


def _matrix(out: _Writer, matrix: dict) -> None:
    out.open("transforms:spilloverMatrix", [("spectral", "0"), ("prefix", COMP_PREFIX), ("name", matrix["name"]),
                                            ("editable", "0"), ("status", "FINALIZED"),
                                            ("transforms:id", matrix["id"]), ("suffix", "")])
    out.open("data-type:parameters")
    for channel in matrix["channels"]:
        out.empty("data-type:parameter", [("data-type:name", channel),
                                          ("userProvidedCompInfix", COMP_PREFIX + channel)])
    out.close("data-type:parameters")
    for channel, row in zip(matrix["channels"], matrix["rows"], strict=True):
        out.open("transforms:spillover", [("data-type:parameter", channel),
                                          ("userProvidedCompInfix", COMP_PREFIX + channel)])
        for other, value in zip(matrix["channels"], row, strict=True):
            out.empty("transforms:coefficient", [("data-type:parameter", other), ("transforms:value", _num(value))])
        out.close("transforms:spillover")
    out.close("transforms:spilloverMatrix")


def _sample(out: _Writer, tree: dict, sample_id: str, gate_ids: Iterator[str]) -> None:
    out.open("Sample")
    out.empty("DataSet", [("uri", tree["uri"]), ("sampleID", sample_id)])
    if tree["matrix"] is not None:
        matrix = tree["matrix"]
        out.block(("matrix", matrix["name"], matrix["id"], *matrix["channels"], *map(tuple, matrix["rows"])),
                  _matrix, matrix)
    # The lines depend on each record's parameter, kind and attributes (numbers keyed with their type, as repr would
    # tell 1 from 1.0): a tuple, hashed in a few microseconds where the record's repr took ~25.
    shapes = tuple((r["param"], r["kind"], *((k, type(v), v) for k, v in r["attrs"])) for r in tree["transforms"])
    out.block(("transforms", shapes), _transforms, tree["transforms"])
    out.open("Keywords")
    out.empties("Keyword", ("name", "value"), tree["keywords"])
    out.close("Keywords")
    out.open("SampleNode", [("name", tree["name"]), ("annotation", ""), ("owningGroup", ""), ("expanded", "1"),
                            ("sortPriority", "10"), ("count", str(tree["count"])), ("sampleID", sample_id)])
    _graph(out, tree["populations"], None)
    _subpopulations(out, tree["populations"], None, gate_ids)
    out.close("SampleNode")
    out.close("Sample")


def _transforms(out: _Writer, transforms: list[dict]) -> None:
    out.open("Transformations")
    for record in transforms:
        attrs = [(f"transforms:{key}", _num(value)) for key, value in record["attrs"] if key != "gain"]
        attrs += [(key, _num(value)) for key, value in record["attrs"] if key == "gain"]
        out.open(f"transforms:{record['kind']}", attrs)
        out.empty("data-type:parameter", [("data-type:name", record["param"])])
        out.close(f"transforms:{record['kind']}")
    out.close("Transformations")


def _axes(node: dict | None) -> list[str]:
    gate = node.get("gate") if node else None
    if gate is None:
        return []
    if gate["type"] == "PolygonGate":
        return list(gate["params"])
    return [d["param"] for d in gate["dimensions"]]


def _graph(out: _Writer, children: list[dict], own: dict | None) -> None:
    """The node's default plot: the axes of its first gated child (where FlowJo draws the children's gates)."""
    axes = next((a for a in (_axes(c) for c in children) if a), None) or _axes(own)
    if not axes:
        return
    out.open("Graph", [("smoothing", "0"), ("backColor", "#ffffff"), ("foreColor", "#000000"),
                       ("type", "Pseudocolor" if len(axes) > 1 else "Histogram"), ("fast", "1")])
    out.empty("Axis", [("dimension", "x"), ("name", axes[0]), ("label", ""), ("auto", "auto")])
    out.empty("Axis", [("dimension", "y"), ("name", axes[1] if len(axes) > 1 else ""), ("label", ""),
                       ("auto", "auto")])
    out.close("Graph")


def _subpopulations(out: _Writer, nodes: list[dict], parent_id: str | None, gate_ids: Iterator[str]) -> None:
    if not nodes:
        return
    out.open("Subpopulations")
    for node in nodes:
        out.open(node["node"], [("name", node["name"]), ("annotation", ""), ("owningGroup", ""), ("expanded", "1"),
                                ("sortPriority", "10"), ("count", str(node["count"]))])
        _graph(out, node.get("children", []), node)
        gate_id = None
        if "gate" in node:
            gate_id = next(gate_ids)
            ids = [("gating:id", gate_id)] + ([("gating:parent_id", parent_id)] if parent_id else [])
            shape = _gate_key(node["gate"])
            if shape is None:
                _gate_element(out, node["gate"], ids)
            else:  # the samples of a study repeat their gates: rendered once per worker
                out.block(("gate", gate_id, parent_id, shape), _gate_element, node["gate"], ids)
        else:
            out.open("Dependents")
            for dependent in node["dependents"]:
                out.empty("Dependent", [("name", dependent)])
            out.close("Dependents")
        _subpopulations(out, node.get("children", []), gate_id or parent_id, gate_ids)
        out.close(node["node"])
    out.close("Subpopulations")


def _gate_key(gate: dict) -> tuple | None:
    """What a gate's lines depend on, as a key for :meth:`_Writer.block`; None when a number is not a float (an
    int and a float can be equal and written differently)."""
    if gate["type"] == "RectangleGate":
        numbers = [dim[key] for dim in gate["dimensions"] for key in ("min", "max")]
        shape: tuple = tuple((dim["param"], dim["min"], dim["max"]) for dim in gate["dimensions"])
    else:
        numbers = [value for vertex in gate["vertices"] for value in vertex]
        shape = (*gate["params"], *(tuple(vertex) for vertex in gate["vertices"]))
    if not all(type(value) is float or value is None for value in numbers):
        return None
    return (gate["type"], bool(gate.get("outside")), *shape)


def _gate_element(out: _Writer, gate: dict, ids: list[tuple[str, str]]) -> None:
    out.open("Gate", ids)
    _gate(out, gate, ids)
    out.close("Gate")


def _gate(out: _Writer, gate: dict, ids: list[tuple[str, str]]) -> None:
    common = [("eventsInside", "0" if gate.get("outside") else "1"), ("annoOffsetX", "0"), ("annoOffsetY", "0"),
              ("tint", "#000000"), ("isTinted", "0"), ("lineWeight", "Normal"), ("userDefined", "1")]
    if gate["type"] == "RectangleGate":
        out.open("gating:RectangleGate", [*common, ("percentX", "0"), ("percentY", "0"), *ids])
        for dim in gate["dimensions"]:
            limits = [(f"gating:{key}", _num(dim[key])) for key in ("min", "max") if dim[key] is not None]
            out.open("gating:dimension", limits)
            out.empty("data-type:fcs-dimension", [("data-type:name", dim["param"])])
            out.close("gating:dimension")
        out.close("gating:RectangleGate")
        return
    out.open("gating:PolygonGate", [*common, ("quadId", "-1"), ("gateResolution", "256"), *ids])
    for param in gate["params"]:
        out.open("gating:dimension")
        out.empty("data-type:fcs-dimension", [("data-type:name", param)])
        out.close("gating:dimension")
    indent = "  " * out.depth
    out.lines.extend(f'{indent}<gating:vertex><gating:coordinate data-type:value="{_num(x)}"/>'
                     f'<gating:coordinate data-type:value="{_num(y)}"/></gating:vertex>' for x, y in gate["vertices"])
    out.close("gating:PolygonGate")


def _num(value: Any) -> str:
    """Shortest text that reads back as the same float (integral values without a fraction: ``262144``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    value = float(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if not math.isfinite(value):
        raise GateError(f"FlowJo workspace: cannot write the non-finite number {value}")
    return repr(value)


def _escape(value: str) -> str:
    value = str(value)
    if _PLAIN.fullmatch(value):  # the common case, e.g. numbers and channel names: nothing to replace
        return value
    value = _NOT_XML.sub("\ufffd", value)
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
            .replace("\t", "&#9;").replace("\n", "&#10;").replace("\r", "&#13;"))


class _Writer:
    """Indented XML, one element per line (names are literal; attribute values escaped).

    A workspace repeats most of its lines from sample to sample (keywords, matrices, transforms, axes), so each
    distinct opening or empty element is rendered once and reused (text attribute values only: ``1`` and ``1.0``
    are equal keys but different texts).
    """

    def __init__(self, depth: int = 0, memo: dict[tuple, Any] | None = None) -> None:
        self.lines: list[str] = []
        self.depth = depth
        self._memo: dict[tuple, Any] = {} if memo is None else memo

    @staticmethod
    def _tag(name: str, attrs: Sequence[tuple[str, Any]] | None) -> str:
        return name + "".join([f' {key}="{value if type(value) is _Marker else _escape(value)}"'
                               for key, value in (attrs or ())])

    def _element(self, name: str, attrs: Sequence[tuple[str, Any]] | None, end: str) -> str:
        key = (self.depth, name, end, *attrs) if attrs else (self.depth, name, end)
        line = self._memo.get(key)
        if line is None:
            line = "  " * self.depth + f"<{self._tag(name, attrs)}{end}>"
            if all(type(value) is str for _, value in attrs or ()):
                self._memo[key] = line
        return line

    def text(self, line: str) -> None:
        self.lines.append(line)

    def block(self, key: tuple, render: Any, *args: Any) -> None:
        """Append ``render(self, *args)``'s lines, rendered once per ``key`` (and depth) and then reused: ``key``
        must determine the lines (numbers compared as :func:`_num` writes them)."""
        try:
            lines = self._memo.get((self.depth, "\0block", *key))
        except TypeError:  # an unhashable key: render every time
            render(self, *args)
            return
        if lines is None:
            start = len(self.lines)
            render(self, *args)
            self._memo[(self.depth, "\0block", *key)] = self.lines[start:]
        else:
            self.lines.extend(lines)

    def open(self, name: str, attrs: Sequence[tuple[str, Any]] | None = None) -> None:
        self.lines.append(self._element(name, attrs, ""))
        self.depth += 1

    def close(self, name: str) -> None:
        self.depth -= 1
        self.lines.append("  " * self.depth + f"</{name}>")

    def empty(self, name: str, attrs: Sequence[tuple[str, Any]] | None = None) -> None:
        self.lines.append(self._element(name, attrs, "/"))

    def empties(self, name: str, keys: tuple[str, ...], rows: Sequence[Sequence[Any]]) -> None:
        """``empty(name, list(zip(keys, row)))`` for each row: the same lines, looked up with one key each (a
        sample's ~100 keywords, most of them repeated from the worker's previous samples)."""
        memo, depth, lines = self._memo, self.depth, self.lines
        for row in rows:
            key = (depth, name, "\0row", *row)  # flat: hashed faster than the nested (key, value) pairs
            line = memo.get(key)
            if line is None:
                attrs = tuple(zip(keys, row, strict=True))
                line = self._element(name, attrs, "/")
                if all(type(value) is str for value in row):
                    memo[key] = line
            lines.append(line)

    def result(self) -> str:
        return "\n".join(self.lines) + "\n"
