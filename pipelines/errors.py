"""Errors that carry their place: the file, where in it, and what was wrong."""

from __future__ import annotations


class LabelflowError(Exception):
    """Base of every error labelflow raises on purpose; the CLI prints it as one line."""


class ParseError(LabelflowError):
    """A source that cannot be read past some point.

    `location` is as precise as the format allows: a byte offset, a line
    number, a JSON path or an XML element path.
    """

    def __init__(self, source: str, location: str, reason: str) -> None:
        self.source = source
        self.location = location
        self.reason = reason
        super().__init__(f"{source}: {location}: {reason}")


class FormatError(LabelflowError):
    """An unknown format name, or a source no format recognises."""


class UnsafePathError(LabelflowError):
    """A path derived from input that would land outside the output directory."""
