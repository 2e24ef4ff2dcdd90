"""Numbers spelt with six decimals, one at a time or whole arrays at once.

CVAT XML and YOLO segment lines write millions of vertex coordinates as
`f"{v:.6f}"` does. Python's formatting of one number at a time (from a dict per
vertex), and DuckDB's printf after it, were most of those writers' time.
`fixed_rows` spells whole arrays with numpy: the value times 10⁶, rounded to an
integer as Python rounds the exact product, gives the digits, laid out as
characters a row at a time and cut to the ones the text keeps. Python spells
only what is not finite or too large for exact integers. The same text either
way (tests compare them on every magnitude and at exact ties).
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
_SPLIT = 2.0**27 + 1  # Veltkamp's split of a double into two halves of 26 bits
_CHARS = np.array([list(f"{i:03d}".encode()) for i in range(1000)], np.uint8)
"""Each number below 1000 as three digit characters."""
_ZEROS = np.array([min(3, len(f"{i:03d}") - len(f"{i:03d}".rstrip("0"))) for i in range(1000)])
"""How many of each number's three digits end it as zeros (3 for 0)."""
_KEPT = np.arange(1, _DIGITS + 1) <= np.arange(_DIGITS + 1)[:, None]
"""Row m: which of the six decimals the text keeps when it keeps the first m."""
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
    a = np.abs(v)
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = a * _SCALE
        rounded = np.rint(scaled)  # ties to even, as Python rounds the exact value
        sure = scaled < _LARGEST  # not NaN either
        # The product is the nearest double to the exact one, so both round alike,
        # unless the product ends in exactly .5: then the exact product's rounding
        # error (Dekker's product, exact) tells whether that is above or below.
        tie = np.flatnonzero(sure & (scaled - np.floor(scaled) == 0.5))
    if len(tie):
        split = _SPLIT * a[tie]
        high = split - (split - a[tie])
        error = (high * _SCALE - scaled[tie]) + (a[tie] - high) * _SCALE
        at = scaled[tie]
        rounded[tie] = np.where(
            error > 0, np.ceil(at), np.where(error < 0, np.floor(at), rounded[tie])
        )
    np.copyto(rounded, 0.0, where=~sure)
    n = rounded.astype(np.int64)
    whole, decimals = np.divmod(n, _SCALE)
    decimals = decimals.astype(np.int32)  # 32-bit division takes a fifth of the time
    if len(v) and whole.max() < 2**31:
        whole = whole.astype(np.int32)
    groups = -(-len(str(int(whole.max()))) // 3) if len(v) else 1  # of three digits
    point = 1 + 3 * groups
    chars = np.empty((len(v), point + 1 + _DIGITS), np.uint8)
    keep = np.empty(chars.shape, bool)
    chars[:, 0] = ord("-")
    keep[:, 0] = np.signbit(v) & (n != 0) if trim else np.signbit(v)
    rest = whole
    for g in range(groups, 0, -1):  # the last three digits first
        rest, three = np.divmod(rest, 1000)
        chars[:, 3 * g - 2 : 3 * g + 1] = np.take(_CHARS, three, axis=0)
    # The whole part from its first digit not 0 on (its last digit always).
    for col in range(1, point - 1):
        keep[:, col] = whole >= 10 ** (point - 1 - col)
    keep[:, point - 1] = True
    chars[:, point] = ord(".")
    high, low = np.divmod(decimals, 1000)
    chars[:, point + 1 : point + 4] = np.take(_CHARS, high, axis=0)
    chars[:, point + 4 :] = np.take(_CHARS, low, axis=0)
    if trim:  # the decimals up to the last one not 0; the point only before one
        zeros = np.where(low == 0, 3 + np.take(_ZEROS, high), np.take(_ZEROS, low))
        keep[:, point + 1 :] = np.take(_KEPT, _DIGITS - zeros, axis=0)
        keep[:, point] = decimals != 0
    else:
        keep[:, point:] = True
    return chars, keep, sure
