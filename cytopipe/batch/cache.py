"""The result cache under ``OUT/.cache/``: one append-only log of checksummed entries, validated on read."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

from cytopipe import __version__
from cytopipe.outputs import atomic_write
from cytopipe.pipeline import (
    POPULATION_COLUMNS,
    TREG_COLUMNS,
    SampleResult,
    SampleTask,
)

CACHE_DIR = ".cache"
# Bump when the cached SampleResult layout or the meaning of its numbers changes.
CACHE_FORMAT = 3
#: The log of finished samples and file checksums inside ``OUT/.cache/``.
LOG_NAME = "entries.log"


class ResultCache:
    """Finished samples under ``OUT/.cache/``, in one append-only log (``entries.log``).

    A line ``R <key> <sha256> <json>`` is a finished sample: the key hashes the file's SHA-256, the sample's
    identity, the gate definitions (with any client-fitted parameters) and the settings; ``<sha256>`` is the
    checksum of the JSON text. A line ``F <stat key> <sha256>`` maps a file's path, size and modification time to
    its SHA-256, so that unchanged files are not re-read to be recognised. Each sample's lines are appended with
    one ``write`` as soon as the sample finishes (a run killed at any instant leaves whole lines, and at most a
    torn last line, which fails its checksum and is ignored); the log is synced to disk when the run closes it.
    A later entry for the same key wins; a log mostly made of superseded or broken lines is compacted (rewritten
    atomically) when opened.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log = root / LOG_NAME
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".*.tmp"):  # left by a killed compaction
            stale.unlink(missing_ok=True)
        self._entries: dict[str, tuple[str, str]] = {}  # key -> (checksum, JSON text)
        self._files: dict[str, str] = {}  # stat key -> SHA-256
        self._fd: int | None = None
        self._torn = False  # the log does not end with a newline (a killed writer): start the next line anew
        self._load()

    def _load(self) -> None:
        try:
            if self.log.is_dir() and not self.log.is_symlink():
                import shutil

                shutil.rmtree(self.log)
            data = self.log.read_bytes()
        except OSError:
            return
        lines = data.split(b"\n")
        tail = lines.pop()  # after the last newline: empty, or a line a killed run did not finish
        self._torn = bool(tail)
        kept = 0
        for line in lines:
            if len(line) > _MAX_ENTRY_BYTES:
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                continue
            parts = text.split(" ", 3)
            if len(parts) == 4 and parts[0] == "R" and _is_hex(parts[1]) and _is_hex(parts[2]):
                self._entries[parts[1]] = (parts[2], parts[3])
                kept += 1
            elif len(parts) == 3 and parts[0] == "F" and _is_hex(parts[1]) and _is_hex(parts[2]):
                self._files[parts[1]] = parts[2]
                kept += 1
        live = len(self._entries) + len(self._files)
        if self._torn or len(lines) > 2 * live + 64 or kept < len(lines) and len(lines) > 64:
            self._compact()

    def _compact(self) -> None:
        """Rewrite the log with only its live lines (atomically: a kill leaves the old or the new log)."""
        text = "".join([*(f"F {k} {v}\n" for k, v in self._files.items()),
                        *(f"R {k} {s} {t}\n" for k, (s, t) in self._entries.items())])
        try:
            atomic_write(self.log, text.encode("utf-8"))
            self._torn = False
        except OSError:
            pass  # a read-only cache: lookups still work, and appends are skipped

    @staticmethod
    def _stat_key(path: str) -> str | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return _sha_text(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}")

    def known_sha(self, path: str) -> str | None:
        """The SHA-256 recorded for this file when its path, size and mtime are unchanged."""
        if not self._files:  # a new cache: no stat and checksum of the path per sample before the run starts
            return None
        key = self._stat_key(path)
        return self._files.get(key) if key is not None else None

    def _file_line(self, path: str, sha: str) -> str:
        """The ``F`` line recording a file's SHA-256 under its path, size and mtime (empty when already known)."""
        key = self._stat_key(path)
        if key is None or not _is_hex(sha) or self._files.get(key) == sha:
            return ""
        self._files[key] = sha
        return f"F {key} {sha}\n"

    def get(self, key: str, task: SampleTask | None = None, sha: str = "") -> SampleResult | None:
        """The cached result, or ``None`` when the entry is absent or not exactly what :meth:`put` writes.

        An entry is used only when its checksum matches its content, every field has the type and the meaning
        this version writes (see :func:`_valid_result`) and it belongs to ``task`` and the file ``sha``; anything
        else (truncated, tampered, hand-edited, from another version) is recomputed.
        """
        entry = self._entries.get(key)
        if entry is None:
            return None
        checksum, text = entry
        try:
            if checksum != _sha_text(text):
                return None
            payload = json.loads(text, parse_constant=_no_constant)
            if not isinstance(payload, dict):
                return None
            result = SampleResult.from_dict(payload)
        except (ValueError, TypeError, KeyError, RecursionError):
            return None
        if not _valid_result(result, payload, task, sha):
            return None
        result.cached = True
        return result

    def put(self, key: str, result: SampleResult, remember: bool = True) -> None:
        """Store a successful result with the checksum of its content, and its file's SHA-256, in one append (a
        cache that cannot be written is skipped).

        ``remember=False``: append it only (a pool worker appending its own samples, see :meth:`share`), without
        keeping the entry in memory for :meth:`get`.
        """
        text = _result_text(result)
        checksum = _sha_text(text)
        if remember:
            self._entries[key] = (checksum, text)
        self._append(f"{self._file_line(result.file, result.sha256)}R {key} {checksum} {text}\n")

    def share(self) -> None:
        """Open the log for appending before worker processes are forked from this one, so that they append to it
        through the same open file (each sample's lines in one ``write``, as :meth:`put` does here) and this
        process's :meth:`close` syncs what they wrote. A torn last line is ended first."""
        self._append("")

    def _append(self, text: str) -> None:
        data = text.encode("utf-8")
        try:
            if self._fd is None:
                self._fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            if self._torn:
                data = b"\n" + data
            if data:
                os.write(self._fd, data)  # one write: a concurrent run's lines never interleave with ours
            self._torn = False
        except OSError:
            return  # a full or read-only cache costs a recomputation next time, not this run

    def close(self) -> None:
        """Sync the log to disk and close it (a later :meth:`put` reopens it)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            except OSError:
                pass
            finally:
                os.close(fd)

    def __len__(self) -> int:
        return len(self._entries)


def _is_hex(text: str) -> bool:
    return _HEX64.fullmatch(text) is not None


_HEX64 = re.compile("[0-9a-f]{64}")


# A cached result is a few kB per population; anything far bigger was not written by this version.
_MAX_ENTRY_BYTES = 16 * 2**20


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid in a cache entry")


def _entry_text(payload: dict) -> str:
    """The canonical text of a cached result (NaN as null, so the entry is strict JSON)."""
    try:  # most results hold no NaN: encode them without copying (the copy is most of the cost)
        return json.dumps(payload, allow_nan=False)  # keys in written order: columns keep their order
    except ValueError:
        return json.dumps(_nan_to_none(payload), allow_nan=False)


def _result_text(result: SampleResult) -> str:
    """:func:`_entry_text` of ``result.to_dict()``, without the deep copy of :func:`dataclasses.asdict` (most of
    the cost) when JSON encodes the fields as they are."""
    try:
        return _entry_text({f.name: getattr(result, f.name) for f in fields(result)})
    except TypeError:  # a field JSON cannot encode as it is: the dict of to_dict
        return _entry_text(result.to_dict())


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _valid_result(result: SampleResult, payload: dict, task: SampleTask | None, sha: str) -> bool:
    """Is a cached result exactly what :func:`cytopipe.pipeline.process_sample` returns for this task?

    Checks the field set, every type, the identity (sample, file, subject, timepoint, day, SHA-256) against the
    task, one population row per population of the task's strategy in order, and the counts: each population
    within its parent, percentages that follow from the counts, and a Treg row that agrees with the population
    rows. A hand-edited count breaks one of these (or the entry's checksum).
    """
    fields = set(SampleResult.__dataclass_fields__)
    if set(payload) != fields or result.failure is not None or result.cached is not False:
        return False
    texts = (result.sample, result.file, result.subject, result.timepoint, result.sha256, result.spillover_source)
    if not all(isinstance(t, str) for t in texts) or not _is_int(result.n_events) or not _is_real(result.day):
        return False
    if len(result.sha256) != 64 or (sha and result.sha256 != sha):
        return False
    if task is not None and (result.sample, result.file, result.subject, result.timepoint, float(result.day)) != (
            task.sample, task.file, task.subject, task.timepoint, float(task.day)):
        return False
    if result.plot is not None and not isinstance(result.plot, str):
        return False
    if not _valid_workspace(result.workspace):
        return False
    if not isinstance(result.timings, dict) or not all(isinstance(v, (int, float)) for v in result.timings.values()):
        return False
    for rows in (result.fitted, result.sensitivity, result.populations):
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            return False
    if not isinstance(result.treg, dict) or set(result.treg) != {*TREG_COLUMNS, "acquisition_qc"}:
        return False
    counts: dict[str, int] = {}
    for row in result.populations:
        if set(row) != set(POPULATION_COLUMNS) or not _is_int(row["count"]) or row["count"] > result.n_events:
            return False
        counts[row["population"]] = row["count"]
        parent = counts.get(row["parent"], result.n_events) if row["parent"] else result.n_events
        if row["count"] > parent or not _close(row["pct_parent"], row["count"], parent) or \
                not _close(row["pct_total"], row["count"], result.n_events):
            return False
    if task is not None and list(counts) != [p.name for p in task.strategy.populations]:
        return False
    treg = result.treg
    want = (counts.get(task.treg) if task is not None else treg["treg_events"],
            (counts.get(task.parent) if task.parent is not None else result.n_events) if task is not None
            else treg["cd4_events"])
    return (_is_int(treg["treg_events"]) and _is_int(treg["cd4_events"]) and
            (treg["treg_events"], treg["cd4_events"]) == want and
            _close(treg["treg_pct"], treg["treg_events"], treg["cd4_events"]) and
            isinstance(treg["acquisition_qc"], str))


def _valid_workspace(workspace: Any) -> bool:
    """A result's ``workspace`` as :func:`cytopipe.pipeline.process_sample` writes it: ``None``, ``{"error": ...}``
    or a :func:`cytopipe.flowjo.render.sample_fragment` whose markers number at most its own gates."""
    if workspace is None:
        return True
    if not isinstance(workspace, dict):
        return False
    if "error" in workspace:
        return isinstance(workspace["error"], str)
    xml, gates, matrix = workspace.get("xml"), workspace.get("gates"), workspace.get("matrix")
    if not (isinstance(xml, str) and isinstance(workspace.get("name"), str) and _is_int(gates)
            and (matrix is None or isinstance(matrix, dict))):
        return False
    pieces = xml.split("\x00")
    return len(pieces) % 2 == 1 and all(mark == "s" or (mark.isdigit() and 0 < int(mark) <= gates)
                                        for mark in pieces[1::2])


def _close(pct: Any, count: int, total: int) -> bool:
    """``pct`` is ``100 * count / total`` as :mod:`cytopipe.pipeline` writes it (null when ``total`` is 0)."""
    if total == 0:
        return pct is None or (isinstance(pct, float) and math.isnan(pct))
    return _is_real(pct) and pct == 100.0 * count / total


def _sha_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def task_key(task: SampleTask, sha: str, settings: str) -> str:
    """The cache key of a task: file content, sample identity, gate definitions and settings."""
    ident = json.dumps([task.sample, task.subject, task.timepoint, task.day, task.treg, task.parent,
                        task.plots_dir is not None], default=str)
    return _sha_text(f"{CACHE_FORMAT}\0{__version__}\0{sha}\0{ident}\0{settings}")
