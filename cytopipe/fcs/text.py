"""HEADER and TEXT segments: offsets and their policies, delimiters, keywords, chained data sets."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cytopipe.errors import FCSError

HEADER_SIZE = 58
_MAX_HEADER_OFFSET = 99_999_999  # HEADER offset fields are 8 ASCII digits
_VERSION_RE = re.compile(rb"FCS\d\.\d")
_PARAM_KEY_RE = re.compile(r"^\$P(\d+)([A-Z]+)$")
_DELIMITER_CANDIDATES = (b"/", b"|", b"\\", b"!", b"*", b"~", b"\x0c")


@dataclass(frozen=True)
class _Segments:
    """Absolute byte offsets of one data set, after the HEADER/TEXT policy has been applied."""

    base: int
    version: str
    text: tuple[int, int]
    data: tuple[int, int]
    header_data: tuple[int, int]


class _File:
    """An open FCS file with bounds-checked reads; every error message names the file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.name = os.fspath(path)
        try:
            self.handle = open(self.name, "rb")  # noqa: SIM115 - closed by close()
        except FileNotFoundError:
            raise FCSError(f"{self.name}: no such file") from None
        except IsADirectoryError:
            raise FCSError(f"{self.name}: is a directory, not an FCS file") from None
        except OSError as err:
            raise FCSError(f"{self.name}: cannot open: {err.strerror}") from None
        self.size = os.fstat(self.handle.fileno()).st_size
        self.digest: Any = None  # a hashlib object: DATA is then read with the whole file, hashed (fcs.read)
        self.whole: Any = None  # that read (a numpy uint8 array of the file's bytes)
        self.hashed = False  # the whole file has been fed to ``digest``

    def close(self) -> None:
        self.handle.close()

    def error(self, message: str) -> FCSError:
        return FCSError(f"{self.name}: {message}")

    def read(self, start: int, stop: int, what: str) -> bytes:
        """Bytes ``[start, stop)``; raises FCSError when the range is not inside the file."""
        if start < 0 or stop < start or stop > self.size:
            raise self.error(f"{what} (bytes {start}-{stop - 1}) lies outside the file ({self.size} bytes)")
        self.handle.seek(start)
        return self.handle.read(stop - start)


def count_datasets(path: str | os.PathLike[str]) -> int:
    """Number of data sets in an FCS file (length of its ``$NEXTDATA`` chain; 1 for most files)."""
    fcs = _File(path)
    try:
        return _walk_datasets(fcs, None)[0]
    finally:
        fcs.close()


def _walk_datasets(fcs: _File, wanted: int | None) -> tuple[int, _Segments, dict[str, str]]:
    """Follow the ``$NEXTDATA`` chain; stop at data set ``wanted`` or, when None, at the end of the chain."""
    base = 0
    seen: set[int] = set()
    index = 0
    while True:
        segments, metadata = _read_header_and_text(fcs, base)
        if wanted is not None and index == wanted:
            return index + 1, segments, metadata
        seen.add(base)
        try:
            step = int(metadata.get("$NEXTDATA", "0").strip() or "0")
        except ValueError:
            step = 0  # a malformed $NEXTDATA only matters when a later data set is requested
        following = base + step
        if (
            step <= 0
            or following in seen
            or following + HEADER_SIZE > fcs.size
            or not _looks_like_header(fcs, following)
        ):
            if wanted is not None:
                raise fcs.error(f"has {index + 1} data set(s); data set {wanted} was requested")
            return index + 1, segments, metadata
        base = following
        index += 1


def _locate_dataset(fcs: _File, dataset: int) -> tuple[_Segments, dict[str, str]]:
    _, segments, metadata = _walk_datasets(fcs, dataset)
    return segments, metadata


def _looks_like_header(fcs: _File, base: int) -> bool:
    return _VERSION_RE.fullmatch(fcs.read(base, base + 6, "HEADER")) is not None


