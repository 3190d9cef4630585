"""Writing a simulated study: FCS files, ``study.csv``, ``clinical.csv`` and ``truth.csv``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cytopipe.fcs import file_sha256, write_fcs

from .instruments import STYLES
from .study import STUDY_SEED, _study, study_specs
from .tube import SimulatedSample, simulate_sample, truth_counts


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
