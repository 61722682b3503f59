"""Interruption and checkpoints: a fit that stops at a step boundary, saves its state, and resumes.

Two pieces, both plain:

* :class:`Interrupt` turns SIGINT (Ctrl-C) and SIGTERM into a request that the optimizer loops
  of :mod:`inference.engine.vi` read at every step boundary: the loop stops there, keeps what it
  has learnt and returns ``StopReason.INTERRUPTED``; ``guide="auto"`` then stops its ladder and
  returns the best fit so far. A second Ctrl-C aborts at once (``KeyboardInterrupt``).
* :class:`Checkpoint` is one file (NumPy ``.npz``, loaded with ``allow_pickle=False``; the header
  is JSON text) holding the state of every stage of a fit: stages that finished (the MAP stage,
  each guide fitted) and the stage in progress (its optimizer state, host-side traces and
  random key). It is written atomically (a temporary sibling, then ``os.replace``), at most
  every ``every_s`` seconds, at the end of every stage and when the fit is interrupted.

A fit resumed from a checkpoint replays the finished stages from their saved results and
continues the running one from its saved state; every step is a pure function of that state,
so it gives the same parameters as a fit that was never interrupted, bit for bit on the same
machine. The checkpoint carries a fingerprint of the model (latent sites and shapes), of its
data (the observed values) and of the settings; resuming with another of any is refused with a
sentence that names which differs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["Interrupt", "Checkpoint", "FitControl", "Stage", "CheckpointError", "fingerprint", "FORMAT_VERSION"]

#: Version of the checkpoint file format.
FORMAT_VERSION = 1

_HEADER = "__vifit_checkpoint__"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, damaged, or of another fit)."""


class Interrupt:
    """SIGINT / SIGTERM as a request to stop at the next step boundary.

    Use as a context manager around a fit (main thread only; elsewhere it installs nothing and
    never requests a stop). ``requested`` is the name of the first signal received, or None.
    A second SIGINT while a stop is pending raises ``KeyboardInterrupt`` (abort now).
    """

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = self.requested or name

    def __enter__(self) -> Interrupt:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._previous[sig] = signal.signal(sig, self._handler)
                except (ValueError, OSError):  # pragma: no cover - no signals in this interpreter
                    pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def __bool__(self) -> bool:
        return self.requested is not None


