"""Tiny helpers in one place: lucidrains' two for optional arguments, range checks, error messages, and the
programs' --help layout."""

from __future__ import annotations

import argparse


def exists(x) -> bool:
    return x is not None


def default(x, d):
    return x if exists(x) else d


def out_of_range(*checks: tuple[str, object, bool, str]) -> str | None:
    """"NAME must be RULE, got VALUE" for each ``(name, value, ok, rule)`` that is not ok, joined
    with "; " (None when all are), so one error names every bad setting at once."""
    wrong = [f"{name} must be {rule}, got {value}" for name, value, ok, rule in checks if not ok]
    return "; ".join(wrong) if wrong else None


def error_message(err: BaseException) -> str:
    """An exception's message for a one-line error (a KeyError's str() wraps it in quotes)."""
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except the empty ones (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default in (None, False) else super()._get_help_string(action)
