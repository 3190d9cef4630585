"""The ``cytopipe`` command line.

Every command is a thin layer over a function of the stage modules, so the Python API and the command line do the
same thing. User errors (:class:`cytopipe.errors.CytopipeError`) are caught here, once, and printed as one line.

Exit codes: 0 everything succeeded; 1 some samples failed (the others completed); 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from . import __version__
from .errors import ConfigError, CytopipeError
from .outputs import printable

DEFAULT_SHEET = "sample_fcs/study.csv"
DEFAULT_GATES = "treg"
GATES_HELP = ("gate file (YAML or Gating-ML 2.0) or a shipped strategy's name, see `cytopipe gates list`; a file "
              f"wins over a name (default {DEFAULT_GATES})")
DEFAULT_OUT = "results"


def _add_stats_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clinical", metavar="FILE", help="clinical table (CSV keyed by subject and day or "
                        "timepoint, e.g. platelets) joined into the tables, plots and report")
    parser.add_argument("--cva", type=float, default=10.0, metavar="PCT", help="analytical CV %% for the "
                        "reference change value (default 10)")
    parser.add_argument("--cvi", type=float, default=10.0, metavar="PCT", help="within-subject biological CV %% "
                        "(default 10)")
    parser.add_argument("--z", type=float, default=1.96, help="z for the reference change value (default 1.96)")


def _add_panel_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--panel", metavar="FILE", help="panel CSV with columns channel,marker: sets or overrides "
                        "the marker of each listed channel (e.g. VL1-A,CD25 or ForSc,FSC-A) before any lookup")


def _add_pregated_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pregated", metavar="POP", help="every event of the file is already in population POP "
                        "(e.g. a FlowJo export of CD4+ T cells): gates above it are not applied")


def _add_control_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--control", action="append", default=[], metavar="ROLE=FILE",
                        help="a control tube for data-driven cuts, e.g. isotype:CD25=B01.fcs (repeatable; as the "
                        "sample sheet's role column)")


def _controls(values: list[str]) -> dict[str, str]:
    from .errors import ConfigError
    from .samplesheet import ROLE_PATTERN

    controls: dict[str, str] = {}
    for value in values:
        role, sep, path = value.partition("=")
        if not sep or not path or not ROLE_PATTERN.match(role) or role.lower() == "sample":
            raise ConfigError(f"--control {value!r}: expected ROLE=FILE with ROLE fmo:<marker>, isotype:<marker> "
                              f"or unstained")
        kind, _, marker = role.partition(":")
        controls[kind.lower() + (f":{marker}" if marker else "")] = path
    return controls


def _add_wsp_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wsp-sample", metavar="NAME", help="with a FlowJo workspace as gates: the sample or group "
                        "whose gating tree to apply (default: group 'All Samples' if it has gates, else the first "
                        "sample's); 'own' = each FCS file uses its own workspace sample's tree")


def _wsp_notice(gates: str, wsp_sample: str | None, quiet: bool = False) -> None:
    """Say which tree a workspace applies when --wsp-sample does not choose one."""
    if wsp_sample is not None or quiet:
        return
    from .flowjo import default_tree_notice, is_workspace
    from .gatefile import find_gate_file

    try:
        where = find_gate_file(gates)
    except CytopipeError:
        return  # reported by the command itself
    if is_workspace(where):
        print(f"cytopipe: {default_tree_notice(where)}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``cytopipe`` command."""
    parser = argparse.ArgumentParser(
        prog="cytopipe",
        description="Flow-cytometry gating pipeline: raw FCS files to Treg % of CD4 per timepoint against baseline.",
        epilog="Exit codes: 0 all ok, 1 some samples failed, 2 usage or configuration error.",
    )
    parser.add_argument("--version", action="version", version=f"cytopipe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="gate every sample of a study and compare each timepoint with baseline",
                         description="Gate every sample in a sample sheet and write populations.csv, treg.csv, "
                                     "baseline.csv, failures.csv, manifest.json and report.html into --out.")
    run.add_argument("sheet", nargs="?",
                     help=f"sample sheet CSV: file,subject,timepoint,day[,baseline,role,...] (default {DEFAULT_SHEET})")
    run.add_argument("--gates", default=DEFAULT_GATES, metavar="NAME|FILE", help=GATES_HELP)
    run.add_argument("--drift-limit", type=float, default=20.0, metavar="PCT",
                     help="flag a visit whose reference populations' median (CD4 on CD4 T, CD8 on CD8 T, CD3 on T "
                          "cells, lymphocyte scatter) moved more than PCT %% against baseline (default 20)")
    run.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default {DEFAULT_OUT}/)")
    run.add_argument("--workers", type=int, default=None, metavar="N",
                     help="parallel worker processes (default: all cores; 1 = in this process)")
    run.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                     help="run the per-sample work on an existing Dask distributed cluster")
    run.add_argument("--scheduler-timeout", type=float, default=300.0, metavar="SECONDS",
                     help="with --scheduler: give up when the cluster has had no worker this long (default 300; "
                          "finished samples stay cached)")
    run.add_argument("--treg", metavar="POP", help="population reported as Treg (default: the one named Treg)")
    run.add_argument("--parent", metavar="POP", help="denominator population (default: the Treg population's parent)")
    run.add_argument("--spillover", metavar="FILE", help="spillover matrix for every sample (CSV with a channel "
                     "header or a FlowJo matrix) instead of each file's own $SPILLOVER/SPILL/$COMP")
    _add_panel_option(run)
    _add_pregated_option(run)
    _add_wsp_option(run)
    _add_stats_options(run)
    run.add_argument("--plots", choices=("all", "flagged", "none"), default="all",
                     help="gating figures for all samples (default), only those with a QC flag or a significant "
                          "change (very large batches), or none")
    run.add_argument("--no-plots", dest="plots", action="store_const", const="none",
                     help="no figures (same as --plots none): tables and a report without figures")
    run.add_argument("--no-report", action="store_true", help="no report.html or report.pdf (tables only)")
    run.add_argument("--no-pdf", action="store_true", help="skip the PDF rendering of the report")
    run.add_argument("--quiet", action="store_true", help="print nothing but errors")
    run.add_argument("--log-json", action="store_true", help="log progress as JSON lines on stderr")

    info = sub.add_parser("info", help="describe an FCS file (version, instrument, events, channels, spillover)")
    info.add_argument("fcs", metavar="FILE.fcs")
    info.add_argument("--json", action="store_true", help="print JSON for machines")
    _add_panel_option(info)

    export = sub.add_parser("export", help="write one population's events as an FCS 3.1 file")
    export.add_argument("fcs", metavar="FILE.fcs")
    export.add_argument("--gates", default=DEFAULT_GATES, metavar="NAME|FILE", help=GATES_HELP)
    export.add_argument("--population", required=True, metavar="POP", help="population to export")
    export.add_argument("--out", required=True, metavar="OUT.fcs", help="FCS file to write")
    _add_panel_option(export)
    _add_pregated_option(export)
    _add_control_option(export)
    _add_wsp_option(export)

    gate = sub.add_parser("gate", help="per-event membership: one row per event, one 0/1 column per population")
    gate.add_argument("fcs", metavar="FILE.fcs")
    gate.add_argument("--gates", default=DEFAULT_GATES, metavar="NAME|FILE", help=GATES_HELP)
    gate.add_argument("--out", metavar="OUT.csv", help="CSV to write (default: standard output)")
    _add_panel_option(gate)
    _add_pregated_option(gate)
    _add_control_option(gate)
    _add_wsp_option(gate)

    gates = sub.add_parser("gates", help="list, show, check or convert gate files")
    gates_sub = gates.add_subparsers(dest="gates_command", metavar="ACTION", required=True)
    gates_sub.add_parser("list", help="the shipped strategies: name, description, markers the panel needs")
    show = gates_sub.add_parser("show", help="print a shipped strategy's file, to start a lab's own from")
    show.add_argument("file", metavar="NAME")
    check = gates_sub.add_parser("check", help="validate a gate file (optionally against a sample's markers)")
    check.add_argument("file", metavar="FILE")
    check.add_argument("--fcs", metavar="SAMPLE.fcs", help="also check that every marker exists in this file")
    _add_panel_option(check)
    _add_wsp_option(check)
    fit = gates_sub.add_parser("fit", help="fit data-driven gates on one sample and write them as fixed gates",
                               description="Fit every data-driven gate of --gates on FILE.fcs and write the fixed "
                                           "result: Gating-ML 2.0 when --out ends in .xml, else YAML.")
    fit.add_argument("fcs", metavar="FILE.fcs")
    fit.add_argument("--gates", default=DEFAULT_GATES, metavar="FILE", help="gate file (YAML or Gating-ML)")
    fit.add_argument("--out", required=True, metavar="OUT.yaml|OUT.xml", help="fitted gate file to write")
    _add_panel_option(fit)
    convert = gates_sub.add_parser("convert", help="convert YAML, Gating-ML 2.0 or a FlowJo workspace to YAML or "
                                                   "Gating-ML 2.0")
    convert.add_argument("file", metavar="FILE")
    convert.add_argument("--to", required=True, choices=("gatingml", "yaml", "wsp"))
    convert.add_argument("--out", metavar="OUT", help="file to write (default: standard output)")
    convert.add_argument("--fcs", metavar="SAMPLE.fcs", action="append",
                         help="with --to wsp (a FlowJo 10 workspace): a file to gate and hold (repeatable)")
    _add_wsp_option(convert)

    flowjo = sub.add_parser("flowjo", help="FlowJo workspaces: check that cytopipe reproduces FlowJo's counts")
    flowjo_sub = flowjo.add_subparsers(dest="flowjo_command", metavar="ACTION", required=True)
    fj_check = flowjo_sub.add_parser("check", help="gate every sample of a workspace with its own tree and compare "
                                                   "with the counts FlowJo stored")
    fj_check.add_argument("workspace", metavar="WORKSPACE.wsp")
    fj_check.add_argument("--fcs-dir", metavar="DIR", help="folder searched (with subfolders) for the FCS files, "
                          "by $FIL then file name (default: the workspace's folder)")
    fj_check.add_argument("--out", default="flowjo_check.csv", metavar="FILE",
                          help="CSV to write (default flowjo_check.csv)")
    fj_check.add_argument("--tolerance", type=float, default=1.0, metavar="PCT",
                          help="largest accepted difference in %% of FlowJo's count (default 1)")

    demo = sub.add_parser("demo", help="write the bundled study (12 simulated FCS files, its sheets) to try cytopipe")
    demo.add_argument("out", metavar="DIR", help="folder to write (created)")

    report = sub.add_parser("report", help="re-render report.html (and PDF) from a results folder without re-gating")
    report.add_argument("results", metavar="RESULTS_DIR")
    _add_stats_options(report)
    report.add_argument("--no-pdf", action="store_true", help="skip the PDF rendering")
    report.add_argument("--pdf-engine", choices=("native", "chromium"), default="native",
                        help="native (default, no browser; characters outside WinAnsi shown as <U+XXXX> codes) or "
                        "chromium (prints the HTML: names in any script the machine has fonts for)")
    report.add_argument("--no-plots", action="store_true", help="no time-course or overview figures (gating "
                        "figures already in RESULTS_DIR/plots are still shown)")
    return parser


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    sheet = args.sheet
    if sheet is None:
        if not Path(DEFAULT_SHEET).is_file():
            raise ConfigError(f"no sample sheet given and no {DEFAULT_SHEET} here: pass one (cytopipe run SHEET.csv, "
                              "columns file,subject,timepoint,day), or try the bundled study: "
                              "cytopipe demo DIR && cytopipe run DIR/study.csv")
        sheet = DEFAULT_SHEET
    if args.scheduler is None and (args.workers or os.cpu_count() or 1) > 1:  # the run's own default of workers
        _no_collections()
    _wsp_notice(args.gates, args.wsp_sample, args.quiet)
    from .batch import run

    result = run(
        sheet=sheet, gates=args.gates, out=args.out, workers=args.workers, scheduler=args.scheduler,
        treg=args.treg, parent=args.parent, clinical=args.clinical, spillover=args.spillover,
        cva=args.cva, cvi=args.cvi, z=args.z, quiet=args.quiet, log_json=args.log_json,
        drift_limit=args.drift_limit,
        panel=args.panel, pregated=args.pregated, plots=args.plots, report=not args.no_report, pdf=not args.no_pdf,
        wsp_sample=args.wsp_sample,
        scheduler_timeout=args.scheduler_timeout,
    )
    return result.exit_code


