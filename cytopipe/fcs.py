"""Read and write FCS files (FCS 2.0, 3.0, 3.1 and 3.2).

The reader is a small numpy parser written for the files a lab core actually receives: integer data of any width
(8/16/32/64-bit, 24-bit, 10-bit values in 16-bit words, bit-packed 9-bit streams), ``$PnR`` bit masks, mixed widths
and per-channel ``$PnDATATYPE``, big- and little-endian, several data sets chained by ``$NEXTDATA``, and
HEADER/TEXT offset disagreements (policies in :func:`read_fcs` and ``docs/fcs.md``).
Every size is checked against the file length before anything is allocated, so a hostile or truncated file
raises :class:`~cytopipe.errors.FCSError` with a one-line reason instead of exhausting memory.

Large little-endian float32 DATA segments (>= ``MAP_THRESHOLD`` bytes, the common case for big files) are not
copied: ``Sample.events`` is a copy-on-write view of a memory map of the file, so pages are read on first touch
and writing to the array never changes the file. Smaller segments are read into memory with one ``readinto``.
Big-endian data are byte-swapped in place in that private buffer (or in the copy-on-write pages).
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cytopipe.compensate import spillover_from_metadata
from cytopipe.errors import FCSError, MarkerError
from cytopipe.outputs import atomic_open

__all__ = ["SCALES", "Sample", "read_fcs", "write_fcs", "describe", "format_description", "count_datasets",
           "file_sha256", "channel_decoding", "top_of_scale", "to_scale"]

HEADER_SIZE = 58
_MAX_HEADER_OFFSET = 99_999_999  # HEADER offset fields are 8 ASCII digits
MAP_THRESHOLD = 8 << 20  # DATA segments of this many bytes or more are memory-mapped instead of read
_VERSION_RE = re.compile(rb"FCS\d\.\d")
_PARAM_KEY_RE = re.compile(r"^\$P(\d+)([A-Z]+)$")
_TOKEN_SPLIT_RE = re.compile(r"[\s/,;:()]+")
# Keywords that describe the file layout; the writer always recomputes them.
_LAYOUT_KEYWORDS = frozenset(
    {
        "$BEGINANALYSIS", "$ENDANALYSIS", "$BEGINDATA", "$ENDDATA", "$BEGINSTEXT", "$ENDSTEXT",
        "$NEXTDATA", "$TOT", "$PAR", "$BYTEORD", "$DATATYPE", "$MODE",
    }
)  # fmt: skip
# Per-parameter keywords the writer sets itself ($PnR and $PnG etc. are carried over from the source metadata).
_WRITER_PARAM_SUFFIXES = frozenset({"N", "S", "B", "E", "DATATYPE"})
_DELIMITER_CANDIDATES = (b"/", b"|", b"\\", b"!", b"*", b"~", b"\x0c")
_BYTEORDERS = {"1,2,3,4": "<", "1,2": "<", "1": "<", "4,3,2,1": ">", "2,1": ">"}


# --------------------------------------------------------------------------------------------------------------
# Sample


@dataclass(frozen=True, eq=False, repr=False)
class Sample:
    """One FCS data set: events, channel names, markers and keywords.

    Attributes
    ----------
    path : str
        File path as given ('' for an in-memory sample).
    events : numpy.ndarray
        ``(n_events, n_channels)`` C-ordered, writable; float32 (float64 when any channel is stored as double,
        ``$DATATYPE=D`` or ``$PnDATATYPE=D``, and for ``read_fcs(exact=True)``).
    channels : tuple of str
        ``$PnN`` in file order; duplicates are made unique with a suffix ``_2``, ``_3``, ...
    markers : tuple of str
        ``$PnS`` ('' when absent), same order as ``channels``.
    metadata : dict of str to str
        All TEXT keywords, keys upper-cased with any ``$`` kept (``"$CYT"``, ``"SPILL"``).
    version : str
        The HEADER version, e.g. ``"FCS3.1"``.
    scale : str
        How ``events`` were decoded from the stored channel values (one of :data:`SCALES`): ``"raw"`` for an
        in-memory sample unless given.
    """

    path: str
    events: np.ndarray
    channels: tuple[str, ...]
    markers: tuple[str, ...]
    metadata: dict[str, str]
    version: str
    scale: str = "raw"

    @property
    def n_events(self) -> int:
        """Number of events (rows of ``events``)."""
        return int(self.events.shape[0])

    def __repr__(self) -> str:  # the default would print every event and keyword
        where = self.path or "<in memory>"
        return f"Sample({where!r}, {self.version}, {self.n_events} events x {len(self.channels)} channels)"

    def find_channel(self, name: str) -> int:
        """Return the column index of a channel named by ``$PnN`` or by marker.

        Parameters
        ----------
        name : str
            A ``$PnN`` (``"FITC-A"``), a full ``$PnS`` (``"CD4 FITC"``) or a marker token (``"CD4"``).

        Returns
        -------
        int
            Column index into ``events``.

        Raises
        ------
        MarkerError
            When no channel matches, or when the first rule with any match matches several channels.

        Notes
        -----
        Case-insensitive; the first rule that gives exactly one channel wins:

        1. exact ``$PnN``;
        2. exact ``$PnS``;
        3. ``$PnS`` token: the marker is split on whitespace and ``/,;:()``, and the part of a token before the
           first ``-`` or ``_`` also counts, so ``"CD4"`` matches ``"CD4 FITC"`` and ``"CD4-FITC"`` but never
           ``"CD45"``.
        """
        query = str(name).strip().casefold()
        rules = (
            [i for i, c in enumerate(self.channels) if c.casefold() == query],
            [i for i, m in enumerate(self.markers) if m and m.casefold() == query],
            [i for i, m in enumerate(self.markers) if query in _marker_tokens(m)],
        )
        for hits in rules:
            if len(hits) == 1:
                return hits[0]
        where = self.path or "<in-memory sample>"
        for hits in rules:
            if hits:
                listed = ", ".join(self._label(i) for i in hits)
                raise MarkerError(f"{where}: marker '{name}' is ambiguous: {listed}")
        available = ", ".join(self._label(i) for i in range(len(self.channels))) or "none"
        raise MarkerError(f"{where}: no channel or marker '{name}'; available: {available}")

    def column(self, name: str) -> np.ndarray:
        """Return ``events[:, find_channel(name)]`` (a view)."""
        return self.events[:, self.find_channel(name)]

    def _label(self, i: int) -> str:
        return f"{self.channels[i]} ({self.markers[i]})" if self.markers[i] else self.channels[i]


def _marker_tokens(marker: str) -> set[str]:
    tokens = set()
    for token in _TOKEN_SPLIT_RE.split(marker.casefold()):
        if token:
            tokens.add(token)
            tokens.add(re.split(r"[-_]", token, maxsplit=1)[0])
    tokens.discard("")
    return tokens


# --------------------------------------------------------------------------------------------------------------
# Reading


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


def read_fcs(path: str | os.PathLike[str], *, scale: bool | str = "log", exact: bool = False,
             dataset: int = 0) -> Sample:
    """Read one data set of an FCS file.

    Parameters
    ----------
    path : str or path-like
        The FCS file.
    scale : {"log", "gain", "raw"} or bool, default "log"
        How channel values become the values FCS 3.1 defines ("scale values"), see :data:`SCALES`:

        * ``"log"``: log-amplified channels (``$PnE=f1,f2`` with ``f1 > 0``) are decoded to
          ``10**(f1 * x / $PnR) * f2`` (``f2 = 0`` taken as 1), FCS 3.1 section 3.3.36 (FlowKit's and flowCore's
          default). Linear channels are left as stored. This is what every command uses for YAML gate files.
        * ``"gain"``: as ``"log"``, and linear channels are divided by ``$PnG``: flowCore's
          ``read.FCS(transformation="linearize-with-PnG-scaling")``, the data the Gating-ML 2.0 compliance
          results assume.
        * ``"raw"``: channel values as stored (integers masked by the ``$PnR`` bit mask).

        ``True`` is ``"gain"`` read exactly (float64), ``False`` is ``"raw"`` (the meanings of earlier versions).
    exact : bool, default False
        Precision of decoded values. False: float32, like every stored value (the fast path; a decoded value may
        then differ from the exact one in its last bit, which moves an event lying exactly on a gate boundary).
        True: float64 events, so values such as ``10**(4 * 256 / 1024) = 10.0`` hold exactly (Gating-ML
        compliance counts depend on them). Files with nothing to decode are returned as stored either way,
        unless ``exact`` is True (then float64).
    dataset : int, default 0
        Which data set to read in a file with several (``$NEXTDATA`` chain); see :func:`count_datasets`.

    Returns
    -------
    Sample

    Raises
    ------
    FCSError
        The file is missing, not FCS, truncated or internally inconsistent; the message says which.

    Notes
    -----
    1. Parse the 58-byte HEADER of data set 0, follow ``$NEXTDATA`` to the requested data set.
    2. Parse TEXT (and supplemental TEXT); escaped (doubled) delimiters are undone.
    3. Locate DATA. HEADER and ``$BEGINDATA``/``$ENDDATA`` must agree by the standard; when they do not, a
       location that overlaps HEADER/TEXT is impossible (segments never overlap) and is dropped, then the HEADER
       wins if its length matches ``$TOT x sum($PnB)/8`` (FCS 3.1 section 3.2: the HEADER holds the offsets of
       every segment below 99,999,999 bytes; the keywords are the fallback), else the keywords if theirs does,
       allowing the common off-by-one end offset.
    4. Decode DATA: little-endian float32/float64 are mapped without copying; integers are converted to
       float32 and masked with ``2**ceil(log2($PnR)) - 1`` where ``$PnR < 2**$PnB``.

    5. Decode values as ``scale`` asks (:func:`decode_values`); ``Sample.scale`` records which decoding was used.
    """
    if isinstance(dataset, bool) or not isinstance(dataset, int) or dataset < 0:
        raise FCSError(f"{os.fspath(path)}: dataset must be a non-negative integer, got {dataset!r}")
    fcs = _File(path)
    try:
        segments, metadata = _locate_dataset(fcs, dataset)
        channels, markers = _channel_names(fcs, metadata)
        events = _read_data(fcs, segments, metadata, len(channels))
        mode = _scale_mode(fcs, scale)
        events = _decode_values(fcs, events, metadata, mode, exact or scale is True)
    finally:
        fcs.close()
    return Sample(
        path=fcs.name,
        events=events,
        channels=channels,
        markers=markers,
        metadata=metadata,
        version=segments.version,
        scale=mode,
    )


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
    if spare is not None:
        tokens = [t.replace(spare, delimiter) for t in body.replace(delimiter * 2, spare).split(delimiter)]
    else:  # every byte value occurs: find the separators with one regular-expression scan instead
        d = re.escape(delimiter)
        tokens, start = [], 0
        for match in re.finditer(b"(?<!" + d + b")(?:" + d + d + b")*" + d + b"(?!" + d + b")", body):
            tokens.append(body[start : match.end() - 1].replace(delimiter * 2, delimiter))
            start = match.end()
        tokens.append(body[start:].replace(delimiter * 2, delimiter))
    if tokens == [b""]:
        tokens = []
    if len(tokens) < 2:
        raise fcs.error(f"{what} segment holds no keyword/value pairs")
    metadata: dict[str, str] = {}
    for key, value in zip(tokens[0::2], tokens[1::2], strict=False):
        name = _decode(key).strip().upper()
        if name and name not in metadata:
            metadata[name] = _decode(value)
    return metadata


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # pre-3.1 files use 8-bit code pages; latin-1 never fails


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


@dataclass(frozen=True)
class _Layout:
    """How one event is stored: per-channel kind ('I', 'F', 'D'), stored bit width, significant bits, byte order."""

    kinds: tuple[str, ...]
    bits: tuple[int, ...]
    order: str  # '<' or '>'
    significant: tuple[int, ...] = ()  # $PnB when values sit in wider words (10-bit values in 16-bit words)

    @property
    def event_bits(self) -> int:
        return sum(self.bits)

    def in_words(self) -> _Layout:
        """The same channels with each odd-width integer stored in the smallest 8/16/32/64-bit word."""
        words = tuple(b if b % 8 == 0 else next(w for w in (8, 16, 32, 64) if w >= b) for b in self.bits)
        return _Layout(self.kinds, words, self.order, self.bits)


def _layout(fcs: _File, metadata: Mapping[str, str], n_par: int) -> _Layout:
    datatype = metadata.get("$DATATYPE", "").strip().upper()
    mode = metadata.get("$MODE", "L").strip().upper() or "L"
    if mode != "L":
        raise fcs.error(f"$MODE={mode} (histogram data) is not supported; only list mode (L) holds events")
    kinds = []
    bits = []
    for i in range(1, n_par + 1):
        kind = metadata.get(f"$P{i}DATATYPE", datatype).strip().upper()
        raw_bits = metadata.get(f"$P{i}B", "").strip()
        if not kind:
            raise fcs.error("required keyword $DATATYPE is missing, so the DATA segment cannot be decoded")
        if kind == "A":
            raise fcs.error("ASCII data ($DATATYPE=A) is not supported")
        if kind not in ("I", "F", "D"):
            raise fcs.error(f"$P{i}DATATYPE/$DATATYPE is {kind!r}; expected I, F or D")
        if not raw_bits:
            raise fcs.error(f"required keyword $P{i}B is missing")
        if not re.fullmatch(r"[0-9]{1,4}", raw_bits):  # str.isdigit would pass superscripts that int() refuses
            raise fcs.error(f"$P{i}B is not a bit count: {raw_bits[:20]!r}")
        width = int(raw_bits)
        if kind == "F" and width != 32:
            raise fcs.error(f"$P{i}B={width} but float data ($DATATYPE=F) are 32-bit")
        if kind == "D" and width != 64:
            raise fcs.error(f"$P{i}B={width} but double data ($DATATYPE=D) are 64-bit")
        if not 1 <= width <= 64:
            raise fcs.error(f"$P{i}B={width} is outside 1-64 bits")
        kinds.append(kind)
        bits.append(width)
    byteord = re.sub(r"\s+", "", metadata.get("$BYTEORD", ""))
    if byteord in _BYTEORDERS:
        order = _BYTEORDERS[byteord]
    elif not byteord and all(b == 8 for b in bits):
        order = "<"
    else:
        raise fcs.error(f"$BYTEORD {byteord!r} is not supported (expected 1,2,3,4 or 4,3,2,1)")
    return _Layout(kinds=tuple(kinds), bits=tuple(bits), order=order)


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


def _read_data(fcs: _File, segments: _Segments, metadata: dict[str, str], n_par: int) -> np.ndarray:
    layout = _layout(fcs, metadata, n_par)
    start, end = segments.data
    segment = min(end, fcs.size - 1) - start + 1
    total = None
    if metadata.get("$TOT", "").strip():
        total = _int_keyword(fcs, metadata, "$TOT")
        if total < 0:
            raise fcs.error(f"$TOT={total} is negative")
    if any(b % 8 for b in layout.bits):
        layout = _odd_width_storage(layout, segment, total)
    # $TOT is optional in FCS 2.0: then the segment length gives the event count.
    n_events = total if total is not None else max(segment, 0) * 8 // layout.event_bits
    needed = (n_events * layout.event_bits + 7) // 8
    if needed and start >= fcs.size:
        raise fcs.error(
            f"DATA segment is missing: it should start at byte {start} but the file ends at byte {fcs.size} "
            "(a header-only or truncated file)"
        )
    if needed > fcs.size - start:
        raise fcs.error(
            f"DATA segment is truncated: $TOT={n_events} events x {layout.event_bits} bits need {needed} bytes "
            f"from byte {start}, but the file has {fcs.size - start}"
        )
    if n_events == 0:
        return np.empty((0, n_par), dtype=np.float64 if "D" in layout.kinds else np.float32)
    if all(b % 8 == 0 for b in layout.bits):
        return _decode_bytes(fcs, start, n_events, layout, metadata)
    return _decode_packed(fcs, start, n_events, layout, metadata)


def _odd_width_storage(layout: _Layout, segment: int, total: int | None) -> _Layout:
    """Decide how ``$PnB`` values that are not byte multiples are stored, from the DATA segment's length.

    FCS 2.0 permits any ``$PnB`` without saying how such values are laid out. Beckman Coulter writes 10-bit values
    in 16-bit words (the FCS 3.0 copy of the same events in the same LMD file confirms it); FlowJo 2.0 wrote 9-bit
    values as a bit stream, least significant bit first (the LabKey tutorial files: only that bit order gives
    correlated forward/side scatter and a lymphocyte peak; most-significant-first gives noise). The layout whose
    byte count matches the segment (within the usual off-by-one) wins; without ``$TOT`` or a usable length, whole
    words are assumed because that is what instruments write.
    """
    words = layout.in_words()
    if total is None or segment <= 0:
        return words
    packed_bytes = (total * layout.event_bits + 7) // 8
    word_bytes = total * words.event_bits // 8
    if abs(segment - packed_bytes) <= 1 and abs(segment - word_bytes) > 1:
        return layout
    return words


def _masks(layout: _Layout, metadata: Mapping[str, str]) -> list[int | None]:
    """Per-channel integer bit mask from ``$PnR`` and ``$PnB`` (None where no masking applies).

    FCS 3.1 section 3.3.4: integer values are ANDed with ``2**ceil(log2($PnR)) - 1`` when ``$PnR`` is below
    ``2**$PnB``; bits above the range can carry other information (Beckman "extra info in bits D10-D15").
    """
    masks: list[int | None] = []
    significant = layout.significant or layout.bits
    for i, (kind, width, used) in enumerate(zip(layout.kinds, layout.bits, significant, strict=True), start=1):
        mask = None
        if kind == "I":
            if used < width:
                mask = 2**used - 1
            try:
                prange = int(float(metadata.get(f"$P{i}R", "0").strip()))
            except (ValueError, OverflowError):
                prange = 0
            if 1 < prange < 2**used:
                mask = 2 ** math.ceil(math.log2(prange)) - 1
        masks.append(mask)
    return masks


def _data_buffer(fcs: _File, start: int, nbytes: int) -> tuple[mmap.mmap | np.ndarray, int]:
    """A writable buffer holding DATA and the offset of DATA in it.

    Large segments are memory-mapped copy-on-write (pages are read on first touch; writes stay private). The map
    keeps a duplicate file descriptor open for as long as the events array lives, so small segments are read
    into memory instead: batches that hold many small samples then hold no open files.
    """
    if nbytes >= MAP_THRESHOLD:
        return mmap.mmap(fcs.handle.fileno(), 0, access=mmap.ACCESS_COPY), start
    buffer = np.empty(nbytes, dtype=np.uint8)  # uninitialised: a bytearray would be zero-filled first
    fcs.handle.seek(start)
    if fcs.handle.readinto(buffer) != nbytes:
        raise fcs.error(f"DATA segment could not be read in full ({nbytes} bytes from byte {start})")
    return buffer, 0


def _decode_bytes(fcs: _File, start: int, n_events: int, layout: _Layout, metadata: Mapping[str, str]) -> np.ndarray:
    n_par = len(layout.bits)
    kinds = set(layout.kinds)
    widths = {b // 8 for b in layout.bits}
    order = layout.order
    buffer, offset = _data_buffer(fcs, start, n_events * layout.event_bits // 8)
    if kinds <= {"F"} or kinds <= {"D"}:
        code = "f4" if kinds == {"F"} else "f8"
        view = np.frombuffer(buffer, dtype=order + code, count=n_events * n_par, offset=offset)
        view = view.reshape(n_events, n_par)
        if offset % view.itemsize:  # unaligned (odd $BEGINDATA in a mapped file): one aligned copy
            return view.astype(np.dtype(code).newbyteorder("="))
        if np.dtype(order + code) != np.dtype(code):
            view.byteswap(inplace=True)  # the buffer is private (copy-on-write map or our own read)
            view = view.view(np.dtype(code))
        return view
    masks = _masks(layout, metadata)
    if kinds == {"I"} and len(widths) == 1 and widths <= {1, 2, 4, 8}:
        width = widths.pop()
        view = np.frombuffer(buffer, dtype=f"{order}u{width}", count=n_events * n_par, offset=offset)
        view = view.reshape(n_events, n_par)
        if any(m is not None for m in masks):
            full = np.iinfo(view.dtype).max
            mask_row = np.array([full if m is None else m for m in masks], dtype=view.dtype.newbyteorder("="))
            view = np.bitwise_and(view, mask_row)
        return view.astype(np.float32)
    # Mixed widths or kinds, and odd byte widths (24-bit): one structured record per event.
    fields = []
    for kind, width in zip(layout.kinds, layout.bits, strict=True):
        nbytes = width // 8
        if kind == "F":
            fields.append(order + "f4")
        elif kind == "D":
            fields.append(order + "f8")
        elif nbytes in (1, 2, 4, 8):
            fields.append(f"{order}u{nbytes}")
        else:
            fields.append(("u1", (nbytes,)))
    record = np.dtype([(f"c{i}", f) for i, f in enumerate(fields)])
    table = np.frombuffer(buffer, dtype=record, count=n_events, offset=offset)
    out_dtype = np.float64 if "D" in kinds else np.float32  # a double channel keeps its precision
    out = np.empty((n_events, n_par), dtype=out_dtype)
    for i in range(n_par):
        column = table[f"c{i}"]
        if column.ndim == 2:  # odd byte width: assemble the integer from its bytes
            value = np.zeros(n_events, dtype=np.uint64)
            byte_index = range(column.shape[1]) if order == ">" else reversed(range(column.shape[1]))
            for b in byte_index:
                value <<= np.uint64(8)
                value |= column[:, b]
            column = value
        if masks[i] is not None:
            column = np.bitwise_and(column, np.array(masks[i], dtype=column.dtype.newbyteorder("=")))
        with np.errstate(invalid="ignore"):  # widening a signalling NaN raises the invalid flag; the NaN stays
            out[:, i] = column
    return out


def _decode_packed(fcs: _File, start: int, n_events: int, layout: _Layout, metadata: Mapping[str, str]) -> np.ndarray:
    """Integers packed as a continuous bit stream, least significant bit first (see :func:`_odd_width_storage`).

    Every ``g = 8 / gcd(event_bits, 8)`` events end on a byte boundary, so within such a group each value starts
    at a fixed bit: each (event-in-group, channel) pair is one strided little-endian word view over all groups.
    """
    if set(layout.kinds) != {"I"}:
        raise fcs.error("float data must be 32/64-bit; $PnB values that are not byte multiples need $DATATYPE=I")
    if not 8 <= min(layout.bits) <= max(layout.bits) <= 56:
        # Narrower values would cost 4 bytes of float32 per bit or two of file; wider ones are not seen in practice.
        raise fcs.error(f"bit-packed values of {min(layout.bits)}-{max(layout.bits)} bits are not supported (8-56 are)")
    event_bits = layout.event_bits
    per_group = 8 // math.gcd(event_bits, 8)
    group_bytes = event_bits * per_group // 8
    n_groups = -(-n_events // per_group)
    stream = fcs.read(start, start + (n_events * event_bits + 7) // 8, "DATA segment")
    # Zero-fill the last, partial group plus 8 bytes, so a word read at any value's first byte stays inside.
    stream += bytes(n_groups * group_bytes - len(stream) + 8)
    masks = _masks(layout, metadata)
    offsets = np.cumsum((0,) + layout.bits[:-1])
    out = np.empty((n_groups * per_group, len(layout.bits)), dtype=np.float32)
    for event in range(per_group):
        for i, width in enumerate(layout.bits):
            bit = event * event_bits + int(offsets[i])
            size = 4 if bit % 8 + width <= 32 else 8
            word = np.ndarray((n_groups,), dtype=f"<u{size}", buffer=stream, offset=bit // 8, strides=(group_bytes,))
            out[event::per_group, i] = (word >> (bit % 8)) & (masks[i] or (1 << width) - 1)
    return out[:n_events]


#: Value decodings of :func:`read_fcs`: what each does, as recorded in ``manifest.json``.
SCALES = {
    "log": "$PnE log channels decoded to 10**(f1*x/$PnR)*f2 (f2=0 -> 1); linear channels as stored",
    "gain": "$PnE log channels decoded to 10**(f1*x/$PnR)*f2 (f2=0 -> 1); linear channels divided by $PnG",
    "raw": "channel values as stored",
}


def _scale_mode(fcs: _File, scale: bool | str) -> str:
    if scale is True:
        return "gain"
    if scale is False:
        return "raw"
    if scale not in SCALES:
        raise fcs.error(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    return str(scale)


def channel_decoding(metadata: Mapping[str, str], index: int, scale: str) -> tuple[float, float, float] | None:
    """How channel ``index`` (0-based) is decoded under ``scale``: ``(decades, offset, gain)`` or None (as stored).

    ``decades > 0``: ``10**(decades * x / $PnR) * offset``; else ``x / gain``. Unreadable keywords count as absent
    here (the reader reports them when it needs them).
    """
    if scale == "raw":
        return None
    n = index + 1
    decades, offset = _amplification(metadata.get(f"$P{n}E", "0,0"))
    if decades > 0:
        return decades, (offset if offset > 0 else 1.0), 1.0
    if scale == "gain":
        try:
            gain = float(metadata.get(f"$P{n}G", "").strip() or 1.0)
        except ValueError:
            return None
        if gain > 0 and gain != 1.0 and math.isfinite(gain):
            return 0.0, 0.0, gain
    return None


def top_of_scale(metadata: Mapping[str, str], index: int, scale: str) -> float | None:
    """The top of scale of channel ``index`` in the units :func:`read_fcs` returns under ``scale``.

    ``$PnR`` for a channel read as stored; ``10**decades * offset`` for a decoded log channel; ``$PnR / $PnG`` for
    a gain-scaled one. None when ``$PnR`` is missing or not a positive number.
    """
    try:
        prange = float(metadata.get(f"$P{index + 1}R", "").strip())
    except ValueError:
        return None
    if not (math.isfinite(prange) and prange > 0):
        return None
    decoding = channel_decoding(metadata, index, scale)
    if decoding is None:
        return prange
    decades, offset, gain = decoding
    return 10.0 ** decades * offset if decades > 0 else prange / gain


def to_scale(metadata: Mapping[str, str], index: int, scale: str, value: float) -> float:
    """A stored channel value of channel ``index`` in the units :func:`read_fcs` returns under ``scale``."""
    decoding = channel_decoding(metadata, index, scale)
    if decoding is None:
        return value
    decades, offset, gain = decoding
    if decades <= 0:
        return value / gain
    try:
        prange = float(metadata.get(f"$P{index + 1}R", "").strip())
    except ValueError:
        return value
    return 10.0 ** (decades * value / prange) * offset if prange > 0 else value


def _decode_values(fcs: _File, events: np.ndarray, metadata: Mapping[str, str], scale: str,
                   exact: bool) -> np.ndarray:
    """Apply the ``scale`` decoding: float32 in place (copy-on-write pages are private), float64 when ``exact``."""
    plan = [(i, channel_decoding(metadata, i, scale)) for i in range(events.shape[1])]
    plan = [(i, d) for i, d in plan if d is not None]
    if exact and scale != "raw":
        with np.errstate(invalid="ignore"):  # signalling NaNs, see _decode_bytes
            out = np.array(events, dtype=np.float64, order="C")
    elif not plan:
        return events
    else:
        out = events
    for i, (decades, offset, gain) in plan:
        column = out[:, i].astype(np.float64)
        if decades > 0:
            prange = _float_keyword(fcs, metadata, f"$P{i + 1}R")
            if not 0 < prange < math.inf:
                raise fcs.error(f"$P{i + 1}E={metadata[f'$P{i + 1}E']} is logarithmic but $P{i + 1}R is not a "
                                f"positive range")
            if decades > _MAX_DECADES:
                raise fcs.error(f"$P{i + 1}E={metadata[f'$P{i + 1}E']}: {decades:g} decades is beyond any "
                                f"amplifier (at most {_MAX_DECADES})")
            column = _antilog(column, decades, offset, prange)
        else:
            column /= gain
        out[:, i] = column
    return out


_MAX_DECADES = 300  # 10**300 is still a finite float64
_MAX_POW_TABLE = 1 << 16  # entries of a scalar-pow table (about 20 ms to build)


def _antilog(column: np.ndarray, decades: float, offset: float, prange: float) -> np.ndarray:
    """``10**(decades * x / prange) * offset`` in float64, identical for every x to the scalar C ``pow``.

    Log channels hold integers below ``$PnR``: a table of the scalar results (the C library's ``pow``, which
    flowCore and FlowIO's truth use) is both faster and independent of numpy's vectorised ``pow``, whose last
    bit can differ on contiguous arrays; a value on a gate boundary must not move with memory layout.
    """
    size = int(prange) + 1
    if column.size and np.array_equal(column, np.floor(column)) and column.min() >= 0 and column.max() < size:
        # The table costs one scalar pow per entry: over the whole range for the usual 8-16 bit log channels,
        # over the values present when a (possibly hostile) $PnR is larger, never more than _MAX_POW_TABLE.
        if size <= _MAX_POW_TABLE:
            table = np.array([10.0 ** (decades * k / prange) * offset for k in range(size)])
            return table[column.astype(np.int64)]
        present, inverse = np.unique(column.astype(np.int64), return_inverse=True)
        if present.size <= _MAX_POW_TABLE:
            table = np.array([10.0 ** (decades * int(k) / prange) * offset for k in present])
            return table[inverse.reshape(-1)]
    return 10.0 ** (decades * column / prange) * offset  # non-integer (float-stored) log channel: rare


def _amplification(value: str) -> tuple[float, float]:
    parts = [p for p in re.split(r"[,\s]+", value.strip()) if p]
    try:
        decades = float(parts[0]) if parts else 0.0
        offset = float(parts[1]) if len(parts) > 1 else 0.0
    except ValueError:
        return 0.0, 0.0
    return decades, offset


def _float_keyword(fcs: _File, metadata: Mapping[str, str], key: str) -> float:
    try:
        return float(metadata.get(key, "").strip())
    except ValueError:
        raise fcs.error(f"keyword {key} is not a number: {metadata.get(key, '')[:40]!r}") from None


# --------------------------------------------------------------------------------------------------------------
# Writing


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


# --------------------------------------------------------------------------------------------------------------
# Description (cytopipe info)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (FCS files, sample sheets, gate files: what ``manifest.json`` records).

    Hashing the memory-mapped file skips the copies of buffered reads (and the pages are the ones
    :func:`read_fcs` maps).
    """
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return hashlib.sha256(b"").hexdigest()
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return hashlib.sha256(mapped).hexdigest()


def describe(sample: Sample) -> dict[str, Any]:
    """Summarise a sample for ``cytopipe info`` as a JSON-serialisable dict.

    Returns
    -------
    dict
        ``path``, ``version``, ``instrument`` (``$CYT``), ``events``, ``channels`` (list of dicts with ``index``,
        ``name`` ``$PnN``, ``marker`` ``$PnS``, ``range`` ``$PnR``, ``scale`` how values were decoded, ``top`` the
        top of scale in decoded units, e.g. 10000 for ``$PnE=4,0``), ``values`` (the sample's decoding),
        ``spillover`` (``present``, ``keyword``,
        ``detectors``, and ``error`` when the keyword is malformed),
        ``datasets`` (count, None for an in-memory sample) and ``sha256`` of the file (None in memory).
    """
    channels = []
    for i, (name, marker) in enumerate(zip(sample.channels, sample.markers, strict=True), start=1):
        decoding = channel_decoding(sample.metadata, i - 1, sample.scale)
        if decoding is None:
            scale = "linear"
        elif decoding[0] > 0:
            scale = f"log {decoding[0]:g} decades x {decoding[1]:g}"
        else:
            scale = f"linear / gain {decoding[2]:g}"
        top = top_of_scale(sample.metadata, i - 1, sample.scale)
        channels.append(
            {"index": i, "name": name, "marker": marker, "range": sample.metadata.get(f"$P{i}R", "").strip(),
             "scale": scale, "top": top}
        )
    spillover: dict[str, Any] = {"present": False, "keyword": None, "detectors": []}
    try:
        spill = spillover_from_metadata(sample.metadata, sample.channels, path=sample.path)
    except FCSError as err:  # present but unusable: say so rather than fail the whole description
        spillover.update(present=True, error=str(err))
    else:
        if spill is not None:
            spillover.update(present=True, keyword=spill.source.split(" ")[0], detectors=list(spill.channels))
    datasets = None
    digest = None
    if sample.path and os.path.isfile(sample.path):
        datasets = count_datasets(sample.path)
        digest = file_sha256(sample.path)
    return {
        "path": sample.path,
        "version": sample.version,
        "instrument": sample.metadata.get("$CYT", "").strip(),
        "events": sample.n_events,
        "values": SCALES.get(sample.scale, sample.scale),
        "channels": channels,
        "spillover": spillover,
        "datasets": datasets,
        "sha256": digest,
    }


def _spill_text(spill: Mapping[str, Any]) -> str:
    if not spill.get("present"):
        return "none"
    if spill.get("error"):
        return f"present but unusable: {spill['error']}"
    return f"{spill.get('keyword')} over {len(spill.get('detectors') or [])} detectors"


def format_description(info: Mapping[str, Any]) -> str:
    """Render :func:`describe` output as human-readable text (several lines)."""
    spill = info.get("spillover") or {}
    lines = [
        f"file:        {info.get('path') or '<in memory>'}",
        f"version:     {info.get('version', '')}",
        f"instrument:  {info.get('instrument') or '(no $CYT)'}",
        f"events:      {info.get('events', 0):,}",
        f"data sets:   {info.get('datasets') if info.get('datasets') is not None else 'n/a'}",
        f"spillover:   {_spill_text(spill)}",
        f"values:      {info.get('values') or 'as stored'}",
    ]
    if info.get("sha256"):
        lines.append(f"sha256:      {info['sha256']}")
    channels = info.get("channels") or []
    lines.append(f"channels:    {len(channels)}")
    width = max((len(str(c["name"])) for c in channels), default=4)
    for c in channels:
        marker = c.get("marker") or "-"
        top = c.get("top")
        shown = f"{top:g}" if top is not None and c.get("scale", "linear") != "linear" else (c.get("range") or "-")
        scale = "" if c.get("scale", "linear") == "linear" else f"  ({c['scale']}, $PnR {c.get('range')})"
        lines.append(f"  {c['index']:>3}  {c['name']:<{width}}  {marker:<20}  range {shown}{scale}")
    return "\n".join(lines)
