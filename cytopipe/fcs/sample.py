"""An FCS data set in memory: :class:`Sample` (events, channels, markers, keywords) and channel lookup."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from cytopipe.errors import MarkerError

_TOKEN_SPLIT_RE = re.compile(r"[\s/,;:()]+")


@dataclass(frozen=True, eq=False, repr=False)
class Sample:
    """One FCS data set: events, channel names, markers and keywords.

    Attributes
    ----------
    path : str
        File path as given ('' for an in-memory sample).
    events : numpy.ndarray
        ``(n_events, n_channels)`` C-ordered (column-major from :func:`read_fcs_sha256`), writable; float32
        (float64 when any channel is stored as double, ``$DATATYPE=D`` or ``$PnDATATYPE=D``, and for
        ``read_fcs(exact=True)``).
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
        try:
            found = _unique_match(self.channels, self.markers, query)
        except TypeError:  # channels or markers given as lists: not cached
            found = _first_unique(_rule_hits(self.channels, self.markers, query))
        if found is not None:
            return found
        rules = list(_rule_hits(self.channels, self.markers, query))
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


@lru_cache(maxsize=4096)
def _unique_match(channels: tuple[str, ...], markers: tuple[str, ...], query: str) -> int | None:
    """The channel the first rule of :meth:`Sample.find_channel` with exactly one hit gives, or None (no channel, or
    an ambiguous rule first: the caller then raises). Cached: the files of a study share their channels and markers,
    and every gate dimension and reference population looks its channel up in every sample."""
    return _first_unique(_rule_hits(channels, markers, query))


def _rule_hits(channels: Sequence[str], markers: Sequence[str], query: str) -> Iterator[list[int]]:
    """The channels each rule of :meth:`Sample.find_channel` matches, rule by rule (a rule is tried only when the
    ones before it are asked past)."""
    yield [i for i, c in enumerate(channels) if c.casefold() == query]
    yield [i for i, m in enumerate(markers) if m and m.casefold() == query]
    yield [i for i, m in enumerate(markers) if query in _marker_tokens(m)]


def _first_unique(rules: Iterable[list[int]]) -> int | None:
    """The channel of the first rule with exactly one hit, or None."""
    return next((hits[0] for hits in rules if len(hits) == 1), None)


@lru_cache(maxsize=4096)
def _marker_tokens(marker: str) -> frozenset[str]:
    """The tokens a marker answers to (cached: every gate dimension looks its marker up in every sample)."""
    tokens = set()
    for token in _TOKEN_SPLIT_RE.split(marker.casefold()):
        if token:
            tokens.add(token)
            tokens.add(re.split(r"[-_]", token, maxsplit=1)[0])
    tokens.discard("")
    return frozenset(tokens)