def _info(args: argparse.Namespace) -> int:
    from .fcs import describe, format_description
    from .panel import read_panel, read_sample

    info = describe(read_sample(args.fcs, read_panel(args.panel) if args.panel else None))
    print(json.dumps(info, indent=2) if args.json else format_description(info))
    return 0


def _export(args: argparse.Namespace) -> int:
    from .pipeline import export_population

    _wsp_notice(args.gates, args.wsp_sample)
    n = export_population(args.fcs, args.gates, args.population, args.out, panel=args.panel,
                          pregated=args.pregated, controls=_controls(args.control),
                          wsp_sample=args.wsp_sample)
    print(f"wrote {n} events of {args.population!r} to {args.out}", file=sys.stderr)
    return 0


def _gate(args: argparse.Namespace) -> int:
    from .outputs import to_csv, write_csv
    from .pipeline import event_membership

    _wsp_notice(args.gates, args.wsp_sample)
    table = event_membership(args.fcs, args.gates, panel=args.panel, pregated=args.pregated,
                             controls=_controls(args.control), wsp_sample=args.wsp_sample)
    if args.out:
        write_csv(table, args.out)
    else:
        to_csv(table, sys.stdout)
    return 0


def _gates(args: argparse.Namespace) -> int:
    from . import bundled, gatefile

    if args.gates_command == "list":
        rows = [(s.name, s.description, ", ".join(s.markers)) for s in bundled.strategy_summaries()]
        widths = [max(len(row[i]) for row in [("name", "description", ""), *rows]) for i in range(2)]
        print(f"{'name':<{widths[0]}}  {'description':<{widths[1]}}  markers")
        for name, description, markers in rows:
            print(f"{name:<{widths[0]}}  {description:<{widths[1]}}  {markers}")
        return 0
    if args.gates_command == "show":
        sys.stdout.write(gatefile.read_gate_text(args.file))
        return 0
    if args.gates_command == "check":
        from .panel import read_panel, read_sample

        sample = None
        panel = read_panel(args.panel) if args.panel else None  # checked even without --fcs
        if args.fcs:
            sample = read_sample(args.fcs, panel)
        problems = gatefile.check_gates(args.file, sample=sample, wsp_sample=args.wsp_sample)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            return 2
        print(f"{args.file}: ok")
        return 0
    if args.gates_command == "fit":
        from .pipeline import fit_gate_file

        path = fit_gate_file(args.fcs, args.gates, args.out, panel=args.panel)
        print(f"wrote {path}: the gates of {args.gates} fitted on {args.fcs}", file=sys.stderr)
        return 0
    if args.to == "wsp" or args.fcs:
        from .flowjo.write import workspace_for_files

        if args.to != "wsp" or not args.fcs or not args.out:
            raise ConfigError("gates convert --to wsp needs --fcs SAMPLE.fcs (one or more) and --out FILE.wsp; "
                              "--fcs is for --to wsp only")
        workspace_for_files(args.file, args.fcs, args.out)
        return 0
    _wsp_notice(args.file, args.wsp_sample)
    text = gatefile.convert(args.file, args.to, args.out, wsp_sample=args.wsp_sample)
    if not args.out:
        sys.stdout.write(text)
    return 0


