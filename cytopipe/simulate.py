"""Simulated Treg study: realistic PBMC tubes after FoxP3 fix/perm, written as raw (uncompensated) FCS files.

The simulator draws every event from a labelled population, so each file comes with its own truth: the number of
true CD4 T cells and true Tregs among singlet, non-debris events. ``python -m cytopipe.simulate`` writes the bundled
study in ``sample_fcs/`` (FCS files, ``study.csv``, ``clinical.csv``, ``truth.csv``); ``--style`` chooses the
instrument the files look as if they came from, ``--vary`` draws each subject's biology from realistic ranges,
``--realistic`` writes a three-subject study with the hard-to-gate biology of real blood (continuum CD25, dim FoxP3
with a shoulder, broad scatter) and ``--drift`` lets detector gains and the stated spillover drift between visits.

Event model (one tube, in BD FACSCanto units; instrument styles rescale at the end)
-------------------------------------------------------------------------------------
1. Counts per event class (debris, dead/intermediate-scatter cells, doublets, single cells) and per cell type are
   drawn from a multinomial given the sample's :class:`Biology` (lymphocyte fraction, CD3 fraction, CD4/CD8 ratio,
   Treg and activated % of CD4, ...).
2. Each cell gets scatter (log-normal FSC-A and correlated SSC-A, FSC-H/SSC-H from the area with a small
   jitter), a per-cell autofluorescence level and, per marker, a log-normal stain intensity of its type.
   Doublets add two cells' signals, with a pulse height well below the sum; dead cells shrink in FSC, grow in SSC
   and bind antibodies non-specifically; debris is small, dim fragments.
3. Detector signal = stain @ spillover + autofluorescence spectrum, plus photon (Poisson-like, variance
   proportional to signal) and electronic (Gaussian) noise. Compensating the stored data therefore recovers the
   stains with the realistic spreading error and negative values around zero.
4. Events are shuffled, given arrival times, scaled to the instrument style and clipped at ``$PnR - 1``.

Everything is drawn from one ``numpy.random.Generator``; :func:`write_study` seeds one generator per file from
``(seed, subject, timepoint)``, so the bundled files are byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from cytopipe.fcs import file_sha256, write_fcs

__all__ = [
    "STUDY_SEED",
    "FLUOROCHROMES",
    "PANEL",
    "POPULATIONS",
    "CD4_POPULATIONS",
    "STYLES",
    "Biology",
    "InstrumentStyle",
    "SampleSpec",
    "SimulatedSample",
    "SubjectDesign",
    "STUDY",
    "TIMEPOINTS",
    "REALISTIC_STUDY",
    "REALISTIC_TIMEPOINTS",
    "study_specs",
    "simulate_sample",
    "truth_counts",
    "file_digests",
    "write_sample",
    "write_study",
    "main",
]

#: Seed of the bundled study in ``sample_fcs/``.
STUDY_SEED = 20180401

#: Fluorochromes of the panel, in detector (and spillover-matrix) order.
FLUOROCHROMES = ("FITC", "PE", "PerCP-Cy5.5", "PE-Cy7", "APC", "APC-Cy7")
#: Marker -> fluorochrome: the common 6-colour Treg panel (CD25 PE and FoxP3 APC as in the kits).
PANEL = {"CD4": "FITC", "CD25": "PE", "CD8": "PerCP-Cy5.5", "CD127": "PE-Cy7", "FoxP3": "APC", "CD3": "APC-Cy7"}
_MARKERS = tuple(next(m for m, f in PANEL.items() if f == fluor) for fluor in FLUOROCHROMES)
_COL = {marker: i for i, marker in enumerate(_MARKERS)}

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


def _realistic_phenotypes() -> dict[str, _Phenotype]:
    """Phenotypes of ``--realistic``: the biology of real blood after fix/perm, where gates are hard to place.

    * CD25 is a continuum: conventional CD4 cells form a broad cloud whose upper tail runs into the activated
      CD25-intermediate cells, which overlap the Tregs' CD25high cloud (no empty gap anywhere);
    * FoxP3+ sits about one decade above the fix/perm background, and a fifth of the Tregs form a dim shoulder
      (600, a third of a decade above the background's upper tail);
    * scatter clouds are broad (fix/perm): FSC sdlog 0.15-0.16, SSC 0.28.
    """
    broad = {name: dataclasses.replace(p, fsc=(p.fsc[0], max(p.fsc[1], 0.15)), ssc=(p.ssc[0], max(p.ssc[1], 0.28)))
             for name, p in _PHENOTYPES.items()}
    restain = {
        "B": {"FoxP3": (150, 0.4)},
        "NK": {"FoxP3": (150, 0.4)},
        "CD8 T": {"CD25": (60, 0.9), "FoxP3": (150, 0.4)},
        "CD8 T CD25+": {"CD25": (650, 0.5), "FoxP3": (170, 0.45)},
        "DN T": {"FoxP3": (150, 0.4)},
        "CD4 Tconv": {"CD25": (150, 0.85), "FoxP3": (150, 0.4)},
        "CD4 activated": {"CD25": (650, 0.5), "CD127": (1300, 0.45), "FoxP3": (180, 0.45)},
        "Treg": {"CD25": (2200, 0.45), "CD127": (220, 0.5), "FoxP3": (1500, 0.35)},
    }
    for name, stains in restain.items():
        broad[name] = dataclasses.replace(broad[name], stains={**broad[name].stains, **stains})
    broad["Treg"] = dataclasses.replace(broad["Treg"], shoulder={"FoxP3": (0.2, 600, 0.3)})
    return broad


_REALISTIC_PHENOTYPES = _realistic_phenotypes()


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


@dataclass(frozen=True, eq=False)
class InstrumentStyle:
    """How a cytometer and its software write the same tube.

    Parameters
    ----------
    name
        Style id used by ``--style``.
    cytometer
        ``$CYT``.
    channels
        ``($PnN, role)`` in file order; a role is ``FSC-A``, ``FSC-H``, ``SSC-A``, ``SSC-H``, ``Time`` or a
        fluorochrome of :data:`FLUOROCHROMES`.
    labels
        Marker -> ``$PnS`` text (e.g. ``"CD4 FITC"``).
    range
        ``$PnR`` of every channel; values are clipped at ``range - 1``.
    fsc_gain, ssc_gain, fluorescence_gain
        Scale relative to the FACSCanto units the model works in.
    spillover
        Rows = fluorochromes (spilling), columns = detectors, both in :data:`FLUOROCHROMES` order.
    spill_keyword
        ``$SPILLOVER`` (FCS 3.1) or ``SPILL`` (BD FCS 3.0 habit, kept by many exporters).
    integer
        Store unsigned integers (written as FCS 3.2 with ``$DATATYPE=I``: ``write_fcs`` takes integers only there);
        negative values are lost at 0, as on integer-ADC instruments.
    timestep
        ``$TIMESTEP`` in seconds.
    keywords
        Extra vendor keywords.
    """

    name: str
    cytometer: str
    channels: tuple[tuple[str, str], ...]
    labels: Mapping[str, str]
    range: int
    fsc_gain: float
    ssc_gain: float
    fluorescence_gain: float
    spillover: tuple[tuple[float, ...], ...]
    spill_keyword: str = "$SPILLOVER"
    integer: bool = False
    timestep: float = 0.01
    electronic_noise: float = 30.0
    keywords: Mapping[str, str] = field(default_factory=dict)

    @property
    def detectors(self) -> tuple[str, ...]:
        """``$PnN`` of the fluorescence detectors in :data:`FLUOROCHROMES` order."""
        by_role = {role: name for name, role in self.channels}
        return tuple(by_role[f] for f in FLUOROCHROMES)

    @property
    def version(self) -> str:
        """FCS version the style is written as."""
        return "3.2" if self.integer else "3.1"

    def spillover_text(self) -> str:
        """The spillover keyword value: ``n, detector names, row-major values``."""
        values = [f"{v:.6g}" for row in self.spillover for v in row]
        return ",".join([str(len(FLUOROCHROMES)), *self.detectors, *values])


# Spillover of a FACSCanto II for the panel (FITC->PE 0.165, PE->FITC 0.0125, PE->PerCP-Cy5.5 0.20,
# APC->APC-Cy7 0.10 ...).
_SPILL_CANTO = (
    (1.0, 0.165, 0.030, 0.005, 0.0, 0.0),
    (0.0125, 1.0, 0.200, 0.040, 0.002, 0.001),
    (0.0, 0.010, 1.0, 0.200, 0.030, 0.060),
    (0.0, 0.015, 0.050, 1.0, 0.002, 0.080),
    (0.0, 0.0, 0.010, 0.005, 1.0, 0.100),
    (0.0, 0.0, 0.005, 0.030, 0.020, 1.0),
)
# Attune NxT: PE and PE-Cy7 on the yellow (561 nm) laser, so FITC hardly reaches the PE detector.
_SPILL_ATTUNE = (
    (1.0, 0.020, 0.025, 0.001, 0.0, 0.0),
    (0.006, 1.0, 0.120, 0.030, 0.001, 0.001),
    (0.0, 0.008, 1.0, 0.150, 0.040, 0.070),
    (0.0, 0.010, 0.020, 1.0, 0.002, 0.120),
    (0.0, 0.0, 0.008, 0.004, 1.0, 0.140),
    (0.0, 0.0, 0.004, 0.040, 0.030, 1.0),
)
# Navios EX (three lasers, PE and PE-Cy7 on 488 nm, PE into PC5.5 high).
_SPILL_NAVIOS = (
    (1.0, 0.180, 0.040, 0.008, 0.0, 0.0),
    (0.015, 1.0, 0.280, 0.050, 0.001, 0.001),
    (0.0, 0.012, 1.0, 0.250, 0.020, 0.050),
    (0.0, 0.020, 0.060, 1.0, 0.002, 0.060),
    (0.0, 0.0, 0.012, 0.006, 1.0, 0.080),
    (0.0, 0.0, 0.006, 0.025, 0.015, 1.0),
)

STYLES: dict[str, InstrumentStyle] = {
    style.name: style
    for style in (
        InstrumentStyle(
            name="bd",
            cytometer="FACSCanto II",
            channels=(("FSC-A", "FSC-A"), ("FSC-H", "FSC-H"), ("SSC-A", "SSC-A"), ("SSC-H", "SSC-H"),
                      ("FITC-A", "FITC"), ("PE-A", "PE"), ("PerCP-Cy5-5-A", "PerCP-Cy5.5"), ("PE-Cy7-A", "PE-Cy7"),
                      ("APC-A", "APC"), ("APC-Cy7-A", "APC-Cy7"), ("Time", "Time")),
            labels={m: m for m in PANEL},
            range=262_144,
            fsc_gain=1.0,
            ssc_gain=1.0,
            fluorescence_gain=1.0,
            spillover=_SPILL_CANTO,
            keywords={"CREATOR": "BD FACSDiva Software Version 9.0", "EXPERIMENT NAME": "ITP IL-2 Treg",
                      "APPLY COMPENSATION": "TRUE"},
        ),
        InstrumentStyle(
            name="attune",
            cytometer="Attune NxT Acoustic Focusing Cytometer",
            channels=(("Time", "Time"), ("FSC-A", "FSC-A"), ("SSC-A", "SSC-A"), ("BL1-A", "FITC"),
                      ("BL3-A", "PerCP-Cy5.5"), ("YL1-A", "PE"), ("YL4-A", "PE-Cy7"), ("RL1-A", "APC"),
                      ("RL3-A", "APC-Cy7"), ("FSC-H", "FSC-H"), ("SSC-H", "SSC-H")),
            labels={"CD4": "CD4 FITC", "CD25": "CD25 PE", "CD8": "CD8 PerCP-Cy5.5", "CD127": "CD127 PE-Cy7",
                    "FoxP3": "Foxp3 APC", "CD3": "CD3 APC-Cy7"},
            range=1_048_576,
            fsc_gain=2.6,
            ssc_gain=1.7,
            fluorescence_gain=3.5,
            spillover=_SPILL_ATTUNE,
            timestep=0.001,
            electronic_noise=25.0,
            keywords={"CREATOR": "Attune NxT Software v3.2.1"},
        ),
        InstrumentStyle(
            name="navios",
            cytometer="Navios EX",
            channels=(("FSC-A", "FSC-A"), ("FSC-H", "FSC-H"), ("SSC-A", "SSC-A"), ("SSC-H", "SSC-H"),
                      ("FL1-A", "FITC"), ("FL2-A", "PE"), ("FL4-A", "PerCP-Cy5.5"), ("FL5-A", "PE-Cy7"),
                      ("FL6-A", "APC"), ("FL8-A", "APC-Cy7"), ("Time", "Time")),
            labels={"CD4": "CD4-FITC", "CD25": "CD25-PE", "CD8": "CD8-PC5.5", "CD127": "CD127-PC7",
                    "FoxP3": "FOXP3-APC", "CD3": "CD3-APC-A750"},
            range=1_048_576,
            fsc_gain=5.5,
            ssc_gain=3.0,
            fluorescence_gain=2.5,
            spillover=_SPILL_NAVIOS,
            spill_keyword="SPILL",
            integer=True,
            timestep=0.1,
            electronic_noise=40.0,
            keywords={"CREATOR": "Kaluza for Navios"},
        ),
    )
}


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


#: (timepoint, day): baseline, weekly during IL-2 (5 days a week for 4 weeks) and a 2-week follow-up.
TIMEPOINTS = (("baseline", 0), ("W1", 7), ("W2", 14), ("W3", 21), ("W4", 28), ("W6", 42))

#: The bundled study (modelled on Zhang et al., Cytometry B 2018): ITP-01 responds, ITP-02 does not.
#: Tregs rise over W1-W2, plateau W3-W4 and ease two weeks after the last dose; platelets (x10^9/L) lag them.
STUDY: dict[str, SubjectDesign] = {
    "ITP-01": SubjectDesign(
        treg_pct=(3.1, 5.8, 8.4, 9.9, 10.4, 7.0),
        activated_pct=(11.0, 13.0, 13.5, 13.0, 12.5, 11.5),
        treg_cd25_boost=(1.0, 1.35, 1.5, 1.55, 1.55, 1.15),
        platelets=(36, 38, 47, 62, 78, 85),
        lymphocytes=(1.45, 1.52, 1.60, 1.58, 1.63, 1.50),
        biology=Biology(lymphocyte_fraction=0.76, cd3_fraction=0.74, cd4_cd8_ratio=2.1, nk_share=0.55),
        first_day="2026-01-12",
    ),
    "ITP-02": SubjectDesign(
        treg_pct=(4.1, 4.3, 3.8, 4.2, 3.9, 4.0),
        activated_pct=(12.0, 12.5, 12.0, 13.0, 12.5, 12.0),
        treg_cd25_boost=(1.0, 1.1, 1.1, 1.1, 1.1, 1.0),
        platelets=(27, 25, 29, 26, 28, 24),
        lymphocytes=(1.21, 1.18, 1.25, 1.15, 1.22, 1.19),
        biology=Biology(lymphocyte_fraction=0.70, cd3_fraction=0.70, cd4_cd8_ratio=1.6, nk_share=0.6,
                        granulocyte_fraction=0.02),
        first_day="2026-02-02",
    ),
}


#: Visits of the ``--realistic`` study: baseline, three visits during IL-2 and a follow-up two weeks after it.
REALISTIC_TIMEPOINTS = (("baseline", 0), ("W1", 7), ("W2", 14), ("W4", 28), ("W6", 42))

_REALISTIC_BIOLOGY = Biology(lymphocyte_fraction=0.72, cd3_fraction=0.72, cd4_cd8_ratio=1.8, fixperm_shift=0.8,
                             dead_fraction=0.08)

#: The ``--realistic`` study: a responder (3.6x at W4), a non-responder whose Tregs stay flat within 5 % while
#: his activated CD25-intermediate cells come and go, and a slow responder (2x only at W4).
REALISTIC_STUDY: dict[str, SubjectDesign] = {
    "RESP-01": SubjectDesign(
        treg_pct=(2.9, 5.6, 8.4, 10.5, 7.2),
        activated_pct=(11.0, 13.0, 14.0, 13.0, 11.5),
        treg_cd25_boost=(1.0, 1.3, 1.45, 1.5, 1.15),
        platelets=(34, 37, 52, 81, 88),
        lymphocytes=(1.40, 1.48, 1.55, 1.60, 1.47),
        biology=_REALISTIC_BIOLOGY,
        first_day="2026-03-02",
    ),
    "NONR-02": SubjectDesign(
        treg_pct=(6.0, 6.2, 5.9, 6.1, 6.1),
        activated_pct=(10.0, 14.0, 11.0, 15.0, 12.0),
        treg_cd25_boost=(1.0, 1.1, 1.1, 1.1, 1.0),
        platelets=(22, 24, 21, 25, 23),
        lymphocytes=(1.18, 1.22, 1.15, 1.20, 1.17),
        biology=dataclasses.replace(_REALISTIC_BIOLOGY, cd4_cd8_ratio=1.5, granulocyte_fraction=0.02),
        first_day="2026-03-09",
    ),
    "SLOW-03": SubjectDesign(
        treg_pct=(3.4, 4.1, 5.3, 7.4, 7.8),
        activated_pct=(12.0, 12.5, 13.0, 13.5, 12.0),
        treg_cd25_boost=(1.0, 1.1, 1.2, 1.35, 1.3),
        platelets=(28, 27, 33, 45, 64),
        lymphocytes=(1.30, 1.32, 1.28, 1.35, 1.33),
        biology=dataclasses.replace(_REALISTIC_BIOLOGY, cd4_cd8_ratio=2.2, nk_share=0.5),
        first_day="2026-03-16",
    ),
}

#: ``--drift``: each later visit's detector gains move up to this much from the baseline visit's (uniform), and
#: every file's spillover matrix understates the true spillover by this fraction.
DRIFT_GAIN = 0.25
DRIFT_SPILLOVER_ERROR = 0.15


@dataclass(frozen=True)
class SampleSpec:
    """One tube to simulate.

    Parameters
    ----------
    biology
        Composition and staining.
    n_events
        Events in the file.
    style
        Instrument style id (key of :data:`STYLES`).
    file, subject, timepoint, day, date
        Identity, written to ``$FIL``, ``$SRC``/``PATIENT ID``, ``TUBE NAME`` and ``$DATE``.
    unstained
        Markers left out of the tube: one marker makes a fluorescence-minus-one (FMO) control, all of
        :data:`PANEL` an unstained control. The cells and the other stains are unchanged, so an FMO shows exactly
        the spread the other fluorochromes put into the missing marker's detector.
    realistic
        Draw cells with the phenotypes of real blood after fix/perm (continuum CD25, dim FoxP3 with a shoulder,
        broad scatter) instead of the well-separated default ones.
    gains
        ``(role, gain)`` pairs: detector gain relative to the style's, for ``FSC``, ``SSC`` (area and height) or a
        fluorochrome of :data:`FLUOROCHROMES` (an instrument whose PMT voltages drifted since the last visit).
    spillover_error
        Fraction by which the spillover stored in the file understates the true one (off-diagonal values
        x ``1 - spillover_error``), e.g. 0.15 for a matrix measured before the gains drifted.
    """

    biology: Biology = Biology()
    n_events: int = 50_000
    style: str = "bd"
    file: str = "sample.fcs"
    subject: str = ""
    timepoint: str = ""
    day: int = 0
    date: str = "2026-01-12"
    unstained: tuple[str, ...] = ()
    realistic: bool = False
    gains: tuple[tuple[str, float], ...] = ()
    spillover_error: float = 0.0

    def __post_init__(self) -> None:
        if self.n_events < 1:
            raise ValueError(f"SampleSpec.n_events must be >= 1, got {self.n_events}")
        for role, gain in self.gains:
            if role not in ("FSC", "SSC", *FLUOROCHROMES) or not gain > 0:
                raise ValueError(f"SampleSpec.gains: ({role!r}, {gain!r}) needs FSC, SSC or a fluorochrome of "
                                 f"{FLUOROCHROMES} and a positive gain")
        if not 0.0 <= self.spillover_error < 1.0:
            raise ValueError(f"SampleSpec.spillover_error must be in [0, 1), got {self.spillover_error}")
        if self.style not in STYLES:
            raise ValueError(f"SampleSpec.style must be one of {sorted(STYLES)}, got {self.style!r}")
        unknown = sorted(set(self.unstained) - set(PANEL))
        if unknown:
            raise ValueError(f"SampleSpec.unstained: unknown marker(s) {unknown}; the panel has {sorted(PANEL)}")

    @property
    def role(self) -> str:
        """Sample-sheet role: ``sample``, ``fmo:<marker>`` or ``unstained``."""
        if not self.unstained:
            return "sample"
        if set(self.unstained) == set(PANEL):
            return "unstained"
        return "fmo:" + "+".join(self.unstained)


class SimulatedSample(NamedTuple):
    """The output of :func:`simulate_sample` (unpacks as ``events, labels, channels, markers, metadata``)."""

    events: np.ndarray  # (n, p) float32, raw (uncompensated) detector values in file channel order
    labels: np.ndarray  # (n,) uint8 indices into POPULATIONS
    channels: tuple[str, ...]
    markers: tuple[str, ...]
    metadata: dict[str, str]


def _population_probabilities(bio: Biology) -> dict[str, float]:
    """Probability of each event label, from the composition knobs."""
    cells = 1.0 - bio.debris_fraction - bio.dead_fraction - bio.doublet_fraction
    lymph = cells * bio.lymphocyte_fraction
    t_cells = lymph * bio.cd3_fraction
    dn = 0.04 * t_cells  # gamma-delta and other CD4-CD8- T cells
    cd4 = (t_cells - dn) * bio.cd4_cd8_ratio / (1.0 + bio.cd4_cd8_ratio)
    cd8 = t_cells - dn - cd4
    non_t = lymph - t_cells
    return {
        "debris": bio.debris_fraction,
        "dead": bio.dead_fraction,
        "doublet": bio.doublet_fraction,
        "granulocyte": cells * bio.granulocyte_fraction,
        "monocyte": cells * (1.0 - bio.lymphocyte_fraction - bio.granulocyte_fraction),
        "B": non_t * (1.0 - bio.nk_share),
        "NK": non_t * bio.nk_share,
        "CD8 T": cd8 * 0.96,
        "CD8 T CD25+": cd8 * 0.04,  # the CD4-negative CD25+ T cells: activated CD8
        "DN T": dn,
        "CD4 Tconv": cd4 * (1.0 - (bio.treg_pct + bio.activated_pct) / 100.0),
        "CD4 activated": cd4 * bio.activated_pct / 100.0,
        "Treg": cd4 * bio.treg_pct / 100.0,
    }


class _Cells(NamedTuple):
    fsc: np.ndarray
    ssc: np.ndarray
    stains: np.ndarray  # (n, len(FLUOROCHROMES)) in fluorochrome order
    autofluorescence: np.ndarray


def _draw_cells(kinds: np.ndarray, rng: np.random.Generator, bio: Biology,
                phenotypes: Mapping[str, _Phenotype] = _PHENOTYPES) -> _Cells:
    """Scatter, stains and autofluorescence of single cells of the given types (codes into POPULATIONS)."""
    n = kinds.size
    fsc = np.empty(n)
    ssc = np.empty(n)
    af = np.empty(n)
    stains = np.zeros((n, len(FLUOROCHROMES)))
    for name, pheno in phenotypes.items():
        idx = np.flatnonzero(kinds == _CODE[name])
        if idx.size == 0:
            continue
        z_fsc = rng.standard_normal(idx.size)
        # Bigger cells scatter more light sideways too (rho ~ 0.4).
        z_ssc = 0.4 * z_fsc + math.sqrt(1 - 0.4**2) * rng.standard_normal(idx.size)
        fsc[idx] = pheno.fsc[0] * np.exp(pheno.fsc[1] * z_fsc)
        ssc[idx] = pheno.ssc[0] * np.exp(pheno.ssc[1] * z_ssc)
        af[idx] = pheno.autofluorescence * np.exp(0.3 * rng.standard_normal(idx.size))
        for marker, (median, sdlog, *fraction) in pheno.stains.items():
            level = median * np.exp(sdlog * rng.standard_normal(idx.size))
            if fraction:
                level *= rng.random(idx.size) < fraction[0]
            if marker in pheno.shoulder:
                share, dim_median, dim_sdlog = pheno.shoulder[marker]
                dim = rng.random(idx.size) < share
                level[dim] = dim_median * np.exp(dim_sdlog * rng.standard_normal(int(dim.sum())))
            if marker == "CD25":
                level *= bio.cd25_brightness * (bio.treg_cd25_boost if name == "Treg" else 1.0)
            stains[idx, _COL[marker]] = level
    return _Cells(fsc, ssc, stains, af)


def _draw_codes(probabilities: Mapping[str, float], n: int, rng: np.random.Generator) -> np.ndarray:
    names = list(probabilities)
    p = np.array([probabilities[k] for k in names])
    counts = rng.multinomial(n, p / p.sum())
    return np.repeat(np.array([_CODE[k] for k in names], dtype=np.uint8), counts)


def _pulse_heights(area: np.ndarray, ratio: float, sdlog: float, rng: np.random.Generator) -> np.ndarray:
    return area * ratio * np.exp(sdlog * rng.standard_normal(area.size))


def simulate_sample(spec: SampleSpec, rng: np.random.Generator) -> SimulatedSample:
    """Simulate one tube: raw events with per-event population labels.

    Parameters
    ----------
    spec
        What to simulate (biology, number of events, instrument style, identity).
    rng
        The only source of randomness; the same generator state gives identical output.

    Returns
    -------
    SimulatedSample
        ``events`` (n, p) float32 raw detector values (uncompensated; the spillover is in ``metadata``),
        ``labels`` (n,) uint8 indices into :data:`POPULATIONS`, ``channels`` ($PnN), ``markers`` ($PnS, '' for
        scatter and time) and ``metadata`` (keywords for :func:`cytopipe.fcs.write_fcs`, including ``$PnR``).

    Notes
    -----
    1. Draw event labels from the multinomial of :func:`_population_probabilities`.
    2. Single cells: scatter and stains per type; FSC-H = 0.82 FSC-A and SSC-H = 0.88 SSC-A with 3-5 % jitter.
    3. Doublets: two cells drawn from the single-cell mixture (40 % of partners replaced by a platelet or
       fragment), areas and stains summed, height from the larger cell plus Beta(2, 5) of the smaller (mostly
       aligned in the stream, so height rises far less than area).
    4. Dead cells: a lymphocyte or monocyte with FSC x0.55, SSC x1.3, stains x0.4 and non-specific binding.
       Debris: small, dim fragments with a broad FSC-H/FSC-A ratio.
    5. Fix/perm: FSC x ``fixperm_shift``, SSC x (1 + 0.6 (1 - shift)).
    6. Detector = stains @ spillover + autofluorescence spectrum; noise: Normal(0, sqrt(1.5 * signal)) photon
       statistics plus Normal(0, electronic_noise); then the style's gains, clipping at $PnR - 1 and, for
       integer styles, rounding to integers >= 0. Markers in ``spec.unstained`` (FMO / unstained controls) get no stain.
    """
    bio = spec.biology
    style = STYLES[spec.style]
    phenotypes = _REALISTIC_PHENOTYPES if spec.realistic else _PHENOTYPES
    gains = dict(spec.gains)
    probabilities = _population_probabilities(bio)
    codes = _draw_codes(probabilities, spec.n_events, rng)
    n = codes.size

    cell_p = {k: v for k, v in probabilities.items() if k not in ("debris", "dead", "doublet")}
    fsc_a = np.empty(n)
    ssc_a = np.empty(n)
    fsc_h = np.empty(n)
    ssc_h = np.empty(n)
    stains = np.zeros((n, len(FLUOROCHROMES)))
    af = np.empty(n)

    single = np.flatnonzero(codes >= _CODE["granulocyte"])
    cells = _draw_cells(codes[single], rng, bio, phenotypes)
    fsc_a[single], ssc_a[single], stains[single], af[single] = cells
    fsc_h[single] = _pulse_heights(cells.fsc, 0.82, 0.03, rng)
    ssc_h[single] = _pulse_heights(cells.ssc, 0.88, 0.05, rng)

    doublet = np.flatnonzero(codes == _CODE["doublet"])
    first = _draw_cells(_draw_codes(cell_p, doublet.size, rng), rng, bio, phenotypes)
    second = _draw_cells(rng.permutation(_draw_codes(cell_p, doublet.size, rng)), rng, bio, phenotypes)
    # Many "doublets" are a cell carrying a platelet or a fragment: small partners barely lift the pulse height.
    small = rng.random(doublet.size) < 0.4
    second.fsc[small] = 7000.0 * np.exp(0.5 * rng.standard_normal(small.sum()))
    second.ssc[small] = 3500.0 * np.exp(0.5 * rng.standard_normal(small.sum()))
    second.stains[small] *= 0.05
    second.autofluorescence[small] *= 0.2
    fsc_a[doublet] = first.fsc + second.fsc
    ssc_a[doublet] = first.ssc + second.ssc
    stains[doublet] = first.stains + second.stains
    af[doublet] = first.autofluorescence + second.autofluorescence
    # Mostly aligned in the stream: height = the larger single height plus a share of the smaller one.
    share = rng.beta(2.0, 5.0, doublet.size)
    for height, ratio, one, other in ((fsc_h, 0.82, first.fsc, second.fsc), (ssc_h, 0.88, first.ssc, second.ssc)):
        big, little = np.maximum(one, other), np.minimum(one, other)
        height[doublet] = _pulse_heights(big + share * little, ratio, 0.03, rng)

    dead = np.flatnonzero(codes == _CODE["dead"])
    dying_p = {k: cell_p[k] for k in (*_LYMPHOCYTES, "monocyte")}
    dying = _draw_cells(_draw_codes(dying_p, dead.size, rng), rng, bio, phenotypes)
    fsc_a[dead] = dying.fsc * 0.55 * np.exp(0.18 * rng.standard_normal(dead.size))
    ssc_a[dead] = dying.ssc * 1.3 * np.exp(0.25 * rng.standard_normal(dead.size))
    fsc_h[dead] = _pulse_heights(fsc_a[dead], 0.82, 0.05, rng)
    ssc_h[dead] = _pulse_heights(ssc_a[dead], 0.88, 0.07, rng)
    stickiness = 120.0 * np.exp(0.8 * rng.standard_normal((dead.size, 1)))
    stains[dead] = dying.stains * 0.4 + stickiness * np.exp(0.3 * rng.standard_normal((dead.size, len(FLUOROCHROMES))))
    af[dead] = dying.autofluorescence * 1.8

    debris = np.flatnonzero(codes == _CODE["debris"])
    fragments = _draw_cells(_draw_codes(cell_p, debris.size, rng), rng, bio, phenotypes)
    fsc_a[debris] = 9000.0 * np.exp(0.6 * rng.standard_normal(debris.size))
    ssc_a[debris] = 4500.0 * np.exp(0.7 * rng.standard_normal(debris.size))
    fsc_h[debris] = _pulse_heights(fsc_a[debris], 0.82, 0.10, rng)
    ssc_h[debris] = _pulse_heights(ssc_a[debris], 0.88, 0.12, rng)
    stains[debris] = fragments.stains * rng.uniform(0.02, 0.3, (debris.size, 1))
    af[debris] = fragments.autofluorescence * 0.3

    # Fix/perm shrinks forward scatter and raises side scatter.
    fsc_scale = bio.fixperm_shift * style.fsc_gain * gains.get("FSC", 1.0)
    ssc_scale = (1.0 + 0.6 * (1.0 - bio.fixperm_shift)) * style.ssc_gain * gains.get("SSC", 1.0)
    scatter = {
        "FSC-A": fsc_a * fsc_scale, "FSC-H": fsc_h * fsc_scale,
        "SSC-A": ssc_a * ssc_scale, "SSC-H": ssc_h * ssc_scale,
    }
    for values in scatter.values():
        values += rng.normal(0.0, 200.0, n)  # scatter electronic noise (linear channels, baseline-restored)

    for marker in spec.unstained:
        stains[:, _COL[marker]] = 0.0
    # stains @ spillover, summed in a fixed order without BLAS: the same bits on every machine (and faster
    # than a threaded matmul for a 6-column product).
    signal = af[:, None] * _AF_SPECTRUM
    for k, row in enumerate(style.spillover):
        signal += stains[:, k, None] * np.asarray(row)
    photon = np.sqrt(1.5 * np.clip(signal, 0.0, None)) * rng.standard_normal(signal.shape)
    electronic = rng.normal(0.0, style.electronic_noise / style.fluorescence_gain, signal.shape)
    if gains:
        # A detector's gain amplifies the light (and its photon noise), not the electronics after it.
        signal += photon
        signal *= np.array([gains.get(f, 1.0) for f in FLUOROCHROMES])
        fluorescence = (signal + electronic) * style.fluorescence_gain
    else:
        fluorescence = (signal + photon + electronic) * style.fluorescence_gain

    # Events reach the laser in random order, as a Poisson process (~1,500 events/s).
    order = rng.permutation(n)
    seconds = np.cumsum(rng.exponential(1.0 / 1500.0, n))
    columns = []
    for _, role in style.channels:
        if role == "Time":
            columns.append(seconds / style.timestep)
        elif role in scatter:
            columns.append(scatter[role][order])
        else:
            columns.append(fluorescence[order, FLUOROCHROMES.index(role)])
    events = np.column_stack(columns)
    top = style.range - 1
    is_scatter = np.array([role in scatter for _, role in style.channels])
    events[:, is_scatter] = np.clip(events[:, is_scatter], 0.0, top)
    events = np.minimum(events, top)
    if style.integer:
        events = np.rint(np.clip(events, 0.0, top))

    channels = tuple(name for name, _ in style.channels)
    label_of = {fluor: style.labels[marker] for marker, fluor in PANEL.items()}
    markers = tuple(label_of.get(role, "") for _, role in style.channels)
    metadata = _metadata(spec, style, seconds[-1] if n else 0.0)
    return SimulatedSample(np.ascontiguousarray(events, dtype=np.float32), codes[order], channels, markers, metadata)


def _file_spillover(spec: SampleSpec, style: InstrumentStyle) -> str:
    """The spillover keyword a file carries: the style's, or with drifted gains / understated spillover.

    The true spillover in detector units after gain changes is ``S[i, j] * g_j / g_i`` (each fluorochrome's own
    detector defines its unit); the file states its off-diagonal values ``1 - spillover_error`` times too small.
    """
    if not spec.gains and not spec.spillover_error:
        return style.spillover_text()
    g = np.array([dict(spec.gains).get(f, 1.0) for f in FLUOROCHROMES])
    true = np.asarray(style.spillover) * g[None, :] / g[:, None]
    stated = true * (1.0 - spec.spillover_error)
    np.fill_diagonal(stated, 1.0)
    values = [f"{v:.6g}" for v in stated.ravel()]
    return ",".join([str(len(FLUOROCHROMES)), *style.detectors, *values])


def _metadata(spec: SampleSpec, style: InstrumentStyle, duration: float) -> dict[str, str]:
    """Keywords of one file: instrument, identity, acquisition time, ranges and spillover."""
    start = 9 * 3600 + 30 * 60  # 09:30:00
    date = pd.Timestamp(spec.date)
    metadata = {
        "$CYT": style.cytometer,
        "$DATE": date.strftime("%d-%b-%Y").upper(),
        "$BTIM": _clock(start),
        "$ETIM": _clock(start + duration),
        "$FIL": spec.file,
        "$SRC": spec.subject,
        "$SMNO": f"{spec.subject} {spec.timepoint}".strip(),
        "$TIMESTEP": f"{style.timestep:g}",
        "$COM": "simulated by cytopipe.simulate",
        "TUBE NAME": f"{'Treg' if spec.role == 'sample' else spec.role.upper()} {spec.timepoint}".strip(),
        "PATIENT ID": spec.subject,
        style.spill_keyword: _file_spillover(spec, style),
        **style.keywords,
    }
    for n, (name, role) in enumerate(style.channels, start=1):
        metadata[f"$P{n}N"] = name
        metadata[f"$P{n}R"] = str(style.range)
        if role != "Time":
            metadata[f"$P{n}G"] = "1"
    return metadata


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def truth_counts(labels: np.ndarray) -> dict[str, float]:
    """True CD4 T and Treg counts of one sample and Treg % of CD4 (singlet, non-debris cells only).

    Parameters
    ----------
    labels
        Per-event indices into :data:`POPULATIONS`.

    Returns
    -------
    dict
        ``cd4_true``, ``treg_true`` (int) and ``treg_pct_true`` (percent).
    """
    counts = np.bincount(labels, minlength=len(POPULATIONS))
    cd4 = int(sum(counts[_CODE[p]] for p in CD4_POPULATIONS))
    treg = int(counts[_CODE["Treg"]])
    return {"cd4_true": cd4, "treg_true": treg, "treg_pct_true": 100.0 * treg / cd4 if cd4 else float("nan")}


def write_sample(path: str | Path, sample: SimulatedSample, style: str = "bd") -> None:
    """Write a simulated sample as FCS through :func:`cytopipe.fcs.write_fcs`.

    Parameters
    ----------
    path
        Destination ``.fcs`` file.
    sample
        Output of :func:`simulate_sample`.
    style
        The instrument style it was simulated with (decides float vs integer storage and the FCS version).
    """

    spec = STYLES[style]
    datatypes = ["I"] * len(sample.channels) if spec.integer else None
    write_fcs(path, sample.events, sample.channels, sample.markers, sample.metadata, version=spec.version,
              datatypes=datatypes)


def _subject_rng(seed: int, subject_index: int, timepoint_index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, subject_index, timepoint_index]))


def _varied_biology(base: Biology, rng: np.random.Generator) -> Biology:
    """A subject's biology drawn from realistic ranges (``--vary``)."""
    return dataclasses.replace(
        base,
        lymphocyte_fraction=float(rng.uniform(0.6, 0.85)),
        cd3_fraction=float(rng.uniform(0.6, 0.82)),
        # Within 1.2-2.5 the CD4 share of CD3 stays in the normal 50-70 % (DN T cells take 4 %).
        cd4_cd8_ratio=float(np.exp(rng.uniform(np.log(1.2), np.log(2.5)))),
        cd25_brightness=float(rng.uniform(0.7, 1.4)),
        fixperm_shift=float(rng.uniform(0.75, 0.95)),
        granulocyte_fraction=float(rng.uniform(0.0, 0.04)),
    )


def _study(realistic: bool) -> tuple[dict[str, SubjectDesign], tuple[tuple[str, int], ...]]:
    return (REALISTIC_STUDY, REALISTIC_TIMEPOINTS) if realistic else (STUDY, TIMEPOINTS)


def _drift_gains(seed: int, subject_index: int, timepoint_index: int) -> tuple[tuple[str, float], ...]:
    """A visit's detector gains against the baseline visit (``--drift``); the baseline visit keeps 1."""
    if timepoint_index == 0:
        return ()
    rng = np.random.default_rng(np.random.SeedSequence([seed, subject_index, timepoint_index, 4242]))
    roles = ("FSC", "SSC", *FLUOROCHROMES)
    return tuple((role, float(g)) for role, g in zip(roles, rng.uniform(1 - DRIFT_GAIN, 1 + DRIFT_GAIN, len(roles)),
                                                      strict=True))


def study_specs(*, style: str = "bd", seed: int = STUDY_SEED, n_events: int = 50_000, vary: bool = False,
                controls: Sequence[str] = (), realistic: bool = False, drift: bool = False
                ) -> list[tuple[SampleSpec, np.random.Generator]]:
    """Every tube of the study in :data:`STUDY` (or :data:`REALISTIC_STUDY`), each with its own seeded generator.

    Parameters
    ----------
    style
        Instrument style of all files.
    seed
        Study seed; one generator per file is spawned from ``(seed, subject, timepoint)``.
    n_events
        Events per file.
    vary
        Draw each subject's lymphocyte fraction, CD3 fraction, CD4/CD8 ratio, CD25 brightness, fix/perm shift and
        granulocyte contamination from realistic ranges instead of the designed values.
    controls
        Control tubes to add at every timepoint (same blood, other cells): a marker of :data:`PANEL` for its FMO
        control (file ``<subject>_<timepoint>_FMO-<marker>.fcs``) or ``"unstained"``.
    realistic
        The study of :data:`REALISTIC_STUDY` over :data:`REALISTIC_TIMEPOINTS`, drawn with the phenotypes of real
        blood (see :class:`SampleSpec`).
    drift
        Every visit after baseline gets detector gains drawn within +/- :data:`DRIFT_GAIN` of the baseline's
        (FSC, SSC and each fluorescence detector; its own generator, so the cells are those of the run without
        drift), and every file's spillover understates the true one by :data:`DRIFT_SPILLOVER_ERROR`.

    Returns
    -------
    list of (SampleSpec, numpy.random.Generator)
        In subject, then timepoint order, each sample followed by its controls. Timepoints of one subject wobble
        around the subject's biology (CV about 4 % on the fractions), as repeated draws from one person do.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {sorted(STYLES)}, got {style!r}")
    kinds = (*PANEL, "unstained")
    wrong = [c for c in controls if c not in kinds]
    if wrong:
        raise ValueError(f"controls must be markers of the panel or 'unstained', got {wrong}")
    specs = []
    designs, timepoints = _study(realistic)
    for s, (subject, design) in enumerate(designs.items()):
        base = design.biology
        if vary:
            base = _varied_biology(base, np.random.default_rng(np.random.SeedSequence([seed, s, 999])))
        first = pd.Timestamp(design.first_day)
        for t, (timepoint, day) in enumerate(timepoints):
            rng = _subject_rng(seed, s, t)
            wobble = np.exp(0.04 * rng.standard_normal(3))
            bio = dataclasses.replace(
                base,
                lymphocyte_fraction=min(0.95, base.lymphocyte_fraction * wobble[0]),
                cd3_fraction=min(0.95, base.cd3_fraction * wobble[1]),
                cd4_cd8_ratio=base.cd4_cd8_ratio * wobble[2],
                treg_pct=design.treg_pct[t],
                activated_pct=design.activated_pct[t],
                treg_cd25_boost=design.treg_cd25_boost[t],
            )
            spec = SampleSpec(biology=bio, n_events=n_events, style=style, file=f"{subject}_{timepoint}.fcs",
                              subject=subject, timepoint=timepoint, day=day,
                              date=(first + pd.Timedelta(days=day)).strftime("%Y-%m-%d"), realistic=realistic,
                              gains=_drift_gains(seed, s, t) if drift else (),
                              spillover_error=DRIFT_SPILLOVER_ERROR if drift else 0.0)
            specs.append((spec, rng))
            for control in dict.fromkeys(controls):
                k = kinds.index(control)
                omit = tuple(PANEL) if control == "unstained" else (control,)
                name = "unstained" if control == "unstained" else f"FMO-{control}"
                tube = dataclasses.replace(spec, file=f"{subject}_{timepoint}_{name}.fcs", unstained=omit)
                specs.append((tube, np.random.default_rng(np.random.SeedSequence([seed, s, t, 1 + k]))))
    return specs


def write_study(out_dir: str | Path = "sample_fcs", *, style: str = "bd", seed: int = STUDY_SEED,
                n_events: int = 50_000, vary: bool = False, controls: Sequence[str] = (), realistic: bool = False,
                drift: bool = False) -> pd.DataFrame:
    """Simulate the whole study and write FCS files, ``study.csv``, ``clinical.csv`` and ``truth.csv``.

    Parameters
    ----------
    out_dir
        Destination folder (created if needed); existing files of the same names are replaced.
    style, seed, n_events, vary, controls, realistic, drift
        See :func:`study_specs`.

    Returns
    -------
    pandas.DataFrame
        The truth table as written to ``truth.csv`` (stained samples only): ``file, subject, timepoint, day,
        cd4_true, treg_true, treg_pct_true, n_events``.

    Notes
    -----
    ``study.csv`` has ``file, subject, timepoint, day, baseline, role, batch`` (``role`` = ``sample``,
    ``fmo:<marker>`` or ``unstained``; ``batch`` = acquisition date); ``clinical.csv`` has ``subject, timepoint,
    day, platelets`` (x10^9/L) and ``lymphocytes`` (x10^9/L).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sheet, truth = [], []
    for spec, rng in study_specs(style=style, seed=seed, n_events=n_events, vary=vary, controls=controls,
                                 realistic=realistic, drift=drift):
        sample = simulate_sample(spec, rng)
        write_sample(out / spec.file, sample, style)
        row = {"file": spec.file, "subject": spec.subject, "timepoint": spec.timepoint, "day": spec.day}
        baseline = spec.day == 0 and spec.role == "sample"
        sheet.append({**row, "baseline": str(baseline).lower(), "role": spec.role, "batch": spec.date})
        if spec.role != "sample":
            continue
        counts = truth_counts(sample.labels)
        truth.append({**row, **counts, "treg_pct_true": round(counts["treg_pct_true"], 4),
                      "n_events": sample.labels.size})
    pd.DataFrame(sheet).to_csv(out / "study.csv", index=False, lineterminator="\n")
    clinical = [
        {"subject": subject, "timepoint": timepoint, "day": day, "platelets": design.platelets[t],
         "lymphocytes": design.lymphocytes[t]}
        for subject, design in _study(realistic)[0].items()
        for t, (timepoint, day) in enumerate(_study(realistic)[1])
    ]
    pd.DataFrame(clinical).to_csv(out / "clinical.csv", index=False, lineterminator="\n")
    table = pd.DataFrame(truth)
    table.to_csv(out / "truth.csv", index=False, lineterminator="\n")
    return table


def file_digests(folder: str | Path) -> dict[str, str]:
    """SHA-256 of every file a study folder holds (``*.fcs`` and ``*.csv``), by file name."""
    return {p.name: file_sha256(p) for p in sorted(Path(folder).iterdir()) if p.suffix in (".fcs", ".csv")}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cytopipe.simulate [--out DIR] [--seed N] [--events N] [--style NAME] [--vary] [--controls ...]
    [--realistic] [--drift]``."""
    parser = argparse.ArgumentParser(prog="python -m cytopipe.simulate", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="sample_fcs", help="output folder (default: sample_fcs)")
    parser.add_argument("--seed", type=int, default=STUDY_SEED, help=f"study seed (default: {STUDY_SEED})")
    parser.add_argument("--events", type=int, default=50_000, help="events per file (default: 50000)")
    parser.add_argument("--style", choices=sorted(STYLES), default="bd", help="instrument style (default: bd)")
    parser.add_argument("--vary", action="store_true", help="draw subjects' biology from realistic ranges")
    parser.add_argument("--controls", nargs="+", default=[], metavar="MARKER",
                        choices=[*PANEL, "unstained"],
                        help="add control tubes at every timepoint: FMO for each MARKER given, or 'unstained'")
    parser.add_argument("--realistic", action="store_true",
                        help="three subjects (responder, non-responder, slow responder) with the biology of real "
                             "blood: continuum CD25, dim FoxP3 with a shoulder, broad scatter")
    parser.add_argument("--drift", action="store_true",
                        help="detector gains drift +/-25%% between visits and the files' spillover understates "
                             "the true one by 15%%")
    args = parser.parse_args(argv)
    if args.events < 1:
        parser.error("--events must be at least 1")
    truth = write_study(args.out, style=args.style, seed=args.seed, n_events=args.events, vary=args.vary,
                        controls=args.controls, realistic=args.realistic, drift=args.drift)
    n_controls = len(truth) * len(set(args.controls))
    print(f"wrote {len(truth)} samples (+ {n_controls} controls), study.csv, clinical.csv and truth.csv to {args.out}")
    print(truth[["file", "cd4_true", "treg_true", "treg_pct_true"]].to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
