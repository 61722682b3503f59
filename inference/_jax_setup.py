"""Process-wide JAX settings vifit relies on: float64 and the persistent compilation cache.

The cache stores compiled programs on disk, so a second run of the same fit in a new process
skips most of the compilation. It lives in ``$VIFIT_CACHE_DIR`` (default
``~/.cache/vifit/jax``); set ``VIFIT_COMPILATION_CACHE=0`` to switch it off.

A program is found again only if the new process traces exactly the same program, and it is
stored only if it has no host callbacks. vifit keeps both true for its fits: the default
objective sums the ELBO's sites in trace order rather than in the hash-seed-dependent order of
a Python ``set`` (:class:`inference.engine.objectives.OrderedTrace_ELBO`), and the ODE solves trace
diffrax's runtime checks without host callbacks (:mod:`vi_models.kinetics.ode`). Programs that
compile in less than 0.05 s are not stored (reading them back would cost about as much).
Set ``jax.config.update("jax_explain_cache_misses", True)`` to have JAX log each miss and why.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

_DONE = False


def cache_dir() -> Path | None:
    """The compilation cache folder, or None when the cache is switched off."""
    if os.environ.get("VIFIT_COMPILATION_CACHE", "1").strip().lower() in {"0", "false", "no", "off"}:
        return None
    root = os.environ.get("VIFIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "vifit", "jax"
    )
    return Path(root)


def setup() -> None:
    """Enable float64 and (unless switched off) the persistent compilation cache. Idempotent."""
    global _DONE
    if _DONE:
        return
    jax.config.update("jax_enable_x64", True)
    path = cache_dir()
    if path is not None and not jax.config.jax_compilation_cache_dir:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            path = None
        if path is not None:
            jax.config.update("jax_compilation_cache_dir", str(path))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.05)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _DONE = True
