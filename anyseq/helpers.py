"""lucidrains' two tiny helpers, in one place: optional arguments read as what they mean."""

from __future__ import annotations


def exists(x) -> bool:
    return x is not None


def default(x, d):
    return x if exists(x) else d
