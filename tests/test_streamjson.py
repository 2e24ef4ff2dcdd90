"""The ijson backend: the C one when installed, a clear warning when only Python is."""

from __future__ import annotations

import io

import ijson as plain_ijson
import pytest

from pipelines import streamjson


def test_c_backend_is_used() -> None:
    assert streamjson.ijson.backend_name == "yajl2_c"
    rows = list(streamjson.ijson.items(io.BytesIO(b'[{"a": 1.5}]'), "item", use_float=True))
    assert rows == [{"a": 1.5}]


def test_warns_when_only_pure_python_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    real = plain_ijson.get_backend

    def only_python(name: str):
        if name != "python":
            raise ImportError(name)
        return real(name)

    monkeypatch.setattr(plain_ijson, "get_backend", only_python)
    with pytest.warns(RuntimeWarning, match="pure-Python backend"):
        backend = streamjson.fastest_backend()
    assert backend.backend_name == "python"
