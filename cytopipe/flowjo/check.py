"""``cytopipe flowjo check``: gate every sample of a workspace with its own FlowJo tree and compare the counts.

FlowJo writes the count it computed for every population into the workspace. A population FlowJo never computed
(``count="-1"``, a missing count, or 0 under a parent that has events) is listed but not compared. Populations at or
below a FlowJo 8/9 magnetic gate are compared and counted in the summary: FlowJo moved that gate on the sample
without storing where, so cytopipe's count is that of the stored gate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cytopipe.errors import CytopipeError

from .reader import Node, Workspace, WorkspaceSample, read_workspace, strategy_from_nodes

__all__ = ["CHECK_COLUMNS", "CheckResult", "check_workspace", "find_fcs"]

#: Columns of ``flowjo_check.csv`` (a contract).
CHECK_COLUMNS = ("sample", "population", "flowjo_count", "cytopipe_count", "difference", "relative_difference")
NOT_COMPUTED = "not computed by FlowJo"
#: FlowJo values as cytopipe reads them for a workspace: ``$PnE`` decoded, linear channels not divided by ``$PnG``
#: (FlowJo's counts on the LabKey FACScan files, ``$P1G=2.5``, agree only this way).
FLOWJO_SCALE = "gain"


@dataclass
class CheckResult:
    """What :func:`check_workspace` found."""

    table: pd.DataFrame
    missing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    tolerance: float = 1.0
    #: ``(sample, population)`` of the compared populations at or below a FlowJo magnetic gate (:attr:`Node.magnetic`).
    magnetic: list[tuple[str, str]] = field(default_factory=list)

    @property
    def compared(self) -> pd.DataFrame:
        return self.table[self.table["relative_difference"] != NOT_COMPUTED]

    @property
    def outside(self) -> pd.DataFrame:
        rows = self.compared
        return rows[rows["relative_difference"].astype(float).abs() > self.tolerance]

    @property
    def ok(self) -> bool:
        return not self.missing and not self.failed and self.outside.empty

    def summary(self, path: str) -> str:
        """One line: samples checked, populations compared and within tolerance, missing files."""
        compared = self.compared
        n_samples = self.table["sample"].nunique()
        within = len(compared) - len(self.outside)
        worst = compared["relative_difference"].astype(float).abs().max() if len(compared) else 0.0
        parts = [f"{path}: {n_samples} sample(s), {within}/{len(compared)} populations within "
                 f"{self.tolerance:g} % of FlowJo's counts (largest difference {worst:.2f} %)"]
        skipped = len(self.table) - len(compared)
        if skipped:
            parts.append(f"{skipped} not computed by FlowJo")
        if self.magnetic:
            parts.append(f"{len(self.magnetic)} at or below a FlowJo magnetic gate (FlowJo moves it on each sample "
                         "without storing where; cytopipe gates it where it is stored)")
        if self.missing:
            parts.append(f"{len(self.missing)} FCS file(s) not found: {', '.join(self.missing)}")
        if self.failed:
            parts.append(f"{len(self.failed)} sample(s) failed: " + "; ".join(self.failed.values()))
        return "; ".join(parts)


def find_fcs(sample: WorkspaceSample, index: dict[str, Path]) -> Path | None:
    """The FCS file of a workspace sample: by ``$FIL``, then by the sample's name (never by the stale URI)."""
    for key in (sample.fil, sample.name):
        if key and key.casefold() in index:
            return index[key.casefold()]
    return None


def _index(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for root, _, files in os.walk(folder):
        for name in sorted(files):
            out.setdefault(name.casefold(), Path(root) / name)
    return out


def _flat(nodes: list[Node], parent_count: int | None,
          magnetic: bool = False) -> list[tuple[Node, int | None, bool]]:
    """``(node, its parent's count, at or below a magnetic gate)`` for every node, parents first."""
    out = []
    for node in nodes:
        below = magnetic or node.magnetic
        out.append((node, parent_count, below))
        out.extend(_flat(node.children, node.count, below))
    return out


def check_workspace(path: str | os.PathLike[str], fcs_dir: str | os.PathLike[str] | None = None,
                    tolerance: float = 1.0, exact: bool = True) -> CheckResult:
    """Gate each sample whose FCS file is found with its own tree and compare with FlowJo's counts.

    Parameters
    ----------
    path
        The workspace.
    fcs_dir
        Folder searched (recursively) for the FCS files; default: the workspace's folder.
    tolerance
        Percent difference above which a population fails.
    exact
        Gate on the exact (float64) path.

    Returns
    -------
    CheckResult
        ``table`` has :data:`CHECK_COLUMNS`; ``relative_difference`` is ``100 * difference / flowjo_count``.
    """
    from cytopipe.fcs import read_fcs

    workspace: Workspace = read_workspace(path)
    index = _index(Path(fcs_dir) if fcs_dir is not None else Path(workspace.path).parent)
    rows: list[dict] = []
    result = CheckResult(pd.DataFrame(columns=list(CHECK_COLUMNS)), tolerance=tolerance)
    for sample in workspace.samples:
        if not sample.nodes:
            continue
        fcs = find_fcs(sample, index)
        if fcs is None:
            result.missing.append(sample.fil or sample.name)
            continue
        try:
            strategy, names = strategy_from_nodes(sample.nodes, workspace, f"sample '{sample.name}'", sample)
            events = read_fcs(fcs, scale=FLOWJO_SCALE, exact=exact)
            gated = strategy.apply(events, exact=exact)
        except CytopipeError as exc:
            result.failed[sample.name] = str(exc)
            continue
        for node, parent_count, magnetic in _flat(sample.nodes, sample.count or events.n_events):
            ours = gated.counts[names[node.path]]
            theirs = node.count
            never = theirs is None or theirs < 0 or (theirs == 0 and (parent_count or 0) > 0)
            row = {"sample": sample.name, "population": node.path, "flowjo_count": "" if theirs is None else theirs,
                   "cytopipe_count": ours}
            if never:
                row.update(difference="", relative_difference=NOT_COMPUTED)
            else:
                assert theirs is not None
                diff = ours - theirs
                rel = 100.0 * diff / theirs if theirs else (0.0 if diff == 0 else float("inf"))
                row.update(difference=diff, relative_difference=f"{rel:.4f}")
                if magnetic:
                    result.magnetic.append((sample.name, node.path))
            rows.append(row)
    result.table = pd.DataFrame(rows, columns=list(CHECK_COLUMNS))
    return result
