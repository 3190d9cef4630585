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

Modules: ``instruments`` (panel, cytometer styles), ``biology`` (event labels, phenotypes, :class:`Biology`,
:class:`SubjectDesign`), ``tube`` (one tube: :class:`SampleSpec`, :func:`simulate_sample`, :func:`truth_counts`),
``study`` (the bundled study, :func:`study_specs`), ``realistic`` (``--realistic`` and ``--drift``), ``write``
(FCS files and tables: :func:`write_study`) and ``cli`` (``python -m cytopipe.simulate``). Everything public is
re-exported here.
"""

from .biology import CD4_POPULATIONS, POPULATIONS, Biology, SubjectDesign
from .cli import main
from .instruments import FLUOROCHROMES, PANEL, STYLES, InstrumentStyle
from .realistic import DRIFT_GAIN, DRIFT_SPILLOVER_ERROR, REALISTIC_STUDY, REALISTIC_TIMEPOINTS
from .study import STUDY, STUDY_SEED, TIMEPOINTS, study_specs
from .tube import SampleSpec, SimulatedSample, simulate_sample, truth_counts
from .write import file_digests, write_sample, write_study

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
    "DRIFT_GAIN",
    "DRIFT_SPILLOVER_ERROR",
    "study_specs",
    "simulate_sample",
    "truth_counts",
    "file_digests",
    "write_sample",
    "write_study",
    "main",
]
