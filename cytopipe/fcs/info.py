"""What ``cytopipe info`` shows of a file, and a file's SHA-256."""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Mapping
from typing import Any

from cytopipe.compensate import spillover_from_metadata
from cytopipe.errors import FCSError

from .sample import Sample
from .scale import SCALES, channel_decoding, top_of_scale
from .text import count_datasets


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
