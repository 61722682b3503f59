"""The settings of a fit, as one frozen object: :class:`FitSettings`.

:func:`inference.fit` takes its options as keywords, builds one :class:`FitSettings` from them
(validated here, with sentences that name the argument and the fix) and hands that object down
to every stage; nothing relays keywords through layers. ``FitSettings.as_dict()`` is the plain
data written to ``fit.json``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from .stopping import PlateauRule

__all__ = ["FitSettings", "make_optimizer", "positive_int"]


def positive_int(name: str, value: Any) -> int:
    """``value`` as a positive int, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _fraction(name: str, value: Any, high: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not (
        0 <= value <= high
    ):
        raise ValueError(f"{name} is a number in [0, {high:g}], got {value!r}")
    return float(value)


def make_optimizer(lr: float | Callable[[Any], Any] = 0.01, clip_norm: float | None = None):
    """Adam with learning rate (or optax schedule) ``lr``, after global-norm clipping when ``clip_norm`` is given."""
    import optax

    if callable(lr):
        try:
            value = float(np.asarray(lr(0)))
        except Exception as err:  # noqa: BLE001 - any failure is the user's schedule
            raise ValueError(f"lr is a function but lr(0) failed ({err}); pass a number or an optax schedule") from err
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"the learning-rate schedule gives lr(0) = {value}; it must be a non-negative number")
    elif isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating)) or not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number or an optax schedule, got {lr!r}")
    adam = optax.adam(lr)
    if clip_norm is None:
        return adam
    if isinstance(clip_norm, bool) or not isinstance(clip_norm, (int, float, np.floating)) or not clip_norm > 0:
        raise ValueError(f"clip_norm must be a positive number (a global gradient norm), got {clip_norm!r}")
    return optax.chain(optax.clip_by_global_norm(float(clip_norm)), adam)


