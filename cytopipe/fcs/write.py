"""Writing FCS 3.1/3.2 files: :func:`write_fcs` (atomic, layout keywords recomputed)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cytopipe.errors import FCSError
from cytopipe.outputs import atomic_open

from .text import _DELIMITER_CANDIDATES, _MAX_HEADER_OFFSET, _PARAM_KEY_RE, HEADER_SIZE

# Keywords that describe the file layout; the writer always recomputes them.
_LAYOUT_KEYWORDS = frozenset(
    {
        "$BEGINANALYSIS", "$ENDANALYSIS", "$BEGINDATA", "$ENDDATA", "$BEGINSTEXT", "$ENDSTEXT",
        "$NEXTDATA", "$TOT", "$PAR", "$BYTEORD", "$DATATYPE", "$MODE",
    }
)  # fmt: skip
# Per-parameter keywords the writer sets itself ($PnR and $PnG etc. are carried over from the source metadata).
_WRITER_PARAM_SUFFIXES = frozenset({"N", "S", "B", "E", "DATATYPE"})


def write_fcs(
    path: str | os.PathLike[str],
    events: np.ndarray,
    channels: Sequence[str],
    markers: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    *,
    version: str = "3.1",
    datatypes: Sequence[str] | None = None,
) -> None:
    """Write events as a list-mode FCS 3.1 (or 3.2) file, atomically.

    Parameters
    ----------
    path : str or path-like
        Destination; written to a temporary file in the same folder and moved into place.
    events : array_like
        ``(n_events, n_channels)`` values, stored as little-endian float32.
    channels : sequence of str
        ``$PnN`` names (unique, non-empty).
    markers : sequence of str, optional
        ``$PnS`` names ('' = none).
    metadata : mapping, optional
        Extra keywords to keep (e.g. a source sample's ``metadata``, including ``$SPILLOVER``/``SPILL``).
        Layout keywords (``$TOT``, ``$PAR``, ``$BEGINDATA``, ...) are recomputed. Per-parameter keywords
        (``$PnR``, ``$PnG``, ``$PnV`` ...) are carried over by channel name, so a subset or reordering of a
        source sample's channels keeps them; ``$PnB``/``$PnE``/``$PnN``/``$PnS`` are always written afresh
        (``$PnE`` is ``0,0``: floating-point data are stored linear). Empty values are dropped (FCS forbids them).
    version : {"3.1", "3.2"}
        FCS version; 3.2 also requires ``$CYT`` (taken from ``metadata`` or set to ``"cytopipe"``).
    datatypes : sequence of {"F", "D", "I"}, optional
        FCS 3.2 only: per-channel ``$PnDATATYPE``. ``"I"`` stores the values rounded to unsigned integers
        (16-bit if they fit, else 32-bit); ``"D"`` stores float64. Default: all ``"F"``.

    Raises
    ------
    FCSError
        Inconsistent arguments (shape, channel names, version), or the file cannot be written.
    """
    where = os.fspath(path)
    version = str(version).removeprefix("FCS")
    if version not in ("3.1", "3.2"):
        raise FCSError(f"{where}: cannot write FCS version {version!r}; use '3.1' or '3.2'")
    values = np.asarray(events)
    if values.ndim != 2:
        raise FCSError(f"{where}: events must be a 2-D (events x channels) array, got shape {values.shape}")
    n_events, n_par = values.shape
    names = [str(c) for c in channels]
    if len(names) != n_par:
        raise FCSError(f"{where}: {len(names)} channel names for {n_par} event columns")
    if any(not n.strip() for n in names):
        raise FCSError(f"{where}: channel names must not be empty")
    if len({n.casefold() for n in names}) != n_par:
        raise FCSError(f"{where}: channel names must be unique, got {names}")
    labels = [""] * n_par if markers is None else [str(m or "") for m in markers]
    if len(labels) != n_par:
        raise FCSError(f"{where}: {len(labels)} markers for {n_par} channels")
    kinds = ["F"] * n_par if datatypes is None else [str(k).upper() for k in datatypes]
    if len(kinds) != n_par or any(k not in ("F", "D", "I") for k in kinds):
        raise FCSError(f"{where}: datatypes must give one of F, D, I per channel, got {list(datatypes or [])}")
    if set(kinds) != {"F"} and version != "3.2":
        raise FCSError(f"{where}: per-channel datatypes ($PnDATATYPE) need version='3.2'")

    source = {str(k).strip().upper(): str(v) for k, v in (metadata or {}).items()}
    columns, record = _record_layout(where, values, kinds)
    keywords = _writer_keywords(source, names, labels, kinds, columns, version, n_events)
    if set(kinds) == {"F"}:
        data = np.ascontiguousarray(values, dtype="<f4")  # no copy when the events already are float32
    else:
        data = np.empty(n_events, dtype=record)
        for i, column in enumerate(columns):
            data[f"c{i}"] = column
    _write_atomically(where, version, keywords, data)


def _record_layout(where: str, values: np.ndarray, kinds: Sequence[str]) -> tuple[list[np.ndarray], np.dtype]:
    columns: list[np.ndarray] = []
    fields = []
    for i, kind in enumerate(kinds):
        column = values[:, i]
        if kind == "F":
            fields.append("<f4")
        elif kind == "D":
            fields.append("<f8")
        else:
            column = np.rint(np.asarray(column, dtype=np.float64))
            if column.size and (not np.isfinite(column).all() or column.min() < 0 or column.max() >= 2**32):
                raise FCSError(f"{where}: channel {i + 1} is written as integers but holds values outside 0..2^32-1")
            fields.append("<u2" if not column.size or column.max() < 2**16 else "<u4")
        columns.append(column)
    return columns, np.dtype([(f"c{i}", f) for i, f in enumerate(fields)])


def _writer_keywords(
    source: Mapping[str, str],
    names: Sequence[str],
    labels: Sequence[str],
    kinds: Sequence[str],
    columns: Sequence[np.ndarray],
    version: str,
    n_events: int,
) -> dict[str, str]:
    old_index = {}
    for key, value in source.items():
        match = _PARAM_KEY_RE.match(key)
        if match and match.group(2) == "N":
            old_index.setdefault(value.strip().casefold(), match.group(1))
    keywords: dict[str, str] = {
        "$BYTEORD": "1,2,3,4",
        "$DATATYPE": "F" if "F" in kinds else kinds[0],
        "$MODE": "L",
        "$NEXTDATA": "0",
        "$PAR": str(len(names)),
        "$TOT": str(n_events),
    }
    if version == "3.2":
        # $MODE is deprecated in 3.2 but kept: FlowIO and older readers still require it.
        keywords["$CYT"] = source.get("$CYT", "").strip() or "cytopipe"
    else:
        keywords.update({"$BEGINANALYSIS": "0", "$ENDANALYSIS": "0", "$BEGINSTEXT": "0", "$ENDSTEXT": "0"})
    for key, value in source.items():
        if key in _LAYOUT_KEYWORDS or _PARAM_KEY_RE.match(key) or key in keywords:
            continue
        if value.strip():
            keywords[key] = value
    for n, (name, label, kind, column) in enumerate(zip(names, labels, kinds, columns, strict=True), start=1):
        old = old_index.get(name.casefold())
        if old is not None:
            for key, value in source.items():
                match = _PARAM_KEY_RE.match(key)
                if match and match.group(1) == old and match.group(2) not in _WRITER_PARAM_SUFFIXES and value.strip():
                    keywords[f"$P{n}{match.group(2)}"] = value
        keywords[f"$P{n}N"] = name
        if label.strip():
            keywords[f"$P{n}S"] = label
        bits = {"F": 32, "D": 64}.get(kind) or (16 if not column.size or column.max() < 2**16 else 32)
        keywords[f"$P{n}B"] = str(bits)
        keywords[f"$P{n}E"] = "0,0"
        if version == "3.2" and kind != keywords["$DATATYPE"]:
            keywords[f"$P{n}DATATYPE"] = kind
        top = _finite_max(column)
        carried = keywords.get(f"$P{n}R", "")
        if kind == "I":
            # Readers mask integers with $PnR: a carried range must cover the values, else use the full width.
            fits = _is_number(carried) and float(carried) >= top + 1
            keywords[f"$P{n}R"] = carried if fits else str(2**bits)
        elif not _is_number(carried):
            keywords[f"$P{n}R"] = str(max(1, math.ceil(top)))
    return keywords


def _finite_max(column: np.ndarray) -> float:
    finite = column[np.isfinite(column)]
    return float(finite.max()) if finite.size else 0.0


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _encode_text(keywords: Mapping[str, str]) -> bytes:
    """Serialise keywords; choose a delimiter no value starts or ends with, doubling it where it occurs inside."""
    pairs = [(k.encode("utf-8"), v.encode("utf-8")) for k, v in keywords.items()]
    delimiter = _DELIMITER_CANDIDATES[0]
    for candidate in _DELIMITER_CANDIDATES:
        if not any(candidate in k or candidate in v for k, v in pairs):
            delimiter = candidate
            break
    else:
        for candidate in _DELIMITER_CANDIDATES:
            if not any(v.startswith(candidate) or v.endswith(candidate) for _, v in pairs):
                delimiter = candidate
                break
    escaped = delimiter * 2
    body = delimiter.join(k.replace(delimiter, escaped) + delimiter + v.replace(delimiter, escaped) for k, v in pairs)
    return delimiter + body + delimiter


def _header(version: str, text: tuple[int, int], data: tuple[int, int]) -> bytes:
    def field(value: int) -> bytes:
        return f"{value if value <= _MAX_HEADER_OFFSET else 0:>8}".encode("ascii")

    offsets = (*text, *data, 0, 0)
    return f"FCS{version}    ".encode("ascii") + b"".join(field(v) for v in offsets)


def _write_atomically(where: str, version: str, keywords: dict[str, str], data: np.ndarray) -> None:
    data_bytes = data.nbytes
    text_start = HEADER_SIZE
    # $BEGINDATA/$ENDDATA sit in TEXT, whose length moves DATA: iterate until the digits stop changing.
    # An empty data set has no DATA segment: offsets 0 in both places.
    begin = text_start
    for _ in range(10):
        keywords["$BEGINDATA"] = str(begin) if data_bytes else "0"
        keywords["$ENDDATA"] = str(begin + data_bytes - 1) if data_bytes else "0"
        text = _encode_text(keywords)
        new_begin = text_start + len(text)
        if new_begin == begin:
            break
        begin = new_begin
    text_end = text_start + len(text) - 1
    header = _header(version, (text_start, text_end), (begin, begin + data_bytes - 1) if data_bytes else (0, 0))
    try:
        with atomic_open(where, "wb") as handle:
            handle.write(header)
            handle.write(text)
            handle.write(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
            handle.write(b"00000000")  # CRC field; zeros = not computed (FCS 3.1 section 3.4)
    except OSError as err:
        raise FCSError(f"{where}: cannot write: {err.strerror}") from None
