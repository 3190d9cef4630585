"""Panel files: the channel -> marker map for FCS files that carry no (or the wrong) ``$PnS``.

Many plate and older cytometers write no marker names. A panel is a CSV file with the columns ``channel,marker``
(other columns, e.g. ``fluorochrome``, are ignored) that sets or overrides the marker of each listed channel
before any lookup. A panel may also give a scatter channel the name a gate file uses (``ForSc,FSC-A``), so gates
written for ``FSC-A`` find an old instrument's ``ForSc``: the marker is matched exactly by
:meth:`cytopipe.fcs.Sample.find_channel` (rule 2) after the file's own ``$PnN`` (rule 1).

A malformed panel (no ``channel``/``marker`` column, a channel listed twice, an empty cell) is a
:class:`~cytopipe.errors.ConfigError`; a panel naming a channel that the file lacks is a
:class:`~cytopipe.errors.MarkerError` naming both files.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError, MarkerError

COLUMNS = ("channel", "marker")


@dataclass(frozen=True)
class Panel:
    """A parsed panel file.

    Attributes
    ----------
    path : str
        The file as given (absolute when read through the sample sheet).
    entries : tuple of (str, str)
        ``(channel, marker)`` in file order; channels are unique (case-insensitive).
    sha256 : str
        SHA-256 of the file's bytes (for ``manifest.json`` and the result cache).
    """

    path: str
    entries: tuple[tuple[str, str], ...]
    sha256: str

    def record(self) -> dict[str, Any]:
        """What ``manifest.json`` records of the panel: path, SHA-256 and the map."""
        return {"path": self.path, "sha256": self.sha256, "channels": dict(self.entries)}


def read_panel(path: str | os.PathLike[str]) -> Panel:
    """Read and validate a panel CSV file.

    Parameters
    ----------
    path
        A CSV file with (at least) the columns ``channel`` and ``marker`` (case-insensitive header).

    Returns
    -------
    Panel

    Raises
    ------
    ConfigError
        The file is missing or unreadable, lacks a ``channel`` or ``marker`` column, has an empty cell in them,
        lists a channel twice, or has no rows. One line naming the file (and the row).
    """
    import hashlib

    where = os.fspath(path)
    try:
        data = Path(where).read_bytes()
    except OSError as err:
        raise ConfigError(f"{where}: panel file cannot be read ({err.strerror or type(err).__name__})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: panel file is not UTF-8 text") from None
    rows = list(csv.reader(io.StringIO(text)))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise ConfigError(f"{where}: panel file is empty (it needs the columns channel,marker)")
    header = [cell.strip().casefold() for cell in rows[0]]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        found = ", ".join(cell.strip() for cell in rows[0]) or "none"
        raise ConfigError(f"{where}: panel file needs the columns channel,marker; missing "
                          f"{', '.join(missing)} (found {found})")
    ci, mi = header.index("channel"), header.index("marker")
    entries: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        channel = row[ci].strip() if ci < len(row) else ""
        marker = row[mi].strip() if mi < len(row) else ""
        if not channel or not marker:
            column = "channel" if not channel else "marker"
            raise ConfigError(f"{where}: row {line}: column '{column}' is empty")
        key = channel.casefold()
        if key in seen:
            raise ConfigError(f"{where}: row {line}: channel '{channel}' is listed twice (first on row "
                              f"{seen[key]})")
        seen[key] = line
        entries.append((channel, marker))
    if not entries:
        raise ConfigError(f"{where}: panel file has a header but no channel rows")
    return Panel(path=where, entries=tuple(entries), sha256=hashlib.sha256(data).hexdigest())


def apply_panel(sample: Any, panel: Panel | None) -> Any:
    """The sample with the panel's markers set on its channels (the events are shared, not copied).

    Parameters
    ----------
    sample : cytopipe.fcs.Sample
    panel : Panel or None
        ``None`` returns ``sample`` unchanged.

    Returns
    -------
    cytopipe.fcs.Sample

    Raises
    ------
    MarkerError
        A panel channel is not a ``$PnN`` of the file (case-insensitive); the message names the panel, the
        channel and the FCS file.
    """
    if panel is None:
        return sample
    markers = list(sample.markers)
    lowered = [c.casefold() for c in sample.channels]
    for channel, marker in panel.entries:
        key = channel.casefold()
        if key not in lowered:
            from difflib import get_close_matches

            close = get_close_matches(channel, sample.channels, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise MarkerError(f"{panel.path}: channel '{channel}' is not in {sample.path or 'the sample'}"
                              f"{hint}; its channels: {', '.join(sample.channels)}")
        markers[lowered.index(key)] = marker
    return replace(sample, markers=tuple(markers))


def read_sample(path: str | os.PathLike[str], panel: Panel | None = None, **kwargs: Any) -> Any:
    """:func:`cytopipe.fcs.read_fcs` followed by :func:`apply_panel`."""
    from .fcs import read_fcs

    return apply_panel(read_fcs(path, **kwargs), panel)
