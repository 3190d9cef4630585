"""Hostile and careless input (issue 13): one line and exit 2 (or a failures.csv row), bounded memory and time,
no silent wrong output.

Every CLI call runs in a subprocess under a memory cap (``RLIMIT_DATA``, private memory: 512 MB + 8x the input
size, one BLAS thread) and a time cap, and must not print a traceback. The expensive cases (15 MB FCS TEXT,
million-vertex polygons, kill -9, Dask) are marked slow.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_fcs import _assemble, _params

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_fcs"
FIXED = REPO / "gates" / "treg_fixed.yaml"
BASE_MEMORY = 512 * 2**20


def capped(*args: object, size: int = 0, seconds: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m cytopipe ARGS`` under RLIMIT_DATA = 512 MB + 8 x ``size`` and a wall-clock cap; no traceback."""
    limit = BASE_MEMORY + 8 * size

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    env = {**os.environ, "MPLBACKEND": "Agg", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "cytopipe", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=seconds, preexec_fn=cap)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "MemoryError" not in proc.stderr, proc.stderr[-3000:]
    return proc


def error_line(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """The single ``cytopipe: error:`` (or gate-check) line of a failed command."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def fixed_study(folder: Path, n: int = 2, extra: dict[str, list[str]] | None = None, names: list[str] | None = None
                ) -> Path:
    """A sample sheet over ``n`` bundled files (fixed gates keep it fast)."""
    files = sorted(SAMPLES.glob("ITP-01_*.fcs"))[:n]
    rows = {"file": [str(f) for f in files], "subject": ["S1"] * n, "timepoint": [f"T{i}" for i in range(n)],
            "day": [str(7 * i) for i in range(n)]}
    if names is not None:
        rows["sample"] = names
    rows.update(extra or {})
    folder.mkdir(parents=True, exist_ok=True)
    sheet = folder / "study.csv"
    pd.DataFrame(rows).to_csv(sheet, index=False)
    return sheet


# ------------------------------------------------------------------------------------------------ FCS TEXT


def _escaped_fcs(path: Path, value_bytes: int) -> Path:
    """A valid FCS file whose one keyword value is ``x//x//...``: every second byte an escaped delimiter."""
    value = "x//" * (value_bytes // 3)
    keywords = {"$TOT": "2", "$DATATYPE": "F", "$BYTEORD": "1,2,3,4", "$MODE": "L", "LONG": value,
                **_params([32])}
    path.write_bytes(_assemble(keywords, np.array([1.0, 2.0], "<f4").tobytes(), version="FCS3.0"))
    return path


def test_escaped_delimiters_parse_in_linear_time(tmp_path):
    from cytopipe.fcs import read_fcs

    path = _escaped_fcs(tmp_path / "esc.fcs", 300_000)
    start = time.perf_counter()
    sample = read_fcs(path)
    assert time.perf_counter() - start < 1.0
    assert sample.metadata["LONG"] == "x/" * 100_000
    assert sample.events[:, 0].tolist() == [1.0, 2.0]


@pytest.mark.slow
def test_fifteen_megabyte_text_parses_under_two_seconds_and_200_mb(tmp_path):
    import tracemalloc

    from cytopipe.fcs import read_fcs

    path = _escaped_fcs(tmp_path / "big.fcs", 15_000_000)
    tracemalloc.start()
    start = time.perf_counter()
    sample = read_fcs(path)
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(sample.metadata["LONG"]) == 10_000_000
    assert elapsed < 2.0, elapsed
    assert peak < 200 * 2**20, peak
    proc = capped("info", path, size=path.stat().st_size, seconds=30)
    assert proc.returncode == 0


def test_text_holding_every_byte_value(tmp_path):
    """No spare byte to stand for escaped delimiters: the separators are found by a regular expression instead."""
    from cytopipe.fcs.text import _File, _parse_text

    every = bytes(b for b in range(256) if b != ord("/"))
    raw = b"/$TOT/2/ALL/" + every.replace(b"/", b"//") + b"a//b///C//D/x//y////z/E/5/"
    path = tmp_path / "x"
    path.write_bytes(raw)
    metadata = _parse_text(_File(path), raw, "TEXT")
    assert metadata["ALL"].encode("latin-1") == every + b"a/b/"  # not UTF-8: read as latin-1
    assert metadata["C/D"] == "x/y//z" and metadata["E"] == "5" and metadata["$TOT"] == "2"


@pytest.mark.parametrize("value", ["¹6", "1" + "0" * 5000, "³²"])
def test_bit_count_with_odd_digits_is_one_line(tmp_path, value):
    keywords = {"$TOT": "2", "$DATATYPE": "I", "$BYTEORD": "1,2", "$MODE": "L", **_params([16])}
    keywords["$P1B"] = value
    path = tmp_path / "bits.fcs"
    path.write_bytes(_assemble(keywords, b"\x01\x00\x02\x00").replace(b"FCS2.0", b"FCS3.0"))
    line = error_line(capped("info", path))
    assert "$P1B" in line and str(path) in line


@pytest.mark.parametrize("count", ["²", "9" * 5000, "٣"])
def test_spillover_count_with_odd_digits_is_one_line(tmp_path, count):
    from cytopipe.compensate import spillover_from_metadata
    from cytopipe.errors import CytopipeError

    with pytest.raises(CytopipeError, match=r"\$SPILLOVER"):
        spillover_from_metadata({"$SPILLOVER": f"{count},FL1,FL2,1,0,0,1"}, ("FL1", "FL2"))


def test_not_an_fcs_file_names_every_version(tmp_path):
    path = tmp_path / "x.fcs"
    path.write_bytes(b"GIF89a" + b"\0" * 100)
    line = error_line(capped("info", path))
    assert "FCS3.2" in line and "FCS3.1" in line and "FCS2.0" in line


# ------------------------------------------------------------------------------------------------ gate files

BOMB = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""

BOMB_PLACES = {
    "gate type": "populations:\n  - name: L\n    gate: {type: *i, channels: [FSC-A], min: 1}\n",
    "channel transform": "populations:\n  - name: L\n    gate: {type: range, "
                         "channels: [{channel: CD4, transform: *i}], min: 1}\n",
    "channel ratio": "populations:\n  - name: L\n    gate: {type: range, channels: [{channel: [CD4, CD8], ratio: *i}], "
                     "min: 1}\n",
    "transform type": "transforms:\n  t: {type: *i}\npopulations:\n  - name: L\n    gate: {type: range, "
                      "channels: [{channel: CD4, transform: t}], min: 1}\n",
    "population name": "populations:\n  - name: *i\n    gate: {type: range, channels: [FSC-A], min: 1}\n",
    "vertices": "populations:\n  - name: L\n    gate: {type: polygon, channels: [FSC-A, SSC-A], vertices: *i}\n",
}


@pytest.mark.parametrize("place", list(BOMB_PLACES))
def test_alias_bomb_anywhere_is_refused(tmp_path, place):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB.replace("a: &a", "x-a: &a").replace("\nb:", "\nx-b:").replace("\nc:", "\nx-c:")
                    .replace("\nd:", "\nx-d:").replace("\ne:", "\nx-e:").replace("\nf:", "\nx-f:")
                    .replace("\ng:", "\nx-g:").replace("\nh:", "\nx-h:").replace("\ni:", "\nx-i:")
                    + BOMB_PLACES[place])
    for args in (("gates", "check", path), ("gates", "convert", path, "--to", "gatingml")):
        line = error_line(capped(*args, seconds=30))
        assert str(path) in line and "alias" in line


def _polygon_yaml(n: int) -> str:
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    points = ", ".join(f"[{50000 + 20000 * np.cos(a):.0f}, {50000 + 20000 * np.sin(a):.0f}]" for a in angles)
    return f"populations:\n  - name: L\n    gate: {{type: polygon, channels: [FSC-A, SSC-A], vertices: [{points}]}}\n"


def _polygon_xml(n: int) -> str:
    vertex = ('<gating:vertex><gating:coordinate data-type:value="{:.0f}"/>'
              '<gating:coordinate data-type:value="{:.0f}"/></gating:vertex>')
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    body = "".join(vertex.format(50000 + 20000 * np.cos(a), 50000 + 20000 * np.sin(a)) for a in angles)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<gating:Gating-ML '
        'xmlns:gating="http://www.isac-net.org/std/Gating-ML/v2.0/gating" '
        'xmlns:data-type="http://www.isac-net.org/std/Gating-ML/v2.0/datatypes">'
        '<gating:PolygonGate gating:id="L">'
        '<gating:dimension gating:compensation-ref="uncompensated"><data-type:fcs-dimension data-type:name="FSC-A"/>'
        '</gating:dimension>'
        '<gating:dimension gating:compensation-ref="uncompensated"><data-type:fcs-dimension data-type:name="SSC-A"/>'
        '</gating:dimension>'
        f"{body}</gating:PolygonGate></gating:Gating-ML>\n"
    )


