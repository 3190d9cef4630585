"""Reading FCS files: :func:`read_fcs`, the DATA layout and the decoding of stored integers and floats."""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cytopipe.errors import FCSError
from cytopipe.memo import Memo

from .sample import Sample
from .scale import _decode_values, _scale_mode
from .text import _channel_names, _File, _int_keyword, _locate_dataset, _Segments

MAP_THRESHOLD = 8 << 20  # DATA segments of this many bytes or more are memory-mapped instead of read
_BYTEORDERS = {"1,2,3,4": "<", "1,2": "<", "1": "<", "4,3,2,1": ">", "2,1": ">"}


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
    return _read(path, scale, exact, dataset, None)


def read_fcs_sha256(path: str | os.PathLike[str], *, scale: bool | str = "log", exact: bool = False,
                    dataset: int = 0) -> tuple[Sample, str]:
    """:func:`read_fcs` and the SHA-256 of the file's bytes (:func:`cytopipe.fcs.file_sha256`), from one read.

    The file is read once, in pieces each hashed while it is in the CPU cache; the bytes hashed are the bytes
    gated, and a worker holds the event data once (no mapped file pages, no second copy). Float data (the common
    case) come back column-major (``Sample.events`` Fortran-ordered: each channel's values contiguous), each piece
    of events transposed as it is read (:func:`_read_columns`): the worker's gating, QC and reference medians read a
    few channels at a time. Other layouts are read into one private buffer placed so that DATA is aligned and
    decoded there, C-ordered as :func:`read_fcs` returns them. Same parameters, values and errors as
    :func:`read_fcs`.

    Returns
    -------
    tuple
        ``(sample, sha256)``, the digest as 64 hexadecimal digits.
    """
    digest = hashlib.sha256()
    sample = _read(path, scale, exact, dataset, digest)
    return sample, digest.hexdigest()


def _read(path: str | os.PathLike[str], scale: bool | str, exact: bool, dataset: int,
          digest: Any) -> Sample:
    """:func:`read_fcs`; with ``digest`` (a ``hashlib`` object), DATA comes from the whole file read into one private
    buffer while ``digest`` hashes it (or, for layouts decoded from a plain read, from hashing the file apart)."""
    if isinstance(dataset, bool) or not isinstance(dataset, int) or dataset < 0:
        raise FCSError(f"{os.fspath(path)}: dataset must be a non-negative integer, got {dataset!r}")
    fcs = _File(path)
    try:
        fcs.digest = digest
        segments, metadata = _locate_dataset(fcs, dataset)
        channels, markers = _channel_names(fcs, metadata)
        events = _read_data(fcs, segments, metadata, len(channels))
        mode = _scale_mode(fcs, scale)
        if digest is not None and not fcs.hashed:
            _hash_file(fcs, digest)  # DATA not taken from a hashed read (no events, bit-packed values)
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


_PIECE = 1 << 20  # bytes read and hashed at a time: small enough to be hashed from the CPU cache


def _hash_file(fcs: _File, digest: Any) -> None:
    """Feed the whole file to ``digest`` (a few pieces at a time, without keeping them)."""
    fcs.handle.seek(0)
    while piece := fcs.handle.read(_PIECE):
        digest.update(piece)


def _read_whole(fcs: _File, start: int) -> np.ndarray:
    """The whole file in a private buffer whose byte ``start`` is 64-byte aligned, hashed into ``fcs.digest`` as it
    is read."""
    raw = np.empty(fcs.size + 64, dtype=np.uint8)  # uninitialised: a bytearray would be zero-filled first
    pad = -(raw.ctypes.data + start) % 64
    whole = raw[pad:pad + fcs.size]
    view = memoryview(whole)
    fcs.handle.seek(0)
    done = 0
    while done < fcs.size:
        got = fcs.handle.readinto(view[done:min(done + _PIECE, fcs.size)])
        if not got:
            raise fcs.error(f"the file could not be read in full ({done} of {fcs.size} bytes)")
        fcs.digest.update(view[done:done + got])
        done += got
    fcs.whole = whole
    fcs.hashed = True
    return whole


