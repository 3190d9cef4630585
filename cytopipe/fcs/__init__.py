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

Modules: ``sample`` (:class:`Sample`, channel lookup by marker), ``text`` (HEADER and TEXT segments: offsets,
delimiters, keywords, chained data sets), ``read`` (:func:`read_fcs`: DATA layout and decoding of stored integers
and floats; :func:`read_fcs_sha256`, the worker's read: the file read and hashed in one pass, float events
de-interleaved into columns as they arrive), ``scale`` (``$PnE``/``$PnG`` value decoding: :data:`SCALES`,
:func:`channel_decoding`), ``write`` (:func:`write_fcs`) and ``info`` (:func:`describe` for ``cytopipe info``,
:func:`file_sha256`). Everything public is re-exported here except ``MAP_THRESHOLD``: set it on
:mod:`cytopipe.fcs.read`, where the reader looks it up.
"""

from .info import describe, file_sha256, format_description
from .read import read_fcs, read_fcs_sha256
from .sample import Sample
from .scale import SCALES, channel_decoding, to_scale, top_of_scale
from .text import HEADER_SIZE as HEADER_SIZE
from .text import count_datasets
from .write import write_fcs

__all__ = [
    "SCALES",
    "Sample",
    "read_fcs",
    "read_fcs_sha256",
    "write_fcs",
    "describe",
    "format_description",
    "count_datasets",
    "file_sha256",
    "channel_decoding",
    "top_of_scale",
    "to_scale",
]
