"""ijson with its fastest backend, and a clear warning when only pure Python is left.

Readers of JSON whose records are deep trees (Encord label rows, Datumaro items)
stream with ijson; `from pipelines.streamjson import ijson` gives them the C
backend (yajl2_c) whenever the installed wheel has it.
"""

from __future__ import annotations

import warnings
from types import ModuleType, SimpleNamespace

import ijson as _ijson

_FAST = ("yajl2_c", "yajl2_cffi", "yajl2")


def fastest_backend() -> ModuleType:
    for name in _FAST:
        try:
            return _ijson.get_backend(name)
        except ImportError:
            continue
    warnings.warn(
        "ijson has only its pure-Python backend here: JSON streaming will be about ten times "
        "slower. Install an ijson wheel with the yajl2_c backend for this platform.",
        RuntimeWarning,
        stacklevel=2,
    )
    return _ijson.get_backend("python")


def _api(backend: ModuleType) -> SimpleNamespace:
    """The backend's functions plus ijson's backend-neutral errors and ObjectBuilder."""
    api = {k: getattr(backend, k) for k in dir(backend) if not k.startswith("_")}
    for name in ("JSONError", "IncompleteJSONError", "ObjectBuilder"):
        api[name] = getattr(_ijson, name)
    return SimpleNamespace(**api)


ijson = _api(fastest_backend())
