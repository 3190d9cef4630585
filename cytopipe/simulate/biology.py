"""Blood of the simulated study: event labels, cell phenotypes, a sample's composition and a subject's design."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

#: Event labels; ``labels`` arrays hold indices into this tuple.
POPULATIONS = (
    "debris",
    "dead",
    "doublet",
    "granulocyte",
    "monocyte",
    "B",
    "NK",
    "CD8 T",
    "CD8 T CD25+",
    "DN T",
    "CD4 Tconv",
    "CD4 activated",
    "Treg",
)
_CODE = {name: code for code, name in enumerate(POPULATIONS)}
#: Populations that make up the true CD4+ T cells (the Treg % denominator).
CD4_POPULATIONS = ("CD4 Tconv", "CD4 activated", "Treg")
_LYMPHOCYTES = ("B", "NK", "CD8 T", "CD8 T CD25+", "DN T", "CD4 Tconv", "CD4 activated", "Treg")

# Autofluorescence spectrum across the detectors (relative to FITC), fixed cells on a 488/633 nm instrument.
_AF_SPECTRUM = np.array([1.0, 0.55, 0.35, 0.2, 0.08, 0.1])


@dataclass(frozen=True)
class _Phenotype:
    """Scatter (fresh cells) and staining of one cell type, in BD FACSCanto units after compensation.

    ``stains`` maps a marker to ``(median, sdlog)`` or ``(median, sdlog, fraction expressing)``; absent markers
    carry no stain (autofluorescence and noise only). ``shoulder`` maps a marker to ``(fraction, median, sdlog)``:
    that fraction of the cells takes its stain from this second, dimmer log-normal instead.
    """

    fsc: tuple[float, float]
    ssc: tuple[float, float]
    autofluorescence: float
    stains: Mapping[str, tuple[float, ...]]
    shoulder: Mapping[str, tuple[float, float, float]] = field(default_factory=dict)


# Medians are on the compensated scale of a FACSCanto II with T = 262144; logicle decades (W=0.5, M=4.5) for
# orientation: 100 -> 0.96, 1000 -> 2.04, 3000 -> 2.56, 10000 -> 3.08. FoxP3 staining of FoxP3- cells is the
# non-specific intracellular background that fix/perm brings.
_PHENOTYPES: dict[str, _Phenotype] = {
    "granulocyte": _Phenotype((100_000, 0.10), (105_000, 0.20), 900,
                              {"CD4": (250, 0.6), "CD25": (60, 0.6), "FoxP3": (200, 0.5)}),
    "monocyte": _Phenotype((88_000, 0.10), (36_000, 0.22), 450,
                           {"CD4": (1800, 0.35), "CD25": (120, 0.6), "CD127": (60, 0.6), "FoxP3": (220, 0.5)}),
    "B": _Phenotype((60_000, 0.09), (11_500, 0.18), 160,
                    {"CD25": (110, 0.9), "CD127": (40, 0.6), "FoxP3": (70, 0.5)}),
    "NK": _Phenotype((64_000, 0.09), (16_000, 0.20), 170,
                     {"CD8": (1500, 0.6, 0.35), "CD25": (120, 0.7), "CD127": (90, 0.6), "FoxP3": (70, 0.5)}),
    "CD8 T": _Phenotype((61_000, 0.09), (12_000, 0.18), 150,
                        {"CD3": (8500, 0.30), "CD8": (16_000, 0.35), "CD25": (50, 0.8), "CD127": (1400, 0.7),
                         "FoxP3": (60, 0.5)}),
    "CD8 T CD25+": _Phenotype((65_000, 0.10), (13_000, 0.18), 160,
                              {"CD3": (8000, 0.30), "CD8": (14_000, 0.35), "CD25": (800, 0.45), "CD127": (500, 0.6),
                               "FoxP3": (110, 0.6)}),
    "DN T": _Phenotype((61_000, 0.09), (12_500, 0.18), 150,
                       {"CD3": (7000, 0.35), "CD8": (150, 1.0), "CD25": (60, 0.8), "CD127": (900, 0.7),
                        "FoxP3": (60, 0.5)}),
    "CD4 Tconv": _Phenotype((61_000, 0.09), (12_000, 0.18), 150,
                            {"CD3": (7500, 0.30), "CD4": (11_000, 0.25), "CD25": (90, 0.8), "CD127": (2600, 0.4),
                             "FoxP3": (60, 0.5)}),
    "CD4 activated": _Phenotype((66_000, 0.10), (13_000, 0.18), 170,
                                {"CD3": (6800, 0.30), "CD4": (9500, 0.25), "CD25": (850, 0.45),
                                 "CD127": (1300, 0.40), "FoxP3": (150, 0.7)}),
    "Treg": _Phenotype((62_000, 0.09), (12_500, 0.18), 150,
                       {"CD3": (7000, 0.30), "CD4": (9800, 0.25), "CD25": (3200, 0.38), "CD127": (180, 0.40),
                        "FoxP3": (2000, 0.42)}),
}


@dataclass(frozen=True)
class Biology:
    """Composition and staining of one blood sample (the knobs of biological and preparation variation).

    Parameters
    ----------
    lymphocyte_fraction
        Lymphocytes among single leukocytes (the rest: monocytes and granulocytes). PBMC: 0.6-0.85.
    granulocyte_fraction
        Low-density granulocytes contaminating the PBMC preparation, among single leukocytes.
    cd3_fraction
        T cells among lymphocytes (normal 0.55-0.88).
    cd4_cd8_ratio
        CD4 T / CD8 T (normal 0.7-3.9).
    treg_pct
        Tregs as % of CD4 T cells.
    activated_pct
        Activated, CD25-intermediate FoxP3- conventional cells as % of CD4 T cells.
    nk_share
        NK cells among non-T lymphocytes (the rest are B cells).
    cd25_brightness
        Multiplier of CD25 staining on every cell (reagent lot, staining time).
    treg_cd25_boost
        Extra CD25 on Tregs (IL-2 up-regulates its own receptor).
    fixperm_shift
        FSC after fix/perm relative to fresh cells (fixation shrinks FSC; SSC rises a little).
    debris_fraction, dead_fraction, doublet_fraction
        Share of all events that are debris, dead/intermediate-scatter cells, or doublets.

    Raises
    ------
    ValueError
        A fraction outside its range or a non-positive multiplier; the message names the parameter.
    """

    lymphocyte_fraction: float = 0.74
    granulocyte_fraction: float = 0.01
    cd3_fraction: float = 0.72
    cd4_cd8_ratio: float = 2.0
    treg_pct: float = 4.0
    activated_pct: float = 12.0
    nk_share: float = 0.55
    cd25_brightness: float = 1.0
    treg_cd25_boost: float = 1.0
    fixperm_shift: float = 0.85
    debris_fraction: float = 0.07
    dead_fraction: float = 0.05
    doublet_fraction: float = 0.04

    def __post_init__(self) -> None:
        unit = ("lymphocyte_fraction", "granulocyte_fraction", "cd3_fraction", "nk_share", "debris_fraction",
                "dead_fraction", "doublet_fraction")
        for name in unit:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Biology.{name} must be in [0, 1], got {value}")
        if self.lymphocyte_fraction + self.granulocyte_fraction > 1.0:
            raise ValueError("Biology.lymphocyte_fraction + granulocyte_fraction must not exceed 1")
        if self.debris_fraction + self.dead_fraction + self.doublet_fraction >= 1.0:
            raise ValueError("Biology.debris_fraction + dead_fraction + doublet_fraction must be below 1")
        if not 0.0 <= self.treg_pct + self.activated_pct <= 100.0 or min(self.treg_pct, self.activated_pct) < 0:
            raise ValueError("Biology.treg_pct and activated_pct must be >= 0 and sum to at most 100")
        for name in ("cd4_cd8_ratio", "cd25_brightness", "treg_cd25_boost", "fixperm_shift"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Biology.{name} must be positive, got {getattr(self, name)}")


class SubjectDesign(NamedTuple):
    """A subject's trajectory over the study's timepoints.

    Attributes
    ----------
    treg_pct, activated_pct
        Tregs and activated CD25-intermediate cells as % of CD4 T cells, one value per :data:`TIMEPOINTS` entry.
    treg_cd25_boost
        CD25 on Tregs relative to baseline (IL-2 up-regulates its receptor), per timepoint.
    platelets, lymphocytes
        Blood counts (x10^9/L) written to ``clinical.csv``, per timepoint.
    biology
        The subject's composition; timepoints wobble around it.
    first_day
        Date of the baseline visit (ISO); later visits add their ``day``.
    """

    treg_pct: tuple[float, ...]
    activated_pct: tuple[float, ...]
    treg_cd25_boost: tuple[float, ...]
    platelets: tuple[float, ...]
    lymphocytes: tuple[float, ...]
    biology: Biology
    first_day: str