def _read_columns(fcs: _File, start: int, n_events: int, n_par: int, stored: np.dtype) -> np.ndarray:
    """Float events of native byte order in column-major order (each channel's values contiguous), de-interleaved
    from the file a few hundred kB at a time while the whole file is hashed into ``fcs.digest``.

    The gating and the QC read a few channels at a time, and the reference medians gather channels at scattered
    events: from contiguous columns they read each channel's values only, where interleaved events make every
    pass over one channel read the whole event data (a 1M-event file: ~15 ms less per sample). Each piece of
    events is hashed and transposed while it is in the CPU cache; the values are copied bit for bit (a byte swap for
    big-endian files, NaN payloads kept)."""
    out = np.empty((n_events, n_par), dtype=stored.newbyteorder("="), order="F")
    row_bytes = n_par * stored.itemsize
    rows = max(1, _PIECE // 4 // row_bytes)  # a piece of events stays in the CPU cache until transposed
    scratch = np.empty(rows * row_bytes + 64, dtype=np.uint8)
    scratch = scratch[-scratch.ctypes.data % 64:][:rows * row_bytes]  # aligned for the values' type
    handle, digest = fcs.handle, fcs.digest
    handle.seek(0)
    _hash_span(fcs, start)  # HEADER and TEXT, hashed again from the file: they are a few kB
    for r0 in range(0, n_events, rows):
        r1 = min(r0 + rows, n_events)
        piece = scratch[:(r1 - r0) * row_bytes]
        if handle.readinto(piece) != piece.size:
            raise fcs.error(f"DATA segment could not be read in full ({n_events * row_bytes} bytes from byte {start})")
        digest.update(piece)
        out[r0:r1] = piece.view(stored).reshape(r1 - r0, n_par)
    while rest := handle.read(_PIECE):  # what follows DATA (ANALYSIS, further data sets)
        digest.update(rest)
    fcs.hashed = True
    return out


def _hash_span(fcs: _File, stop: int) -> None:
    """Feed the file's bytes from the handle's position up to byte ``stop`` to ``fcs.digest``."""
    left = stop - fcs.handle.tell()
    while left > 0:
        piece = fcs.handle.read(min(left, _PIECE))
        if not piece:
            raise fcs.error(f"the file could not be read in full (ends before byte {stop})")
        fcs.digest.update(piece)
        left -= len(piece)


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


# Layouts by the keywords they are read from: the files of a study share them (see _layout).
_LAYOUTS: Memo[_Layout] = Memo(256)


def _layout(fcs: _File, metadata: Mapping[str, str], n_par: int) -> _Layout:
    """How events are stored, from ``$DATATYPE``, ``$MODE``, ``$BYTEORD``, ``$PnDATATYPE`` and ``$PnB`` (once per
    distinct set of them; a file whose keywords are invalid raises every time)."""
    key = (n_par, metadata.get("$DATATYPE"), metadata.get("$MODE"), metadata.get("$BYTEORD"),
           *(metadata.get(f"$P{i}{k}") for i in range(1, n_par + 1) for k in ("DATATYPE", "B")))
    return _LAYOUTS.get(key, lambda: _read_layout(fcs, metadata, n_par))


def _read_layout(fcs: _File, metadata: Mapping[str, str], n_par: int) -> _Layout:
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
    if fcs.digest is not None:
        return _read_whole(fcs, start), start
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
    if fcs.digest is not None and (kinds <= {"F"} or kinds <= {"D"}):  # the worker's read: columns, hashed
        return _read_columns(fcs, start, n_events, n_par, np.dtype(order + ("f4" if kinds == {"F"} else "f8")))
    buffer, offset = _data_buffer(fcs, start, n_events * layout.event_bits // 8)
    if kinds <= {"F"} or kinds <= {"D"}:
        code = "f4" if kinds == {"F"} else "f8"
        view = np.frombuffer(buffer, dtype=order + code, count=n_events * n_par, offset=offset)
        view = view.reshape(n_events, n_par)
        if not view.flags.aligned:  # unaligned (odd $BEGINDATA in a mapped file): one aligned copy
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
