"""Rank statistics used to compare influence estimates (no SciPy needed)."""
from __future__ import annotations

import numpy as np


def rankdata(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    a = np.asarray(a, np.float64)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a), np.float64)
    sa = a[order]
    start = 0
    for k in range(1, len(a) + 1):
        if k == len(a) or sa[k] != sa[start]:
            ranks[order[start:k]] = (start + k + 1) / 2.0
            start = k
    return ranks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(rankdata(a), rankdata(b))


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((n0 - ties_a)(n0 - ties_b)), n0 = n(n-1)/2.

    O(n^2) over all pairs; meant for the few hundred instances of a validation.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    i, j = np.triu_indices(len(a), k=1)
    sa, sb = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    n0 = len(i)
    ties_a, ties_b = int((sa == 0).sum()), int((sb == 0).sum())
    return float((sa * sb).sum() / np.sqrt((n0 - ties_a) * (n0 - ties_b)))


def lowest(a: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the ceil(fraction * n) smallest values (ties broken by index)."""
    k = int(np.ceil(fraction * len(a)))
    return np.lexsort((np.arange(len(a)), np.asarray(a)))[:k]


def jaccard_lowest(a: np.ndarray, b: np.ndarray, fraction: float = 0.1) -> float:
    """|A & B| / |A | B| of the ceil(fraction * n) most negative of a and of b."""
    sa, sb = set(lowest(a, fraction).tolist()), set(lowest(b, fraction).tolist())
    return len(sa & sb) / len(sa | sb)


def sign_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of instances where a and b have the same sign (0 counts as its own sign)."""
    return float(np.mean(np.sign(a) == np.sign(b)))