def _flowjo(args: argparse.Namespace) -> int:
    from .flowjo.check import check_workspace
    from .outputs import write_csv

    result = check_workspace(args.workspace, fcs_dir=args.fcs_dir, tolerance=args.tolerance)
    write_csv(result.table, args.out)
    print(result.summary(args.workspace))
    return 0 if result.ok else 1


def _demo(args: argparse.Namespace) -> int:
    from .bundled import write_demo

    sheet = write_demo(args.out)
    print(f"wrote the bundled study to {args.out}; run it with: cytopipe run {sheet} --out results", file=sys.stderr)
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import render_report

    path = render_report(args.results, clinical=args.clinical, cva=args.cva, cvi=args.cvi, z=args.z,
                         pdf=not args.no_pdf, plots=not args.no_plots, pdf_engine=args.pdf_engine)
    pdf = path.with_name("report.pdf")
    print(f"wrote {path}" + (f" and {pdf}" if pdf.is_file() and not args.no_pdf else ""), file=sys.stderr)
    return 0


COMMANDS = {"run": _run, "info": _info, "export": _export, "gate": _gate, "gates": _gates, "demo": _demo,
            "report": _report, "flowjo": _flowjo}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cytopipe`` command; returns the exit code.

    Called without ``argv`` it is the program itself (``cytopipe``, ``python -m cytopipe``), which ends when this
    returns: the objects left are then frozen out of the garbage collector's reach (:func:`gc.freeze`), so that the
    interpreter's shutdown frees them by reference counting alone instead of collecting over every object pandas
    and numpy created (~0.1 s of the run's end). Exit handlers still run and every output is already closed. The
    program also loads numpy's BLAS with one thread (:func:`_one_blas_thread`) and pandas without pyarrow
    (:func:`_without_arrow`).
    """
    if argv is None:
        _one_blas_thread()
        _without_arrow()
    code = _main(argv)
    if argv is None:
        import gc

        gc.freeze()
    return code


#: Thread-count settings of the BLAS / OpenMP libraries numpy may load, read when the library loads.
_BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")


def _one_blas_thread() -> None:
    """Load numpy's BLAS with one thread in this program (unless the user set a count).

    Every computation of a run is limited to one BLAS thread anyway, so that sums run in one order whatever the
    machine (:func:`cytopipe.batch.executors.process_one`). A thread pool started at ``import numpy`` only spins:
    OpenBLAS's idle threads took ~0.1 s of CPU from the worker processes on every run (2 cores, 2 workers).
    """
    for name in _BLAS_THREAD_VARIABLES:
        os.environ.setdefault(name, "1")


def _no_collections() -> None:
    """Run this process without the cyclic garbage collector: the command with a process pool.

    The client of a pool run imports numpy, pandas and cytopipe (~half a million objects) and then only waits for and
    writes results: its collections (~40 ms of CPU per run, on 2 cores taken from the workers) traversed those
    imports again and again, and found ~1,600 unreachable objects at the end whether the run had 6 or 500 samples.
    Runs that do per-sample work in this process (``--workers 1``) or talk to a Dask cluster keep the collector. The
    workers collect (:func:`cytopipe.batch.executors._limit_threads`).
    """
    import gc

    gc.disable()


def _without_arrow() -> None:
    """Keep pyarrow out of this program: pandas imports it whenever it is installed (~45 ms of pandas' ~0.2 s import,
    paid by every run while the workers gate), and cytopipe reads and writes no Arrow data. pandas then works as
    without pyarrow, which it supports; Python code that imports cytopipe is not affected."""
    sys.modules.setdefault("pyarrow", None)  # type: ignore[arg-type] - None makes `import pyarrow` an ImportError


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_library_logs()
    try:
        return COMMANDS[args.command](args)
    except CytopipeError as err:
        print(f"cytopipe: error: {printable(str(err))}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        # The output place: a file where a folder should be, a missing folder, a read-only or full file system.
        # (Inputs are read through the stage modules, which raise CytopipeError naming the file.)
        if isinstance(err, BrokenPipeError):
            return 0
        where = err.filename or ""
        print(f"cytopipe: error: {printable(str(where))}{': ' if where else ''}{err.strerror or err}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cytopipe: interrupted; finished samples are cached and a re-run resumes", file=sys.stderr)
        return 130


def _quiet_library_logs() -> None:
    """The command line speaks in its own one-line messages: Dask's client logs (a result lost with its worker is
    recomputed, not an error) and asyncio's "Task exception was never retrieved" dumps from a client closed after
    giving up would otherwise print tracebacks for events cytopipe already reports."""
    import logging

    for name in ("distributed", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


if __name__ == "__main__":
    sys.exit(main())
