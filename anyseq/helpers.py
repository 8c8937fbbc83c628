"""Tiny helpers in one place: lucidrains' two for optional arguments, and the programs' --help layout."""

from __future__ import annotations

import argparse


def exists(x) -> bool:
    return x is not None


def default(x, d):
    return x if exists(x) else d


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except the empty ones (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default in (None, False) else super()._get_help_string(action)