@pytest.mark.parametrize("kind", ["yaml", "xml"])
def test_polygon_beyond_the_vertex_cap_is_refused(tmp_path, kind):
    from cytopipe.gates import MAX_VERTICES

    path = tmp_path / f"poly.{kind}"
    path.write_text((_polygon_yaml if kind == "yaml" else _polygon_xml)(MAX_VERTICES + 1))
    line = error_line(capped("gates", "check", path, size=path.stat().st_size, seconds=30))
    assert f"{MAX_VERTICES + 1} vertices" in line and f"at most {MAX_VERTICES}" in line
    path.write_text((_polygon_yaml if kind == "yaml" else _polygon_xml)(1000))
    assert capped("gates", "check", path, seconds=30).returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["yaml", "xml"])
def test_million_vertex_polygon_is_refused_quickly(tmp_path, kind):
    path = tmp_path / f"poly.{kind}"
    path.write_text((_polygon_yaml if kind == "yaml" else _polygon_xml)(1_000_000))
    start = time.perf_counter()
    line = error_line(capped("gates", "check", path, size=path.stat().st_size, seconds=60))
    assert "1000000 vertices" in line or "too large" in line
    assert time.perf_counter() - start < 30


def test_deeply_nested_yaml_is_one_line(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("populations: " + "[" * 100_000 + "]" * 100_000 + "\n")
    line = error_line(capped("gates", "check", path, seconds=30))
    assert str(path) in line and "nest" in line


@pytest.mark.parametrize(("text", "words"), [
    ("populations:\n  - name: L\n    gate: {type: range, channels: [FSC-A], min: " + "9" * 5000 + "}\n",
     "5000 digits"),
    ("populations:\n  - name: L\n    gate: {type: range, channels: [FSC-A], min: 1}\n    ? [a, b]\n    : 1\n",
     "mapping key"),
    ("populations:\n  - ? {a: 1}\n    : 1\n", "mapping key"),
])
def test_yaml_oddities_are_one_line(tmp_path, text, words):
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    line = error_line(capped("gates", "check", path))
    assert str(path) in line and words in line


LOGICLE_XML = """<?xml version="1.0" encoding="UTF-8"?>
<gating:Gating-ML xmlns:gating="http://www.isac-net.org/std/Gating-ML/v2.0/gating"
 xmlns:transforms="http://www.isac-net.org/std/Gating-ML/v2.0/transformations"
 xmlns:data-type="http://www.isac-net.org/std/Gating-ML/v2.0/datatypes">
<transforms:transformation transforms:id="lg"><transforms:logicle {params}/></transforms:transformation>
<gating:RectangleGate gating:id="P"><gating:dimension gating:min="0.2" gating:transformation-ref="lg"
 gating:compensation-ref="uncompensated">
<data-type:fcs-dimension data-type:name="FL1"/></gating:dimension></gating:RectangleGate>
</gating:Gating-ML>
"""


@pytest.mark.parametrize(("params", "words"), [
    ('transforms:T="inf" transforms:W="0.5" transforms:M="4.5" transforms:A="0"', "T"),
    ('transforms:T="nan" transforms:W="0.5" transforms:M="4.5" transforms:A="0"', "T"),
    ('transforms:T="262144" transforms:W="0" transforms:M="1e-300" transforms:A="0"', "M"),
    ('transforms:T="1e308" transforms:W="0.5" transforms:M="4.5" transforms:A="1e-320"', ""),
])
def test_gatingml_logicle_edge_parameters_are_refused(tmp_path, params, words):
    path = tmp_path / "lg.xml"
    path.write_text(LOGICLE_XML.format(params=params))
    proc = capped("gates", "check", path)
    if not words:  # valid parameters: the file checks
        assert proc.returncode == 0, proc.stderr
        return
    line = error_line(proc)
    assert str(path) in line and words in line


def test_gatingml_round_trip_keeps_the_name(tmp_path):
    xml, back = tmp_path / "f.xml", tmp_path / "f.yaml"
    assert capped("gates", "convert", FIXED, "--to", "gatingml", "--out", xml).returncode == 0
    assert capped("gates", "convert", xml, "--to", "yaml", "--out", back).returncode == 0
    from cytopipe.gatefile import load_gates, load_strategy

    assert load_gates(back).name == load_gates(FIXED).name == load_strategy(xml).name == \
        "Treg (CD3+ CD4+ CD25high FoxP3+)"


# ------------------------------------------------------------------------------------------------ sample sheets


@pytest.mark.parametrize("column", ["treg_pct", "cd4_events", "ci_low", "acquisition_qc", "fold_change"])
def test_sheet_column_named_like_an_output_column(tmp_path, column):
    sheet = fixed_study(tmp_path, extra={column: ["a", "b"]})
    line = error_line(capped("run", sheet, "--gates", FIXED, "--out", tmp_path / "out", "--workers", "1"))
    assert column in line and str(sheet) in line
    assert not (tmp_path / "out" / "treg.csv").exists()


def test_sheet_with_file_and_File(tmp_path):
    sheet = fixed_study(tmp_path)
    table = pd.read_csv(sheet)
    table["File"] = table["file"]
    table.to_csv(sheet, index=False)
    line = error_line(capped("run", sheet, "--gates", FIXED, "--out", tmp_path / "out"))
    assert "'file'" in line and "'File'" in line


def test_long_sample_names_run(tmp_path):
    names = ["A" * 300, "A" * 299 + "B"]
    sheet = fixed_study(tmp_path, names=names)
    out = tmp_path / "out"
    proc = capped("run", sheet, "--gates", FIXED, "--out", out, "--workers", "1", "--quiet", seconds=120)
    assert proc.returncode == 0, proc.stderr
    treg = pd.read_csv(out / "treg.csv")
    assert sorted(treg["sample"]) == sorted(names)
    assert len({p.name for p in (out / "plots").glob("gating_*")}) == 2
    assert all(len(p.name) < 255 for p in (out / "plots").iterdir())


def test_newline_in_a_sample_name_cannot_forge_a_log_line(tmp_path):
    sheet = fixed_study(tmp_path, names=["s1\ncytopipe: [9/9] INJECTED LOG LINE ok\r\x1b[2J", "s2"])
    proc = capped("run", sheet, "--gates", FIXED, "--out", tmp_path / "out", "--workers", "1", seconds=120)
    assert proc.returncode == 0, proc.stderr
    assert not any(line.startswith("cytopipe: [9/9] INJECTED") for line in proc.stderr.splitlines())
    assert "\x1b" not in proc.stderr and "\r" not in proc.stderr
    assert "\\ncytopipe: [9/9] INJECTED LOG LINE ok\\r\\x1b[2J" in proc.stderr


INJECTIONS = ["=cmd|' /C calc'!A0", "@SUM(1+1)", "+HYPERLINK(\"http://x\")", "-2+3+cmd|' /C calc'!A0", "\tx",
              "=HYPERLINK(\"http://evil\",\"x\")"]


def _cells(path: Path) -> list[str]:
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        return [cell for row in csv.reader(handle) for cell in row]


def test_formula_injection_is_neutralised_in_every_csv(tmp_path):
    files = sorted(SAMPLES.glob("ITP-01_*.fcs"))[:2]
    broken = tmp_path / "broken.fcs"
    broken.write_bytes(b"FCS3.0" + b" " * 4 + b"garbage")
    sheet = tmp_path / "study.csv"
    pd.DataFrame({"file": [str(files[0]), str(files[1]), str(broken)],
                  "subject": ["=cmd|' /C calc'!A0"] * 3, "timepoint": ["@SUM(1+1)", "T1", "T2"],
                  "day": ["0", "7", "14"], "sample": ["=HYPERLINK(\"http://evil\",\"x\")", "ok", "@SUM(1+1)"],
                  "note": ["+HYPERLINK(\"http://x\")", "-2+3+cmd|' /C calc'!A0", "-3.5"],
                  "=evil_header": ["1", "2", "3"]}).to_csv(sheet, index=False)
    clinical = tmp_path / "clinical.csv"
    pd.DataFrame({"subject": ["=cmd|' /C calc'!A0"], "day": ["0"], "platelets": ["30"],
                  "comment": ["=1+1"]}).to_csv(clinical, index=False)
    out = tmp_path / "out"
    proc = capped("run", sheet, "--gates", FIXED, "--out", out, "--workers", "1", "--quiet", seconds=180)
    assert proc.returncode == 1, proc.stderr
    for name in ("treg.csv", "populations.csv", "baseline.csv", "failures.csv", "summary.csv"):
        cells = _cells(out / name)
        bad = [c for c in cells if c[:1] in ("=", "+", "@", "\t", "\r") or
               (c[:1] == "-" and not _is_number(c))]
        assert not bad, (name, bad)
    treg = pd.read_csv(out / "treg.csv")
    assert treg["note"].tolist() == ["'+HYPERLINK(\"http://x\")", "'-2+3+cmd|' /C calc'!A0"]
    assert treg["treg_pct"].dtype == float and treg["day"].tolist() == [0, 7]
    assert "'=evil_header" in treg.columns
    failures = pd.read_csv(out / "failures.csv")
    assert failures["sample"].tolist() == ["'@SUM(1+1)"]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------------ clinical, report


def test_infinite_platelets_are_one_line(tmp_path, results_folder):
    out = results_folder(tmp_path)
    clinical = tmp_path / "clinical.csv"
    table = pd.read_csv(clinical, dtype={"platelets": str})  # text, as a hand-edited sheet holds it
    table.loc[0, "platelets"] = "inf"
    table.to_csv(clinical, index=False)
    line = error_line(capped("report", out, "--clinical", clinical, "--no-pdf", seconds=120))
    assert "platelets" in line and "inf" in line and str(clinical) in line


@pytest.mark.parametrize("content", [
    "sample,subject\nx,y\n",  # columns missing
    "sample,subject,timepoint,day,cd4_events,treg_events,treg_pct,ci_low,ci_high\na,b,c,notaday,x,y,z,,\n",
    "\x00\x01\x02garbage\n",
    "",
])
def test_report_on_malformed_treg_csv(tmp_path, content):
    (tmp_path / "treg.csv").write_text(content)
    line = error_line(capped("report", tmp_path, "--no-pdf", seconds=120))
    assert "treg.csv" in line


# ------------------------------------------------------------------------------------------------ output places


def test_out_is_an_existing_file(tmp_path):
    sheet = fixed_study(tmp_path)
    target = tmp_path / "results"
    target.write_text("not a folder")
    line = error_line(capped("run", sheet, "--gates", FIXED, "--out", target))
    assert str(target) in line


def test_gate_out_in_a_missing_folder(tmp_path):
    target = tmp_path / "missing_dir" / "x.csv"
    line = error_line(capped("gate", SAMPLES / "ITP-01_W1.fcs", "--gates", FIXED, "--out", target))
    assert line == f"cytopipe: error: {target}: No such file or directory"


def test_out_on_a_full_file_system(tmp_path):
    """RLIMIT_FSIZE makes every write past 64 kB fail as a full disk would (Python ignores SIGXFSZ)."""
    sheet = fixed_study(tmp_path)
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO)}

    def small() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    proc = subprocess.run([sys.executable, "-m", "cytopipe", "run", str(sheet), "--gates", str(FIXED), "--out",
                           str(tmp_path / "out"), "--workers", "1", "--quiet"], capture_output=True, text=True,
                          env=env, preexec_fn=small, timeout=180)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.splitlines()[-1]  # after one "plot failed" line per sample
    assert line.startswith("cytopipe: error: ") and str(tmp_path / "out") in line
    assert "File too large" in line or "No space" in line
    leftovers = [p for p in (tmp_path / "out").rglob("*.tmp")]
    assert not leftovers


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_read_only(tmp_path):
    sheet = fixed_study(tmp_path)
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o500)
    try:
        line = error_line(capped("run", sheet, "--gates", FIXED, "--out", target / "x"))
        assert "ermission" in line
    finally:
        target.chmod(0o700)


