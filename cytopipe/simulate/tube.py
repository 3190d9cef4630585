"""One simulated tube: what to draw (:class:`SampleSpec`), drawing its events, its keywords and its truth.

The event model is described in :mod:`cytopipe.simulate` and step by step in :func:`simulate_sample`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from .biology import (
    _AF_SPECTRUM,
    _CODE,
    _LYMPHOCYTES,
    _PHENOTYPES,
    CD4_POPULATIONS,
    POPULATIONS,
    Biology,
    _Phenotype,
)
from .instruments import FLUOROCHROMES, PANEL, STYLES, InstrumentStyle
from .realistic import _REALISTIC_PHENOTYPES

_MARKERS = tuple(next(m for m, f in PANEL.items() if f == fluor) for fluor in FLUOROCHROMES)
_COL = {marker: i for i, marker in enumerate(_MARKERS)}


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
