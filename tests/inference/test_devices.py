"""Many experiments on more than one device, and on more than one process.

JAX fixes its device count when it is imported, so the runs on four CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``) and the two-process run
(``jax.distributed.initialize`` on localhost) are subprocesses; each writes what it computed
to a file that the test compares with the single-device values of this process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

# The plate every run builds: ragged, irregular time grids (experiment e has 6 + e % 7 points), so
# padding and per-experiment grids are part of what is compared.
PLATE = textwrap.dedent(
    """
    import numpy as np
    from vi_models.kinetics import PlateData, plate_model

    def plate(E=64, seed=0):
        rng = np.random.default_rng(seed)
        T = 12
        times = np.sort(rng.uniform(0.0, 10.0, (E, T)), axis=1)
        values = np.full((E, T), np.nan)
        counts = 6 + np.arange(E) % 7
        grid = PlateData.from_arrays(times, np.where(np.arange(T)[None] < counts[:, None], 0.0, np.nan))
        model = plate_model("A -> B : k", grid, initial={"A": 1.0, "B": 0.0}, hierarchical="k")
        u = np.log(0.35) + 0.3 * rng.standard_normal(E)
        data = model.synthetic(grid, {"k_mu": np.log(0.35), "k_tau": 0.3, "k_u": u, "sigma": 0.02}, seed=seed + 1)
        return model, data

    def points(target, n=16, seed=3):
        # prior draws, and points near the posterior (the truth's neighbourhood)
        x = target.prior_draws(n // 2, seed=seed)
        rng = np.random.default_rng(seed)
        near = target.starts(1)[0] + 0.05 * rng.standard_normal((n - n // 2, target.dim))
        return np.concatenate([x, near])
    """
)


def _run(code: str, tmp_path: Path, *, devices: int | None = None, env_extra=None, timeout=240) -> subprocess.CompletedProcess:
    script = tmp_path / "run.py"
    script.write_text(PLATE + "\n" + textwrap.dedent(code))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.update(env_extra or {})
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _close(a, b, rtol=1e-10):
    """Equal to ``rtol`` relative to the largest magnitude of each row (float64 sums in another order)."""
    a, b = np.asarray(a), np.asarray(b)
    scale = np.maximum(1.0, np.max(np.abs(a), axis=-1, keepdims=True)) if a.ndim > 1 else np.maximum(1.0, np.abs(a))
    return np.max(np.abs(a - b) / scale)


@pytest.fixture(scope="module")
def single_device():
    """The plate's log density and gradient on one device, in this process."""
    namespace = {}
    exec(PLATE, namespace)  # noqa: S102 - the same plate code the subprocesses run
    import inference  # noqa: F401 - float64
    from inference.engine.target import make_target

    model, data = namespace["plate"]()
    target = make_target(model, (data,), {}, batch_size=8, chunk=8)  # one vectorized batch
    x = namespace["points"](target)
    value, grad = target.log_density(x, grad=True)
    return {"x": x, "value": value, "grad": grad, "model": model, "data": data}


def test_sharded_log_density_and_gradient_equal_the_single_device_ones(tmp_path, single_device):
    """Four CPU devices, the experiments split 16 per device: equal to 1e-10 (float64), and so is a whole fit."""
    out = tmp_path / "out.npz"
    np.save(tmp_path / "x.npy", single_device["x"])
    proc = _run(
        f"""
        import jax, numpy as np
        import inference
        from inference import fit
        from inference.engine.target import make_target
        assert len(jax.devices()) == 4
        model, data = plate()
        target = make_target(model, (data,), {{}}, batch_size=8, devices=4)
        x = np.load("x.npy")
        value, grad = target.log_density(x, grad=True)
        seq = make_target(model, (data,), {{}}, batch_size=8, devices=4, chunk=1)
        value_seq, grad_seq = seq.log_density(x, grad=True)
        one = fit(model, data, guide="multivariate_normal", progress=False, seed=0)
        four = fit(model, data, guide="multivariate_normal", progress=False, seed=0, devices=4)
        np.savez({str(out)!r}, value=value, grad=grad, value_seq=value_seq, grad_seq=grad_seq, prior=target.prior_draws(4, seed=5),
                 loc1=one.params["auto_loc"], loc4=four.params["auto_loc"],
                 tril1=one.params["auto_scale_tril"], tril4=four.params["auto_scale_tril"])
        print(target.placement.describe())
        """,
        tmp_path,
        devices=4,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 cpu device(s) on 1 process(es); 4 data array(s) split along 64 experiments (16 per device)" in proc.stdout
    got = np.load(out)
    assert _close(got["value"], single_device["value"]) < 1e-10
    assert _close(got["grad"], single_device["grad"]) < 1e-10
    assert _close(got["value_seq"], single_device["value"]) < 1e-10
    assert _close(got["grad_seq"], single_device["grad"]) < 1e-10
    # The prior program and a whole fit (DADVI, deterministic) run sharded too.
    from inference.engine.target import make_target

    target = make_target(single_device["model"], (single_device["data"],), {}, batch_size=8)
    assert np.array_equal(got["prior"], target.prior_draws(4, seed=5))
    assert np.max(np.abs(got["loc4"] - got["loc1"])) < 1e-6
    assert np.max(np.abs(got["tril4"] - got["tril1"])) < 1e-6


@pytest.mark.parametrize("chunk", [1, 3, None])
def test_points_in_chunks_give_the_vectorized_values(single_device, chunk):
    """``chunk`` (points vectorized together; the chunks one after another) changes only the order of work."""
    from inference.engine.target import make_target

    target = make_target(single_device["model"], (single_device["data"],), {}, batch_size=8, chunk=chunk)
    value, grad = target.log_density(single_device["x"], grad=True)
    assert _close(value, single_device["value"]) < 1e-12
    assert _close(grad, single_device["grad"]) < 1e-12
    np.testing.assert_allclose(target.log_density(single_device["x"]), value, rtol=1e-14)


def test_the_default_chunk_is_one_point_for_a_log_density_with_a_while_loop():
    import jax.numpy as jnp
    from inference.engine.target import DEFAULT_CHUNK, _has_while_loop

    def with_loop(u):
        return jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] * 0.5), (0, jnp.sum(u)))[1]

    assert _has_while_loop(jax.value_and_grad(lambda u: jnp.sum(u**2)), 3) is False
    assert _has_while_loop(lambda u: jax.lax.cond(u[0] > 0, with_loop, jnp.sum, u), 3) is True
    assert DEFAULT_CHUNK == 4
    with pytest.raises(ValueError, match="chunk must be a positive integer"):
        from inference.engine.target import make_target

        make_target(lambda: None, chunk=0)


def test_device_errors_are_sentences(single_device):
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    from inference import fit
    from inference.engine.target import make_target

    model, data = single_device["model"], single_device["data"]
    with pytest.raises(ValueError, match="JAX sees 1 device"):
        make_target(model, (data,), {}, batch_size=4, devices=4)

    y = jnp.asarray(np.random.default_rng(0).normal(size=10))

    def inside():  # the data are constants of the model, not arguments
        mu = numpyro.sample("mu", dist.Normal(0, 1))
        with numpyro.plate("data", 10):
            numpyro.sample("y", dist.Normal(mu, 1), obs=y)

    with pytest.raises(ValueError, match="pass the data to the model as arguments"):
        make_target(inside, (), {}, batch_size=4, devices=1)
    with pytest.raises(ValueError, match="devices must be a number"):
        fit(model, data, devices="gpu", progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TWO_PROCESS = """
import sys, jax, numpy as np
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]),
                           initialization_timeout=60)
import inference
from inference import fit
from inference.engine.target import make_target
assert jax.process_count() == 2 and len(jax.devices()) == 4 and len(jax.local_devices()) == 2
model, data = plate()
target = make_target(model, (data,), {}, batch_size=8, devices="all")
x = np.load(sys.argv[3])
value, grad = target.log_density(x, grad=True)
result = fit(model, data, guide="normal", lr=0.01, min_steps=200, max_steps=200, progress=False, seed=0,
             devices="all")
np.savez(sys.argv[4], value=value, grad=grad, loc=result.params["auto_loc"], description=target.placement.describe())
"""


# Two fresh processes, each compiling the model: over a minute on 2 cores (make test-all runs it).
@pytest.mark.slow
def test_two_processes_on_one_machine_compute_the_single_process_values(tmp_path, single_device):
    """``jax.distributed.initialize`` on localhost, two processes of two CPU devices each: a global mesh of four."""
    np.save(tmp_path / "x.npy", single_device["x"])
    script = tmp_path / "worker.py"
    script.write_text(PLATE + TWO_PROCESS)
    address = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [
        subprocess.Popen([sys.executable, str(script), address, str(i), str(tmp_path / "x.npy"),
                          str(tmp_path / f"out{i}.npz")], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    got = [np.load(tmp_path / f"out{i}.npz") for i in range(2)]
    assert "4 cpu device(s) on 2 process(es)" in str(got[0]["description"])
    for g in got:
        assert _close(g["value"], single_device["value"]) < 1e-10
        assert _close(g["grad"], single_device["grad"]) < 1e-10
    # Both processes ran the same fit on replicated values: the same parameters, bit for bit.
    assert np.array_equal(got[0]["loc"], got[1]["loc"])
