"""Interruption and resume: a stop at a step boundary keeps what was learnt; a resumed fit equals an uninterrupted one.

In-process tests request the stop deterministically (after a given number of step-boundary
checks) through a stand-in for :class:`inference.engine.checkpoint.Interrupt`; the command-line
test sends real SIGINT and SIGTERM to a running ``vifit fit``.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import inference.engine.fit as fit_module
from inference import fit
from inference.engine.checkpoint import CheckpointError, Interrupt
from inference.engine.stopping import StopReason

ROOT = Path(__file__).resolve().parents[2]


class StopAfter(Interrupt):
    """A stop requested at the ``k``-th step-boundary check (as if SIGINT arrived there)."""

    checks = 0

    def __init__(self, k):
        super().__init__()
        self.k = k

    def __bool__(self):
        StopAfter.checks += 1
        if self.k is not None and StopAfter.checks >= self.k and self.requested is None:
            self.requested = "SIGINT"
        return self.requested is not None


def student_model(y):
    mu = numpyro.sample("mu", dist.Normal(0, 10))
    s = numpyro.sample("s", dist.HalfNormal(2))
    numpyro.sample("y", dist.StudentT(3, mu, s), obs=y)


def other_model(y):
    mu = numpyro.sample("mu", dist.Normal(0, 10))
    t = numpyro.sample("t", dist.HalfNormal(2))
    numpyro.sample("y", dist.Normal(mu, t), obs=y)


Y = jnp.asarray(np.random.default_rng(0).standard_normal(30) + 1.0)


def _fit_stopped(monkeypatch, k, **kw):
    StopAfter.checks = 0
    monkeypatch.setattr(fit_module, "Interrupt", lambda: StopAfter(k))
    try:
        return fit(student_model, Y, progress=False, **kw)
    finally:
        monkeypatch.setattr(fit_module, "Interrupt", Interrupt)


def _same_params(a, b) -> bool:
    return set(a.params) == set(b.params) and all(np.array_equal(np.asarray(a.params[n]), np.asarray(b.params[n])) for n in a.params)


CASES = {
    # guide, draws, the check at which the stop comes
    "adam, mid-chunk": ("normal", "fresh", 150),
    "adam, first chunk": ("normal", "fresh", 7),
    "fixed draws (L-BFGS)": ("multivariate_normal", "fixed", 4),
    "auto, MAP stage": ("auto", "auto", 5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_interrupted_then_resumed_equals_uninterrupted(case, tmp_path, monkeypatch):
    guide, draws, k = CASES[case]
    kw = dict(guide=guide, draws=draws, seed=3)
    reference = fit(student_model, Y, progress=False, **kw)
    path = tmp_path / "fit.ckpt.npz"
    stopped = _fit_stopped(monkeypatch, k, checkpoint=path, **kw)
    assert stopped.settings["interrupted"] == "SIGINT"
    assert stopped.stop_reason == StopReason.INTERRUPTED
    verdict = stopped.verdict()
    assert verdict.level == "unreliable"
    assert any(c.name == "interrupted" and str(path) in c.message for c in verdict.checks)
    assert path.exists()
    with np.load(path, allow_pickle=False) as data:  # plain arrays: loads without pickle
        assert "__vifit_checkpoint__" in data.files
    resumed = fit(student_model, Y, progress=False, checkpoint=path, resume=True, **kw)
    assert "interrupted" not in resumed.settings
    assert resumed.num_steps == reference.num_steps
    assert _same_params(resumed, reference), "the resumed fit differs from the uninterrupted one"
    if guide != "auto":
        assert stopped.num_steps < reference.num_steps


def test_auto_stopped_in_the_ladder_keeps_the_attempts(tmp_path, monkeypatch):
    kw = dict(guide="auto", seed=3)
    reference = fit(student_model, Y, progress=False, **kw)
    StopAfter.checks = 0
    monkeypatch.setattr(fit_module, "Interrupt", lambda: StopAfter(None))
    fit(student_model, Y, progress=False, **kw)
    total = StopAfter.checks  # step-boundary checks of a whole fit
    monkeypatch.setattr(fit_module, "Interrupt", Interrupt)
    path = tmp_path / "auto.npz"
    stopped = _fit_stopped(monkeypatch, total - 2, checkpoint=path, **kw)
    last = stopped.attempts[-1]
    assert last.guide != "laplace" and last.outcome.startswith("stopped by SIGINT")
    resumed = fit(student_model, Y, progress=False, checkpoint=path, resume=True, **kw)
    assert _same_params(resumed, reference)
    assert [a.guide for a in resumed.attempts] == [a.guide for a in reference.attempts]


def test_a_checkpoint_of_another_fit_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    _fit_stopped(monkeypatch, 20, guide="normal", draws="fresh", seed=1, checkpoint=path)
    with pytest.raises(CheckpointError, match="other data"):
        fit(student_model, Y + 1.0, guide="normal", draws="fresh", seed=1, checkpoint=path, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="another model"):
        fit(other_model, Y, guide="normal", draws="fresh", seed=1, checkpoint=path, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="other fit settings"):
        fit(student_model, Y, guide="normal", draws="fresh", seed=2, checkpoint=path, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="already exists"):
        fit(student_model, Y, guide="normal", draws="fresh", seed=1, checkpoint=path, progress=False)


def test_bad_checkpoint_paths_are_refused_in_words(tmp_path):
    kw = dict(guide="normal", draws="fresh", progress=False)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        fit(student_model, Y, checkpoint=tmp_path / "missing.npz", resume=True, **kw)
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(b"PK\x03\x04 not really a zip file")
    with pytest.raises(CheckpointError, match="not a readable vifit checkpoint"):
        fit(student_model, Y, checkpoint=damaged, resume=True, **kw)
    with pytest.raises(CheckpointError, match="is a folder"):
        fit(student_model, Y, checkpoint=tmp_path, **kw)
    with pytest.raises(ValueError, match="resume=True needs checkpoint"):
        fit(student_model, Y, resume=True, **kw)


# -- the command line: real signals ------------------------------------------------------------------
LONG_TOML = """\
data = "{data}"
mechanism = "A -> B : k"
[initial]
A = 1.0
B = 0.0
[fit]
guide = "normal"
lr = 0.001
min_steps = 12000
max_steps = 12000
seed = 1
"""


def _vifit(args, cwd):
    return [sys.executable, "-c", "import sys; from inference.outputs.cli import main; sys.exit(main())", *args]


def _run_and_signal(args, cwd, checkpoint: Path, sig) -> subprocess.CompletedProcess:
    """Start ``vifit`` and send ``sig`` once the fit is under way (its checkpoint is on disk)."""
    mtime = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
    proc = subprocess.Popen(_vifit(args, cwd), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoint.exists() and checkpoint.stat().st_mtime_ns != mtime:
            break
        time.sleep(0.1)
    time.sleep(1.5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_cli_sigint_writes_marked_results_and_resume_matches(tmp_path, bench_data, monkeypatch, capsys):
    (tmp_path / "a.csv").write_bytes((bench_data / "a_decay.csv").read_bytes())
    (tmp_path / "long.toml").write_text(LONG_TOML.format(data="a.csv"))
    ckpt = tmp_path / "fit.ckpt.npz"
    common = ["fit", "long.toml", "--no-progress", "--checkpoint", str(ckpt)]

    first = _run_and_signal(common + ["--out", "first"], tmp_path, ckpt, signal.SIGINT)
    assert first.returncode == 130, first.stderr
    assert "Traceback" not in first.stderr
    assert "stopped by SIGINT" in first.stderr and "--resume" in first.stderr
    record = json.loads((tmp_path / "first" / "fit.json").read_text())
    assert record["interrupted"] == "SIGINT"
    assert record["verdict"]["level"] == "unreliable"
    assert 0 < record["num_steps"] < 12000
    assert (tmp_path / "first" / ".vifit-result").exists() and (tmp_path / "first" / "posterior.nc").exists()

    # A resumed fit stopped again (SIGTERM this time), then resumed to the end.
    second = _run_and_signal(common + ["--resume", "--out", "second"], tmp_path, ckpt, signal.SIGTERM)
    assert second.returncode == 143, second.stderr
    assert json.loads((tmp_path / "second" / "fit.json").read_text())["interrupted"] == "SIGTERM"

    # The uninterrupted runs need no signal: they run in this process and share one compiled fit.
    from inference.outputs import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(common + ["--resume", "--out", "third"]) == 0, capsys.readouterr().err
    assert cli.main(["fit", "long.toml", "--no-progress", "--out", "plain"]) == 0, capsys.readouterr().err
    # Same parameters bit for bit, hence the same seeded draws and the same summary.
    assert (tmp_path / "third" / "summary.csv").read_bytes() == (tmp_path / "plain" / "summary.csv").read_bytes()
    resumed, reference = (json.loads((tmp_path / f / "fit.json").read_text()) for f in ("third", "plain"))
    assert resumed["num_steps"] == reference["num_steps"] == 12000
    assert resumed["inputs"] == reference["inputs"] and len(reference["inputs"][0]["sha256"]) == 64

    # Refusals (they come before any fit): a checkpoint inside --out, an existing checkpoint
    # without --resume, --resume alone.
    capsys.readouterr()
    for args, words in (
        (["--checkpoint", "plain/c.npz", "--out", "plain"], "inside the output folder"),
        (["--checkpoint", str(ckpt), "--out", "fresh"], "already exists"),
        (["--resume", "--out", "fresh"], "--checkpoint FILE"),
    ):
        code = cli.main(["fit", "long.toml", "--no-progress", *args])
        err = capsys.readouterr().err
        assert code == 2 and words in err and "Traceback" not in err, err
    assert not (tmp_path / "fresh").exists()


def test_interrupt_restores_signal_handlers():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with Interrupt() as stop:
        assert signal.getsignal(signal.SIGINT) == stop._handler
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == "SIGTERM"
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_large_model_is_interrupted_and_resumed_bit_for_bit(tmp_path, monkeypatch):
    """Above ``LARGE_DIM`` latent dimensions auto takes the large-model path (MAP, then the mean-field fixed point).

    The bound is lowered to 100 here, so that a plate of 150 experiments takes that path quickly.
    """
    import importlib.util

    from inference.engine import large

    spec = importlib.util.spec_from_file_location("plates", Path(__file__).with_name("test_minibatch_plate.py"))
    plates = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plates)
    monkeypatch.setattr(large, "LARGE_DIM", 100)
    model, data, _ = plates.make_plate(150, seed=3)
    StopAfter.checks = 0
    monkeypatch.setattr(fit_module, "Interrupt", lambda: StopAfter(None))
    reference = fit(model, data, progress=False, seed=0)
    total = StopAfter.checks
    assert "large_model" in reference.settings
    for k in (3, total - 2):  # in the MAP stage, then in the mean-field fit
        path = tmp_path / f"large{k}.npz"
        StopAfter.checks = 0
        monkeypatch.setattr(fit_module, "Interrupt", lambda: StopAfter(k))
        stopped = fit(model, data, progress=False, seed=0, checkpoint=path)
        monkeypatch.setattr(fit_module, "Interrupt", Interrupt)
        assert stopped.settings["interrupted"] == "SIGINT"
        assert (stopped.attempts[-1].num_steps > 0) == (k > 3)  # stopped within the mean-field fit
        resumed = fit(model, data, progress=False, seed=0, checkpoint=path, resume=True)
        assert _same_params(resumed, reference)
