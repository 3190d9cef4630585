"""Simulated Treg study: realistic PBMC tubes after FoxP3 fix/perm, written as raw (uncompensated) FCS files.

The command line ``python -m cytopipe.simulate``; its description is this docstring's first line.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .instruments import PANEL, STYLES
from .study import STUDY_SEED
from .write import write_study


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
