"""Stop a long fit with Ctrl-C, keep what it learnt, and resume it to the same answer.

A fit given ``checkpoint=PATH`` saves its state there (periodically, at the end of every stage
and when it is stopped). Ctrl-C (SIGINT) or SIGTERM stops it at the next step boundary: the
result holds what was learnt, and its verdict says it was interrupted. ``resume=True`` continues
from the file, and the resumed fit gives the same parameters, bit for bit, as a fit that was
never stopped.

Here the script presses Ctrl-C itself: a watcher thread sends SIGINT to this process once the
fit has written its checkpoint. On the command line the same is
``vifit fit job.toml --checkpoint fit.ckpt.npz`` then ``... --checkpoint fit.ckpt.npz --resume``.

Run ``python examples/interrupt_and_resume.py`` (``--small`` for a quick run).
"""

import argparse
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from inference import fit
from vi_models import kinetics


def decay_model():
    """First-order decay ``A -> B : k`` on simulated data (k = 0.35, noise sd 0.02)."""
    times = np.linspace(0.0, 10.0, 20)
    rng = np.random.default_rng(1)
    values = np.exp(-0.35 * times) + 0.02 * rng.standard_normal(times.size)
    data = kinetics.Dataset.from_arrays(times, {"A": values})
    return kinetics.model("A -> B : k", data, initial={"A": 1.0}, priors={"k": "LogNormal(log(0.5), 1)"})


def press_ctrl_c_when_running(checkpoint: Path, delay: float) -> threading.Thread:
    """Send SIGINT to this process ``delay`` seconds after ``checkpoint`` appears (the fit is running)."""

    def watch():
        while not checkpoint.exists():
            time.sleep(0.05)
        time.sleep(delay)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def main(small: bool = False, folder: str | None = None) -> dict:
    """Fit, stop with SIGINT, resume; compare with an uninterrupted fit of the same seed."""
    model = decay_model()
    steps = 8000 if small else 40000
    # Adam with fresh draws and a fixed number of steps: a long fit worth checkpointing.
    options = dict(guide="normal", lr=0.001, min_steps=steps, max_steps=steps, seed=4, progress=not small)
    folder = Path(folder or tempfile.mkdtemp(prefix="vifit-resume-"))
    checkpoint = folder / "fit.ckpt.npz"

    watcher = press_ctrl_c_when_running(checkpoint, delay=1.0)
    stopped = fit(model, checkpoint=checkpoint, **options)
    watcher.join()
    verdict = stopped.verdict()
    print(f"stopped by {stopped.settings.get('interrupted')} after {stopped.num_steps} of {steps} steps")
    print(f"verdict of the stopped fit: {verdict.level}: {verdict.reason}")

    resumed = fit(model, checkpoint=checkpoint, resume=True, **options)
    uninterrupted = fit(model, **options)
    same = all(np.array_equal(resumed.params[name], uninterrupted.params[name]) for name in uninterrupted.params)
    print(f"resumed fit: {resumed.num_steps} steps; the same parameters as an uninterrupted fit, bit for bit: {same}")
    return {
        "interrupted": stopped.settings.get("interrupted"),
        "stopped_steps": stopped.num_steps,
        "stopped_level": verdict.level,
        "resumed_steps": resumed.num_steps,
        "bit_equal": same,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a short run")
    args = parser.parse_args()
    main(args.small)
