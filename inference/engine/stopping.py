"""When to stop: a noise-aware plateau rule on the loss trace.

The loss of stochastic VI is noisy, so "the loss stopped decreasing" must be judged against its
noise. With ``W`` the window length and ``L`` the last ``2 W`` losses of a restart, the rule
compares the mean of the older half with the mean of the newer half:

.. math::

    \\Delta = \\bar L_{\\text{old}} - \\bar L_{\\text{new}}, \\qquad
    \\hat\\sigma = \\frac{\\operatorname{MAD}(L_{i+1} - L_i)}{\\sqrt 2}, \\qquad
    \\operatorname{se}(\\Delta) = \\hat\\sigma \\sqrt{2 / W}.

The loss has reached a plateau when :math:`\\Delta < z\\,\\operatorname{se}(\\Delta) + a`: the
improvement over the last window is not distinguishable from noise (``z`` standard errors) and
below a small absolute tolerance ``a`` (nats) for noise-free losses. First differences remove
the trend before the noise is estimated, and the median absolute deviation (scaled to a normal
sd) ignores rare spikes. The window grows with the run (``W = max(window, n / 4)``, capped), so a
long fit must stay flat for longer before it is called converged. The rule must hold at
``patience`` consecutive checks, for every restart, after ``min_steps``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

__all__ = ["StopReason", "PlateauRule", "final_window", "nonfinite_limit_reached"]


class StopReason(str, enum.Enum):
    """Why a fit stopped."""

    CONVERGED = "converged"
    """The loss reached a plateau (see :class:`PlateauRule`)."""
    MAX_STEPS = "max_steps"
    """The step limit was reached before a plateau."""
    NONFINITE = "nonfinite"
    """Too many steps had a non-finite loss or gradient."""
    INTERRUPTED = "interrupted"
    """The user interrupted the fit (Ctrl-C); what was computed is kept."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class PlateauRule:
    """A noise-aware ELBO-plateau stopping rule.

    Parameters
    ----------
    min_steps : int
        Never stop as converged before this many steps.
    max_steps : int
        Stop here whatever the loss does (``StopReason.MAX_STEPS``).
    window : int
        Smallest window length ``W`` (steps).
    max_window : int
        Largest window length.
    z : float
        Number of standard errors an improvement must exceed to count as progress.
    atol : float
        Improvements below this (nats per window) never count as progress.
    patience : int
        Number of consecutive checks at which the plateau must hold.
    """

    min_steps: int = 1000
    max_steps: int = 20000
    window: int = 250
    max_window: int = 4000
    z: float = 2.0
    atol: float = 0.02
    patience: int = 2

    def __post_init__(self):
        if not (0 < self.min_steps <= self.max_steps):
            raise ValueError(
                f"need 0 < min_steps <= max_steps, got min_steps={self.min_steps}, max_steps={self.max_steps}"
            )
        if self.window < 2 or self.max_window < self.window:
            raise ValueError(f"need 2 <= window <= max_window, got {self.window}, {self.max_window}")
        if self.z < 0 or self.atol < 0 or self.patience < 1:
            raise ValueError("z and atol must be non-negative and patience at least 1")

    def window_length(self, n_steps: int) -> int:
        """The window ``W`` used after ``n_steps`` steps."""
        return int(min(max(self.window, n_steps // 4), self.max_window))

    def improvement(self, losses: np.ndarray) -> tuple[float, float]:
        """Return ``(delta, se)`` for one restart's loss trace (NaN losses are skipped steps)."""
        losses = np.asarray(losses, dtype=float)
        losses = losses[np.isfinite(losses)]
        W = self.window_length(losses.size)
        if losses.size < 2 * W:
            return np.inf, 0.0
        old, new = losses[-2 * W : -W], losses[-W:]
        diffs = np.diff(losses[-2 * W :])
        sd = 1.4826 * np.median(np.abs(diffs - np.median(diffs))) / np.sqrt(2.0)
        return float(old.mean() - new.mean()), float(sd * np.sqrt(2.0 / W))

    def is_plateau(self, losses: np.ndarray) -> bool:
        """Whether every restart's trace (shape ``(R, n)`` or ``(n,)``) is on a plateau now."""
        losses = np.atleast_2d(losses)
        if losses.shape[1] < self.min_steps:
            return False
        for trace in losses:
            delta, se = self.improvement(trace)
            if not delta < self.z * se + self.atol:
                return False
        return True


def final_window(trace: np.ndarray) -> np.ndarray:
    """The last 10% of a loss trace's steps (at least 50): what the final ELBO is averaged over.

    ``trace`` has shape ``(n,)`` or ``(R, n)``; the window is taken along the last axis.
    """
    trace = np.asarray(trace)
    n = trace.shape[-1]
    return trace[..., -max(50, n // 10) :] if n else trace


def nonfinite_limit_reached(skipped: int, steps: int, limit: float) -> bool:
    """Whether ``skipped`` non-finite steps of ``steps`` pass the limit (a fraction, and more than 50)."""
    return skipped > max(50, limit * steps)