@dataclass(frozen=True)
class FitSettings:
    """Every option of a fit (the keywords of :func:`inference.fit`, documented there).

    Build it with ``FitSettings(...)`` or :meth:`from_keywords`; it validates itself.
    ``num_particles=None`` means: the flat engine uses ``batch_size`` (32) particles per restart
    (its compiled batch holds ``restarts * num_particles`` points), the NumPyro SVI path uses 8.
    ``draws`` chooses how the flat engine estimates the ELBO: ``"fixed"`` (one set of draws
    fixed for the whole fit, a deterministic objective maximized by L-BFGS: DADVI),
    ``"fresh"`` (new draws every step, Adam: stochastic VI), or ``"auto"`` (fixed for the
    Gaussian families, fresh for flows, which would fit the fixed draws themselves, and fresh
    whenever an optimizer or a learning rate is given). ``lr=None`` means 0.01.
    """

    guide: Any = "auto"
    objective: Any = "elbo"
    num_particles: int | None = None
    optimizer: Any = None
    lr: Any = None
    clip_norm: float | None = None
    seed: int = 0
    restarts: int = 1
    min_steps: int | None = None
    max_steps: int | None = None
    stopping: PlateauRule | None = None
    chunk_size: int = 100
    nonfinite_limit: float = 0.1
    init_scale: float = 0.1
    restart_spread: float = 0.5
    schedules: dict = field(default_factory=dict)
    init_params: dict | None = None
    init_values: dict | None = None
    guide_options: dict = field(default_factory=dict)
    progress: bool = True
    batch_size: int = 32
    draws: str = "auto"
    checkpoint: str | None = None
    resume: bool = False
    devices: Any = None

    def __post_init__(self):
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        positive_int("restarts", self.restarts)
        positive_int("chunk_size", self.chunk_size)
        positive_int("batch_size", self.batch_size)
        if self.num_particles is not None:
            positive_int("num_particles", self.num_particles)
        _fraction("nonfinite_limit", self.nonfinite_limit)
        _fraction("restart_spread", self.restart_spread, 2.0)
        if isinstance(self.init_scale, bool) or not isinstance(self.init_scale, (int, float)) or not self.init_scale > 0:
            raise ValueError(f"init_scale must be a positive number, got {self.init_scale!r}")
        if not isinstance(self.guide_options, dict):
            raise TypeError(f"guide_options must be a dict of options, got {type(self.guide_options).__name__}")
        if not isinstance(self.schedules, dict):
            raise TypeError(f"schedules must be a dict of name: function, got {type(self.schedules).__name__}")
        if self.stopping is not None and not isinstance(self.stopping, PlateauRule):
            raise TypeError(f"stopping must be an inference.PlateauRule, got {type(self.stopping).__name__}")
        for name in ("min_steps", "max_steps"):
            if getattr(self, name) is not None:
                positive_int(name, getattr(self, name))
        if isinstance(self.guide, str):
            from .guides import canonical_name

            canonical_name(self.guide)
        elif self.guide is None or not callable(self.guide):
            raise TypeError(
                f"guide must be a guide name such as 'auto' or 'multivariate_normal', or a NumPyro guide, got {self.guide!r}"
            )
        if isinstance(self.objective, str):
            from .objectives import make_objective

            make_objective(self.objective, num_particles=1)
        if self.checkpoint is not None and not isinstance(self.checkpoint, (str, os.PathLike)):
            raise TypeError(f"checkpoint must be a file path (str or pathlib.Path), got {type(self.checkpoint).__name__}")
        if not isinstance(self.resume, bool):
            raise TypeError(f"resume must be True or False, got {self.resume!r}")
        if self.resume and self.checkpoint is None:
            raise ValueError("resume=True needs checkpoint=PATH: the checkpoint file to continue from")
        if self.draws not in ("auto", "fixed", "fresh"):
            raise ValueError(f"draws must be 'auto', 'fixed' or 'fresh', got {self.draws!r}")
        if self.optimizer is None:
            make_optimizer(0.01 if self.lr is None else self.lr, self.clip_norm)
        self.rule  # noqa: B018 - validates min_steps <= max_steps

    @classmethod
    def from_keywords(cls, **options) -> FitSettings:
        """Settings from keywords; an unknown keyword is refused with the closest name."""
        import difflib

        names = [f.name for f in fields(cls)]
        for key in options:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise TypeError(f"fit() got an unknown setting {key!r}{hint}")
        return cls(**options)

    def with_(self, **changes) -> FitSettings:
        """A copy with ``changes``."""
        return replace(self, **changes)

    @property
    def rule(self) -> PlateauRule:
        """The stopping rule, with ``min_steps`` / ``max_steps`` applied."""
        rule = self.stopping or PlateauRule()
        if self.min_steps is not None or self.max_steps is not None:
            lo = self.min_steps if self.min_steps is not None else min(rule.min_steps, self.max_steps)
            hi = self.max_steps if self.max_steps is not None else max(rule.max_steps, lo)
            rule = replace(rule, min_steps=min(lo, hi), max_steps=hi)
        return rule

    def make_optimizer(self):
        """The optax optimizer: the given one, or Adam(lr) after optional clipping."""
        if self.optimizer is not None:
            return self.optimizer
        return make_optimizer(0.01 if self.lr is None else self.lr, self.clip_norm)

    def as_dict(self) -> dict:
        """Plain data for ``fit.json``."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "stopping":
                rule = self.rule
                value = {k: getattr(rule, k) for k in rule.__dataclass_fields__}
            elif f.name == "schedules":
                value = {k: repr(v) for k, v in value.items()}
            elif f.name in ("guide", "objective") and not isinstance(value, str):
                value = type(value).__name__
            elif f.name == "optimizer":
                value = "adam" if value is None else repr(value)
            elif f.name == "lr" and callable(value):
                value = repr(value)
            elif f.name == "checkpoint":
                value = None if value is None else os.fspath(value)
            elif f.name == "devices" and value is not None:
                value = value if isinstance(value, (int, str)) else [str(d) for d in value]
            elif f.name in ("init_params", "init_values"):
                value = None if value is None else sorted(value)
            out[f.name] = value
        return out