def _read_header_and_text(fcs: _File, base: int) -> tuple[_Segments, dict[str, str]]:
    if fcs.size - base < HEADER_SIZE:
        if base == 0:
            raise fcs.error(f"not an FCS file: {fcs.size} bytes is shorter than the {HEADER_SIZE}-byte HEADER")
        raise fcs.error(f"data set at byte {base} is cut short inside its HEADER")
    header = fcs.read(base, base + HEADER_SIZE, "HEADER")
    if not _VERSION_RE.fullmatch(header[:6]):
        raise fcs.error(f"not an FCS file: HEADER starts with {header[:6]!r}, expected "
                        "'FCS2.0'/'FCS3.0'/'FCS3.1'/'FCS3.2'")
    version = header[:6].decode("ascii")
    names = ("TEXT start", "TEXT end", "DATA start", "DATA end", "ANALYSIS start", "ANALYSIS end")
    offsets = []
    for k, what in enumerate(names):
        field = header[10 + 8 * k : 18 + 8 * k]
        text = field.strip(b" \x00")
        if not text:
            offsets.append(0)
        elif text.isdigit():
            offsets.append(int(text))
        else:
            raise fcs.error(f"HEADER {what} offset is not a number: {field!r}")
    text_start, text_end, data_start, data_end = offsets[:4]
    if text_start < HEADER_SIZE or text_end < text_start + 1:
        raise fcs.error(f"HEADER gives an impossible TEXT segment {text_start}-{text_end}")
    if base + text_end >= fcs.size:
        raise fcs.error(f"TEXT segment ends at byte {base + text_end}, beyond the end of the file ({fcs.size} bytes)")
    metadata = _parse_text(fcs, fcs.read(base + text_start, base + text_end + 1, "TEXT segment"), "TEXT")
    _merge_supplemental_text(fcs, base, metadata)
    data = _choose_data_offsets(fcs, base, (data_start, data_end), metadata, (text_start, text_end))
    return (
        _Segments(
            base=base,
            version=version,
            text=(base + text_start, base + text_end),
            data=data,
            header_data=(data_start, data_end),
        ),
        metadata,
    )


def _parse_text(fcs: _File, raw: bytes, what: str) -> dict[str, str]:
    """Parse a TEXT segment into ``{KEYWORD: value}`` (keys upper-cased; doubled delimiters unescaped)."""
    delimiter = raw[:1]
    if not delimiter or delimiter.isalnum() or delimiter in b" \x00":
        raise fcs.error(f"{what} segment does not start with a delimiter character (found {delimiter!r})")
    # A maximal run of k delimiters is k // 2 escaped (doubled) delimiters inside a token, plus, when k is odd, one
    # separator after them. Replacing the pairs left to right by a byte the segment does not hold leaves only the
    # separators: split on them, then put the escaped delimiters back. Every step is one pass of a bytes method,
    # so TEXT parses in linear time however many escaped delimiters a value holds.
    body = raw[1:].rstrip(delimiter)  # the closing delimiter (and any padding after the last value)
    spare = next((bytes([b]) for b in range(256) if bytes([b]) != delimiter and bytes([b]) not in body), None)
    text = _utf8(body) if spare is not None and delimiter < b"\x80" and spare < b"\x80" else None
    if text is not None:
        # Valid UTF-8 split at an ASCII delimiter gives valid UTF-8 tokens: decoding the whole segment once gives
        # the strings each token's own decoding would.
        sep, free = delimiter.decode("ascii"), spare.decode("ascii")
        return _pairs(fcs, [t.replace(free, sep) for t in text.replace(sep * 2, free).split(sep)], what, str)
    if spare is not None:
        tokens = [t.replace(spare, delimiter) for t in body.replace(delimiter * 2, spare).split(delimiter)]
    else:  # every byte value occurs: find the separators with one regular-expression scan instead
        d = re.escape(delimiter)
        tokens, start = [], 0
        for match in re.finditer(b"(?<!" + d + b")(?:" + d + d + b")*" + d + b"(?!" + d + b")", body):
            tokens.append(body[start : match.end() - 1].replace(delimiter * 2, delimiter))
            start = match.end()
        tokens.append(body[start:].replace(delimiter * 2, delimiter))
    return _pairs(fcs, tokens, what, _decode)


def _pairs(fcs: _File, tokens: list, what: str, decode: Any) -> dict[str, str]:
    """``{KEYWORD: value}`` from alternating key and value tokens (``decode`` makes each a string)."""
    if len(tokens) == 1 and not tokens[0]:
        tokens = []
    if len(tokens) < 2:
        raise fcs.error(f"{what} segment holds no keyword/value pairs")
    metadata: dict[str, str] = {}
    for key, value in zip(tokens[0::2], tokens[1::2], strict=False):
        name = decode(key).strip().upper()
        if name and name not in metadata:
            metadata[name] = decode(value)
    return metadata


