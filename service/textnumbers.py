"""Numbers written as text (query strings, form fields, headers): plain ASCII decimals only.

Python's float() and int() take more than a client means to send: Unicode digits ('١٢٨' and '１２８'
are 128), digit separators ('1_28' is 128), 'nan' and 'infinity', and padding of any Unicode
whitespace. A value typed wrong must be refused, not read as another number.
"""

from __future__ import annotations

import re

_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,4})?", re.ASCII)
_INTEGER = re.compile(r"\d{1,18}", re.ASCII)


def decimal(text: str) -> float | None:
    """The number `text` writes in decimal (ASCII spaces around it allowed), else None; a number
    beyond float64 is inf (the caller's range check refuses it)."""
    text = text.strip(" \t")
    return float(text) if _DECIMAL.fullmatch(text) else None


def integer(text: str) -> int | None:
    """The non-negative integer `text` writes in ASCII digits (spaces around allowed), else None."""
    text = text.strip(" \t")
    return int(text) if _INTEGER.fullmatch(text) else None


def integers(text: str, most: int) -> list[int] | None:
    """Comma-separated non-negative integers, at most `most` of them, else None."""
    parts = [integer(p) for p in text.split(",")]
    return None if len(parts) > most or None in parts else [p for p in parts if p is not None]
