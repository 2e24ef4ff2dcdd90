"""XML parsing with no entity resolution, no DTD loading and no network access.

Every XML format goes through here: `iterparse` for large files (elements are
cleared as they are consumed, so memory stays flat), `parse` for the small
one-file-per-image formats.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import IO

from lxml import etree

from pipelines.errors import ParseError

_SAFE = {"resolve_entities": False, "no_network": True, "load_dtd": False, "huge_tree": True}


def iterparse(
    f: IO[bytes], uri: str, tags: tuple[str, ...], line: Callable[[int], int] | None = None
) -> Iterator[etree._Element]:
    """Yield each completed element whose tag is in `tags`, then free it.

    The caller reads what it needs from the element during the yield; after
    that the element and its already-processed siblings are cleared. `line` maps
    the parser's line numbers to the file's, for an error (`f` may be a part of the
    file spliced behind its head).
    """
    context = etree.iterparse(f, events=("end",), tag=tags, **_SAFE)
    try:
        for _, elem in context:
            yield elem
            elem.clear(keep_tail=False)
            parent = elem.getparent()
            if parent is not None:
                while elem.getprevious() is not None:
                    del parent[0]
    except etree.XMLSyntaxError as exc:
        at, col = exc.position if exc.position else (exc.lineno, 0)
        at = line(at) if line else at
        raise ParseError(uri, f"line {at}, column {col}", f"malformed XML: {exc.msg}") from exc


def parse(f: IO[bytes], uri: str) -> etree._Element:
    """The root element of a small XML document."""
    parser = etree.XMLParser(**_SAFE)
    try:
        return etree.parse(f, parser).getroot()
    except etree.XMLSyntaxError as exc:
        line, col = exc.position if exc.position else (exc.lineno, 0)
        raise ParseError(uri, f"line {line}, column {col}", f"malformed XML: {exc.msg}") from exc


def text(elem: etree._Element | None, path: str, default: str | None = None) -> str | None:
    """Stripped text of the first `path` under `elem`, or `default`."""
    if elem is None:
        return default
    found = elem.find(path)
    if found is None or found.text is None:
        return default
    return found.text.strip()
