"""The sample sheet: required columns, baselines, roles and one-line errors naming the row."""

from __future__ import annotations

from pathlib import Path

import pytest

from cytopipe.errors import SampleSheetError
from cytopipe.samplesheet import read_sample_sheet


def _sheet(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.csv"
    path.write_text(text)
    return path


def test_reads_columns_resolves_files_and_defaults_baseline_to_earliest_day(tmp_path):
    path = _sheet(tmp_path, "file,subject,timepoint,day,batch\n"
                            "a/W1.fcs,S1,W1,7,b1\n"
                            "a/D0.fcs,S1,D0,0,b1\n"
                            "b.fcs,S2,W1,7,b2\n")
    sheet = read_sample_sheet(path)
    assert list(sheet.columns[:8]) == ["sample", "file", "subject", "timepoint", "day", "baseline", "role",
                                       "spillover"]
    assert list(sheet["sample"]) == ["W1", "D0", "b"]
    assert sheet.loc[0, "file"] == str((tmp_path / "a" / "W1.fcs").resolve())
    assert list(sheet["baseline"]) == [False, True, True]  # S2's only sample is its own baseline
    assert list(sheet["batch"]) == ["b1", "b1", "b2"]  # extra columns carried through
    assert list(sheet["role"]) == ["sample"] * 3
    assert sheet["day"].dtype.kind == "f"


def test_explicit_baseline_and_roles_win(tmp_path):
    path = _sheet(tmp_path, "File,Subject,Timepoint,Day,Baseline,Role,Sample\n"
                            "x0.fcs,S1,screen,-7,false,sample,s-screen\n"
                            "x1.fcs,S1,D0,0,true,sample,s-d0\n"
                            "x2.fcs,S1,FMO,0,,FMO:CD25,s-fmo\n")
    sheet = read_sample_sheet(path)
    assert list(sheet["baseline"]) == [False, True, False]
    assert list(sheet["role"]) == ["sample", "sample", "fmo:CD25"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,subject,day\na.fcs,S1,0\n",
         "study.csv: missing required column(s) 'timepoint' (a sample sheet needs file, subject, timepoint, day; "
         "found file, subject, day)"),
        ("file,subject,timepoint,day\n", "study.csv: the sample sheet has no rows"),
        ("file,subject,timepoint,day\na.fcs,S1,D0,zero\n", "study.csv: row 2: day 'zero' is not a number"),
        ("file,subject,timepoint,day\na.fcs,,D0,0\n", "study.csv: row 2: column 'subject' is empty"),
        ("file,subject,timepoint,day\na.fcs,S1,D0,0\nsub/a.fcs,S1,W1,7\n",
         "study.csv: sample name 'a' appears more than once (add a 'sample' column with unique names)"),
        ("file,subject,timepoint,day,role\na.fcs,S1,D0,0,control\n",
         "study.csv: row 2: role 'control' is not one of sample, unstained, fmo:<marker>, isotype:<marker>"),
        ("file,subject,timepoint,day,baseline\na.fcs,S1,D0,0,maybe\n",
         "study.csv: row 2: baseline 'maybe' is not true or false"),
        ("file,subject,timepoint,day,baseline\na.fcs,S1,D0,0,true\nb.fcs,S1,W1,7,yes\n",
         "study.csv: subject 'S1' has 2 baselines (a, b); mark one"),
    ],
)
def test_bad_sheets_give_one_line_naming_sheet_and_row(tmp_path, text, message):
    path = _sheet(tmp_path, text)
    with pytest.raises(SampleSheetError) as err:
        read_sample_sheet(path)
    assert str(err.value) == f"{path.parent}/{message}"
    assert "\n" not in str(err.value)


def test_missing_sheet(tmp_path):
    with pytest.raises(SampleSheetError, match=r"nope\.csv: sample sheet not found"):
        read_sample_sheet(tmp_path / "nope.csv")


def test_binary_garbage_is_a_sheet_error(tmp_path):
    path = tmp_path / "study.csv"
    path.write_bytes(b"\xff\xfe\x00\x01garbage\x00\x00")
    with pytest.raises(SampleSheetError, match="study.csv"):
        read_sample_sheet(path)


