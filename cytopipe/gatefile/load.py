"""Any gate file (YAML, Gating-ML 2.0, FlowJo workspace) to a strategy; checks against a sample's markers."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from cytopipe.bundled import find_gate_file
from cytopipe.errors import CytopipeError, GateError, MarkerError
from cytopipe.gates import (
    Dimension,
    GatingStrategy,
)

from .parse import _Parser, parse_gates
from .safeyaml import _read_text
from .schema import _suggest


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
    from cytopipe.flowjo import is_workspace

    if is_workspace(where):
        from cytopipe.flowjo import load_workspace_strategy

        return load_workspace_strategy(where, wsp_sample, fcs=fcs)
    text = _read_text(where)
    if _is_gatingml(where, text):
        from cytopipe.gatingml import read_gatingml

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
    from cytopipe.flowjo import is_workspace

    workspace = is_workspace(where)
    try:
        text = "" if workspace else _read_text(where)
    except GateError as exc:
        return [str(exc)]
    fcs_path = sample if isinstance(sample, (str, os.PathLike)) else getattr(sample, "path", None)
    if isinstance(sample, (str, os.PathLike)):
        from cytopipe.fcs import read_fcs

        sample = read_fcs(sample)
    if workspace or _is_gatingml(where, text):
        from cytopipe.gatingml import read_gatingml

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
