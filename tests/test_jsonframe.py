"""Framing of big JSON documents: top-level values and array chunks must match a full parse,
whatever the block size (escapes and strings split across blocks) and chunk size."""

from __future__ import annotations

import io
import json
import random

import pytest

from pipelines import jsonframe
from pipelines.errors import ParseError

_TRICKY = ['a"b', "back\\slash", 'end\\\\"q', "{[,:]}", "\\", '\\"', "ü€😀", "", ",", '"']


def _random_value(rng: random.Random, depth: int = 0):
    r = rng.random()
    if depth > 3 or r < 0.35:
        return rng.choice(
            [rng.randint(-5, 10**6), rng.random() * 1e3, None, True, False, rng.choice(_TRICKY)]
        )
    if r < 0.65:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    keys = rng.sample(["id", "a,b", 'q"', "x\\", "bbox", "seg:1", "{", ""], rng.randint(0, 4))
    return {k: _random_value(rng, depth + 1) for k in keys}


def _document(seed: int) -> dict:
    rng = random.Random(seed)
    return {
        "info": {"name": rng.choice(_TRICKY), "list": [1, 2, {"x": "]"}]},
        "images": [_random_value(rng, 1) for _ in range(rng.randint(0, 60))],
        "empty": [],
        'we"ird,key': "value with } and ]",
        "annotations": [
            {"id": i, "s": rng.choice(_TRICKY) * rng.randint(0, 3), "v": _random_value(rng, 2)}
            for i in range(rng.randint(1, 80))
        ],
        "n": 3.5,
    }


def _check(doc, data: bytes, chunk_bytes: int) -> None:
    f = io.BytesIO(data)
    values = jsonframe.frame(f, "mem://doc.json", chunk_bytes=chunk_bytes)
    items = list(doc.items()) if isinstance(doc, dict) else [("", doc)]
    assert [v.key for v in values] == [k for k, _ in items]
    for value, (_, expected) in zip(values, items, strict=True):
        assert jsonframe.read_value(f, "mem", value) == expected
        if isinstance(expected, list):
            assert value.kind == "array"
            assert value.length == len(expected)
            got = []
            for first, elements in jsonframe.iter_chunks(f, "mem", value.chunks):
                assert first == len(got)
                got.extend(elements)
            assert got == expected
        else:
            assert value.kind == ("object" if isinstance(expected, dict) else "scalar")


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("block", [1, 3, 7, 64, 1 << 20])
def test_frame_matches_a_full_parse(seed: int, block: int, monkeypatch) -> None:
    monkeypatch.setattr(jsonframe, "BLOCK_BYTES", block)
    doc = _document(seed)
    compact = json.dumps(doc, ensure_ascii=seed % 2 == 0, separators=(",", ":")).encode()
    pretty = json.dumps(doc, indent=2, ensure_ascii=False).encode()
    for data in (compact, pretty):
        _check(doc, data, chunk_bytes=1 + seed * 5)
        _check(doc, data, chunk_bytes=1 << 20)


@pytest.mark.parametrize("block", [1, 5, 1 << 20])
def test_root_array(block: int, monkeypatch) -> None:
    monkeypatch.setattr(jsonframe, "BLOCK_BYTES", block)
    doc = [{"a": '\\"]'}, [1, [2]], "x,", None, {"b": {}}]
    _check(doc, json.dumps(doc).encode(), chunk_bytes=4)
    _check([], b" [ ] ", chunk_bytes=4)


@pytest.mark.parametrize("block", [1, 4, 1 << 20])
@pytest.mark.parametrize(
    ("data", "where", "why"),
    [
        (b'{"a": [1, 2', "byte 11", "truncated"),
        (b'{"a": "open string}', "byte 19", "truncated"),
        (b'{"a": 1}}', "byte 8", "unbalanced closing bracket"),
        (b'  "text"', "byte 2", "not a JSON object or array"),
        (b"   ", "byte 0", "empty file"),
    ],
)
def test_broken_documents_name_the_byte(
    data: bytes, where: str, why: str, block: int, monkeypatch
) -> None:
    monkeypatch.setattr(jsonframe, "BLOCK_BYTES", block)
    with pytest.raises(ParseError) as err:
        jsonframe.frame(io.BytesIO(data), "mem://bad.json")
    assert err.value.location == where
    assert why in err.value.reason


def test_iter_chunks_pauses_the_collector_while_a_chunk_is_held() -> None:
    import gc

    doc = json.dumps({"a": [{"i": i} for i in range(50)]}).encode()
    (value,) = jsonframe.frame(io.BytesIO(doc), "doc.json", chunk_bytes=64)
    assert len(value.chunks) > 1
    assert gc.isenabled()
    seen = []
    for first, elements in jsonframe.iter_chunks(io.BytesIO(doc), "doc.json", value.chunks):
        assert not gc.isenabled()
        seen.extend(e["i"] for e in elements)
        assert first == seen.index(elements[0]["i"])
        del elements
    assert gc.isenabled()
    assert seen == list(range(50))


