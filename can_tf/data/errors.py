"""The error raised for invalid input data, and how its messages list the culprits.

Example:
    >>> from can_tf.data.errors import DataError, preview
    >>> str(DataError(f"unknown labels: {preview(['Foo', 'Bar', 'Baz'], limit=2)}"))
    "unknown labels: 'Foo', 'Bar' and 1 more"
"""

from __future__ import annotations

from typing import Iterable


from can_tf.errors import DataError, ImageError  # noqa: F401  (defined in can_tf.errors, re-exported)


def preview(items: Iterable, limit: int = 5) -> str:
    """Names the first ``limit`` items and counts the rest, so a message stays one readable line."""
    items = list(items)
    shown = ", ".join(repr(item) for item in items[:limit])
    rest = len(items) - limit
    return f"{shown} and {rest} more" if rest > 0 else shown
