"""Numbers from text cells, as ``pandas.to_numeric(cells, errors="coerce")`` reads them, without pandas.

A results table read back from its CSV file (:mod:`cytopipe.report`) types a column as numbers when every non-empty
cell is one. pandas decided that with :func:`pandas.to_numeric`; :func:`numbers` gives the same verdict, dtype and
values bit for bit (tested against pandas on generated cells), so the report computes from the same numbers with or
without pandas: pandas' own decimal parser (``precise_xstrtod``: at most 17 significant digits accumulated, then
scaled by a power of ten; overflow is not a number) is reproduced for the cells that need it, and the cells of plain
decimals of at most 15 digits, which it reads exactly as Python's correctly rounded :func:`float` does, take that.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

__all__ = ["numbers", "parse", "to_numeric"]

_SPACE = " \t\n\v\f\r"
_DIGITS = "0123456789"
_POWERS = [float(f"1e{k}") for k in range(309)]  # pandas' table of powers of ten (each literal correctly rounded)
_PLAIN = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_PLAIN_COLUMN = re.compile(r"(?:-?[0-9]+(?:\.[0-9]+)?)?(?:\n(?:-?[0-9]+(?:\.[0-9]+)?)?)*")
_INFINITIES = {"inf": 1, "-inf": -1, "+inf": 1, "infinity": 1, "-infinity": -1, "+infinity": 1}
_INT64 = (-(2**63), 2**63 - 1)
_UINT64_MAX = 2**64 - 1


def _xstrtod(text: str) -> tuple[float, bool] | None:
    """pandas' ``precise_xstrtod`` of a whole cell (leading and trailing ASCII space allowed): ``(value, maybe_int)``
    (``maybe_int``: no decimal point, no exponent), or None when the cell is not all one number or overflows."""
    n, p = len(text), 0
    while p < n and text[p] in _SPACE:
        p += 1
    negative = False
    if p < n and text[p] in "+-":
        negative = text[p] == "-"
        p += 1
    number, exponent, digits, maybe_int = 0.0, 0, 0, True
    while p < n and text[p] in _DIGITS:
        if digits < 17:
            number = number * 10.0 + _DIGITS.index(text[p])
            digits += 1
        else:
            exponent += 1
        p += 1
    if p < n and text[p] == ".":
        maybe_int = False
        p += 1
        decimals = 0
        while digits < 17 and p < n and text[p] in _DIGITS:
            number = number * 10.0 + _DIGITS.index(text[p])
            p += 1
            digits += 1
            decimals += 1
        if digits >= 17:
            while p < n and text[p] in _DIGITS:
                p += 1
        exponent -= decimals
    if digits == 0:
        return None
    if negative:
        number = -number
    if p < n and text[p] in "eE":
        maybe_int = False
        p += 1
        sign = 1
        if p < n and text[p] in "+-":
            sign = -1 if text[p] == "-" else 1
            p += 1
        power, count = 0, 0
        while count < 17 and p < n and text[p] in _DIGITS:
            power = power * 10 + _DIGITS.index(text[p])
            count += 1
            p += 1
        if count == 0:  # an e without digits is not part of the number: the cell is not one
            return None
        exponent += sign * power
    if exponent > 308:
        return None
    if exponent > 0:
        number *= _POWERS[exponent]
    elif exponent < -616:
        number = 0.0
    elif exponent < -308:
        number = number / _POWERS[-308 - exponent] / _POWERS[308]
    else:
        number /= _POWERS[-exponent]
    if number in (np.inf, -np.inf):
        return None
    while p < n and text[p] in _SPACE:
        p += 1
    return (number, maybe_int) if p == n else None


def parse(text: str) -> tuple[float, int | None] | None:
    """One cell as :func:`pandas.to_numeric` reads it.

    Returns
    -------
    tuple or None
        ``(value, integer)``: the float value, and the integer when the cell is one (no decimal point, no exponent);
        None when the cell is not a number (also ``nan``, or a number too large for a float).
    """
    if _PLAIN.fullmatch(text) is not None and len(text) - (text[0] == "-") - ("." in text) <= 15:
        if "." in text:
            return float(text), None  # <= 15 digits, exponent >= -15: pandas' one rounding is float()'s
        return float(text), int(text)  # float("-0") is -0.0, as pandas reads it
    head = text.split("\x00", 1)[0]  # pandas reads the cell as a C string: up to a NUL
    if not head.isascii():
        return None
    parsed = _xstrtod(head)
    if parsed is None:
        sign = _INFINITIES.get(head.lower())
        return None if sign is None else (sign * np.inf, None)
    value, maybe_int = parsed
    if not maybe_int:
        return value, None
    try:
        return value, int(text)  # the whole cell, as pandas takes an integer
    except ValueError:
        return None


def numbers(cells: Sequence[str]) -> np.ndarray | None:
    """A column of text cells as numbers, as ``pandas.to_numeric`` of the cells (empty ones missing) types it.

    Parameters
    ----------
    cells : sequence of str
        The cells; ``""`` is a missing cell.

    Returns
    -------
    numpy.ndarray or None
        None when a non-empty cell is not a number (pandas would give NaN for it). Else ``int64`` when every cell
        is an integer within its range (``uint64`` when one is above it and none is negative), ``float64``
        otherwise (missing cells NaN); no cells: ``int64``.
    """
    if not cells:
        return np.zeros(0, dtype=np.int64)
    joined = "\n".join(cells)
    if max(map(len, cells)) <= 15 and joined.count("\n") == len(cells) - 1 \
            and _PLAIN_COLUMN.fullmatch(joined) is not None:  # (no cell holds a line end)
        # Plain decimals of <= 15 digits (and empty cells): read as float() and int() read them, all at once.
        if "." not in joined and "" not in cells:
            return np.array([int(cell) for cell in cells], dtype=np.int64)
        return np.array([float(cell) if cell else np.nan for cell in cells], dtype=np.float64)
    floats: list[float] = []
    ints: list[int] | None = []
    for cell in cells:
        if cell == "":
            floats.append(np.nan)
            ints = None
            continue
        parsed = parse(cell)
        if parsed is None:
            return None
        floats.append(parsed[0])
        if ints is not None:
            if parsed[1] is None:
                ints = None
            else:
                ints.append(parsed[1])
    whole = _integers(ints) if ints is not None else None
    return whole if whole is not None else np.array(floats, dtype=np.float64)


def _integers(ints: list[int]) -> np.ndarray | None:
    """Integers as pandas types them: ``int64`` within its range, else ``uint64`` when none is negative and all fit
    it; None otherwise (pandas' floats)."""
    if all(_INT64[0] <= i <= _INT64[1] for i in ints):
        return np.array(ints, dtype=np.int64)
    if all(0 <= i <= _UINT64_MAX for i in ints):
        return np.array(ints, dtype=np.uint64)
    return None


def to_numeric(values: np.ndarray | Sequence[object]) -> np.ndarray:
    """``pandas.to_numeric(values, errors="coerce")`` of a whole column of any cells.

    Parameters
    ----------
    values : numpy.ndarray or sequence
        The cells: text (read by :func:`parse`), numbers, bools, None. A numeric array is returned as it is.

    Returns
    -------
    numpy.ndarray
        Cells that are no number (text :func:`parse` does not read, None, empty text, other objects) NaN.
        ``int64`` (``uint64`` above its range, none negative) when every cell is an integer (an ``int`` or integer
        text; also when there is no cell; when the first cell is an ``int``, pandas tries the column as integers
        first, so ``[1, 2.0]`` is ``int64`` too), ``bool`` when every cell is a bool, ``float64`` otherwise.
    """
    if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
        return values
    cells = values.tolist() if isinstance(values, np.ndarray) else list(values)
    if cells and isinstance(cells[0], (int, np.integer)) and not isinstance(cells[0], (bool, np.bool_)):
        try:
            whole = [int(cell) for cell in cells]  # type: ignore[call-overload]
            if all(_INT64[0] <= i <= _INT64[1] and i == cell for i, cell in zip(whole, cells, strict=True)):
                return np.array(whole, dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            pass
    floats: list[float] = []
    ints: list[int] = []
    real = False
    for cell in cells:
        if isinstance(cell, (bool, np.bool_, int, np.integer)):
            floats.append(float(cell))
            ints.append(int(cell))
        elif isinstance(cell, (float, np.floating)):
            real = True
            floats.append(float(cell))
        elif isinstance(cell, str) and cell:
            parsed = parse(cell)
            floats.append(np.nan if parsed is None else parsed[0])
            if parsed is None or parsed[1] is None:
                real = True
            else:
                ints.append(parsed[1])
        else:
            real = True
            floats.append(np.nan)
    if not real:
        if cells and all(isinstance(cell, (bool, np.bool_)) for cell in cells):
            return np.array(ints, dtype=bool)
        whole = _integers(ints)
        if whole is not None:
            return whole
    return np.array(floats, dtype=np.float64)
