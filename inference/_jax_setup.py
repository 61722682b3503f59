"""Process-wide JAX settings vifit relies on: float64 and the persistent compilation cache.

The cache stores compiled programs on disk, so a second run of the same fit in a new process
skips most of the compilation. It lives in ``$VIFIT_CACHE_DIR`` (default
``~/.cache/vifit/jax``); set ``VIFIT_COMPILATION_CACHE=0`` to switch it off.
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
