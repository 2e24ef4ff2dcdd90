"""Framing of large JSON documents: where each top-level value is, and where to cut
its arrays into chunks of whole elements, without parsing the values.

A pure-Python event parser (ijson) spends most of its time creating a Python
object per value. Framing instead scans the bytes in fixed-size blocks with
numpy — quotes (minus escaped ones) give the in-string mask, brackets outside
strings give the depth — and records only the few top-level positions plus one
cut every `chunk_bytes` inside arrays. Each chunk is then a self-contained
`[elem, elem, ...]` that a fast parser (orjson) decodes on its own, in any
process. Memory is one block plus one chunk, whatever the file size, and the
order of the top-level keys does not matter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import orjson

from pipelines.errors import ParseError

BLOCK_BYTES = 8 << 20
CHUNK_BYTES = 4 << 20

_STRUCT = np.zeros(256, dtype=bool)
_STRUCT[[ord(c) for c in "{}[],:"]] = True
_DELTA = np.zeros(256, dtype=np.int64)
_DELTA[[ord("{"), ord("[")]] = 1
_DELTA[[ord("}"), ord("]")]] = -1
_QUOTE, _BACKSLASH, _COMMA, _COLON = ord('"'), ord("\\"), ord(","), ord(":")
_OPEN = (ord("{"), ord("["))
_KEY_BEFORE_COLON = re.compile(rb'"((?:[^"\\]|\\.)*)"\s*$', re.S)


@dataclass
class Chunk:
    start: int
    """Byte offset of the chunk's first element (just after '[' or a ',')."""
    end: int
    """Byte offset of the ',' or ']' that ends it."""
    first_index: int
    """Index in the array of the chunk's first element."""


@dataclass
class Value:
    """One top-level value: an object member (`key`) or, for a root array, key ''."""

    key: str
    start: int
    end: int
    kind: str = "scalar"  # array | object | scalar
    chunks: list[Chunk] = field(default_factory=list)
    length: int = 0
    """Number of elements, for arrays."""


class _Scanner:
    def __init__(self, uri: str, chunk_bytes: int) -> None:
        self.uri = uri
        self.chunk_bytes = chunk_bytes
        self.depth = 0
        self.in_string = False
        self.trailing_backslashes = 0
        self.root: str | None = None
        self.elem_depth = 2
        self.values: list[Value] = []
        self.current: Value | None = None
        self.array_count = 0
        self.next_cut = 0
        self.done_at: int | None = None
        self.colons: list[int] = []

    def feed(self, block: bytes, offset: int) -> None:
        arr = np.frombuffer(block, dtype=np.uint8)
        if self.root is None:
            stripped = block.lstrip()
            if not stripped:
                return
            first = stripped[:1]
            if first not in (b"{", b"["):
                where = offset + len(block) - len(stripped)
                raise ParseError(self.uri, f"byte {where}", "not a JSON object or array")
            self.root = "object" if first == b"{" else "array"
            self.elem_depth = 2 if self.root == "object" else 1
        quotes = self._real_quotes(arr)
        # In-string mask by quote parity: a running count of quotes, kept mod 2.
        is_quote = np.zeros(len(arr), dtype=np.uint8)
        is_quote[quotes] = 1
        parity = np.cumsum(is_quote, dtype=np.uint8)
        parity &= 1
        if self.in_string:
            parity ^= 1
        self.in_string ^= bool(quotes.size & 1)
        structural = _STRUCT[arr]
        structural &= parity == 0
        spos = np.flatnonzero(structural)
        if not spos.size:
            return
        chars = arr[spos]
        depth_after = self.depth + np.cumsum(_DELTA[chars])
        if (depth_after < 0).any():
            bad = int(spos[np.argmax(depth_after < 0)]) + offset
            raise ParseError(self.uri, f"byte {bad}", "unbalanced closing bracket")
        self.depth = int(depth_after[-1])
        e = self.elem_depth
        # Events: everything above element level, plus the openers of top-level values
        # (an opener reaching depth e is a value's, never an element's).
        is_open = (chars == _OPEN[0]) | (chars == _OPEN[1])
        top = (depth_after < e) | (is_open & (depth_after == e))
        commas = spos[(chars == _COMMA) & (depth_after == e)] + offset
        last = offset
        for p, c, d in zip(  # noqa: B905 - three views of one mask, equal by construction
            (spos[top] + offset).tolist(), chars[top].tolist(), depth_after[top].tolist()
        ):
            self._commas(commas, last, p)
            self._event(p, c, d)
            last = p
        self._commas(commas, last, offset + len(block))

    def _real_quotes(self, arr: np.ndarray) -> np.ndarray:
        quotes = np.flatnonzero(arr == _QUOTE)
        if quotes.size:
            prev = arr[np.maximum(quotes - 1, 0)] == _BACKSLASH
            if quotes[0] == 0:
                prev[0] = self.trailing_backslashes > 0
            suspects = np.flatnonzero(prev)
            if suspects.size:
                escaped = [i for i in suspects.tolist() if self._escaped(arr, int(quotes[i]))]
                quotes = np.delete(quotes, escaped)
        # Backslashes at the end of this block may escape a quote at the start of the next.
        n = len(arr)
        tail = n - 1
        while tail >= 0 and arr[tail] == _BACKSLASH:
            tail -= 1
        run = n - 1 - tail
        self.trailing_backslashes = run + (self.trailing_backslashes if tail < 0 else 0)
        return quotes

    def _escaped(self, arr: np.ndarray, q: int) -> bool:
        run, j = 0, q - 1
        while j >= 0 and arr[j] == _BACKSLASH:
            run += 1
            j -= 1
        if j < 0:
            run += self.trailing_backslashes
        return bool(run & 1)

    def _commas(self, commas: np.ndarray, lo: int, hi: int) -> None:
        value = self.current
        if value is None or value.kind != "array" or not commas.size:
            return
        a, b = np.searchsorted(commas, [lo, hi])
        seg = commas[a:b]
        if not seg.size:
            return
        base = self.array_count
        while self.next_cut <= seg[-1]:
            k = int(np.searchsorted(seg, self.next_cut))
            cut = int(seg[k])
            value.chunks[-1].end = cut
            value.chunks.append(Chunk(cut + 1, -1, base + k + 1))
            self.next_cut = cut + 1 + self.chunk_bytes
        self.array_count += int(seg.size)

    def _event(self, pos: int, char: int, depth_after: int) -> None:
        if self.root == "array":
            if char == _OPEN[1] and depth_after == 1:
                self._open(Value("", pos, -1), pos)
            elif depth_after == 0:
                self._close_array(pos)
                self.current.end = pos + 1
                self.done_at = pos + 1
            return
        if depth_after == 1 and char == _COLON:
            self.colons.append(pos)
            self.current = Value("", pos + 1, -1)
            self.values.append(self.current)
        elif depth_after == 2 and self.current is not None and self.current.kind == "scalar":
            if char == _OPEN[1]:
                self._open(self.current, pos)
            else:
                self.current.kind = "object"
        elif depth_after == 1 and char in (ord("]"), ord("}")):
            self._close_array(pos)
        elif depth_after == 1 and char == _COMMA and self.current is not None:
            self.current.end = pos
        elif depth_after == 0:
            if self.current is not None and self.current.end < 0:
                self.current.end = pos
            self.done_at = pos + 1

    def _open(self, value: Value, pos: int) -> None:
        if value not in self.values:
            self.values.append(value)
        self.current = value
        value.kind = "array"
        value.chunks = [Chunk(pos + 1, -1, 0)]
        self.array_count = 0
        self.next_cut = pos + 1 + self.chunk_bytes

    def _close_array(self, pos: int) -> None:
        value = self.current
        if value is not None and value.kind == "array" and value.chunks[-1].end < 0:
            value.chunks[-1].end = pos
            # n commas separate n + 1 elements; an empty array is fixed up by `_fix_empty`.
            value.length = self.array_count + 1


def frame(f: IO[bytes], uri: str, chunk_bytes: int = CHUNK_BYTES) -> list[Value]:
    """Scan a JSON document and return its top-level values with array chunks.

    Raises ParseError for a truncated document or unbalanced brackets, naming
    the byte offset. Values are checked lazily: a syntax error inside one
    surfaces when its chunk is parsed (see `parse_chunk`).
    """
    scanner = _Scanner(uri, chunk_bytes)
    offset = 0
    while True:
        block = f.read(BLOCK_BYTES)
        if not block:
            break
        scanner.feed(block, offset)
        offset += len(block)
    if scanner.root is None:
        raise ParseError(uri, "byte 0", "empty file")
    if scanner.done_at is None or scanner.in_string:
        where = f"'{_key_name(f, scanner)}'" if scanner.values else "the document"
        raise ParseError(uri, f"byte {offset}", f"unexpected end of file inside {where}: truncated")
    for value, colon in zip(scanner.values, scanner.colons, strict=False):
        value.key = _key_at(f, uri, colon)
    for value in scanner.values:
        if value.kind == "array":
            _fix_empty(f, value)
    return scanner.values


def _key_name(f: IO[bytes], scanner: _Scanner) -> str:
    if scanner.root == "array" or not scanner.colons:
        return ""
    try:
        return _key_at(f, "", scanner.colons[-1])
    except ParseError:
        return "?"


def _key_at(f: IO[bytes], uri: str, colon: int) -> str:
    start = max(0, colon - 4096)
    f.seek(start)
    head = f.read(colon - start)
    m = _KEY_BEFORE_COLON.search(head)
    if not m:
        raise ParseError(uri, f"byte {colon}", "expected a quoted key before ':'")
    return json.loads(b'"' + m.group(1) + b'"')


def _fix_empty(f: IO[bytes], value: Value) -> None:
    if value.length == 1 and len(value.chunks) == 1:
        c = value.chunks[0]
        if c.end - c.start <= 64:
            f.seek(c.start)
            if not f.read(c.end - c.start).strip():
                value.length = 0


def read_value(f: IO[bytes], uri: str, value: Value) -> Any:
    """Parse a whole (small) top-level value."""
    f.seek(value.start)
    return _loads(f.read(value.end - value.start), uri, value.start, wrap=False)


def iter_chunks(f: IO[bytes], uri: str, chunks: list[Chunk]) -> Iterator[tuple[int, list]]:
    """Yield (index of the first element, elements) for each chunk, in order."""
    for c in chunks:
        yield c.first_index, parse_chunk(f, uri, c)


def parse_chunk(f: IO[bytes], uri: str, chunk: Chunk) -> list:
    f.seek(chunk.start)
    data = f.read(chunk.end - chunk.start)
    return _loads(data, uri, chunk.start, wrap=True)


def _loads(data: bytes, uri: str, offset: int, wrap: bool) -> Any:
    text = b"[" + data + b"]" if wrap else data
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    # orjson refuses NaN and Infinity, which some exporters write; the standard
    # parser accepts them, so such records reach validation and are rejected there.
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = offset + exc.pos - (1 if wrap else 0)
        raise ParseError(uri, f"byte {where}", f"malformed JSON: {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise ParseError(uri, f"byte {offset + exc.start}", "invalid UTF-8") from exc
