r"""Two-sample test by energy distance: do two sets of draws come from one distribution.

The energy distance between distributions :math:`F` and :math:`G` of :math:`X, X' \sim F` and
:math:`Y, Y' \sim G` (independent) is

.. math::

    \mathcal E(F, G) = 2\,\mathbb E\lVert X - Y \rVert - \mathbb E\lVert X - X' \rVert
    - \mathbb E\lVert Y - Y' \rVert \;\ge 0,

zero exactly when :math:`F = G` (Székely & Rizzo 2004). From samples :math:`x_{1..n}` and
:math:`y_{1..m}` the V-statistic replaces each expectation by the mean over all pairs; the test
statistic is :math:`T = \frac{nm}{n+m} \hat{\mathcal E}`, and its null distribution is found by
permutation: pool the draws, relabel them at random, recompute :math:`T`. The p-value
:math:`(1 + \#\{T_\pi \ge T\}) / (1 + P)` over :math:`P` permutations is exact (valid at any
sample size) under exchangeability.

Reference: Székely, G. J. and Rizzo, M. L. (2004). Testing for equal distributions in high
dimension. InterStat 5; Székely, G. J. and Rizzo, M. L. (2013). Energy statistics: a class of
statistics based on distances. J. Stat. Plan. Inference 143(8), 1249-1272.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["energy_distance", "energy_test", "EnergyTest"]


class EnergyTest(NamedTuple):
    r"""Result of :func:`energy_test`.

    Attributes
    ----------
    statistic : float
        :math:`T = \frac{nm}{n+m} \hat{\mathcal E}` of the two samples as given.
    p_value : float
        Permutation p-value, in ``(0, 1]``.
    n_permutations : int
        Number of random relabellings ``P``.
    """

    statistic: float
    p_value: float
    n_permutations: int


def _as_samples(x, y, standardize: bool):
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    x = x[:, None] if x.ndim == 1 else x
    y = y[:, None] if y.ndim == 1 else y
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"energy test: x and y must be draws of shape (n, d) and (m, d) with the same d, got {x.shape} and "
            f"{y.shape}"
        )
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"energy test: each sample needs at least 2 draws, got {x.shape[0]} and {y.shape[0]}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("energy test: the draws contain non-finite values; drop or fix them first")
    if standardize:
        pooled = np.concatenate([x, y])
        sd = pooled.std(0)
        sd = np.where(sd > 0, sd, 1.0)
        x, y = x / sd, y / sd
    return x, y


def _distances(z: np.ndarray, block: int = 256) -> np.ndarray:
    """Euclidean distances of all pairs of rows, computed from differences (exact zeros for equal rows)."""
    d = np.empty((len(z), len(z)))
    for i in range(0, len(z), block):
        d[i : i + block] = np.sqrt(np.sum((z[i : i + block, None, :] - z[None, :, :]) ** 2, axis=-1))
    return d


def _statistics(d: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``T`` for each labelling: ``labels`` (P, N) of 0 (x) and 1 (y); ``d`` the pooled (symmetric) distances."""
    a = 1.0 - labels
    b = labels
    n = a.sum(1)
    m = b.sum(1)
    da = a @ d  # (P, N)
    db = d.sum(0) - da  # b @ d, as a + b = 1: one matrix product instead of two
    xy = np.einsum("pi,pi->p", da, b) / (n * m)
    xx = np.einsum("pi,pi->p", da, a) / (n * n)
    yy = np.einsum("pi,pi->p", db, b) / (m * m)
    return n * m / (n + m) * (2.0 * xy - xx - yy)


def energy_distance(x, y, *, standardize: bool = False) -> float:
    r"""Compute the energy distance :math:`\hat{\mathcal E}` (V-statistic) between two samples.

    Parameters
    ----------
    x : array_like, shape (n, d) or (n,)
    y : array_like, shape (m, d) or (m,)
    standardize : bool
        Divide each coordinate by its pooled sd first (for coordinates on different scales).

    Returns
    -------
    float
        Non-negative; 0 for identical samples.

    Examples
    --------
    >>> round(energy_distance([0.0, 1.0], [0.0, 1.0]), 12)
    0.0
    """
    x, y = _as_samples(x, y, standardize)
    n, m = len(x), len(y)
    d = _distances(np.concatenate([x, y]))
    labels = np.concatenate([np.zeros(n), np.ones(m)])[None]
    return float(_statistics(d, labels)[0] * (n + m) / (n * m))


def energy_test(
    x, y, *, n_permutations: int = 999, standardize: bool = False, seed: int = 0, batch: int = 128
) -> EnergyTest:
    """Permutation test of equal distributions by energy distance (Székely & Rizzo 2004).

    Parameters
    ----------
    x : array_like, shape (n, d) or (n,)
    y : array_like, shape (m, d) or (m,)
    n_permutations : int
        Random relabellings ``P`` of the pooled draws; the smallest reachable p-value is
        ``1 / (P + 1)``.
    standardize : bool
        Divide each coordinate by its pooled sd first (the same scaling in every permutation).
    seed : int
        Seed of the permutations.
    batch : int
        Permutations evaluated together (memory ``batch * (n + m)`` floats).

    Returns
    -------
    EnergyTest
        ``(statistic, p_value, n_permutations)``.
    """
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, (int, np.integer)) or n_permutations < 1:
        raise ValueError(f"energy_test: n_permutations must be a positive integer, got {n_permutations!r}")
    x, y = _as_samples(x, y, standardize)
    n, m = len(x), len(y)
    d = _distances(np.concatenate([x, y]))
    base = np.concatenate([np.zeros(n), np.ones(m)])
    observed = float(_statistics(d, base[None])[0])
    rng = np.random.default_rng(seed)
    exceed, done = 0, 0
    while done < n_permutations:
        size = min(batch, n_permutations - done)
        labels = np.stack([rng.permutation(base) for _ in range(size)])
        # A small relative tolerance so that ties from rounding count as ties.
        exceed += int(np.sum(_statistics(d, labels) >= observed * (1 - 1e-12)))
        done += size
    return EnergyTest(observed, (1 + exceed) / (1 + n_permutations), int(n_permutations))
