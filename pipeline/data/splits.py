"""Deterministic case splits: train/validation/test by case, the labelled subset, and the selective split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = ["mark_labelled", "split_cases", "split_selective"]


def _split_size(fraction: float, n: int) -> int:
    """``round(fraction * n)``, at least 1 when ``fraction > 0``."""
    return max(1, round(fraction * n)) if fraction > 0 else 0


def split_cases(datalist: Sequence[dict[str, Any]], val_fraction: float = 0.125, test_fraction: float = 0.25,
                seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Deterministic train/val/test split by case.

    The cases are shuffled with ``numpy.random.default_rng(seed)``; val and test each get ``round(fraction * n)``
    cases (Python rounding), at least 1 when their fraction is > 0; train gets the rest. For 16 cases and the
    defaults: 10 train / 2 val / 4 test. Each split keeps the datalist order; its dicts are copies.

    Args:
        datalist: list of case dicts.
        val_fraction: fraction of cases for validation, in [0, 1).
        test_fraction: fraction of cases for testing, in [0, 1).
        seed: shuffle seed.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``.

    Raises:
        ValueError: for fractions out of range or too few cases to give train at least 1 case.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    n = len(datalist)
    n_val, n_test = _split_size(float(val_fraction), n), _split_size(float(test_fraction), n)
    if n - n_val - n_test < 1:
        raise ValueError(f"too few cases to split: {n} case(s) with val_fraction={val_fraction} and "
                         f"test_fraction={test_fraction} leave no training case (need at least {n_val + n_test + 1})")
    order = np.random.default_rng(seed).permutation(n)
    parts = {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}
    return {name: [dict(datalist[i]) for i in sorted(parts[name])] for name in ("train", "val", "test")}


def _parse_fraction(fraction: float | str | Fraction) -> float:
    """A fraction given as a number or a string such as ``"1/3"`` or ``"0.25"``, checked to be in (0, 1]."""
    try:
        value = float(Fraction(fraction.strip()) if isinstance(fraction, str) else fraction)
    except (ValueError, ZeroDivisionError, TypeError) as err:
        raise ValueError(f"labelled fraction must be a number or a string like '1/3', got {fraction!r}") from err
    if not 0.0 < value <= 1.0:
        raise ValueError(f"labelled fraction must be in (0, 1], got {fraction!r}")
    return value


def mark_labelled(datalist: Sequence[dict[str, Any]], fraction: float | str, seed: int = 0) -> list[dict[str, Any]]:
    """Copies of the training dicts with a boolean ``"labelled"`` key.

    ``round(fraction * n)`` cases (at least 1) are chosen with ``numpy.random.default_rng(seed)``. Unlabelled cases
    keep their ``"label"`` path; the training engine ignores it for the supervised loss.

    Args:
        datalist: training cases.
        fraction: labelled fraction in (0, 1], as a number or a string such as ``"1/3"``.
        seed: selection seed.

    Returns:
        The datalist (same order) with ``"labelled"`` set on every dict.

    Raises:
        ValueError: for an empty datalist or a fraction that is not a number in (0, 1].
    """
    value = _parse_fraction(fraction)
    if not datalist:
        raise ValueError("cannot mark labelled cases of an empty datalist")
    n = len(datalist)
    chosen = set(np.random.default_rng(seed).choice(n, size=min(n, max(1, round(value * n))), replace=False).tolist())
    return [{**entry, "labelled": i in chosen} for i, entry in enumerate(datalist)]


def split_selective(datalist: Sequence[Mapping[str, Any]], num_train: int = 2, num_val: int = 2,
                    num_test: int | None = None, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Deterministic case split for selective segmentation: ``num_train`` / ``num_val`` / the rest (or ``num_test``).

    The cases are shuffled with ``numpy.random.default_rng(seed)``; each part keeps the datalist order.

    Raises:
        ValueError: when the datalist has fewer cases than the parts ask for.
    """
    n = len(datalist)
    rest = n - num_train - num_val
    n_test = rest if num_test is None else int(num_test)
    if num_train < 1 or num_val < 0 or n_test < 1 or n_test > rest:
        raise ValueError(f"cannot split {n} case(s) into {num_train} train / {num_val} val / "
                         f"{'the rest' if num_test is None else num_test} test (need at least one test case)")
    order = np.random.default_rng(seed).permutation(n)
    parts = {"train": order[:num_train], "val": order[num_train:num_train + num_val],
             "test": order[num_train + num_val:num_train + num_val + n_test]}
    return {name: [dict(datalist[i]) for i in sorted(idx)] for name, idx in parts.items()}