def test_out_read_only_file_system(tmp_path):
    """/proc is read-only for everyone, root included."""
    sheet = fixed_study(tmp_path)
    line = error_line(capped("run", sheet, "--gates", FIXED, "--out", "/proc/cytopipe-out"))
    assert "/proc/cytopipe-out" in line


# ------------------------------------------------------------------------------------------------ the cache


def _log(out: Path) -> Path:
    return out / ".cache" / "entries.log"


def _entries(out: Path) -> list[str]:
    """The whole result lines of the cache log (a line being written may be torn: it is left out)."""
    if not _log(out).is_file():
        return []
    return [line for line in _log(out).read_text().split("\n")[:-1] if line.startswith("R ")]


def _rewrite(out: Path, change, rehash: bool = False) -> None:
    """Apply ``change`` to the JSON text of every result line of the cache log (re-checksummed when ``rehash``)."""
    from cytopipe.batch.cache import _sha_text

    lines = []
    for line in _log(out).read_text().split("\n"):
        if line.startswith("R "):
            _, key, checksum, text = line.split(" ", 3)
            text = change(text)
            line = f"R {key} {_sha_text(text) if rehash else checksum} {text}"
        lines.append(line)
    _log(out).write_text("\n".join(lines))


def _edit(out: Path, change, rehash: bool = False) -> None:
    from cytopipe.batch.cache import _entry_text

    def edited(text: str) -> str:
        record = json.loads(text)
        change(record)
        return _entry_text(record)

    _rewrite(out, edited, rehash)


