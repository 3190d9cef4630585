"""YAML gate files in: parse and validate into a :class:`~cytopipe.gates.GatingStrategy`."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cytopipe.bundled import find_gate_file
from cytopipe.errors import CytopipeError, GateError
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
)
from cytopipe.transforms import (
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

from .safeyaml import MAX_YAML_BYTES, _load_yaml, _read_text, _yaml_message
from .schema import (
    _DEFAULT_ARCSINH_M,
    BOUND_PARAMS,
    CHANNEL_KEYS,
    COMPENSATION_REFS,
    GATE_KEYS,
    LINEAR_BY_DEFAULT,
    MAX_RAW,
    POPULATION_KEYS,
    TOP_KEYS,
    TRANSFORM_PARAMS,
    _is_number,
    _Problem,
    _show,
    _suggest,
    _tidy,
    _to_gatingml,
)


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
        import yaml  # PyYAML only for YAML files (see safeyaml._loader)

        try:
            document = _load_yaml(text)  # a SafeLoader: no arbitrary objects
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
        from cytopipe.compensate import read_spillover_file

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
                from cytopipe.flowjo.transforms import FlowJoBiex, FlowJoLog

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


def _autogate_types() -> dict[str, Callable[..., Gate]]:
    """The data-driven gate types registered by :mod:`cytopipe.autogate` (empty if it registers none)."""
    from cytopipe import autogate

    return dict(getattr(autogate, "GATE_TYPES", {}))


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
