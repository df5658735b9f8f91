"""Rank statistics used to compare influence estimates, and the t-interval, paired t-test and
Holm adjustment of a mean over trials (no SciPy needed)."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np

# Two-sided 97.5% quantiles of Student's t by degrees of freedom (a 95% interval), 1..30; normal beyond.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (T975; 1.96 beyond 30)."""
    return T975[df - 1] if df <= len(T975) else 1.96


def t_interval(values: Sequence[float]) -> Tuple[float, Optional[float], Optional[float], Optional[float]]:
    """(mean, sample sd, low, high) of the 95% t-interval of the mean: mean -/+ t_{.975, n-1} sd / sqrt(n);
    sd and the interval are None for a single value."""
    v = np.asarray(values, np.float64)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, None, None, None
    sd = float(v.std(ddof=1))
    half = t975(len(v) - 1) * sd / math.sqrt(len(v))
    return mean, sd, mean - half, mean + half


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with integer `df` >= 1 degrees of freedom, in closed form
    (Abramowitz & Stegun 26.7.3-4): with theta = atan(|t| / sqrt(df)), c = cos(theta),
        P(|T| < |t|) = (2/pi) (theta + sin(theta) (c + 2/3 c^3 + (2 4)/(3 5) c^5 + ... + c^(df-2) term))  (df odd)
                     = sin(theta) (1 + 1/2 c^2 + (1 3)/(2 4) c^4 + ... + c^(df-2) term)                     (df even)
    and the p-value is one minus it."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if not math.isfinite(t):
        return 0.0
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, sin = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:
        term, total = math.cos(theta), 0.0
        for k in range(1, (df - 1) // 2 + 1):  # the series c + 2/3 c^3 + ..., (df - 1) / 2 terms
            total += term
            term *= c2 * (2 * k) / (2 * k + 1)
        inside = 2 / math.pi * (theta + sin * total)
    else:
        term, total = 1.0, 0.0
        for k in range(1, df // 2 + 1):  # the series 1 + 1/2 c^2 + ..., df / 2 terms
            total += term
            term *= c2 * (2 * k - 1) / (2 * k)
        inside = sin * total
    return min(1.0, max(0.0, 1.0 - inside))


def paired_t_p(values: Sequence[float]) -> Optional[float]:
    """The two-sided p-value of the one-sample t-test of mean 0 (paired differences); None for fewer
    than two values; 0 or 1 when every value is equal (nonzero or zero)."""
    v = np.asarray(values, np.float64)
    if len(v) < 2:
        return None
    sd = float(v.std(ddof=1))
    if sd == 0:
        return 1.0 if v[0] == 0 else 0.0
    return t_two_sided_p(float(v.mean()) / (sd / math.sqrt(len(v))), len(v) - 1)


def holm(p_values: Sequence[Optional[float]]) -> list:
    """Holm's step-down adjustment of a family of p-values (None entries stay None and are not
    counted): the i-th smallest of m becomes max over j <= i of min(1, (m - j + 1) p_(j)). A family
    rejected where adjusted p < alpha keeps its family-wise error rate at alpha."""
    idx = [i for i, p in enumerate(p_values) if p is not None]
    order = sorted(idx, key=lambda i: p_values[i])
    out, running, m = [None] * len(p_values), 0.0, len(order)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


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
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant input: nan (a degenerate bootstrap resample)
        return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(rankdata(a), rankdata(b))


def _count_inversions(r: np.ndarray) -> int:
    """Pairs i < j with r[i] > r[j] (strictly), for integer keys 0 <= r < n.

    Bottom-up merge sort, one vectorised pass per level (O(n log^2 n)): at
    width w, every element of a right half counts the elements of its left
    half that are strictly greater.
    """
    n = len(r)
    r = np.asarray(r, np.int64)
    idx = np.arange(n, dtype=np.int64)
    total, w = 0, 1
    while w < n:
        pair = idx // (2 * w)
        left = (idx // w) % 2 == 0
        keys = pair * n + r  # one key space per pair of halves, sorted pair by pair
        lsorted = np.sort(keys[left])
        rkeys, rpair = keys[~left], pair[~left]
        end = np.searchsorted(lsorted, (rpair + 1) * n, side="left")  # end of this pair's left half
        not_greater = np.searchsorted(lsorted, rkeys, side="right")
        total += int((end - not_greater).sum())
        w *= 2
    return total


def _tied_pairs(*cols: np.ndarray) -> int:
    """Pairs of instances equal in every given column: sum over groups of t(t-1)/2."""
    order = np.lexsort(cols[::-1])
    s = [c[order] for c in cols]
    new = np.ones(len(order), bool)
    new[1:] = np.logical_or.reduce([c[1:] != c[:-1] for c in s])
    t = np.diff(np.flatnonzero(np.append(new, True))).astype(np.int64)
    return int((t * (t - 1) // 2).sum())


def kendall_tau_b(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b with ties, O(n log^2 n) (Knight's method).

    tau_b = (n_c - n_d) / sqrt((n0 - n1)(n0 - n2)), n0 = n(n-1)/2, n1 / n2 the
    pairs tied in a / in b; n_c - n_d = n0 - n1 - n2 + n3 - 2 * swaps, with n3
    the pairs tied in both and swaps the discordant pairs, counted as
    inversions of b's ranks once the instances are sorted by (a, b). NaN when
    a or b is constant.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("kendall_tau_b needs two 1-d arrays of the same length")
    n = len(a)
    n0 = n * (n - 1) // 2
    n1, n2, n3 = _tied_pairs(a), _tied_pairs(b), _tied_pairs(a, b)
    rb = np.searchsorted(np.unique(b), b)  # dense integer ranks of b
    order = np.lexsort((b, a))
    swaps = _count_inversions(rb[order])
    den = float(n0 - n1) * float(n0 - n2)
    if den <= 0:
        return float("nan")
    return float((n0 - n1 - n2 + n3 - 2 * swaps) / np.sqrt(den))


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
