"""Checks of values a user gives: argparse types for the command line (:func:`number_type`, :data:`positive_int`,
:data:`probability`, :func:`pixel_limit`, :func:`json_object`) and their twins for Python arguments (:func:`check_positive_int`,
:func:`check_probability`); each error names the value.
"""

from __future__ import annotations

import argparse
import json
import math
import numbers


def json_object(value: str) -> dict:
    try:
        loaded = json.loads(value)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {value!r}") from None
    if not isinstance(loaded, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"num_test\": 100}}', got {value!r}")
    return loaded


def number_type(kind: type, what: str, low: float | None = None, high: float | None = None, low_open: bool = False):
    """An argparse type: a finite `kind` (int or float) in `[low, high]` (`low` excluded with `low_open`); anything
    else raises `expected <what>, got '<value>'`."""

    def parse(value: str):
        try:
            number = kind(value)
        except ValueError:
            number = None
        bad = (
            number is None
            or (kind is float and not math.isfinite(number))
            or (low is not None and (number < low or (low_open and number == low)))
            or (high is not None and number > high)
        )
        if bad:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
        return number

    return parse


positive_int = number_type(int, "a positive integer", 1)


probability = number_type(float, "a number in [0, 1]", 0.0, 1.0)


def pixel_limit(value: str) -> int | None:
    """`--max_image_pixels`: a number of pixels, 0 for no limit of ours (None: only PIL's own)."""
    return number_type(int, "a number of pixels (0: no limit of ours)", 0)(value) or None


def check_probability(value, name: str, allow_none: bool = True) -> float | None:
    """What `probability` checks on the command line, for a Python value (a library argument): `value` as a float if
    it is a finite number in `[0, 1]` (or None when allowed); `ValueError` naming `name` otherwise (NaN, inf, strings
    and booleans included)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) \
            or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a finite number in [0, 1], got {value!r}")
    return float(value)


def check_positive_int(value, name: str, allow_none: bool = False, minimum: int = 1) -> int | None:
    """What `positive_int` checks on the command line, for a Python value: `value` if it is an integer `>= minimum`
    (or None when allowed); `ValueError` naming `name` otherwise (floats, strings and booleans included)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return int(value)
