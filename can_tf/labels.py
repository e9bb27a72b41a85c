"""The ChestX-ray14 label set, in the canonical order used throughout can-tf, and how class names
given by a user (``--class``, ``data.class_names``) are matched to it (:func:`match_class_names`)."""

from __future__ import annotations

import difflib
import re
from typing import Iterable, Optional, Sequence, Union

CLASS_NAMES = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

NO_FINDING = "No Finding"


def _key(name: str) -> str:
    """How names are compared: case-insensitively, ignoring ``_``, ``-`` and spaces."""
    return re.sub(r"[\s_-]+", "", str(name)).casefold()


def match_class_names(given: Union[str, Iterable[str]], known: Sequence[str], *, what: str = "--class",
                      error: Optional[type] = None) -> list:
    """The canonical spelling (as in ``known``) of each class name in ``given``, in ``given``'s order.

    Names match case-insensitively and whatever their ``_``/``-``/space separators (NIH writes
    ``Pleural_Thickening``; ``pleural thickening`` finds it). This is the one place class names a
    user typed are checked: ``can-tf explain --class``, ``data.class_names`` against a data set.

    Args:
        given: one name, or several.
        known: the valid names, canonical spelling (e.g. the model's or the data set's classes).
        what: where the names came from, for the message (``"--class"``, ``"data.class_names"``).
        error: the exception class to raise (default :class:`can_tf.data.errors.DataError`).

    Raises:
        DataError (or ``error``): one line naming the unknown name, the closest known name
        (:func:`difflib.get_close_matches`) and all known names; or naming a class given twice.

    Example:
        >>> match_class_names("cardiomegaly", CLASS_NAMES)
        ['Cardiomegaly']
        >>> match_class_names(["pleural thickening", "MASS"], CLASS_NAMES, what="data.class_names")
        ['Pleural_Thickening', 'Mass']
        >>> try:
        ...     match_class_names("cardiomegalyy", CLASS_NAMES[:3])
        ... except ValueError as e:  # a DataError
        ...     print(e)
        unknown class 'cardiomegalyy' for --class; did you mean 'Cardiomegaly'? (classes: Atelectasis, Cardiomegaly, Effusion)
    """
    if error is None:
        from can_tf.data.errors import DataError as error
    names = [given] if isinstance(given, str) else list(given)
    known = [str(k) for k in known]
    by_key = {}
    for name in known:
        by_key.setdefault(_key(name), name)
    matched, unknown = [], []
    for name in names:
        name = str(name)
        canonical = name if name in known else by_key.get(_key(name))
        if canonical is None:
            unknown.append(name)
        else:
            matched.append(canonical)
    if unknown:
        listing = f"(classes: {', '.join(known)})"
        if len(unknown) == 1:
            raise error(f"unknown class {unknown[0]!r} for {what}{_did_you_mean(unknown[0], by_key, '; ')} "
                        f"{listing}")
        each = ", ".join(f"{name!r}" + (f" ({hint.strip()})" if (hint := _did_you_mean(name, by_key, "")) else "")
                         for name in unknown)
        raise error(f"unknown classes {each} for {what} {listing}")
    seen = {}
    for name, canonical in zip(names, matched):
        if canonical in seen:
            raise error(f"{what} names class {canonical!r} twice ({seen[canonical]!r} and {name!r})")
        seen[canonical] = name
    return matched


def _did_you_mean(name: str, by_key: dict, prefix: str) -> str:
    guess = difflib.get_close_matches(_key(name), list(by_key), n=1)
    return f"{prefix}did you mean {by_key[guess[0]]!r}?" if guess else ""
