"""The bundled study's design and the tubes of a study, each with its own seeded generator."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .biology import Biology, SubjectDesign
from .instruments import PANEL, STYLES
from .realistic import DRIFT_SPILLOVER_ERROR, REALISTIC_STUDY, REALISTIC_TIMEPOINTS, _drift_gains
from .tube import SampleSpec

#: Seed of the bundled study in ``sample_fcs/``.
STUDY_SEED = 20180401

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
