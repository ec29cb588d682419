"""What the ``fedzip`` command's parts share: the one-line error and option types."""

from __future__ import annotations

import argparse


class CliError(Exception):
    """A user error: reported as one line, exit status 2."""


def positive_int(text: str) -> int:
    try:
        value = int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def keep_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"keep must be in (0, 1], got {text}")
    return value


def clusters(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 1..256 or 'auto', got {text!r}") from None
    if not 1 <= value <= 256:
        raise argparse.ArgumentTypeError(f"clusters must be 1..256 or 'auto', got {text}")
    return value


class Parser(argparse.ArgumentParser):
    """Bad options end in one line (and a pointer to --help), not a usage dump."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
