"""Numbers spelt with six decimals, one at a time or whole arrays at once.

CVAT XML and YOLO segment lines write millions of vertex coordinates as
`f"{v:.6f}"` does. Python's formatting of one number at a time (from a dict per
vertex), and DuckDB's printf after it, were most of those writers' time.
`fixed_rows` spells whole arrays with numpy: the value times 10⁶, rounded to an
integer, gives the digits, laid out as characters a row at a time and cut to the
ones the text keeps. Where that product lies too near a rounding tie for the
rounding to be sure (within its own error of .5), or is not finite or too large
for exact integers, Python spells the row. The same text either way (tests
compare them on every magnitude).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_DIGITS = 6
_SCALE = 10**_DIGITS
_LARGEST = 2.0**52
"""Past this the product's integers are not all exact: Python spells those."""
Floats = pa.Array | pa.ChunkedArray
_ROWS = 1 << 16  # a slice at a time: its character table stays small (~1.5 MB a column)


def fixed(v: float, trim: bool = False) -> str:
    """`v` with six decimals; with `trim`, less trailing zeros (and the point), and 0
    for what rounds to zero, negative or not (CVAT's spelling)."""
    text = f"{v:.6f}"
    if not trim:
        return text
    text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def fixed_rows(columns: Sequence[Floats], sep: str, trim: bool = False) -> pa.Array:
    """Row i: `fixed` of each column's value i, joined by `sep` (one ASCII character);
    null where a value is null."""
    arrays = [_combined(pc.cast(c, pa.float64())) for c in columns]
    values = [a.to_numpy(zero_copy_only=False) for a in arrays]
    n = len(values[0])
    parts = [_slice([v[i : i + _ROWS] for v in values], sep, trim) for i in range(0, n, _ROWS)]
    text = pa.concat_arrays(parts) if parts else pa.array([], pa.string())
    missing = [a.is_null() for a in arrays if a.null_count]
    if missing:
        text = pc.if_else(functools.reduce(pc.or_, missing), pa.scalar(None, pa.string()), text)
    return text


def _combined(values: Floats) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _slice(columns: list[np.ndarray], sep: str, trim: bool) -> pa.StringArray:
    chars, keep, unsure = [], [], np.zeros(len(columns[0]), bool)
    for k, v in enumerate(columns):
        if k:
            chars.append(np.full((len(v), 1), ord(sep), np.uint8))
            keep.append(np.ones((len(v), 1), bool))
        c, kept, sure = _layout(v, trim)
        chars.append(c)
        keep.append(kept)
        unsure |= ~sure
    table, kept = np.hstack(chars), np.hstack(keep)
    offsets = np.zeros(len(table) + 1, np.int32)
    np.cumsum(kept.sum(axis=1), out=offsets[1:])
    data = table[kept]  # row by row: each row's kept characters, in order
    text = pa.StringArray.from_buffers(len(table), pa.py_buffer(offsets), pa.py_buffer(data))
    if unsure.any():
        rows = zip(*(c[unsure].tolist() for c in columns), strict=True)
        spelt = [sep.join(fixed(v, trim) for v in row) for row in rows]
        text = pc.replace_with_mask(text, pa.array(unsure), pa.array(spelt, pa.string()))
    return text


def _layout(v: np.ndarray, trim: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each value's characters as a row (sign, whole digits, point, decimals), which
    of them its text keeps, and whether the rounding was sure."""
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = np.abs(v) * _SCALE
        rounded = np.rint(scaled)  # ties to even, as Python rounds the exact value
        sure = (scaled < _LARGEST) & (np.abs(scaled - np.floor(scaled) - 0.5) > np.spacing(scaled))
    n = np.where(sure, rounded, 0).astype(np.int64)
    whole, decimals = n // _SCALE, n % _SCALE
    digits = len(str(int(whole.max()))) if len(v) else 1  # columns for the longest
    chars = np.empty((len(v), 2 + digits + _DIGITS), np.uint8)
    keep = np.empty(chars.shape, bool)
    negative = np.signbit(v)
    chars[:, 0] = ord("-")
    keep[:, 0] = negative & (n != 0) if trim else negative
    rest = whole.copy()
    for col in range(digits, 0, -1):  # the last digit first
        chars[:, col] = rest % 10 + ord("0")
        rest //= 10
        # A digit is kept from the first one not 0 on (the last one always).
        keep[:, col] = (whole >= 10 ** (digits - col)) | (col == digits)
    point = 1 + digits
    chars[:, point] = ord(".")
    rest = decimals.copy()
    last = np.full(len(v), -1) if trim else None  # the last decimal not 0
    for col in range(point + _DIGITS, point, -1):
        digit = rest % 10
        chars[:, col] = digit + ord("0")
        rest //= 10
        if last is not None:
            last = np.where((last < 0) & (digit != 0), col, last)
    if last is None:
        keep[:, point:] = True
    else:
        keep[:, point + 1 :] = np.arange(point + 1, point + 1 + _DIGITS) <= last[:, None]
        keep[:, point] = last >= 0
    return chars, keep, sure