@pytest.mark.parametrize(("text", "plain"), [
    ("file,subject,timepoint,day,batch\na/W1.fcs,S1,W1,7,b1\na/D0.fcs,S1,D0,0,b1\nb.fcs,S2,W1,7,b2\n", True),
    ("\ufeffFile,Subject,Timepoint,Day,Baseline,Role,Sample\r\nx0.fcs,S1,screen,-7,false,sample,s-screen\r\n"
     "x1.fcs,S1,D0,0,true,sample,s-d0\r\nx2.fcs,S1,FMO,0,,FMO:CD25,s-fmo\r\n", True),
    ('file, subject ,timepoint,day,note\n"a.fcs", S1,"D 0",0,"multi\nline, ""quoted"""\n\nb.fcs,S1,W1,7,\n,,,,\n',
     True),
    ("file,subject,timepoint,day,pregated,panel,spillover\na.fcs,S1,D0,1e1,CD4,p.csv,s.csv\nb.fcs,S1,D1,0.5,,,\n",
     True),
    ("file,subject,timepoint,day,extra col,=evil\na.fcs,S1,D0,0,  v ,=1+1\nb.fcs,S2,D0,3,w,x\nc.fcs,S2,D2,3,w,x\n",
     True),
    ("file,subject,timepoint,day\na.fcs,NA,D0,0\nb.fcs,null,D1,1\n", True),
    ("file,subject,timepoint,day,\na.fcs,S1,D0,0,x\n", False),  # an unnamed column: left to pandas
    ("file,subject,timepoint,day\n   \na.fcs,S1,D0,0\n", False),  # a line of spaces: left to pandas
])
def test_sheet_read_without_pandas_is_the_pandas_reading(tmp_path, text, plain):
    """The csv-module reading (what `cytopipe run` uses before its workers start) gives the frame pandas.read_csv
    gives: quoting, BOM, CRLF, blank lines, whitespace, extra columns, text kept as written; sheets it cannot read
    as a plain table are read by pandas."""
    import pandas as pd

    from cytopipe.samplesheet import _parse_with_pandas, _sheet_rows, plain_csv_rows, sheet_frame

    path = tmp_path / "study.csv"
    path.write_bytes(text.encode("utf-8"))
    assert (plain_csv_rows(path) is not None) == plain
    by_pandas = sheet_frame(*_sheet_rows(path, *_parse_with_pandas(path)))
    pd.testing.assert_frame_equal(read_sample_sheet(path), by_pandas, check_exact=True)


def test_paths_are_resolved_as_pathlib_resolves_them_symlinks_included(tmp_path):
    # Plain file names take a shortcut (one lstat): a symbolic link, a link to a folder, "..", a subfolder and an
    # absolute path must still come out as Path.resolve() gives them.
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    for name in ("real.fcs", "sub/deep.fcs", "spill.csv"):
        (data / name).write_bytes(b"x")
    study = tmp_path / "study"
    study.mkdir()
    (study / "link.fcs").symlink_to(data / "real.fcs")
    (study / "linked").symlink_to(data / "sub")
    (study / "plain.fcs").write_bytes(b"x")
    (study / "spill.csv").symlink_to(data / "spill.csv")
    files = ["link.fcs", "linked/deep.fcs", "plain.fcs", "missing.fcs", "../data/real.fcs", str(data / "sub" /
             "deep.fcs"), "linked"]
    rows = "".join(f"s{i},{f},S1,T{i},{i},spill.csv\n" for i, f in enumerate(files))
    sheet = read_sample_sheet(_sheet(study, "sample,file,subject,timepoint,day,spillover\n" + rows))
    assert list(sheet["file"]) == [str((study / f).resolve()) for f in files]
    assert list(sheet["file"])[:3] == [str(data / "real.fcs"), str(data / "sub" / "deep.fcs"),
                                       str(study.resolve() / "plain.fcs")]
    assert set(sheet["spillover"]) == {str(data / "spill.csv")}


def test_rows_longer_than_the_header_are_an_error_not_shifted_columns(tmp_path: Path) -> None:
    """pandas reads a file whose every row has more cells than the header with the extra cells as an index, which
    would shift every value into the wrong column: the sheet and the clinical table say so instead."""
    from cytopipe.stats import read_clinical

    sheet = tmp_path / "study.csv"
    sheet.write_text("file,subject,timepoint,day\na.fcs,P1,baseline,0,extra\nb.fcs,P1,W1,7,extra\n")
    with pytest.raises(SampleSheetError, match=r"more cells than the header has names \(4\)"):
        read_sample_sheet(sheet)
    clinical = tmp_path / "clinical.csv"
    clinical.write_text("subject,day,platelets\nP1,0,36,1\nP1,7,40,1\n")
    with pytest.raises(SampleSheetError, match=r"more cells than the header has names \(3\)"):
        read_clinical(clinical)
