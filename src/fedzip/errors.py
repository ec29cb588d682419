"""Exceptions raised by fedzip."""


class FormatError(ValueError):
    """A payload is malformed: truncated, corrupted, or not a fedzip payload."""
