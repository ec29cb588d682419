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


class Parser(argparse.ArgumentParser):
    """Bad options end in one line (and a pointer to --help), not a usage dump."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
