"""Token and parameter counts written the way people say them: 20k, 1.8B, 380B, or a plain integer."""

from __future__ import annotations

import math
import re

from ablate.spec.limits import MAX_TOKEN_TEXT, MAX_TOKENS

SUFFIXES = {
    "": 1,
    "k": 10**3,
    "K": 10**3,
    "m": 10**6,
    "M": 10**6,
    "b": 10**9,
    "B": 10**9,
    "G": 10**9,
    "T": 10**12,
}
_PATTERN = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]+))?\s*([A-Za-z]*)\s*$")
EXPECTED = "a positive whole number of tokens, optionally with a k, M, B or T suffix (e.g. 20k, 1.8B, 380B)"
TOO_LARGE = f"expected at most {MAX_TOKENS // 10**12}T = 10^{len(str(MAX_TOKENS)) - 1} tokens"


def parse_tokens(value: object) -> int:
    """Parse a token count; raise ValueError with a message naming the value and the accepted forms."""
    return _parse_count(value, "token", EXPECTED, TOO_LARGE)


def parse_params(value: object) -> int:
    """Parse a parameter count (89M, 8B, 8.41B): the same forms and bounds as a token count."""
    expected = "a positive whole number of parameters, optionally with a k, M, B or T suffix (e.g. 89M, 8B)"
    return _parse_count(value, "parameter", expected, TOO_LARGE.replace("tokens", "parameters"))


def _parse_count(value: object, noun: str, expected: str, too_large: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"not a {noun} count (got {value!r}; expected {expected})")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite number of {noun}s (got {value!r}; expected {expected})")
        if value > MAX_TOKENS:
            raise ValueError(f"{noun} count too large (got {value!r}; {too_large})")
        if not value.is_integer():
            raise ValueError(f"not a whole number of {noun}s (got {value!r}; expected {expected})")
        number = int(value)
    elif isinstance(value, str):
        if len(value) > MAX_TOKEN_TEXT:
            raise ValueError(
                f"not a {noun} count (got {len(value)} characters; expected {expected}, at most {MAX_TOKEN_TEXT} characters)"
            )
        if value.strip().startswith("-"):
            raise ValueError(f"{noun} count must be positive (got {value!r}; expected {expected})")
        match = _PATTERN.match(value)
        if not match:
            raise ValueError(f"not a {noun} count (got {value!r}; expected {expected})")
        mantissa, exponent, suffix = match.groups()
        if suffix not in SUFFIXES:
            raise ValueError(f"unknown unit '{suffix}' in {value!r} (expected {expected})")
        # Exact decimal arithmetic: 1.8B must be 1800000000, not 1799999999.9999998.
        whole, _, frac = mantissa.partition(".")
        scaled = int(whole or "0") * 10 ** len(frac) + int(frac or "0")
        numerator = scaled * SUFFIXES[suffix]
        power = int(exponent or "0") - len(frac)
        # Refuse by size before computing: 10**999999999 would take minutes and gigabytes.
        if numerator and len(str(numerator)) + power > len(str(MAX_TOKENS)):
            raise ValueError(f"{noun} count too large (got {value!r}; {too_large})")
        if power >= 0:
            number = numerator * 10**power
        elif numerator and -power > len(str(numerator)):  # 1e-999999: less than one unit
            raise ValueError(f"{value!r} is not a whole number of {noun}s (expected {expected})")
        else:
            if numerator % 10 ** (-power):
                raise ValueError(f"{value!r} is not a whole number of {noun}s (expected {expected})")
            number = numerator // 10 ** (-power)
    else:
        raise ValueError(f"not a {noun} count (got {value!r}; expected {expected})")
    if number <= 0:
        raise ValueError(f"{noun} count must be positive (got {value!r}; expected {expected})")
    if number > MAX_TOKENS:
        raise ValueError(f"{noun} count too large (got {value!r}; {too_large})")
    return number


def format_tokens(n: int) -> str:
    """Short human form (380B, 1.8B, 20k) for tables."""
    for suffix, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= scale:
            text = f"{n / scale:.3g}"
            return f"{text}{suffix}"
    return str(n)


def format_duration(seconds: float) -> str:
    """Short human form (45s, 12m05s, 3h07m): progress lines, status and the report's trial table."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
