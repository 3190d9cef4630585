"""YAML gate files: load, validate, write back and convert to and from Gating-ML 2.0.

A gate file is what a scientist writes by hand (schema in ``docs/gatefile.md`` and ``docs/ARCHITECTURE.md``)::

    name: Treg (CD25high FoxP3+)
    compensation: file
    transforms:
      asinh: {type: arcsinh, cofactor: 150}
    populations:
      - name: CD3+
        gate: {type: range, channels: [CD3], min: 1.9}
      - name: Treg
        parent: CD3+
        gate: {type: rectangle, channels: [CD25, {channel: FoxP3, transform: asinh}], min: [2.6, 2.3]}

Coordinates are written in *friendly* units of each dimension's transform (raw values for linear, logicle decades
``0..M``, ``asinh(x / cofactor)``, ``log10(x)``) and converted to Gating-ML 2.0 units on load; :func:`dump_yaml`
converts back. Every mistake is reported as one line ``<file>: population '<name>': <field>: <problem>``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .bundled import find_gate_file, not_found_hint
from .errors import CytopipeError, GateError, MarkerError
from .gates import (
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
)
from .outputs import atomic_write
from .transforms import (
    LN10,
    Arcsinh,
    AutoWidthLogicle,
    Hyperlog,
    Linear,
    Log,
    Logicle,
    Ratio,
    Transform,
    friendly_units,
)

__all__ = [
    "load_gates",
    "parse_gates",
    "load_strategy",
    "check_gates",
    "dump_yaml",
    "convert",
    "resolve_channels",
    "friendly_units",
]

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


# ---------------------------------------------------------------------------------------------------------------
# friendly units


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


# ---------------------------------------------------------------------------------------------------------------
# small helpers


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


#: Largest YAML gate file read (a 10,000-vertex polygon is about 0.25 MB; PyYAML reads about 1 MB/s).
MAX_YAML_BYTES = 2 * 2**20
#: Most values a YAML document may hold once its aliases are expanded, and its deepest nesting.
MAX_YAML_VALUES = 1_000_000
MAX_YAML_DEPTH = 64
#: Longest integer literal (Python refuses to convert more than 4,300 digits; no coordinate needs 300).
MAX_INT_DIGITS = 300


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that refuses repeated keys (a silent overwrite hides a typo in a gate), unhashable keys,
    huge integers, alias bombs and deep nesting, each as a one-line YAML error."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = sum(c.isdigit() for c in str(node.value))
        if digits > MAX_INT_DIGITS:
            raise yaml.constructor.ConstructorError(None, None, f"an integer with {digits} digits (at most "
                                                    f"{MAX_INT_DIGITS})", node.start_mark)
        return super().construct_yaml_int(node)


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            kind = "a list" if isinstance(key_node, yaml.SequenceNode) else "a mapping"
            raise yaml.constructor.ConstructorError(None, None, f"{kind} used as a mapping key (keys are names)",
                                                    key_node.start_mark)
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def _check_expansion(node: yaml.Node | None) -> None:
    """Refuse documents whose aliases expand beyond :data:`MAX_YAML_VALUES` values or that nest deeper than
    :data:`MAX_YAML_DEPTH`, before anything walks them (an alias bomb is small on disk and huge in use).

    Notes
    -----
    The expanded size of a node is 1 + the expanded sizes of its children, memoised per node, so aliases
    (shared nodes) are counted as often as they are referenced, in time linear in the number of distinct nodes.
    Iterative, so a deep document cannot exhaust the stack here.
    """
    if node is None:
        return
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(node, 1, False)]
    while stack:
        current, depth, expanded = stack.pop()
        if id(current) in size:
            continue
        if depth > MAX_YAML_DEPTH:
            raise yaml.constructor.ConstructorError(None, None, f"values nested more than {MAX_YAML_DEPTH} deep",
                                                    current.start_mark)
        if isinstance(current, yaml.ScalarNode):
            size[id(current)] = 1
            continue
        children = [c for pair in current.value for c in pair] if isinstance(current, yaml.MappingNode) \
            else list(current.value)
        if expanded:
            total = 1 + sum(size[id(c)] for c in children)
            if total > MAX_YAML_VALUES:
                raise yaml.constructor.ConstructorError(
                    None, None, f"aliases expand to more than {MAX_YAML_VALUES:,} values (an alias bomb?)",
                    current.start_mark)
            size[id(current)] = total
            continue
        stack.append((current, depth, True))
        stack.extend((c, depth + 1, False) for c in children if id(c) not in size)


def _load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`_Loader` after :func:`_check_expansion` (raises ``yaml.YAMLError``)."""
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise yaml.YAMLError(f"values nested more than {MAX_YAML_DEPTH} deep") from None
        _check_expansion(node)
        return loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()


