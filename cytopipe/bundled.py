"""What ships with cytopipe: the gating strategies of ``gates/`` and the demo study.

Developers edit the strategies in ``gates/`` at the repository root. The wheel carries the same files as package
data ``cytopipe/strategies/`` (``pyproject.toml`` maps the package ``cytopipe.strategies`` onto ``gates/``), read
with :mod:`importlib.resources`; a source checkout (editable install, ``PYTHONPATH``) has no such folder and reads
``gates/`` itself, so there is one copy of every file.

Every command that takes a gate file (``--gates``) also takes a strategy's name (``treg``, ``treg_cd127``...): an
existing file of that name wins, so a lab's own ``treg`` file is never shadowed by the shipped one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import ConfigError

__all__ = ["Strategy", "find_gate_file", "not_found_hint", "shipped_strategies", "strategies_dir", "strategy_summaries",
           "write_demo"]

#: Extensions of the shipped gate files (YAML or Gating-ML 2.0).
SUFFIXES = (".yaml", ".yml", ".xml")

#: Channels that are detectors rather than markers: scatter and time need no antibody in the panel.
_DETECTOR = re.compile(r"(FSC|SSC|Time)\b", re.IGNORECASE)


def strategies_dir() -> Path:
    """The folder holding the shipped strategies.

    Returns
    -------
    pathlib.Path
        ``cytopipe/strategies`` inside an installed wheel; ``gates/`` beside the package in a source checkout.
    """
    shipped = resources.files("cytopipe") / "strategies"
    if shipped.is_dir():
        # pip unpacks wheels, so the resource is a real folder; loaders and the manifest need a file path.
        return Path(os.fspath(shipped))
    return Path(__file__).resolve().parent.parent / "gates"


def shipped_strategies() -> dict[str, Path]:
    """Every shipped strategy by name (the file name without its extension), sorted by name.

    Returns
    -------
    dict of str to pathlib.Path
        ``{"treg": .../treg.yaml, ...}``; empty when no strategy folder exists.
    """
    folder = strategies_dir()
    if not folder.is_dir():
        return {}
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
    return {p.stem: p for p in files}


def find_gate_file(gates: str | os.PathLike[str]) -> str | Path:
    """Resolve a ``--gates`` value: an existing file, else the shipped strategy of that name.

    Parameters
    ----------
    gates : str or path-like
        A gate file path, or a shipped strategy's name with or without its extension (``treg``, ``treg.yaml``).

    Returns
    -------
    str or pathlib.Path
        ``gates`` unchanged when it is an existing file (a folder named ``treg`` does not hide the strategy), has a
        folder part, or names nothing shipped (the loader then reports the missing file); otherwise the shipped
        file.
    """
    text = os.fspath(gates)
    if Path(text).is_file() or Path(text).name != text:
        return text
    shipped = shipped_strategies()
    stem = Path(text).stem if Path(text).suffix.lower() in SUFFIXES else text
    if stem in shipped and (stem == text or shipped[stem].name == text):
        return shipped[stem]
    return text


def not_found_hint(gates: str | os.PathLike[str]) -> str:
    """The end of a "gate file not found" message when ``gates`` could have been a name: the names that work."""
    text = os.fspath(gates)
    names = ", ".join(shipped_strategies()) if Path(text).name == text else ""
    return f" (shipped strategies: {names}; see `cytopipe gates list`)" if names else ""


@dataclass(frozen=True)
class Strategy:
    """One shipped strategy as ``cytopipe gates list`` shows it."""

    name: str
    description: str
    markers: tuple[str, ...]
    path: Path


def strategy_summaries() -> list[Strategy]:
    """Describe every shipped strategy: its ``name:`` line and the markers a panel needs for it.

    Returns
    -------
    list of Strategy
        In name order. ``markers`` are the channels looked up by marker (``$PnS``), in order of first use;
        ``detectors`` the scatter and time channels, which every cytometer records.

    Raises
    ------
    GateError
        A shipped file does not load (the test suite loads every one).
    """
    from .gatefile import load_strategy

    summaries = []
    for name, path in shipped_strategies().items():
        strategy = load_strategy(path)
        channels = dict.fromkeys(c for p in strategy.populations for d in p.gate.dimensions for c in d.channels)
        summaries.append(Strategy(
            name=name, description=strategy.name or "", path=path,
            markers=tuple(c for c in channels if not _DETECTOR.match(c)),
        ))
    return summaries


def write_demo(out_dir: str | os.PathLike[str]) -> Path:
    """Write the bundled study (the files of ``sample_fcs/``, byte for byte) into a folder.

    Parameters
    ----------
    out_dir : str or path-like
        Folder to write (created); it receives 12 FCS files, ``study.csv``, ``clinical.csv`` and ``truth.csv``.

    Returns
    -------
    pathlib.Path
        The sample sheet, ``out_dir/study.csv``.

    Raises
    ------
    ConfigError
        ``out_dir`` exists and is not a folder.

    Notes
    -----
    The study is simulated with the bundled seed (:data:`cytopipe.simulate.STUDY_SEED`), one generator per file, so
    the files are identical on every machine.
    """
    from .simulate import write_study

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{os.fspath(out_dir)}: not a folder")
    write_study(out)
    return out / "study.csv"