def _directory(out: Path) -> None:
    _log(out).unlink()
    _log(out).mkdir()
    (_log(out) / "f").write_text("x")


def _torn(out: Path) -> None:
    """As a run killed while writing its first result line leaves the log."""
    text = _log(out).read_text()
    first = text.index("\nR ") + 1 if not text.startswith("R ") else 0
    _log(out).write_text(text[:first + (text.index("\n", first) - first) // 2])


CORRUPTIONS = {
    "deeply nested": lambda out: _rewrite(out, lambda text: "[" * 200_000 + "]" * 200_000, rehash=True),
    "wrong types": lambda out: _rewrite(out, lambda text: json.dumps({"sample": 5}), rehash=True),
    "not an object": lambda out: _rewrite(out, lambda text: "[1, 2]", rehash=True),
    "NaN": lambda out: _rewrite(out, lambda text: text.replace('"n_events": ', '"n_events": NaN, "x": '),
                                rehash=True),
    "bad checksum": lambda out: _rewrite(out, lambda text: text.replace('"n_events": ', '"n_events": 1')),
    "directory": _directory,
    "no populations": lambda out: _edit(out, lambda r: r.pop("populations"), rehash=True),
    "tampered count": lambda out: _edit(out, lambda r: r["populations"][-1].update(count=1)),
    "tampered treg": lambda out: _edit(out, lambda r: r["treg"].update(treg_events=1, treg_pct=0.5)),
    "checksum fixed": lambda out: _edit(out, lambda r: r["populations"][-1].update(count=1), rehash=True),
    "empty": lambda out: _log(out).write_text(""),
    "torn": _torn,
    "binary": lambda out: _log(out).write_bytes(b"R \xff\xfe " * 1000 + b"\x00\n"),
}


@pytest.fixture(scope="module")
def cached_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cached")
    sheet = fixed_study(folder)
    out = folder / "out"
    proc = capped("run", sheet, "--gates", FIXED, "--out", out, "--workers", "1", "--quiet", seconds=180)
    assert proc.returncode == 0, proc.stderr
    return sheet, out


@pytest.mark.parametrize("how", list(CORRUPTIONS))
def test_corrupt_cache_entries_are_recomputed(tmp_path, cached_run, how):
    import shutil

    sheet, first = cached_run
    out = tmp_path / "out"
    shutil.copytree(first, out)
    assert len(_entries(out)) == 2
    CORRUPTIONS[how](out)
    proc = capped("run", sheet, "--gates", FIXED, "--out", out, "--workers", "1", seconds=180)
    assert proc.returncode == 0, proc.stderr
    assert "(cached)" not in proc.stderr
    for name in ("populations.csv", "treg.csv"):
        assert (out / name).read_bytes() == (first / name).read_bytes(), name
    again = capped("run", sheet, "--gates", FIXED, "--out", out, "--workers", "1", seconds=180)
    assert again.stderr.count("ok (cached)") == 2, again.stderr


# ------------------------------------------------------------------------------------------------ compensation


def test_compensation_errors_name_the_file(tmp_path):
    files = sorted(SAMPLES.glob("ITP-01_*.fcs"))[:1]
    data = files[0].read_bytes()
    start = data.index(b"$SPILLOVER")
    # Corrupt the count of the spillover keyword (same length: offsets stay valid).
    stop = data.index(b",", start + 11)
    bad = data[:start + 11] + b"9" * (stop - start - 11) + data[stop:]
    path = tmp_path / "bad_spill.fcs"
    path.write_bytes(bad)
    sheet = tmp_path / "s.csv"
    pd.DataFrame({"file": [str(path)], "subject": ["S"], "timepoint": ["T"], "day": ["0"]}).to_csv(sheet,
                                                                                                   index=False)
    proc = capped("run", sheet, "--gates", FIXED, "--out", tmp_path / "out", "--workers", "1", seconds=120)
    assert proc.returncode == 1, proc.stderr
    failures = pd.read_csv(tmp_path / "out" / "failures.csv")
    assert str(path) in failures["reason"][0], failures["reason"][0]


# ------------------------------------------------------------------------------------------------ new users


def test_absent_marker_stops_before_processing(tmp_path):
    sheet = fixed_study(tmp_path)
    gates = tmp_path / "g.yaml"
    gates.write_text(FIXED.read_text().replace("channels: [CD25, FoxP3]", "channels: [CD52, FoxP3]"))
    start = time.perf_counter()
    proc = capped("run", sheet, "--gates", gates, "--out", tmp_path / "out", seconds=120)
    line = error_line(proc)
    assert "CD52" in line and "did you mean 'CD25'?" in line and str(gates) in line
    assert not (tmp_path / "out" / "treg.csv").exists()
    assert time.perf_counter() - start < 30


def test_marker_missing_from_one_instrument_fails_that_file_alone(tmp_path):
    """A study mixing instruments: the first file lacks CD25 (its tube has another marker there), the others have
    it. The marker check must not stop the study; the first file fails alone in failures.csv."""
    from cytopipe.fcs import read_fcs, write_fcs

    source = read_fcs(SAMPLES / "ITP-01_W1.fcs", scale="raw")
    odd = tmp_path / "A_other_panel.fcs"
    markers = ["CD99" if m == "CD25" else m for m in source.markers]
    assert markers != list(source.markers)
    keep = {k: v for k, v in source.metadata.items() if k in ("$SPILLOVER", "SPILL")}
    write_fcs(odd, source.events, source.channels, markers, keep)
    sheet = fixed_study(tmp_path, n=2)
    table = pd.read_csv(sheet)
    table = pd.concat([pd.DataFrame({"file": [str(odd)], "subject": ["S0"], "timepoint": ["T0"], "day": ["0"]}),
                       table], ignore_index=True)
    table.to_csv(sheet, index=False)
    proc = capped("run", sheet, "--gates", FIXED, "--out", tmp_path / "out", "--no-pdf", "--no-plots",
                  seconds=180)
    assert proc.returncode == 1, proc.stderr[-2000:]
    failures = pd.read_csv(tmp_path / "out" / "failures.csv")
    assert list(failures["file"]) == [str(odd)] and "CD25" in failures["reason"][0]
    assert len(pd.read_csv(tmp_path / "out" / "treg.csv")) == 2


def test_gates_fit_writes_yaml_and_gatingml(tmp_path):
    fcs = SAMPLES / "ITP-01_W1.fcs"
    for suffix in ("yaml", "xml"):
        target = tmp_path / f"fitted.{suffix}"
        proc = capped("gates", "fit", fcs, "--gates", REPO / "gates" / "treg.yaml", "--out", target, seconds=180)
        assert proc.returncode == 0, proc.stderr
        assert capped("gates", "check", target, "--fcs", fcs).returncode == 0
    from cytopipe.gatefile import load_strategy
    from cytopipe.pipeline import event_membership

    yaml_counts = event_membership(fcs, tmp_path / "fitted.yaml").sum()
    xml_counts = event_membership(fcs, tmp_path / "fitted.xml").sum()
    auto_counts = event_membership(fcs, REPO / "gates" / "treg.yaml").sum()
    assert yaml_counts.to_dict() == xml_counts.to_dict()
    # Fitted once and frozen: the same events as fitting the data-driven file on this sample (within 0.1 %).
    for pop, count in auto_counts.items():
        assert abs(yaml_counts[pop] - count) <= max(2, 0.001 * count), pop
    assert load_strategy(tmp_path / "fitted.xml").name == load_strategy(REPO / "gates" / "treg.yaml").name


def test_readme_convert_example_is_true(tmp_path):
    """The README's Gating-ML commands, run as written in a folder that has the repository's gates/ and samples."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("### Converting to and from Gating-ML 2.0", 1)[1].split("```", 2)[1]
    commands = [line.split("#")[0].split() for line in block.splitlines() if line.startswith("cytopipe ")]
    assert [words[:3] for words in commands] == [["cytopipe", "gates", "convert"]] * 2 + [["cytopipe", "gates", "fit"]]
    for name in ("gates", "sample_fcs"):
        (tmp_path / name).symlink_to(REPO / name)
    for words in commands:
        proc = capped(*words[1:], cwd=tmp_path, seconds=180)
        assert proc.returncode == 0, (words, proc.stderr)
    from cytopipe.gatefile import load_strategy

    assert load_strategy(tmp_path / "treg.yaml").name == load_strategy(REPO / "gates" / "treg_fixed.yaml").name
    assert load_strategy(tmp_path / "fitted.xml").name == load_strategy(REPO / "gates" / "treg.yaml").name


def test_help_has_no_doubled_percent():
    proc = capped("--help")
    assert proc.returncode == 0 and "%%" not in proc.stdout and "Treg % of CD4" in proc.stdout


def test_readme_output_table_lists_every_file():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## What a run writes", 1)[1].split("\n## ", 1)[0]
    for name in ("populations.csv", "treg.csv", "baseline.csv", "summary.csv", "failures.csv", "correlation.csv",
                 "gates_fitted.csv", "sensitivity.csv", "gate_drift.csv", "manifest.json"):
        assert f"`{name}`" in section, name


# ------------------------------------------------------------------------------------------------ faults


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except OSError:
        return True
    return state != "Z"


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_leaves_no_worker_and_no_temporary_file(tmp_path):
    from test_batch import make_study

    sheet, gates, _ = make_study(tmp_path / "study", n_files=8, n_events=60_000, subjects=2)
    out = tmp_path / "out"
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "cytopipe", "run", str(sheet), "--gates", str(gates), "--out",
                             str(out), "--workers", "2", "--quiet"], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while time.monotonic() < deadline:
        workers = [p for p in _children(proc.pid) if _alive(p)]
        if len(workers) >= 2 and (out / ".cache").is_dir():
            break
        time.sleep(0.05)
    assert len(workers) >= 2, "the pool did not start"
    # A temporary plot as a killed run leaves it, and one of a live writer (this test process: must survive).
    (out / "plots").mkdir(parents=True, exist_ok=True)
    stale = out / "plots" / ".gating_x.png.999999.0badc0de.tmp"
    stale.write_bytes(b"half")
    live = out / "plots" / f".gating_y.png.{os.getpid()}.0badc0de.tmp"
    live.write_bytes(b"half")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    left = [p for p in workers if _alive(p)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "workers outlived their parent"
    again = capped("run", sheet, "--gates", gates, "--out", out, "--workers", "2", "--quiet", seconds=300)
    assert again.returncode == 0, again.stderr
    assert not stale.exists()
    assert live.exists()
    live.unlink()
    assert not list(out.rglob("*.tmp"))


# ------------------------------------------------------------------------------------------------ determinism, Dask


def _csvs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.csv"))}


def _dask_cluster(folder: Path, workers: int, *extra: str) -> tuple[str, list[subprocess.Popen]]:
    from test_dask import _dask

    scheduler_file = folder / "scheduler.json"
    procs = [_dask("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file",
                   str(scheduler_file), log=folder / "scheduler.log")]
    deadline = time.monotonic() + 60
    while not scheduler_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    for i in range(workers):
        procs.append(_dask("worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1", "--nworkers", "1",
                           "--no-dashboard", "--host", "127.0.0.1", "--local-directory", str(folder / f"w{i}"),
                           *extra, log=folder / f"worker{i}.log"))
    from distributed import Client

    with Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
        client.wait_for_workers(workers, timeout=90)
        return client.scheduler.address, procs


@pytest.mark.slow
def test_every_csv_is_byte_identical_across_workers_cache_and_dask(tmp_path):
    """The bundled study with the data-driven gates: --workers 1, --workers 2, a re-run from the cache, Dask."""
    pytest.importorskip("distributed")
    from test_dask import _stop

    sheet = SAMPLES / "study.csv"
    runs = {}
    for name, extra in (("w1", ("--workers", "1")), ("w2", ("--workers", "2"))):
        proc = capped("run", sheet, "--out", tmp_path / name, *extra, "--quiet", seconds=900)
        assert proc.returncode == 0, proc.stderr
        runs[name] = _csvs(tmp_path / name)
    proc = capped("run", sheet, "--out", tmp_path / "w2", "--workers", "2", seconds=900)
    assert proc.stderr.count("ok (cached)") == 12, proc.stderr
    runs["cache"] = _csvs(tmp_path / "w2")
    address, procs = _dask_cluster(tmp_path, 2)
    try:
        proc = capped("run", sheet, "--out", tmp_path / "dask", "--scheduler", address, "--quiet", seconds=900)
        assert proc.returncode == 0, proc.stderr
        runs["dask"] = _csvs(tmp_path / "dask")
    finally:
        for p in reversed(procs):
            _stop(p)
    names = set(runs["w1"])
    assert {"populations.csv", "treg.csv", "baseline.csv", "failures.csv", "summary.csv", "gates_fitted.csv",
            "sensitivity.csv", "gate_drift.csv"} <= names
    for label, files in runs.items():
        assert set(files) == names, label
        for name in names:
            assert files[name] == runs["w1"][name], (label, name)


@pytest.mark.slow
def test_dask_gives_up_when_the_last_worker_dies(tmp_path):
    pytest.importorskip("distributed")
    from test_batch import make_study
    from test_dask import _stop

    # Enough files that the worker cannot finish them all between the first cached result and the kill, even
    # on a quiet machine (8 files did: the run then ended 0 before the worker died).
    n_files = 32
    sheet, gates, _ = make_study(tmp_path / "study", n_files=n_files, n_events=40_000, subjects=2)
    address, procs = _dask_cluster(tmp_path, 1, "--no-nanny")  # no nanny to restart the worker we kill
    out = tmp_path / "out"
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO)}
    try:
        proc = subprocess.Popen([sys.executable, "-m", "cytopipe", "run", str(sheet), "--gates", str(gates), "--out",
                                 str(out), "--scheduler", address, "--scheduler-timeout", "5", "--quiet"], env=env,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and len(_entries(out)) < 1 and proc.poll() is None:
            time.sleep(0.02)
        assert len(_entries(out)) >= 1, (proc.poll(), proc.stderr.read() if proc.poll() is not None else "")
        worker = procs.pop()  # the only worker dies: SIGKILL, as the kernel's OOM killer would
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        start = time.monotonic()
        _, stderr = proc.communicate(timeout=120)
        waited = time.monotonic() - start
    finally:
        for p in reversed(procs):
            _stop(p)
    assert "Traceback" not in stderr, stderr
    assert proc.returncode == 2, stderr
    line = stderr.strip().splitlines()[-1]
    assert "no worker for 5 s" in line and "cached" in line, line
    assert waited < 60
    cached = len(_entries(out))
    assert 1 <= cached < n_files
    # The finished samples are reused by the next run.
    again = capped("run", sheet, "--gates", gates, "--out", out, "--workers", "1", seconds=300)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("ok (cached)") == cached


def test_fits_agree_to_the_last_digit_whatever_the_thread_count():
    """The data-driven fit in a process with 1 and with 4 BLAS threads, and after other transforms ran."""
    code = (
        "import json, numpy as np\n"
        "from cytopipe.autogate import fit_strategy\n"
        "from cytopipe.fcs import read_fcs\n"
        "from cytopipe.gatefile import load_strategy\n"
        "from cytopipe.transforms import Logicle\n"
        "import sys\n"
        "if sys.argv[1] == 'warm':\n"
        "    Logicle(262144, 0.5, 4.5, 0).apply(np.linspace(0, 1e5, 300_000, dtype=np.float32))\n"
        f"sample = read_fcs({str(SAMPLES / 'ITP-01_W1.fcs')!r})\n"
        f"_, rows = fit_strategy(load_strategy({str(REPO / 'gates' / 'treg.yaml')!r}), [sample])\n"
        "print(json.dumps(rows, default=str))\n"
    )
    outputs = []
    for threads, warm in (("1", "cold"), ("4", "cold"), ("4", "warm")):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
               "PYTHONPATH": str(REPO)}
        proc = subprocess.run([sys.executable, "-c", code, warm], capture_output=True, text=True, env=env,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout)
    assert outputs[0] == outputs[1] == outputs[2]
    assert "CD25" in outputs[0]
