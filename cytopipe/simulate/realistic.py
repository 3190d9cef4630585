"""The ``--realistic`` study (hard-to-gate blood of three subjects) and ``--drift`` (gains moving between visits)."""

from __future__ import annotations

import dataclasses

import numpy as np

from .biology import _PHENOTYPES, Biology, SubjectDesign, _Phenotype
from .instruments import FLUOROCHROMES


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


def _drift_gains(seed: int, subject_index: int, timepoint_index: int) -> tuple[tuple[str, float], ...]:
    """A visit's detector gains against the baseline visit (``--drift``); the baseline visit keeps 1."""
    if timepoint_index == 0:
        return ()
    rng = np.random.default_rng(np.random.SeedSequence([seed, subject_index, timepoint_index, 4242]))
    roles = ("FSC", "SSC", *FLUOROCHROMES)
    return tuple((role, float(g)) for role, g in zip(roles, rng.uniform(1 - DRIFT_GAIN, 1 + DRIFT_GAIN, len(roles)),
                                                      strict=True))
