"""Tiny helpers in one place: lucidrains' two for optional arguments, range checks, error messages, reading
a JSON file that must hold an object, and the programs' --help layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


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


def read_json_object(path: Path, expected: str) -> dict[str, Any]:
    """A JSON object from ``path``, or a ValueError naming the file, what is wrong and ``expected``."""
    try:
        data = json.loads(path.read_bytes())
    except ValueError as err:  # not JSON, or not UTF-8
        raise ValueError(f"{path}: not valid JSON ({err}); expected {expected}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a JSON {type(data).__name__}, not an object; expected {expected}")
    return data


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except the empty ones (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default in (None, False) else super()._get_help_string(action)