def _read_text(path: str | os.PathLike[str]) -> str:
    where = os.fspath(path)
    try:
        return Path(where).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GateError(f"{where}: gate file not found{not_found_hint(where)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GateError(f"{where}: cannot read gate file: {exc}") from None


# ---------------------------------------------------------------------------------------------------------------
# parsing and validation


class _Parser:
    """Reads one YAML gate file, collecting every problem instead of stopping at the first."""

    def __init__(self, where: str, base_dir: Path | None) -> None:
        self.where = where
        self.base_dir = base_dir
        self.problems: list[str] = []
        self.transforms: dict[str, Transform | None] = {"linear": None, "logicle": Logicle(name="logicle")}
        self.matrices: dict[str, Any] = {}
        self.default_compensation = FCS
        self.compensation = "file"
        #: (population label, channel name) of every dimension, for marker checks against a sample.
        self.channel_uses: list[tuple[str, str]] = []
        #: Ratio transform name -> the channel pair it divides.
        self.ratio_pairs: dict[str, tuple[str, ...]] = {}
        #: Transform names the file defines itself.
        self.defined: set[str] = set()
        #: Every population name the file declares (valid or not).
        self.declared: list[str] = []

    # -- reporting

    def problem(self, label: str, message: str) -> None:
        """Record ``<file>: <label><message>`` (``label`` is ``"population 'X': "`` or empty)."""
        self.problems.append(" ".join(f"{self.where}: {label}{message}".split()))

    def fail(self, label: str, message: str) -> _Problem:
        """The same line as :meth:`problem`, as an exception that abandons the current population."""
        return _Problem(" ".join(f"{self.where}: {label}{message}".split()))

    # -- top level

    def parse(self, text: str) -> GatingStrategy | None:
        if len(text) > MAX_YAML_BYTES:
            self.problem("", f"the file is too large: {len(text) / 2**20:.1f} MB; a YAML gate file is at most "
                         f"{MAX_YAML_BYTES // 2**20} MB (keep large polygons in Gating-ML)")
            return None
        try:
            document = _load_yaml(text)  # _Loader is a SafeLoader: no arbitrary objects
        except yaml.YAMLError as exc:
            self.problems.append(_yaml_message(self.where, exc))
            return None
        if document is None:
            self.problem("", "populations: missing (the file is empty)")
            return None
        if not isinstance(document, dict):
            self.problem("", f"expected a mapping of top-level keys ({', '.join(TOP_KEYS)}), got {_show(document)}")
            return None
        for key in document:
            if key not in TOP_KEYS:
                self.problem("", f"unknown top-level key '{key}'{_suggest(str(key), TOP_KEYS)}")
        name = document.get("name", "")
        if name is None:
            name = ""
        if not isinstance(name, (str, int, float)) or isinstance(name, bool):
            self.problem("", f"name: expected text, got {_show(name)}")
            name = ""
        self.parse_compensation(document.get("compensation", "file"))
        scale = document.get("scale", "log")
        if scale not in ("log", "gain", "raw"):
            self.problem("", f"scale: expected 'log', 'gain' or 'raw', got {_show(scale)}")
            scale = "log"
        self.parse_transforms(document.get("transforms"))
        if "populations" not in document:
            self.problem("", "populations: missing")
            return None
        populations = document["populations"]
        if not isinstance(populations, list) or not populations:
            self.problem("", f"populations: expected a non-empty list of populations, got {_show(populations)}")
            return None
        parsed = self.parse_populations(populations)
        # Check references against every declared name, so one broken population does not cascade.
        treg = self.reference(document, "treg", self.declared)
        parent = self.reference(document, "parent", self.declared)
        names = [p.name for p in parsed]
        if self.problems:
            return None
        if treg is None and "treg" not in document:
            treg = next((n for n in names if n.casefold() == "treg"), None)
        if parent is None and treg is not None and "parent" not in document:
            parent = next(p.parent for p in parsed if p.name == treg)
        try:
            return GatingStrategy(
                populations=tuple(parsed),
                matrices=dict(self.matrices),
                transforms=self.named_transforms(parsed),
                name=str(name),
                treg=treg,
                parent=parent,
                compensation=self.compensation,
                source=text,
                scale=scale,
            )
        except GateError as exc:
            self.problem("", str(exc))
            return None

    def named_transforms(self, populations: list[Population]) -> dict[str, Transform]:
        """Transforms the file defines, plus the predefined ones its dimensions use."""
        used = {d.transform for p in populations for d in p.gate.dimensions}
        return {k: t for k, t in self.transforms.items() if t is not None and (k in self.defined or t in used)}

    def reference(self, document: dict, key: str, names: list[str]) -> str | None:
        value = document.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.problem("", f"{key}: expected a population name, got {_show(value)}")
            return None
        if value not in names:
            self.problem("", f"{key}: unknown population '{value}'{_suggest(value, names)}")
            return None
        return value

    def parse_compensation(self, value: Any) -> None:
        if not isinstance(value, str) or not value.strip():
            self.problem("", f"compensation: expected 'file', 'none' or a matrix file path, got {_show(value)}")
            return
        self.compensation = value
        if value in COMPENSATION_REFS:
            self.default_compensation = COMPENSATION_REFS[value]
            return
        from .compensate import read_spillover_file

        path = Path(value)
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        if not path.is_file():
            self.problem("", f"compensation: matrix file '{value}' not found (use 'file', 'none' or a path)")
            return
        try:
            spillover = read_spillover_file(path)
        except CytopipeError as exc:
            self.problem("", f"compensation: {exc}")
            return
        matrix_id = _matrix_id(value)
        self.matrices[matrix_id] = spillover
        self.default_compensation = matrix_id

    def parse_transforms(self, value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            self.problem("", f"transforms: expected a mapping of name: {{type: ...}}, got {_show(value)}")
            return
        for name, spec in value.items():
            self.defined.add(str(name))
            try:
                self.transforms[str(name)] = self.transform(str(name), spec)
            except _Problem as exc:
                self.problems.append(str(exc))

    def transform(self, name: str, spec: Any) -> Transform:
        here = f"transforms.{name}"
        if not isinstance(spec, dict):
            raise self.fail("", f"{here}: expected a mapping such as {{type: logicle, M: 4.5}}, got {_show(spec)}")
        kind = spec.get("type")
        if kind is None:
            raise self.fail("", f"{here}.type: missing (one of {', '.join(TRANSFORM_PARAMS)})")
        if not isinstance(kind, str) or kind not in TRANSFORM_PARAMS:
            hint = _suggest(str(kind), TRANSFORM_PARAMS)
            raise self.fail("", f"{here}.type: unknown transform type {_show(kind)}{hint}")
        allowed = TRANSFORM_PARAMS[kind]
        params: dict[str, float] = {}
        auto_width = kind == "logicle" and spec.get("W") == "auto"  # fitted per file (flowCore estimateLogicle)
        for key, raw in spec.items():
            if key == "type" or (key == "W" and auto_width):
                continue
            if key not in allowed and key not in BOUND_PARAMS:
                known = [*allowed, *BOUND_PARAMS]
                raise self.fail("", f"{here}: unknown parameter '{key}' for {kind}{_suggest(str(key), known)}; "
                                f"allowed: {', '.join(known)}")
            if not _is_number(raw):
                raise self.fail("", f"{here}.{key}: expected a number, got {_show(raw)}")
            params[str(key)] = float(raw)
        for key in ("T", "M", "cofactor"):
            if key in params and params[key] <= 0:
                raise self.fail("", f"{here}.{key}: must be > 0, got {_tidy(params[key])}")
        if "W" in params and params["W"] < 0:
            raise self.fail("", f"{here}.W: must be >= 0, got {_tidy(params['W'])}")
        bounds = {key: params.pop(key) for key in BOUND_PARAMS if key in params}
        try:
            if kind == "arcsinh":
                transform = self.arcsinh(name, here, params)
            else:
                values = {k: params.get(k, default) for k, default in allowed.items()}
                from .flowjo.transforms import FlowJoBiex, FlowJoLog

                cls = {"logicle": AutoWidthLogicle if auto_width else Logicle, "hyperlog": Hyperlog,
                       "linear": Linear, "log": Log, "ratio": Ratio, "flowjo_biex": FlowJoBiex,
                       "flowjo_log": FlowJoLog}[kind]
                transform = cls(name=name, **values)
            if not bounds:
                return transform
            lo, hi = (bounds.get(key) for key in BOUND_PARAMS)
            if lo is not None and hi is not None and lo > hi:
                raise self.fail("", f"{here}.boundMin: {_tidy(lo)} is greater than boundMax {_tidy(hi)}")
            # Bounds clamp the transform's output, so they convert like any coordinate on that axis.
            return dataclasses.replace(
                transform,
                bound_min=None if lo is None else _to_gatingml(lo, transform),
                bound_max=None if hi is None else _to_gatingml(hi, transform),
            )
        except (OverflowError, ZeroDivisionError, ValueError) as exc:
            # Parameters that pass every documented bound can still overflow the coefficients (M = 309).
            shown = ", ".join(f"{k}={_tidy(v)}" for k, v in params.items())
            raise self.fail("", f"{here}: parameters out of range ({shown}): {exc}") from None
        except GateError as exc:
            # The transform's own constraint message, e.g. "W must be in (0, M/2], got 3.0".
            detail = str(exc).split(": ", 1)[-1]
            param = detail.split()[0]
            raise self.fail("", f"{here}.{param}: {detail}" if param in allowed else f"{here}: {detail}") from None

    def arcsinh(self, name: str, here: str, params: dict[str, float]) -> Arcsinh:
        if "cofactor" in params:
            extra = sorted(set(params) & {"T", "A"})
            if extra:
                raise self.fail("", f"{here}: give either cofactor or T/M/A, not both ({', '.join(extra)})")
            return Arcsinh.from_cofactor(params["cofactor"], M=params.get("M", _DEFAULT_ARCSINH_M), name=name)
        if "T" not in params:
            raise self.fail("", f"{here}: needs cofactor (asinh(x / cofactor)) or Gating-ML T, M, A")
        return Arcsinh(T=params["T"], M=params.get("M", _DEFAULT_ARCSINH_M), A=params.get("A", 0.0), name=name)

    # -- populations

    def parse_populations(self, entries: list) -> list[Population]:
        parsed: list[Population] = []
        first_seen: dict[str, int] = {}
        specs: list[tuple[int, str, Any]] = []
        for index, entry in enumerate(entries, start=1):
            if not isinstance(entry, dict):
                self.problem("", f"population #{index}: expected a mapping with name, parent and gate, "
                             f"got {_show(entry)}")
                continue
            name = entry.get("name")
            if name is None or (isinstance(name, str) and not name.strip()):
                self.problem("", f"population #{index}: name: missing")
                continue
            if not isinstance(name, (str, int, float)) or isinstance(name, bool):
                self.problem("", f"population #{index}: name: expected text, got {_show(name)}")
                continue
            name = str(name)
            if name in first_seen:
                self.problem("", f"population '{name}': name: duplicate (population #{first_seen[name]} "
                             f"has the same name)")
                continue
            first_seen[name] = index
            specs.append((index, name, entry))
        names = self.declared = [name for _, name, _ in specs]
        for _index, name, entry in specs:
            try:
                parsed.append(self.population(name, entry, names))
            except _Problem as exc:
                self.problems.append(str(exc))
        if len(parsed) == len(specs):
            self.check_cycles(parsed)
        return parsed

    def population(self, name: str, entry: dict, names: list[str]) -> Population:
        label = f"population '{name}': "
        for key in entry:
            if key not in POPULATION_KEYS:
                raise self.fail(label, f"unknown key '{key}'{_suggest(str(key), POPULATION_KEYS)}")
        parent = entry.get("parent")
        if parent is not None:
            if not isinstance(parent, str):
                raise self.fail(label, f"parent: expected a population name, got {_show(parent)}")
            if parent == name:
                raise self.fail(label, "parent: a population cannot be its own parent")
            if parent not in names:
                others = [n for n in names if n != name]
                raise self.fail(label, f"parent: unknown population '{parent}'{_suggest(parent, others)}")
        if "gate" not in entry:
            raise self.fail(label, "gate: missing")
        optional = entry.get("optional", False)
        if not isinstance(optional, bool):
            raise self.fail(label, f"optional: expected true or false, got {_show(optional)}")
        return Population(name=name, gate=self.gate(name, label, entry["gate"], names), parent=parent,
                          optional=optional)

    def check_cycles(self, populations: list[Population]) -> None:
        """Report the first cycle through parents and boolean operands, as ``A -> B -> A``."""
        deps = {p.name: _dependencies(p) for p in populations}
        parents = {p.name: p.parent for p in populations}
        done: set[str] = set()
        for start in deps:
            # Iterative depth-first walk; ``path`` is the current chain of dependencies.
            path: list[str] = []
            stack: list[tuple[str, int]] = [(start, 0)]
            while stack:
                name, k = stack.pop()
                if k == 0:
                    if name in done:
                        continue
                    if name in path:
                        cycle = path[path.index(name):] + [name]
                        field = "parent" if parents[cycle[0]] == cycle[1] else "gate.of"
                        self.problem(f"population '{cycle[0]}': ", f"{field}: cycle {' -> '.join(cycle)}")
                        return
                    path.append(name)
                if k < len(deps[name]):
                    stack.append((name, k + 1))
                    stack.append((deps[name][k], 0))
                else:
                    path.pop()
                    done.add(name)

    # -- gates

    def gate(self, name: str, label: str, spec: Any, names: list[str]) -> Gate:
        if not isinstance(spec, dict):
            raise self.fail(label, f"gate: expected a mapping such as {{type: range, ...}}, got {_show(spec)}")
        kind = spec.get("type")
        if kind is None:
            raise self.fail(label, "gate.type: missing")
        # The registry only for types that are not built in, so a fixed-gate file never imports cytopipe.autogate.
        registry = {} if isinstance(kind, str) and kind in GATE_KEYS else _autogate_types()
        if not isinstance(kind, str) or (kind not in GATE_KEYS and kind not in registry):
            known = [*GATE_KEYS, *registry]
            raise self.fail(label, f"gate.type: unknown gate type {_show(kind)}{_suggest(str(kind), known)}")
        if kind in registry:
            dims = self.dimensions(label, spec.get("channels"), None)
            try:
                gate = registry[kind](spec, dims, f"{self.where}: {label}".rstrip(": "))
            except CytopipeError as exc:
                raise _Problem(str(exc)) from None
            # A data-driven cut may be set on another population (method: reference): it must exist.
            for k, threshold in enumerate(getattr(gate, "thresholds", ())):
                ref = getattr(threshold, "population", None)
                if ref is not None and ref not in names:
                    raise self.fail(label, f"gate.thresholds[{k}].population: unknown population '{ref}'"
                                    f"{_suggest(ref, [n for n in names if n != name])}")
            return gate
        for key in spec:
            if key not in GATE_KEYS[kind]:
                raise self.fail(label, f"gate: unknown key '{key}' for a {kind} gate"
                                f"{_suggest(str(key), GATE_KEYS[kind])}")
        if kind in ("and", "or", "not"):
            return self.boolean(name, label, kind, spec, names)
        n_channels = {"range": 1, "polygon": 2, "quadrant": None, "rectangle": None, "ellipse": None}[kind]
        dims = self.dimensions(label, spec.get("channels"), n_channels, kind)
        build = {"range": self.range, "rectangle": self.rectangle, "polygon": self.polygon,
                 "ellipse": self.ellipse, "quadrant": self.quadrant}[kind]
        try:
            return build(name, label, spec, dims)
        except GateError as exc:
            raise self.fail(label, f"gate: {str(exc).split(': ', 1)[-1]}") from None

    def dimensions(self, label: str, channels: Any, count: int | None, kind: str = "") -> tuple[Dimension, ...]:
        if channels is None:
            raise self.fail(label, "gate.channels: missing")
        if not isinstance(channels, list) or not channels:
            raise self.fail(label, f"gate.channels: expected a list of markers or channels, got {_show(channels)}")
        if count is not None and len(channels) != count:
            raise self.fail(label, f"gate.channels: a {kind} gate needs exactly {count} channel"
                            f"{'s' if count > 1 else ''}, got {len(channels)}")
        return tuple(self.dimension(label, k, item) for k, item in enumerate(channels))

    def dimension(self, label: str, k: int, item: Any) -> Dimension:
        here = f"gate.channels[{k}]"
        transform_name: Any = None
        compensation: Any = None
        ratio_name: Any = None
        if isinstance(item, dict):
            for key in item:
                if key not in CHANNEL_KEYS:
                    raise self.fail(label, f"{here}: unknown key '{key}'{_suggest(str(key), CHANNEL_KEYS)}")
            channel = item.get("channel")
            transform_name = item.get("transform")
            compensation = item.get("compensation")
            ratio_name = item.get("ratio")
        else:
            channel = item
        ratio = self.ratio(label, here, ratio_name, channel) if ratio_name is not None else None
        if ratio is None:
            if isinstance(channel, (int, float)) and not isinstance(channel, bool):
                channel = str(channel)
            if not isinstance(channel, str) or not channel.strip():
                raise self.fail(label, f"{here}: expected a marker or channel name, got {_show(channel)}")
            channel_names = [channel]
        else:
            channel_names = list(channel)
            channel = tuple(channel)
        if transform_name is None:
            # A ratio is a plain number: no transform unless asked for.
            linear = ratio is not None or LINEAR_BY_DEFAULT.search(channel_names[0])
            transform_name = "linear" if linear else "logicle"
        if not isinstance(transform_name, str) or transform_name not in self.transforms:
            raise self.fail(label, f"{here}.transform: unknown transform {_show(transform_name)}"
                            f"{_suggest(str(transform_name), self.transforms)}")
        if isinstance(self.transforms[transform_name], Ratio):
            raise self.fail(label, f"{here}.transform: '{transform_name}' is a ratio; write "
                            f"{{channel: [numerator, denominator], ratio: {transform_name}}}")
        if compensation is None:
            comp = self.default_compensation
        elif isinstance(compensation, str) and compensation in COMPENSATION_REFS:
            comp = COMPENSATION_REFS[compensation]
        else:
            raise self.fail(label, f"{here}.compensation: expected 'file' or 'none', got {_show(compensation)}")
        self.channel_uses.extend((label, name) for name in channel_names)
        return Dimension(channel=channel, transform=self.transforms[transform_name], compensation=comp, ratio=ratio)

    def ratio(self, label: str, here: str, name: Any, channel: Any) -> Ratio:
        """The named ``type: ratio`` transform of a ``{channel: [numerator, denominator], ratio: name}`` entry."""
        if not isinstance(name, str) or not isinstance(self.transforms.get(name), Ratio):
            ratios = [k for k, t in self.transforms.items() if isinstance(t, Ratio)]
            raise self.fail(label, f"{here}.ratio: unknown ratio transform {_show(name)}{_suggest(str(name), ratios)}")
        if not (isinstance(channel, list) and len(channel) == 2 and all(isinstance(c, str) and c for c in channel)):
            raise self.fail(label, f"{here}.channel: a ratio needs [numerator, denominator], got {_show(channel)}")
        # Gating-ML defines each fratio over one channel pair.
        pair = self.ratio_pairs.setdefault(name, tuple(channel))
        if pair != tuple(channel):
            raise self.fail(label, f"{here}.ratio: '{name}' is already used with {list(pair)}; define another "
                            "ratio transform for this channel pair")
        ratio = self.transforms[name]
        assert isinstance(ratio, Ratio)
        return ratio

    def number(self, label: str, here: str, value: Any, allow_null: bool = False) -> float | None:
        if value is None and allow_null:
            return None
        if not _is_number(value):
            wanted = "a number or null" if allow_null else "a number"
            raise self.fail(label, f"{here}: expected {wanted}, got {_show(value)}")
        return float(value)

    def numbers(self, label: str, here: str, value: Any, count: int, what: str, allow_null: bool = False) -> list:
        if not isinstance(value, list):
            raise self.fail(label, f"{here}: expected a list of {count} {what}, got {_show(value)}")
        if len(value) != count:
            raise self.fail(label, f"{here}: expected {count} {what}, got {len(value)}")
        return [self.number(label, f"{here}[{k}]", v, allow_null) for k, v in enumerate(value)]

    def plausible(self, label: str, here: str, values: Sequence[float | None], dims: tuple[Dimension, ...]) -> None:
        """Refuse a coordinate that no instrument can measure: usually a raw value typed on a transformed axis."""
        for k, (value, dim) in enumerate(zip(values, dims, strict=True)):
            transform = dim.transform
            if value is None or dim.ratio is not None or transform is None or isinstance(transform, Linear):
                continue
            with np.errstate(all="ignore"):
                raw = float(transform.inverse(np.array([_to_gatingml(value, transform)]))[0])
            if not math.isfinite(raw) or abs(raw) > MAX_RAW:
                at = f"[{k}]" if len(dims) > 1 else ""
                raise self.fail(label, f"{here}{at}: {_tidy(value)} is beyond any measurable value for "
                                f"'{_name(dim)}': coordinates are in {_units_text(transform)}, not raw values")

    def bounds(self, label: str, lo: list, hi: list, dims: tuple[Dimension, ...]) -> None:
        self.plausible(label, "gate.min", lo, dims)
        self.plausible(label, "gate.max", hi, dims)
        for k, (a, b, dim) in enumerate(zip(lo, hi, dims, strict=True)):
            if a is None and b is None:
                raise self.fail(label, f"gate.min: channel '{_name(dim)}' needs a min or a max (both null)")
            if a is not None and b is not None and a > b:
                at = "" if len(dims) == 1 else f"[{k}]"
                raise self.fail(label, f"gate.min{at}: min {_tidy(a)} is greater than max {_tidy(b)} "
                                f"for channel '{_name(dim)}'")

    def range(self, name: str, label: str, spec: dict, dims: tuple[Dimension, ...]) -> Gate:
        if "min" not in spec and "max" not in spec:
            raise self.fail(label, "gate: a range needs min, max or both")
        lo = self.number(label, "gate.min", spec.get("min"), allow_null=True)
        hi = self.number(label, "gate.max", spec.get("max"), allow_null=True)
        self.bounds(label, [lo], [hi], dims)
        return _rectangle(name, dims, [lo], [hi])

    def rectangle(self, name: str, label: str, spec: dict, dims: tuple[Dimension, ...]) -> Gate:
        n = len(dims)
        if "min" not in spec and "max" not in spec:
            raise self.fail(label, "gate: a rectangle needs min, max or both")
        values = "values (one per channel, null = open)"
        lo = self.numbers(label, "gate.min", spec["min"], n, values, True) if "min" in spec else [None] * n
        hi = self.numbers(label, "gate.max", spec["max"], n, values, True) if "max" in spec else [None] * n
        self.bounds(label, lo, hi, dims)
        return _rectangle(name, dims, lo, hi)

    def polygon(self, name: str, label: str, spec: dict, dims: tuple[Dimension, ...]) -> Gate:
        vertices = spec.get("vertices")
        if vertices is None:
            raise self.fail(label, "gate.vertices: missing")
        if not isinstance(vertices, list):
            raise self.fail(label, f"gate.vertices: expected a list of [x, y] pairs, got {_show(vertices)}")
        if len(vertices) < 3:
            raise self.fail(label, f"gate.vertices: a polygon needs at least 3 vertices, got {len(vertices)}")
        if len(vertices) > MAX_VERTICES:
            raise self.fail(label, f"gate.vertices: a polygon of {len(vertices)} vertices; at most {MAX_VERTICES} "
                            "(simplify the outline)")
        points = [self.numbers(label, f"gate.vertices[{k}]", v, 2, "coordinates [x, y]")
                  for k, v in enumerate(vertices)]
        for k, point in enumerate(points):
            self.plausible(label, f"gate.vertices[{k}]", point, dims)
        converted = [tuple(_to_gatingml(c, d.transform) for c, d in zip(p, dims, strict=True)) for p in points]
        return PolygonGate(name=name, dimensions=dims, vertices=tuple(converted))

    def ellipse(self, name: str, label: str, spec: dict, dims: tuple[Dimension, ...]) -> Gate:
        n = len(dims)
        for key in ("center", "covariance"):
            if key not in spec:
                raise self.fail(label, f"gate.{key}: missing")
        center = self.numbers(label, "gate.center", spec["center"], n, "coordinates (one per channel)")
        self.plausible(label, "gate.center", center, dims)
        rows = spec["covariance"]
        if not isinstance(rows, list) or len(rows) != n:
            raise self.fail(label, f"gate.covariance: expected a {n}x{n} matrix (a list of {n} rows), "
                            f"got {_show(rows)}")
        cov = [self.numbers(label, f"gate.covariance[{i}]", row, n, "values") for i, row in enumerate(rows)]
        # Gating-ML only needs the inverse (its compliance suite has an asymmetric, indefinite one).
        if np.linalg.matrix_rank(np.array(cov)) < n:
            raise self.fail(label, "gate.covariance: matrix is singular (it must be invertible)")
        distance = self.number(label, "gate.distance", spec.get("distance", 1.0))
        if distance is None or distance <= 0:
            raise self.fail(label, f"gate.distance: must be > 0, got {_tidy(distance or 0.0)}")
        scales = [friendly_units(d.transform)[0] for d in dims]
        mean = tuple(_to_gatingml(c, d.transform) for c, d in zip(center, dims, strict=True))
        covariance = tuple(tuple(cov[i][j] / (scales[i] * scales[j]) for j in range(n)) for i in range(n))
        return EllipsoidGate(name=name, dimensions=dims, mean=mean, covariance=covariance, distance_square=distance)

    def quadrant(self, name: str, label: str, spec: dict, dims: tuple[Dimension, ...]) -> Gate:
        n = len(dims)
        for key in ("at", "quadrant"):
            if key not in spec:
                raise self.fail(label, f"gate.{key}: missing")
        at = self.numbers(label, "gate.at", spec["at"], n, "values (one per channel)")
        self.plausible(label, "gate.at", at, dims)
        signs = spec["quadrant"]
        if not isinstance(signs, str) or len(signs) != n or set(signs) - {"+", "-"}:
            raise self.fail(label, f"gate.quadrant: expected {n} signs, '+' (at or above) or '-' (below), one per "
                            f"channel, e.g. '{'+-'[:n] if n <= 2 else '+' * n}', got {_show(signs)}")
        dividers = tuple((_to_gatingml(v, d.transform),) for v, d in zip(at, dims, strict=True))
        # A location equal to the divider belongs to the interval above it; any value below marks '-'.
        location = tuple(d[0] if s == "+" else d[0] - max(1.0, abs(d[0])) for d, s in zip(dividers, signs,
                                                                                           strict=True))
        return QuadrantGate(name=name, dimensions=dims, dividers=dividers, location=location, group=name)

    def boolean(self, name: str, label: str, op: str, spec: dict, names: list[str]) -> Gate:
        operands = spec.get("of")
        if operands is None:
            raise self.fail(label, "gate.of: missing (a list of population names)")
        if not isinstance(operands, list):
            raise self.fail(label, f"gate.of: expected a list of population names, got {_show(operands)}")
        if op == "not" and len(operands) != 1:
            raise self.fail(label, f"gate.of: 'not' takes exactly 1 population, got {len(operands)}")
        if op != "not" and len(operands) < 2:
            raise self.fail(label, f"gate.of: '{op}' needs at least 2 populations, got {len(operands)}")
        refs: list[str] = []
        complement: list[bool] = []
        for k, item in enumerate(operands):
            negate = isinstance(item, dict) and set(item) == {"not"}
            ref = item["not"] if negate else item
            if not isinstance(ref, str):
                raise self.fail(label, f"gate.of[{k}]: expected a population name or {{not: name}}, got {_show(ref)}")
            if ref == name:
                raise self.fail(label, f"gate.of: cycle {name} -> {name}")
            if ref not in names:
                others = [n for n in names if n != name]
                raise self.fail(label, f"gate.of: unknown population '{ref}'{_suggest(ref, others)}")
            refs.append(ref)
            complement.append(negate)
        return BooleanGate(name=name, dimensions=(), op=op, operands=tuple(refs), complement=tuple(complement))


def _rectangle(name: str, dims: tuple[Dimension, ...], lo: Sequence[float | None],
               hi: Sequence[float | None]) -> RectangleGate:
    return RectangleGate(
        name=name,
        dimensions=dims,
        min=tuple(None if v is None else _to_gatingml(v, d.transform) for v, d in zip(lo, dims, strict=True)),
        max=tuple(None if v is None else _to_gatingml(v, d.transform) for v, d in zip(hi, dims, strict=True)),
    )


def _name(dim: Dimension) -> str:
    """A dimension's channel as written in a gate file (``CD4/CD8`` for a ratio)."""
    return "/".join(dim.channels)


def _units_text(transform: Transform) -> str:
    """How a gate file writes coordinates on this transform's axis, for messages."""
    if isinstance(transform, (Logicle, Hyperlog)):
        return f"{transform.kind} decades (0 to M = {_tidy(transform.M)})"
    if isinstance(transform, Arcsinh):
        return "asinh(x / cofactor)"
    if isinstance(transform, Log):
        return "log10(x)"
    return f"{transform.kind} units"


def _dependencies(pop: Population) -> list[str]:
    deps = [pop.parent] if pop.parent is not None else []
    if isinstance(pop.gate, BooleanGate):
        deps.extend(pop.gate.operands)
    return deps


def _matrix_id(path: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).stem) or "matrix"
    return f"matrix_{stem}" if stem in (FCS, UNCOMPENSATED) else stem


def _yaml_message(where: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    line = f"line {mark.line + 1}: " if mark is not None else ""
    context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and start is not None and mark is not None and start.line != mark.line:
        # The parser notices an unclosed bracket where the file ends; point at where it was opened too.
        problem += f" ({context} that starts on line {start.line + 1})"
    return " ".join(f"{where}: {line}malformed YAML: {problem}".split())


def _autogate_types() -> dict[str, Callable[..., Gate]]:
    """The data-driven gate types registered by :mod:`cytopipe.autogate` (empty if it registers none)."""
    from . import autogate

    return dict(getattr(autogate, "GATE_TYPES", {}))


# ---------------------------------------------------------------------------------------------------------------
# public API: loading and checking


def parse_gates(text: str, where: str = "<gates>", base_dir: str | os.PathLike[str] | None = None) -> GatingStrategy:
    """Build a gating strategy from YAML text.

    Parameters
    ----------
    text : str
        The YAML gate definition.
    where : str
        Name used in messages (normally the file path).
    base_dir : path-like, optional
        Folder that a relative ``compensation`` matrix path is resolved against.

    Returns
    -------
    GatingStrategy

    Raises
    ------
    GateError
        The first problem found, with a count of the others (run :func:`check_gates` to list them all).
    """
    parser = _Parser(where, Path(base_dir) if base_dir is not None else None)
    strategy = parser.parse(text)
    if parser.problems:
        more = len(parser.problems) - 1
        raise GateError(parser.problems[0] + (f" (and {more} more problem{'s' if more > 1 else ''})"
                                              if more else ""))
    assert strategy is not None
    return strategy


def load_gates(path: str | os.PathLike[str]) -> GatingStrategy:
    """Load a YAML gate file.

    Parameters
    ----------
    path : str or path-like
        The ``.yaml`` file (schema in ``docs/gatefile.md``), or a shipped strategy's name (``treg``; an existing
        file of that name wins, see :func:`cytopipe.bundled.find_gate_file`).

    Returns
    -------
    GatingStrategy
        Coordinates converted to Gating-ML 2.0 units; ``source`` holds the YAML text.

    Raises
    ------
    GateError
        An unreadable file or any schema mistake; one line ``<file>: population '<name>': <field>: <problem>``.
    """
    where = os.fspath(find_gate_file(path))
    return parse_gates(_read_text(where), where, Path(where).parent)


def read_gate_text(path: str | os.PathLike[str]) -> str:
    """The text of a gate file or of a shipped strategy (``cytopipe gates show NAME``), unparsed.

    Raises
    ------
    GateError
        No such file or strategy, or an unreadable file.
    """
    return _read_text(find_gate_file(path))


def _is_gatingml(path: str, text: str) -> bool:
    return path.lower().endswith(".xml") or text.lstrip("\ufeff \t\r\n").startswith("<")


def load_strategy(path: str | os.PathLike[str], wsp_sample: str | None = None,
                  fcs: str | os.PathLike[str] | None = None) -> GatingStrategy:
    """Load a gate file of any kind: YAML, Gating-ML 2.0 XML or a FlowJo workspace (by extension, else by content).

    Parameters
    ----------
    path : str or path-like
        A FlowJo workspace (``.wsp``, or XML whose root is ``<Workspace>``) is read with
        :func:`cytopipe.flowjo.load_workspace_strategy`; other ``.xml`` (or any file starting with ``<``) with
        :func:`cytopipe.gatingml.read_gatingml`; anything else with :func:`load_gates`. A shipped strategy's name
        (``treg_cd127``) loads the shipped file.
    wsp_sample : str, optional
        For a workspace: the sample or group whose tree to use (``--wsp-sample``); ``"own"`` = the tree of the
        workspace sample that ``fcs`` is. Ignored for other gate files.
    fcs : str or path-like, optional
        The FCS file the strategy is for (needed by ``wsp_sample="own"``).

    Returns
    -------
    GatingStrategy

    Raises
    ------
    GateError
        An unreadable or invalid file.
    """
    where = os.fspath(find_gate_file(path))
    from .flowjo import is_workspace

    if is_workspace(where):
        from .flowjo import load_workspace_strategy

        return load_workspace_strategy(where, wsp_sample, fcs=fcs)
    text = _read_text(where)
    if _is_gatingml(where, text):
        from .gatingml import read_gatingml

        return read_gatingml(where)
    return parse_gates(text, where, Path(where).parent)


def check_gates(path: str | os.PathLike[str], sample: Any = None, wsp_sample: str | None = None) -> list[str]:
    """Validate a gate file and list every problem (empty when the file is fine).

    Parameters
    ----------
    path : str or path-like
        A YAML gate file or a Gating-ML 2.0 file, or a shipped strategy's name.
    sample : cytopipe.fcs.Sample or path-like, optional
        When given, every channel the gates name must resolve through ``sample.find_channel``.
    wsp_sample : str, optional
        For a FlowJo workspace, the tree to check (see :func:`load_strategy`).

    Returns
    -------
    list of str
        One line per problem, e.g.
        ``gates/treg.yaml: population 'Treg': gate.channels: unknown marker 'CD52' (did you mean 'CD25'?)``.

    Raises
    ------
    CytopipeError
        Only when ``sample`` is a path that cannot be read as FCS.
    """
    where = os.fspath(find_gate_file(path))
    from .flowjo import is_workspace

    workspace = is_workspace(where)
    try:
        text = "" if workspace else _read_text(where)
    except GateError as exc:
        return [str(exc)]
    fcs_path = sample if isinstance(sample, (str, os.PathLike)) else getattr(sample, "path", None)
    if isinstance(sample, (str, os.PathLike)):
        from .fcs import read_fcs

        sample = read_fcs(sample)
    if workspace or _is_gatingml(where, text):
        from .gatingml import read_gatingml

        try:
            strategy = load_strategy(where, wsp_sample, fcs=fcs_path) if workspace else read_gatingml(where)
        except CytopipeError as exc:
            return [str(exc)]
        uses = [(f"population '{p.name}': ", c) for p in strategy.populations for d in p.gate.dimensions
                for c in d.channels]
        problems: list[str] = []
    else:
        parser = _Parser(where, Path(where).parent)
        parser.parse(text)
        uses, problems = parser.channel_uses, parser.problems
    if sample is not None:
        problems.extend(_marker_problems(where, uses, sample))
    return problems


def strategy_marker_problems(strategy: GatingStrategy, sample: Any, where: str) -> list[str]:
    """One line per channel of ``strategy`` that ``sample`` lacks (or holds ambiguously), with a suggestion.

    Parameters
    ----------
    strategy : GatingStrategy
        A loaded strategy (YAML or Gating-ML).
    sample : cytopipe.fcs.Sample
        The sample whose markers (``$PnS``) and detectors (``$PnN``) the channels must resolve to.
    where : str
        The gate file's name, for the messages.

    Returns
    -------
    list of str
        Lines as :func:`check_gates` writes them; empty when every channel resolves.
    """
    uses = [(f"population '{p.name}': ", c) for p in strategy.populations
            for d in getattr(p.gate, "dimensions", ()) for c in d.channels]
    return _marker_problems(where, uses, sample)


def _marker_problems(where: str, uses: list[tuple[str, str]], sample: Any) -> list[str]:
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    candidates = _channel_candidates(sample)
    for label, channel in uses:
        if (label, channel) in seen:
            continue
        seen.add((label, channel))
        try:
            sample.find_channel(channel)
        except MarkerError as exc:
            text = str(exc)
            if "ambiguous" in text:
                detail = text.split("ambiguous", 1)[1].lstrip(": ")
                problems.append(f"{where}: {label}gate.channels: marker '{channel}' is ambiguous: {detail}")
            else:
                problems.append(f"{where}: {label}gate.channels: unknown marker '{channel}'"
                                f"{_suggest(channel, candidates)}")
    return problems


def _channel_candidates(sample: Any) -> list[str]:
    """Names a user could have meant: each marker's first token, full markers, then ``$PnN``."""
    names: list[str] = []
    for marker in sample.markers:
        if marker:
            token = re.split(r"[\s/,;:()]+", marker.strip())[0]
            names.extend([token, marker])
    names.extend(sample.channels)
    return list(dict.fromkeys(names))


def resolve_channels(strategy: GatingStrategy, sample: Any) -> GatingStrategy:
    """Rewrite every dimension's marker name as the sample's ``$PnN`` (for tools that match ``$PnN`` only).

    Parameters
    ----------
    strategy : GatingStrategy
    sample : cytopipe.fcs.Sample

    Returns
    -------
    GatingStrategy
        The same gates; channels renamed (e.g. ``CD4`` -> ``FITC-A``).

    Raises
    ------
    MarkerError
        A channel the sample does not have (or matches ambiguously).
    """

    def rename(dim: Dimension) -> Dimension:
        names = tuple(sample.channels[sample.find_channel(c)] for c in dim.channels)
        return dataclasses.replace(dim, channel=names if isinstance(dim.channel, tuple) else names[0])

    populations = tuple(
        dataclasses.replace(p, gate=dataclasses.replace(p.gate, dimensions=tuple(rename(d) for d in p.gate.dimensions)))
        for p in strategy.populations
    )
    return dataclasses.replace(strategy, populations=populations)


# ---------------------------------------------------------------------------------------------------------------
# writing YAML


class _Dumper(yaml.SafeDumper):
    """Block style for the file, flow style for each gate and transform (one line each)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        # Indent list items under their key, as people write them by hand.
        return super().increase_indent(flow, False)


class _Flow(dict):
    """A mapping written on one line (``{type: range, channels: [CD3], min: 1.9}``)."""


_Dumper.add_representer(_Flow, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data,
                                                                            flow_style=True))


def _transform_spec(transform: Transform) -> _Flow:
    spec = _unbounded_spec(transform)
    for key, value in zip(BOUND_PARAMS, (transform.bound_min, transform.bound_max), strict=True):
        if value is not None:
            spec[key] = _to_friendly(value, transform)
    return spec


def _unbounded_spec(transform: Transform) -> _Flow:
    if isinstance(transform, Arcsinh):
        if transform.A == 0:
            growth = math.sinh(transform.M * LN10)  # Arcsinh.from_cofactor: T = cofactor * growth
            spec = _Flow(type="arcsinh", cofactor=_shortest(transform.T / growth, lambda c: c * growth, transform.T))
            if transform.M != _DEFAULT_ARCSINH_M:
                spec["M"] = _plain(transform.M)
            return spec
        return _Flow(type="arcsinh", T=_plain(transform.T), M=_plain(transform.M), A=_plain(transform.A))
    kinds = {Logicle: "logicle", Hyperlog: "hyperlog", Linear: "linear", Log: "log", Ratio: "ratio"}
    kind = next((k for cls, k in kinds.items() if isinstance(transform, cls)), None)
    if kind is None and transform.kind in ("flowjo-biex", "flowjo-log"):
        kind = transform.kind.replace("-", "_")
    if kind is None:
        raise GateError(f"transform '{transform.name}' ({transform.kind}) has no YAML gate-file form")
    spec = _Flow(type=kind, **{k: _plain(getattr(transform, k)) for k in TRANSFORM_PARAMS[kind]})
    if isinstance(transform, AutoWidthLogicle):
        spec["W"] = "auto"
    return spec


class _Writer:
    """Turns a strategy back into gate-file structures, in friendly units."""

    def __init__(self, strategy: GatingStrategy) -> None:
        self.strategy = strategy
        self.names: dict[Transform, str] = {}
        self.default_comp, self.top_comp = self.compensation_default()

    def compensation_default(self) -> tuple[str, str]:
        comp = self.strategy.compensation
        if comp not in COMPENSATION_REFS:
            matrix_id = _matrix_id(comp)
            if matrix_id in self.strategy.matrices:
                return matrix_id, comp
        # Otherwise the reference most dimensions use becomes the file's default.
        refs = [d.compensation for p in self.strategy.populations for d in p.gate.dimensions]
        default = UNCOMPENSATED if refs.count(UNCOMPENSATED) > refs.count(FCS) else FCS
        return default, {FCS: "file", UNCOMPENSATED: "none"}[default]

    def transform_names(self) -> dict[str, Transform]:
        # Named transforms no dimension uses are kept when YAML can express them, dropped otherwise.
        used: list[Transform] = [t for t in self.strategy.transforms.values() if isinstance(t, _KINDS)]
        used += [t for p in self.strategy.populations for d in p.gate.dimensions for t in (d.ratio, d.transform)
                 if t is not None]
        taken = {"linear"} if any(d.transform is None for p in self.strategy.populations
                                  for d in p.gate.dimensions) else set()
        out: dict[str, Transform] = {}
        for transform in dict.fromkeys(used):
            base = transform.name or transform.kind
            name, k = base, 2
            while name in taken or name in out:
                name, k = f"{base}_{k}", k + 1
            out[name] = transform
            self.names[transform] = name
        return out

    def channel(self, dim: Dimension) -> Any:
        name = "linear" if dim.transform is None else self.names[dim.transform]
        spec: dict[str, Any]
        if dim.ratio is not None:
            spec = {"channel": list(dim.channels), "ratio": self.names[dim.ratio]}
            default = "linear"
        else:
            spec = {"channel": str(dim.channel)}
            default = "linear" if LINEAR_BY_DEFAULT.search(str(dim.channel)) else "logicle"
        if name != default:
            spec["transform"] = name
        if dim.compensation != self.default_comp:
            if dim.compensation not in (FCS, UNCOMPENSATED):
                raise GateError(f"dimension {dim.label}: spectrum matrix '{dim.compensation}' has no YAML gate-file "
                                "form")
            spec["compensation"] = {FCS: "file", UNCOMPENSATED: "none"}[dim.compensation]
        return spec["channel"] if len(spec) == 1 else spec

    def gate(self, gate: Gate) -> _Flow:
        dims = gate.dimensions
        channels = [self.channel(d) for d in dims]

        def friendly(values: Sequence[float | None]) -> list:
            return [_to_friendly(v, d.transform) for v, d in zip(values, dims, strict=True)]

        if isinstance(gate, BooleanGate):
            refs = [{"not": r} if c and gate.op != "not" else r
                    for r, c in zip(gate.operands, gate.complement, strict=True)]
            op = gate.op
            if op == "not" and gate.complement[0]:
                # not(complement(X)) is X itself: an 'and' of one operand is not allowed, so spell it as or(X, X).
                op, refs = "or", [gate.operands[0], gate.operands[0]]
            return _Flow(type=op, of=refs)
        if isinstance(gate, QuadrantGate):
            if all(len(v) == 1 for v in gate.dividers) and None not in gate.location:
                at = friendly([v[0] for v in gate.dividers])
                signs = "".join("+" if loc >= v[0] else "-" for loc, v in zip(gate.location, gate.dividers,
                                                                               strict=True))
                return _Flow(type="quadrant", channels=channels, at=at, quadrant=signs)
            # Several divider values, or an axis left open: the same region as a rectangle over the constrained
            # axes (an unconstrained axis does not change membership).
            keep = [k for k, (a, b) in enumerate(gate.intervals()) if a is not None or b is not None]
            if not keep:
                raise GateError(f"gate '{gate.name}': a quadrant constrained on no axis has no YAML gate-file form")
            sub = [dims[k] for k in keep]
            lo = [_to_friendly(gate.intervals()[k][0], dims[k].transform) for k in keep]
            hi = [_to_friendly(gate.intervals()[k][1], dims[k].transform) for k in keep]
            kind = "range" if len(keep) == 1 else "rectangle"
            spec = _Flow(type=kind, channels=[self.channel(d) for d in sub])
            for key, values in (("min", lo), ("max", hi)):
                if any(v is not None for v in values):
                    spec[key] = values[0] if kind == "range" else values
            return spec
        if isinstance(gate, RectangleGate):
            if len(dims) == 1:
                spec = _Flow(type="range", channels=channels)
                for key, values in (("min", gate.min), ("max", gate.max)):
                    if values[0] is not None:
                        spec[key] = friendly(values)[0]
                return spec
            spec = _Flow(type="rectangle", channels=channels)
            for key, values in (("min", gate.min), ("max", gate.max)):
                if any(v is not None for v in values):
                    spec[key] = friendly(values)
            return spec
        if isinstance(gate, PolygonGate):
            return _Flow(type="polygon", channels=channels, vertices=[friendly(v) for v in gate.vertices])
        if isinstance(gate, EllipsoidGate):
            scales = [friendly_units(d.transform)[0] for d in dims]
            cov = [[_shortest(c * scales[i] * scales[j], lambda f, k=scales[i] * scales[j]: f / k, c)
                    for j, c in enumerate(row)] for i, row in enumerate(gate.covariance)]
            spec = _Flow(type="ellipse", channels=channels, center=friendly(gate.mean), covariance=cov)
            if gate.distance_square != 1.0:
                spec["distance"] = _plain(gate.distance_square)
            return spec
        # A data-driven gate (cytopipe.autogate) may describe its own settings, in friendly units.
        to_spec = getattr(gate, "to_spec", None)
        if callable(to_spec):
            spec = _Flow(type=getattr(gate, "kind", type(gate).__name__), channels=channels)
            spec.update({k: v for k, v in to_spec().items() if k not in ("type", "channels")})
            return spec
        raise GateError(f"gate '{gate.name}': {type(gate).__name__} has no YAML gate-file form")

    def document(self) -> dict[str, Any]:
        strategy = self.strategy
        doc: dict[str, Any] = {}
        if strategy.name:
            doc["name"] = strategy.name
        if strategy.treg is not None:
            doc["treg"] = strategy.treg
        if strategy.parent is not None:
            doc["parent"] = strategy.parent
        doc["compensation"] = self.top_comp
        if strategy.scale != "log":
            doc["scale"] = strategy.scale
        transforms = self.transform_names()
        if transforms:
            doc["transforms"] = {name: _transform_spec(t) for name, t in transforms.items()}
        populations = []
        for pop in strategy.populations:
            entry: dict[str, Any] = {"name": pop.name}
            if pop.parent is not None:
                entry["parent"] = pop.parent
            entry["gate"] = self.gate(pop.gate)
            if getattr(pop, "optional", False):
                entry["optional"] = True
            populations.append(entry)
        doc["populations"] = populations
        return doc


_KINDS = (Logicle, Hyperlog, Arcsinh, Linear, Log, Ratio)


def dump_yaml(strategy: GatingStrategy) -> str:
    """Write a strategy as a YAML gate file (coordinates in friendly units).

    Parameters
    ----------
    strategy : GatingStrategy
        Any strategy of fixed gates whose dimensions use logicle, hyperlog, arcsinh, linear, log or no transform
        and the file's own spillover or none (a ``compensation`` matrix loaded from YAML is kept as its path).

    Returns
    -------
    str
        YAML text that :func:`parse_gates` turns back into the same gates.

    Raises
    ------
    GateError
        For what a gate file cannot express: ratio dimensions, bounded transforms, named spectrum matrices.
    """
    body = yaml.dump(_Writer(strategy).document(), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=100_000)
    return "# cytopipe gate file; coordinates in each channel's transformed units (see docs/gatefile.md)\n" + body


def convert(path: str | os.PathLike[str], to: str, out: str | os.PathLike[str] | None = None,
            wsp_sample: str | None = None) -> str | Path:
    """Convert a gate file between YAML and Gating-ML 2.0.

    Parameters
    ----------
    path : str or path-like
        A YAML gate file or a Gating-ML 2.0 file.
    to : {"gatingml", "yaml"}
        Target format.
    out : str or path-like, optional
        File to write; when omitted the converted text is returned.

    Returns
    -------
    str or pathlib.Path
        The text (``out`` omitted) or the path written.

    Raises
    ------
    GateError
        An invalid input file, an unknown target, or a strategy the target format cannot express.
    """
    if to not in ("gatingml", "yaml"):
        raise GateError(f"{os.fspath(path)}: unknown target format {to!r}{_suggest(str(to), ('gatingml', 'yaml'))}; "
                        "use 'gatingml' or 'yaml'")
    strategy = load_strategy(path, wsp_sample)
    from .flowjo.constants import MATRIX_ID

    if to == "yaml" and MATRIX_ID in strategy.matrices:
        if out is None:
            raise GateError(f"{os.fspath(path)}: the workspace's compensation matrix is written beside the YAML "
                            "file: give --out FILE.yaml")
        from .flowjo.reader import with_matrix_file

        strategy = with_matrix_file(strategy, out)
    if to == "yaml":
        try:
            text = dump_yaml(strategy)
        except GateError as exc:
            raise GateError(f"{os.fspath(path)}: cannot convert to YAML: {exc}") from None
        if out is None:
            return text
        atomic_write(out, text)
        return Path(out)
    from .gatingml import write_gatingml

    def write(target: Path) -> None:
        try:
            write_gatingml(strategy, target)
        except GateError as exc:
            # Name the input file, not the (possibly temporary) output the writer was given.
            detail = str(exc).removeprefix(f"{os.fspath(target)}: ")
            raise GateError(f"{os.fspath(path)}: cannot convert to Gating-ML: {detail}") from None

    if out is not None:
        write(Path(out))
        return Path(out)
    with tempfile.TemporaryDirectory(prefix="cytopipe-") as folder:
        target = Path(folder) / "gates.xml"
        write(target)
        return target.read_text(encoding="utf-8")
