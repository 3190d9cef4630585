"""The clinical table is parsed as ``pandas.read_csv`` parses it, checked against pandas itself."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cytopipe.clinical import read_clinical_table
from cytopipe.errors import SampleSheetError
from cytopipe.samplesheet import plain_csv_rows

_CELL = st.text(alphabet='ab1 ,"\t\r\n.', max_size=4)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.lists(_CELL, min_size=1, max_size=4), min_size=1, max_size=4), st.sampled_from(["\n", "\r\n", "\r"]),
       st.booleans())
def test_plain_parse_is_read_csv_or_declined(tmp_path_factory, rows: list[list[str]], end: str, bom: bool) -> None:
    """What :mod:`csv` reads is what ``pandas.read_csv(dtype=str, keep_default_na=False, skipinitialspace=True)``
    reads (header and cells); anything else is left to pandas."""
    path = tmp_path_factory.mktemp("csv") / "clinical.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + end.join(",".join(row) for row in rows).encode())
    plain = plain_csv_rows(path, as_pandas=True)
    if plain is None:
        return
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    assert plain == ([str(c) for c in frame.columns], frame.to_numpy(dtype=object).tolist())


@pytest.mark.parametrize(
    ("text", "message"),
    [('subject,day,platelets\nA,0,"36\n', "cannot read clinical table as CSV: Error tokenizing data"),
     ("subject,day\r A,0", "row 2: day 'day' is not a number"),  # pandas reads this header twice
     ("subject,,day\nA,1,0\n", None),  # the unnamed column is pandas' 'Unnamed: 1'
     ("\t\n", "cannot read clinical table as CSV: No columns to parse from file")],
)
def test_files_csv_does_not_read_plainly_are_read_by_pandas(tmp_path: Path, text: str, message: str | None) -> None:
    path = tmp_path / "clinical.csv"
    path.write_text(text, newline="")
    assert plain_csv_rows(path, as_pandas=True) is None
    if message is None:
        assert list(read_clinical_table(path)) == ["subject", "Unnamed: 1", "day"]
        return
    with pytest.raises(SampleSheetError, match=message):
        read_clinical_table(path)