@pytest.mark.parametrize("seed", [2, 5])
def test_frame_with_blocks_classified_ahead(seed: int, monkeypatch) -> None:
    """Large blocks are classified by a second thread one block ahead: the same frames."""
    monkeypatch.setattr(jsonframe, "BLOCK_BYTES", 7)
    monkeypatch.setattr(jsonframe, "PREFETCH_BLOCK_BYTES", 1)
    doc = _document(seed)
    pretty = json.dumps(doc, indent=2, ensure_ascii=False).encode()
    _check(doc, pretty, chunk_bytes=1 + seed * 5)


def _canonical(v) -> bytes:
    return (v if isinstance(v, str) else str(v)).encode()


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("block", [1, 3, 64, 1 << 20])
def test_member_hashes_agree_with_a_full_parse(seed: int, block: int, monkeypatch) -> None:
    monkeypatch.setattr(jsonframe, "BLOCK_BYTES", block)
    rng = random.Random(seed)
    tricky = {"s": "id", "id\\": 1, "v": {"id": 3, "x": ["id", {"id": 4}]}}  # not members
    plain = [{**tricky, "id": rng.choice([f"n{i}", i, -i, "a,b{c}", "ü€"])} for i in range(40)]
    odd = [dict(e) for e in plain]
    odd[rng.randrange(40)].pop("id")
    doc = {"info": {"id": 9}, "plain": plain, "odd": odd, "weird": [*plain[:3], [{"id": 1}]]}
    for ascii_only in (False, True):
        data = json.dumps(doc, ensure_ascii=ascii_only, indent=seed % 3 or None).encode()
        values = {v.key: v for v in jsonframe.frame(io.BytesIO(data), "doc.json", member="id")}
        got = values["plain"].member_hashes
        spelt = ascii_only and any(e["id"] == "ü€" for e in plain)
        if block == 1 << 20 and not spelt:
            assert got is not None  # one block: nothing is cut, every id reads as written
        if got is not None:
            assert got.tolist() == [hash(_canonical(e["id"])) for e in plain]
        assert values["odd"].member_hashes is None  # an element without the member
        assert values["weird"].member_hashes is None  # an element that is not an object


@pytest.mark.parametrize(
    ("elements", "vouched"),
    [
        (b'{"id": "a"}, {"id": 7}, {"x": "id", "id": "7"}', True),
        (b'{"id": "a", "id": "b"}, {"id": 1}', False),  # given twice
        (b'{"id": "a\\u0062"}', False),  # escapes: the text is not the value
        (b'{"\\u0069d": "a"}', False),  # the name spelt with escapes
        (b'{"id": 1.0}', False),
        (b'{"id": -0}', False),  # the integer 0 spelt otherwise
        (b'{"id": null}', False),
        (b"", True),
    ],
)
def test_member_hashes_only_where_the_bytes_vouch(elements: bytes, vouched: bool) -> None:
    data = b'{"items": [' + elements + b"]}"
    (value,) = jsonframe.frame(io.BytesIO(data), "doc.json", member="id")
    assert (value.member_hashes is not None) == vouched
    if vouched:
        expected = [hash(_canonical(e["id"])) for e in json.loads(data)["items"]]
        assert value.member_hashes.tolist() == expected


def test_member_hashes_past_the_limit_vouch_for_nothing() -> None:
    data = json.dumps({"items": [{"id": i} for i in range(10)]}).encode()
    (value,) = jsonframe.frame(io.BytesIO(data), "doc.json", member="id", max_members=9)
    assert value.member_hashes is None
    (value,) = jsonframe.frame(io.BytesIO(data), "doc.json", member="id", max_members=10)
    assert value.member_hashes is not None


@pytest.mark.parametrize("bad", [7, 23, 39])
@pytest.mark.parametrize(("broken", "why"), [(b'"x": tru', "malformed JSON"),
                                             (b'"x": "\xff"', "invalid UTF-8")])  # fmt: skip
def test_a_broken_element_is_named_by_its_index_and_byte(bad: int, broken: bytes, why: str) -> None:
    elements = [b'{"x": [1, "\xc3\xbc,]"], "n": NaN}'] * 40  # ü, and a NaN orjson refuses
    elements[bad] = b"{" + broken + b"}"
    data = b'{"a": [' + b", ".join(elements) + b"]}"
    (value,) = jsonframe.frame(io.BytesIO(data), "doc.json", chunk_bytes=100)
    assert len(value.chunks) > 5
    with pytest.raises(ParseError) as err:
        for _ in jsonframe.iter_chunks(io.BytesIO(data), "doc.json", value.chunks, "$.a"):
            pass
    at = data.index(broken) + broken.index(b"tru" if b"tru" in broken else b"\xff")
    assert err.value.location == f"$.a[{bad}], byte {at}"
    assert why in err.value.reason