def _utf8(raw: bytes) -> str | None:
    """``raw`` as UTF-8, or None when it is not."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _decode(raw: bytes) -> str:
    """A keyword or value: UTF-8, else latin-1 (pre-3.1 files use 8-bit code pages; latin-1 never fails)."""
    text = _utf8(raw)
    return raw.decode("latin-1") if text is None else text


def _int_keyword(fcs: _File, metadata: Mapping[str, str], key: str, default: int | None = None) -> int:
    value = metadata.get(key)
    if value is None or not value.strip():
        if default is None:
            raise fcs.error(f"required keyword {key} is missing")
        return default
    try:
        number = int(value.strip())
    except ValueError:
        try:
            number = int(float(value.strip()))
        except (ValueError, OverflowError):
            raise fcs.error(f"keyword {key} is not an integer: {value.strip()[:40]!r}") from None
    return number


def _merge_supplemental_text(fcs: _File, base: int, metadata: dict[str, str]) -> None:
    try:
        start = int(metadata.get("$BEGINSTEXT", "0").strip() or 0)
        stop = int(metadata.get("$ENDSTEXT", "0").strip() or 0)
    except ValueError:
        return
    # Supplemental TEXT only carries optional keywords, so a broken pointer is ignored rather than fatal.
    if start <= 0 or stop <= start or base + stop >= fcs.size:
        return
    try:
        extra = _parse_text(fcs, fcs.read(base + start, base + stop + 1, "supplemental TEXT"), "supplemental TEXT")
    except FCSError:
        return
    for key, value in extra.items():
        metadata.setdefault(key, value)


def _channel_names(fcs: _File, metadata: Mapping[str, str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    n_par = _int_keyword(fcs, metadata, "$PAR")
    if n_par < 1:
        raise fcs.error(f"$PAR is {n_par}; a file needs at least one parameter")
    # Every parameter needs at least a few TEXT bytes ($PnB), so $PAR cannot exceed the TEXT length.
    if n_par > len(metadata):
        raise fcs.error(f"$PAR={n_par} but TEXT describes far fewer parameters")
    channels: list[str] = []
    markers: list[str] = []
    seen: dict[str, int] = {}
    for i in range(1, n_par + 1):
        name = metadata.get(f"$P{i}N", "").strip() or f"P{i}"
        key = name.casefold()
        if key in seen:
            seen[key] += 1
            suffix = seen[key]
            while f"{name}_{suffix}".casefold() in seen:
                suffix += 1
            name = f"{name}_{suffix}"
            seen[name.casefold()] = 1
        else:
            seen[key] = 1
        channels.append(name)
        markers.append(metadata.get(f"$P{i}S", "").strip())
    return tuple(channels), tuple(markers)


def _choose_data_offsets(
    fcs: _File, base: int, header: tuple[int, int], metadata: Mapping[str, str], text_segment: tuple[int, int]
) -> tuple[int, int]:
    """Absolute (start, end-inclusive) of DATA; see the policy in :func:`read_fcs` Notes."""
    try:
        text = (
            int(metadata.get("$BEGINDATA", "0").strip() or 0),
            int(metadata.get("$ENDDATA", "0").strip() or 0),
        )
    except ValueError:
        text = (0, 0)
    candidates = [c for c in (header, text) if c[0] > 0 and c[1] >= c[0] - 1 and not _overlaps_text(c, text_segment)]
    expected = _expected_data_bytes(metadata)
    if not candidates:
        if expected == 0:  # an empty data set needs no DATA segment
            return base + text_segment[1] + 1, base + text_segment[1]
        raise fcs.error(
            f"no usable DATA segment location: HEADER says {header[0]}-{header[1]}, "
            f"$BEGINDATA/$ENDDATA say {text[0]}-{text[1]} (missing, or overlapping HEADER/TEXT)"
        )
    if len(candidates) == 1 or candidates[0] == candidates[1]:
        start, end = candidates[0]
        return base + start, base + end
    if expected is not None:
        for start, end in candidates:
            if end - start + 1 == expected and base + end < fcs.size:
                return base + start, base + end
        # Off-by-one end offsets are common; a start whose full segment fits is the next best evidence.
        for start, end in candidates:
            if base + start + expected <= fcs.size and abs(end - start + 1 - expected) <= 1:
                return base + start, base + start + expected - 1
    start, end = candidates[0]
    return base + start, base + end


def _overlaps_text(data: tuple[int, int], text: tuple[int, int]) -> bool:
    """DATA can never share bytes with HEADER or primary TEXT (FCS 3.1 section 3.1: segments do not overlap)."""
    return data[0] < HEADER_SIZE or (data[0] <= text[1] and data[1] >= text[0])


def _expected_data_bytes(metadata: Mapping[str, str]) -> int | None:
    try:
        n_par = int(metadata["$PAR"])
        total = int(metadata["$TOT"])
        bits = sum(int(metadata[f"$P{i}B"]) for i in range(1, n_par + 1))
    except (KeyError, ValueError):
        return None
    return (total * bits + 7) // 8
