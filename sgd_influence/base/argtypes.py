"""Argument types of the command lines: one home for each check of a number.

Each takes the option's text and returns the number, or raises `argparse.ArgumentTypeError`
with one line naming the rule and the value (argparse prints it and exits 2). NaN and the
infinities fail every check of a float.
"""
from __future__ import annotations

import argparse
import math


def _number(text: str, cast, ok, rule: str):
    try:
        v = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text}") from None
    if not ok(v):
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
    return v


def positive_int(text: str) -> int:
    """An integer >= 1 (counts: trials, workers, epochs)."""
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def nonneg_int(text: str) -> int:
    """An integer >= 0 (seeds, counts that may be zero)."""
    return _number(text, int, lambda v: v >= 0, "a non-negative integer")


def positive_float(text: str) -> float:
    """A finite number > 0 (rates, scales, epsilon)."""
    return _number(text, float, lambda v: math.isfinite(v) and v > 0, "a positive number")


def nonneg_float(text: str) -> float:
    """A finite number >= 0 (weight decay)."""
    return _number(text, float, lambda v: math.isfinite(v) and v >= 0, "a non-negative number")


def fraction(text: str) -> float:
    """A number in [0, 1): a share of the data (label noise), or a decay (momentum, Adam's betas)."""
    return _number(text, float, lambda v: 0 <= v < 1, "in [0, 1)")


def open_fraction(text: str) -> float:
    """A number in (0, 1): a share of the data that is neither none nor all (an LDS removal)."""
    return _number(text, float, lambda v: 0 < v < 1, "a fraction in (0, 1)")
