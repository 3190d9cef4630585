"""Output files written atomically, and the fixed number format of the result tables.

Every file cytopipe writes goes to a temporary name beside its target (same folder, so the same file system) and
is renamed over the target when complete: a reader, or a run killed half-way, never sees half a file. Temporary
names look like ``.<name>.<pid>.<random>.tmp``, so a later run can recognise and delete those a killed run left.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

#: Float format of every CSV table: fixed, so any number of workers or a cluster writes byte-identical files.
FLOAT_FORMAT = "%.10g"


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; rename it to ``path`` when the block completes.

    Parameters
    ----------
    path
        The file to (re)place.
    mode
        ``"w"`` (text: UTF-8, ``\\n`` line ends) or ``"wb"``.

    Yields
    ------
    IO
        The open temporary file. If the block raises, the temporary file is removed and ``path`` is untouched.

    Notes
    -----
    The temporary file is created exclusively (``x`` mode, with the umask's permissions, like any new file), so
    two processes writing the same target never share one.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    text = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
    try:
        with open(tmp, mode.replace("w", "x"), **text) as handle:
            yield handle
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as handle:
        handle.write(data)


def write_csv(table: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write a table as CSV atomically: no index, ``\\n`` line ends, floats as :data:`FLOAT_FORMAT`."""
    with atomic_open(path, "w") as handle:
        table.to_csv(handle, index=False, lineterminator="\n", float_format=FLOAT_FORMAT)