def _hash_arrays(items) -> str:
    h = hashlib.sha256()
    for name, value in items:
        h.update(str(name).encode())
        a = np.asarray(value)
        if a.dtype == object:
            h.update(repr(value).encode())
        else:
            h.update(str(a.dtype).encode() + str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def fingerprint(target, settings) -> dict:
    """What a checkpoint must match: the model's layout, its data and the settings.

    The data are the observed values (from the target's predictive program, which the verdict
    compiles anyway) and the array arguments of the model; the settings are those that change
    the numbers (not ``progress``, ``checkpoint``, ``resume`` or ``devices``).
    """
    layout = target.layout
    model = f"{getattr(target.model, '__module__', '')}.{getattr(target.model, '__qualname__', type(target.model).__name__)}"
    sites = [[name, [int(n) for n in shape]] for name, shape in zip(layout.names, layout.shapes)]
    observed = target.predict(np.zeros((1, target.dim)), seed=0).observed
    leaves = jax.tree.leaves((target.args, target.kwargs))
    data = _hash_arrays(sorted(observed.items()) + [(i, leaf) for i, leaf in enumerate(leaves)])
    skip = ("progress", "checkpoint", "resume", "devices")
    options = {k: v for k, v in settings.as_dict().items() if k not in skip}
    text = json.dumps(options, sort_keys=True, default=repr)
    return {"model": model, "sites": sites, "data": data, "settings": hashlib.sha256(text.encode()).hexdigest()}


class Stage:
    """One stage's view of a :class:`Checkpoint` (and of the interrupt request).

    Attributes
    ----------
    key : str
        The stage's name in the checkpoint (``"map"``, ``"fit 0 multivariate_normal"``...).
    saved : dict of str to ndarray or None
        The stage's state saved by an earlier run (resume), else None.
    """

    def __init__(self, checkpoint: Checkpoint | None, interrupt: Interrupt | None, key: str):
        self.checkpoint, self.interrupt, self.key = checkpoint, interrupt, key
        self.saved = checkpoint.running(key) if checkpoint is not None else None
        self.halted = False  # set by the loop that stopped here on request

    @property
    def stop(self) -> bool:
        """Whether a stop was requested (check at every step boundary); the loop that obeys
        it saves its state with ``save(..., force=True)`` and sets ``halted``."""
        return bool(self.interrupt)

    def halt(self, arrays) -> None:
        """Stop here: save the running state now and mark the stage unfinished."""
        self.save(arrays, force=True)
        self.halted = True

    def save(self, arrays, *, force: bool = False) -> None:
        """Save the running state: ``arrays`` (a dict, or a function returning one, called only
        when a save is due) at most every ``every_s`` seconds, or now with ``force``."""
        if self.checkpoint is not None and (force or self.checkpoint.due()):
            self.checkpoint.update(self.key, arrays() if callable(arrays) else arrays, force=True)

    def result(self) -> dict | None:
        """The saved result of this stage when an earlier run finished it, else None."""
        return self.checkpoint.result(self.key) if self.checkpoint is not None else None

    def finish(self, arrays: dict) -> None:
        """Record this stage as finished, with its result."""
        if self.checkpoint is not None:
            self.checkpoint.finish(self.key, arrays)


class Checkpoint:
    """The saved state of one fit, in one ``.npz`` file (see the module docstring).

    Parameters
    ----------
    path : str or path
    print_ : dict
        The fit's :func:`fingerprint`.
    every_s : float
        Shortest time between two periodic saves.
    """

    def __init__(self, path, print_: dict, *, every_s: float = 10.0):
        self.path = Path(path)
        self.fingerprint = print_
        self.every_s = every_s
        self.finished: dict[str, dict] = {}
        self.current: tuple[str, dict] | None = None
        self._last = time.monotonic()
        self.saves = 0

    # -- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, path, print_: dict, *, resume: bool, every_s: float = 10.0) -> Checkpoint:
        """A new checkpoint at ``path``, or (``resume``) the one saved there, checked against ``print_``."""
        path = Path(path)
        if path.is_dir():
            raise CheckpointError(f"checkpoint={str(path)!r} is a folder; give a file name such as {str(path / 'fit.ckpt.npz')!r}")
        if not path.parent.exists():
            raise CheckpointError(f"the folder of checkpoint={str(path)!r} does not exist; create it first")
        if not resume and path.exists():
            raise CheckpointError(
                f"checkpoint={str(path)!r} already exists; pass resume=True to continue that fit, or give a new file "
                "name (vifit does not overwrite it)"
            )
        cp = cls(path, print_, every_s=every_s)
        if resume:
            cp._load()
        # At once: a path that cannot be written is found before the fit, not after it.
        cp.write()
        return cp

    def _load(self) -> None:
        if not self.path.exists():
            raise CheckpointError(
                f"there is no checkpoint at {str(self.path)!r} to resume from; run without resume to start one"
            )
        try:
            with np.load(self.path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            header = json.loads(str(arrays.pop(_HEADER)))
        except Exception as err:  # noqa: BLE001 - any damage to the file is reported the same way
            raise CheckpointError(
                f"{str(self.path)!r} is not a readable vifit checkpoint ({type(err).__name__}: {err}); "
                "start the fit again without resume"
            ) from err
        if header.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"{str(self.path)!r} has checkpoint format {header.get('format')!r}; this vifit reads {FORMAT_VERSION}")
        saved = header.get("fingerprint", {})
        mine = self.fingerprint
        if saved.get("model") != mine["model"] or saved.get("sites") != mine["sites"]:
            raise CheckpointError(
                f"the checkpoint {str(self.path)!r} was written by another model ({saved.get('model')} with latent sites "
                f"{[s[0] for s in saved.get('sites', [])]}; this fit has {mine['model']} with {[s[0] for s in mine['sites']]}); "
                "give a new checkpoint file, or resume with the model that wrote it"
            )
        if saved.get("data") != mine["data"]:
            raise CheckpointError(
                f"the checkpoint {str(self.path)!r} was written for other data (the observed values differ); "
                "give a new checkpoint file, or resume with the data it was written for"
            )
        if saved.get("settings") != mine["settings"]:
            raise CheckpointError(
                f"the checkpoint {str(self.path)!r} was written with other fit settings (seed, guide, steps...); "
                "resume with the settings it was written with, or give a new checkpoint file"
            )
        stages: dict[str, dict] = {}
        for name, value in arrays.items():
            stage, _, leaf = name.partition("//")
            stages.setdefault(stage, {})[leaf] = value
        self.finished = {k: stages.get(k, {}) for k in header.get("finished", [])}
        running = header.get("running")
        self.current = (running, stages.get(running, {})) if running else None

    # -- reading ----------------------------------------------------------------------------------
    def result(self, key: str) -> dict | None:
        """The saved result of a finished stage, or None."""
        return self.finished.get(key)

    def running(self, key: str) -> dict | None:
        """The saved state of the stage in progress when it is ``key``, or None."""
        if self.current is not None and self.current[0] == key:
            return self.current[1]
        return None

    # -- writing ----------------------------------------------------------------------------------
    def due(self) -> bool:
        """Whether a periodic save is due."""
        return time.monotonic() - self._last >= self.every_s

    def update(self, key: str, arrays: dict, *, force: bool = False) -> None:
        """Record the running stage's state; write the file when due (or ``force``)."""
        self.current = (key, {k: np.asarray(v) for k, v in arrays.items()})
        if force or time.monotonic() - self._last >= self.every_s:
            self.write()

    def finish(self, key: str, arrays: dict) -> None:
        """Record a finished stage's result and write the file."""
        self.finished[key] = {k: np.asarray(v) for k, v in arrays.items()}
        if self.current is not None and self.current[0] == key:
            self.current = None
        self.write()

    def write(self) -> None:
        """Write the file atomically: a temporary sibling, flushed, then renamed over the old one."""
        header = {
            "format": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "finished": list(self.finished),
            "running": self.current[0] if self.current else None,
            "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        arrays = {_HEADER: np.asarray(json.dumps(header))}
        stages = dict(self.finished)
        if self.current is not None:
            stages[self.current[0]] = self.current[1]
        for stage, leaves in stages.items():
            for leaf, value in leaves.items():
                arrays[f"{stage}//{leaf}"] = value
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError as err:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise CheckpointError(
                f"the checkpoint could not be written to {str(self.path)!r}: {err.strerror or err}; "
                "free some space or give another checkpoint path"
            ) from err
        self._last = time.monotonic()
        self.saves += 1


# -- pytrees and lists as flat arrays ----------------------------------------------------------------
def tree_arrays(prefix: str, tree) -> dict[str, np.ndarray]:
    """The leaves of ``tree`` as ``{prefix/i: array}`` (restore with :func:`tree_restore`)."""
    return {f"{prefix}/{i}": np.array(leaf, copy=True) for i, leaf in enumerate(jax.tree.leaves(tree))}


def tree_restore(prefix: str, arrays: dict, like) -> Any:
    """A pytree shaped like ``like`` with the leaves saved by :func:`tree_arrays`."""
    leaves, treedef = jax.tree.flatten(like)
    return jax.tree.unflatten(treedef, [np.asarray(arrays[f"{prefix}/{i}"]) for i in range(len(leaves))])


def list_arrays(prefix: str, items: list, width: int) -> dict[str, np.ndarray]:
    """A list of equal-length vectors (possibly empty) as one ``(n, width)`` array."""
    return {prefix: np.asarray(items, dtype=float).reshape(len(items), width)}


def list_restore(prefix: str, arrays: dict) -> list:
    return [row.copy() for row in np.asarray(arrays[prefix])]


class FitControl:
    """The interrupt request and the checkpoint of one fit, handed to every stage of it.

    Parameters
    ----------
    settings : FitSettings
        ``settings.checkpoint`` and ``settings.resume`` say whether and where state is saved.
    interrupt : Interrupt, optional
        Read at every step boundary; None never stops.
    """

    def __init__(self, settings=None, interrupt: Interrupt | None = None):
        self.settings = settings
        self.interrupt = interrupt
        self.checkpoint: Checkpoint | None = None

    @property
    def stopped(self) -> bool:
        """Whether a stop (SIGINT / SIGTERM) was requested."""
        return bool(self.interrupt)

    def open(self, target) -> None:
        """Open (or, resuming, load and check) the checkpoint of a fit on ``target``."""
        settings = self.settings
        if settings is None or settings.checkpoint is None or self.checkpoint is not None:
            return
        self.checkpoint = Checkpoint.open(settings.checkpoint, fingerprint(target, settings), resume=settings.resume)

    def stage(self, key: str) -> Stage:
        """The view of stage ``key``."""
        return Stage(self.checkpoint, self.interrupt, key)
