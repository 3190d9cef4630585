"""Gate files out: YAML written back in friendly units; conversion to Gating-ML 2.0 and FlowJo."""

from __future__ import annotations

import functools
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cytopipe.errors import GateError
from cytopipe.gates import (
    FCS,
    UNCOMPENSATED,
    BooleanGate,
    Dimension,
    EllipsoidGate,
    Gate,
    GatingStrategy,
    PolygonGate,
    QuadrantGate,
    RectangleGate,
)
from cytopipe.outputs import atomic_write
from cytopipe.transforms import (
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

from .load import load_strategy
from .parse import _matrix_id
from .schema import (
    _DEFAULT_ARCSINH_M,
    BOUND_PARAMS,
    COMPENSATION_REFS,
    LINEAR_BY_DEFAULT,
    TRANSFORM_PARAMS,
    _plain,
    _shortest,
    _suggest,
    _to_friendly,
)


class _Flow(dict):
    """A mapping written on one line (``{type: range, channels: [CD3], min: 1.9}``)."""


@functools.cache
def _dumper() -> type:
    """The YAML dumper: block style for the file, flow style for each gate and transform (one line each); made,
    and PyYAML imported, when a YAML file is first written."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
            # Indent list items under their key, as people write them by hand.
            return super().increase_indent(flow, False)

    _Dumper.add_representer(_Flow, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data,
                                                                                flow_style=True))
    return _Dumper


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
    import yaml

    body = yaml.dump(_Writer(strategy).document(), Dumper=_dumper(), sort_keys=False, default_flow_style=False,
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
    from cytopipe.flowjo.constants import MATRIX_ID

    if to == "yaml" and MATRIX_ID in strategy.matrices:
        if out is None:
            raise GateError(f"{os.fspath(path)}: the workspace's compensation matrix is written beside the YAML "
                            "file: give --out FILE.yaml")
        from cytopipe.flowjo.reader import with_matrix_file

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
    from cytopipe.gatingml import write_gatingml

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
