"""Speed and accuracy of vifit against plain NumPyro SVI, NumPyro NUTS and a hand-written JAX loop.

Run from the repository root, on an otherwise idle machine::

    .venv/bin/python benchmarks/speed.py                       # problems a, b, c, d; guide "auto"
    .venv/bin/python benchmarks/speed.py --quick --problems a,c --guide multivariate_normal

In one run on one machine, one thing at a time, every measurement in a fresh Python process
(timed from its launch, so interpreter start, imports and compilation are included):

1. **NUTS** (the reference): ``MCMC(NUTS(plain_numpyro_model(pid)))``, 4 chains x (1000 warm-up
   + 1000 draws). On the first problem of the run it is measured twice, with
   ``chain_method="vectorized"`` and with ``"parallel"`` (``XLA_FLAGS`` forcing 4 host devices,
   one per chain, set before JAX is imported; with fewer devices NumPyro falls back to
   sequential chains), and the faster is used for the other problems (``--nuts-chain-method``
   chooses one instead).
2. **vifit**: ``inference.fit(vifit_model(pid), guide=GUIDE, seed=0, progress=False)`` and 4000
   guide draws, twice with the same new, empty ``VIFIT_CACHE_DIR``: first with a cold
   compilation cache, then warm. With ``guide="auto"`` the attempts and settings the result
   carries are recorded.
3. **Plain NumPyro SVI**: ``SVI(plain_numpyro_model(pid), AutoNormal / AutoMultivariateNormal,
   optax.adam(0.01), Trace_ELBO())``, ``svi.run(key, 5000, progress_bar=False)`` and 4000 guide
   draws. After that (outside the timed part) a first jitted ``svi.update`` and 50 more steps
   are timed, to split ``svi.run`` into compile and run.
4. **Step cost on problem a**: a hand-written JAX ELBO loop (full-rank Gaussian on
   ``(log k, log sigma)``, 8 particles by ``vmap``, optax Adam, ``lax.scan`` over chunks of 100
   jitted steps) against vifit's compiled chunk (``inference.engine.loop.make_chunk``, as ``fit`` runs
   it) with the same guide family and particles; steady state, compilation and a warm-up chunk
   excluded. ``fit`` with a fixed number of steps gives a second figure, host work included.

The posterior mean and sd of every rate constant (for d: ``mu``, ``tau`` and the 50 ``k_e``)
come from 4000 draws; the error of each method against NUTS is ``(mean - NUTS mean) / NUTS sd``
and ``sd / NUTS sd``. Every process uses float64 (vifit sets it on import, the plain runs set
``jax_enable_x64`` explicitly).

Output: ``benchmarks/out/speed.json`` and ``speed.md`` (``speed-quick.*`` with ``--quick``), the
Markdown also on stdout, with a table of the targets of issue 4, each marked met or not met.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()
_T0_WALL = time.time()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime as _dt  # noqa: E402
import enum  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
PROBLEM_IDS = ("a", "b", "c", "d")

NUM_DRAWS = 4000
SVI_STEPS = 5000
SVI_LR = 0.01
NUM_PARTICLES = 8  # hand-written loop and vifit's step-cost fit
CHUNK = 100  # steps per compiled chunk, both loops (vifit's default chunk_size)

# Targets of issue 4 (2-core CPU).
TARGET_MEAN_SD = 0.1  # |mean - NUTS mean| <= 0.1 NUTS sd
TARGET_SD_REL = 0.1  # |sd / NUTS sd - 1| <= 0.1
TARGET_VS_SVI = 5.0  # vifit end to end at least 5x faster than plain NumPyro SVI (AutoMVN)
TARGET_VS_NUTS = 10.0  # ... and at least 10x faster than NUTS, on problems a and c
TARGET_SPEED_PROBLEMS = ("a", "c")
TARGET_WARM = 2.0  # second run (warm compilation cache) at least 2x faster than the first
TARGET_STEP = 1.5  # vifit step at most 1.5x the hand-written step on problem a

METHODS = {
    "nuts": "NumPyro NUTS",
    "vifit_cold": "vifit (cold cache)",
    "vifit_warm": "vifit (warm cache)",
    "svi_normal": "NumPyro SVI, AutoNormal",
    "svi_mvn": "NumPyro SVI, AutoMultivariateNormal",
}


def _load_problems_module():
    """Import ``benchmarks/problems.py`` by path."""
    import importlib.util

    if "bench_problems" in sys.modules:
        return sys.modules["bench_problems"]
    spec = importlib.util.spec_from_file_location("bench_problems", HERE / "problems.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_problems"] = module
    spec.loader.exec_module(module)
    return module


def machine_info() -> dict:
    """CPU count and model, platform and package versions (as ``benchmarks/run.py`` reports them)."""
    sys.path.insert(0, str(HERE))
    try:
        from run import machine_info as info
    finally:
        sys.path.remove(str(HERE))
    out = info()
    try:
        out["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        out["loadavg_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    return out


def jsonable(x):
    """Convert results (NumPy values, dataclasses, named tuples, enums) into JSON-ready data."""
    if isinstance(x, enum.Enum):
        return str(x.value)
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if hasattr(x, "as_dict") and callable(x.as_dict):
        return jsonable(x.as_dict())
    if hasattr(x, "_asdict"):
        return jsonable(x._asdict())
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return jsonable(dataclasses.asdict(x))
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (bool, str)) or x is None:
        return x
    if isinstance(x, int):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    try:
        import numpy as np

        if isinstance(x, np.ndarray):
            return jsonable(x.tolist())
        if isinstance(x, np.generic):
            return jsonable(x.item())
    except ImportError:
        pass
    return repr(x)


# -- the hand-written ELBO (problem a) ------------------------------------------------------------


def hand_elbo(times, values, k_prior, sigma_scale):
    """Hand-written Monte Carlo ELBO of problem a for a full-rank Gaussian guide.

    The guide is ``z = (log k, log sigma) ~ N(loc, L L^T)``, drawn as ``z = loc + L eps`` with
    ``eps ~ N(0, I)``. The model is that of problem a in the unconstrained space: ``k ~
    LogNormal(m, s)`` and ``sigma ~ HalfNormal(sigma_scale)`` with their log-Jacobians, and
    ``y_i ~ Normal(exp(-k t_i), sigma)``.

    Parameters
    ----------
    times, values : array, shape (T,)
        Measurement times and measured A.
    k_prior : (float, float)
        ``(m, s)``: log-median and sd of the log of the LogNormal prior of ``k``.
    sigma_scale : float
        Scale of the HalfNormal prior of ``sigma``.

    Returns
    -------
    callable
        ``elbo(loc, scale_tril, eps)`` with ``loc`` (2,), lower-triangular ``scale_tril``
        (2, 2) and ``eps`` (P, 2): the ELBO estimate averaged over the ``P`` draws, equal to
        NumPyro's ``Trace_ELBO`` with ``AutoMultivariateNormal`` on the same draws.
    """
    import jax.numpy as jnp

    t = jnp.asarray(times, dtype=float)
    y = jnp.asarray(values, dtype=float)
    m, s = float(k_prior[0]), float(k_prior[1])
    c = float(sigma_scale)
    n = t.shape[0]
    half_log_2pi = 0.5 * math.log(2 * math.pi)

    def elbo(loc, scale_tril, eps):
        z = loc + eps @ scale_tril.T  # (P, 2)
        log_k, log_sigma = z[:, 0], z[:, 1]
        k, sigma = jnp.exp(log_k), jnp.exp(log_sigma)
        # LogNormal(m, s) density of k times the Jacobian k: a Normal(m, s) density of log k.
        log_prior_k = -0.5 * ((log_k - m) / s) ** 2 - math.log(s) - half_log_2pi
        # HalfNormal(c) density of sigma times the Jacobian sigma.
        log_prior_sigma = 0.5 * math.log(2 / math.pi) - math.log(c) - 0.5 * (sigma / c) ** 2 + log_sigma
        resid = (y - jnp.exp(-k[:, None] * t)) / sigma[:, None]
        log_lik = -0.5 * jnp.sum(resid**2, axis=-1) - n * log_sigma - n * half_log_2pi
        log_q = -0.5 * jnp.sum(eps**2, axis=-1) - jnp.sum(jnp.log(jnp.abs(jnp.diag(scale_tril)))) - 2 * half_log_2pi
        return jnp.mean(log_lik + log_prior_k + log_prior_sigma - log_q)

    return elbo


def hand_problem_a():
    """Return the data and priors of problem a for :func:`hand_elbo`: ``(times, values, k_prior, sigma_scale)``."""
    P = _load_problems_module()
    info = P.load_problems()
    data = P.load_data("a")
    k_family, m, s = info["priors"]["k"]
    sigma_family, c = info["priors"]["sigma"]
    if k_family != "LogNormal" or sigma_family != "HalfNormal":
        raise ValueError("the hand-written ELBO is written for k ~ LogNormal and sigma ~ HalfNormal")
    return data["times"], data["values"][:, 0], (m, s), c


def make_hand_loop(num_particles: int = NUM_PARTICLES, lr: float = SVI_LR, chunk_size: int = CHUNK):
    """Build the hand-written optimization loop on problem a.

    Parameters
    ----------
    num_particles : int
        Draws per step (vectorized by ``vmap`` over the particle axis of :func:`hand_elbo`).
    lr : float
        Adam learning rate.
    chunk_size : int
        Steps per compiled chunk (``lax.scan``).

    Returns
    -------
    chunk : callable
        Jitted ``chunk(carry) -> (carry, losses)`` running ``chunk_size`` steps.
    carry : tuple
        Initial ``(params, opt_state, key)``: the guide at the prior median of ``k`` and
        ``sigma`` with scale 0.1.
    unpack : callable
        ``unpack(params) -> (loc, scale_tril)``.
    """
    import jax
    import jax.numpy as jnp
    import optax

    times, values, k_prior, sigma_scale = hand_problem_a()
    elbo = hand_elbo(times, values, k_prior, sigma_scale)

    def unpack(params):
        loc, raw = params
        return loc, jnp.tril(raw, -1) + jnp.diag(jnp.exp(jnp.diag(raw)))

    def loss(params, key):
        loc, scale_tril = unpack(params)
        eps = jax.random.normal(key, (num_particles, 2))
        return -elbo(loc, scale_tril, eps)

    opt = optax.adam(lr)

    def step(carry, _):
        params, opt_state, key = carry
        key, sub = jax.random.split(key)
        value, grads = jax.value_and_grad(loss)(params, sub)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, key), value

    @jax.jit
    def chunk(carry):
        return jax.lax.scan(step, carry, None, length=chunk_size)

    median_sigma = sigma_scale * math.sqrt(2) * 0.4769362762044699  # HalfNormal median: c sqrt(2) erfinv(1/2)
    loc = jnp.array([float(k_prior[0]), math.log(median_sigma)])
    raw = jnp.diag(jnp.full(2, math.log(0.1)))
    params = (loc, raw)
    return chunk, (params, opt.init(params), jax.random.PRNGKey(0)), unpack


# -- workers: each runs in a fresh process ----------------------------------------------------------


def _moments(pid: str, draws: dict, names) -> dict:
    """Mean and sd (ddof=1) over draws of each named site; vectors (d's ``k``) as lists."""
    import numpy as np

    out = {}
    for name in names:
        x = np.asarray(draws[name], dtype=float)
        x = x.reshape(-1) if x.ndim <= 1 or (pid != "d" or name != "k") else x.reshape(-1, x.shape[-1])
        out[name] = {"mean": np.mean(x, axis=0).tolist(), "sd": np.std(x, axis=0, ddof=1).tolist()}
    return out


def _enable_x64():
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


def worker_vifit(spec: dict) -> dict:
    """``inference.fit`` on the vifit model and 4000 guide draws; time split and moments."""
    t0 = time.perf_counter()
    import inference
    import vi_models.kinetics  # noqa: F401

    t_import = time.perf_counter()
    P = _load_problems_module()
    pid = spec["pid"]
    model = P.vifit_model(pid)
    t_build = time.perf_counter()
    result = inference.fit(model, guide=spec["guide"], seed=0, progress=False)
    t_fit = time.perf_counter()
    draws = P.with_derived(pid, result.sample(spec["draws"]))
    t_sample = time.perf_counter()
    end_wall = time.time()

    timings = result.timings
    attempts = getattr(result, "attempts", None)
    steps_all = sum(int(getattr(a, "num_steps", 0) or 0) for a in attempts) if attempts else None
    return {
        "guide": spec["guide"],
        "guide_used": str(getattr(result, "guide_name", "")),
        "import_s": t_import - t0,
        "build_s": t_build - t_import,
        "fit_s": t_fit - t_build,
        "init_s": timings.init_s,
        "compile_s": timings.compile_s,
        "run_s": timings.run_s,
        "fit_total_s": timings.total_s,
        "sample_s": t_sample - t_fit,
        "steps": int(result.num_steps),
        "steps_all_attempts": steps_all,
        "stop_reason": str(result.stop_reason),
        "settings": jsonable(getattr(result, "settings", None)),
        "attempts": jsonable(attempts) if attempts else None,
        "posterior": _moments(pid, draws, [*P.rate_constants(pid), "sigma"]),
        "end_wall": end_wall,
        "cache_files": sum(1 for _ in Path(os.environ["VIFIT_CACHE_DIR"]).rglob("*") if _.is_file()),
    }


def worker_svi(spec: dict) -> dict:
    """Plain NumPyro SVI (5000 Adam steps) and 4000 guide draws; then a compile/run split."""
    t0 = time.perf_counter()
    jax = _enable_x64()
    import numpyro  # noqa: F401
    import optax
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

    t_import = time.perf_counter()
    P = _load_problems_module()
    pid = spec["pid"]
    model = P.plain_numpyro_model(pid)
    guide = {"normal": AutoNormal, "multivariate_normal": AutoMultivariateNormal}[spec["guide"]](model)
    svi = SVI(model, guide, optax.adam(SVI_LR), Trace_ELBO())
    t_build = time.perf_counter()
    res = svi.run(jax.random.PRNGKey(0), spec["steps"], progress_bar=False)
    jax.block_until_ready(res.params)
    t_run = time.perf_counter()
    draws = guide.sample_posterior(jax.random.PRNGKey(1), res.params, sample_shape=(spec["draws"],))
    draws = P.with_derived(pid, jax.device_get(draws))
    t_sample = time.perf_counter()
    end_wall = time.time()

    import numpy as np

    losses = np.asarray(res.losses)
    # Outside the timed part: a first jitted update (compile + one step) and 50 more steps.
    update = jax.jit(svi.update)
    state = svi.init(jax.random.PRNGKey(2))
    jax.block_until_ready(state)
    a = time.perf_counter()
    state, loss = update(state)
    jax.block_until_ready(loss)
    first_update = time.perf_counter() - a
    n = 50
    a = time.perf_counter()
    for _ in range(n):
        state, loss = update(state)
    jax.block_until_ready(loss)
    step_s = (time.perf_counter() - a) / n
    svi_run_s = t_run - t_build
    compile_est = max(first_update - step_s, 0.0)
    run_est = spec["steps"] * step_s
    return {
        "guide": spec["guide"],
        "import_s": t_import - t0,
        "build_s": t_build - t_import,
        "svi_run_s": svi_run_s,
        "compile_s": compile_est,
        "run_s": run_est,
        "init_s": max(svi_run_s - compile_est - run_est, 0.0),
        "first_update_s": first_update,
        "step_s": step_s,
        "sample_s": t_sample - t_run,
        "steps": int(spec["steps"]),
        "final_loss": float(np.nanmean(losses[-100:])),
        "nonfinite_losses": int(np.sum(~np.isfinite(losses))),
        "posterior": _moments(pid, draws, [*P.rate_constants(pid), "sigma"]),
        "end_wall": end_wall,
    }


def worker_nuts(spec: dict) -> dict:
    """NUTS on the plain model; moments, n_eff, r_hat and divergences."""
    t0 = time.perf_counter()
    jax = _enable_x64()
    import numpy as np
    import numpyro  # noqa: F401
    from numpyro.diagnostics import summary as nsummary
    from numpyro.infer import MCMC, NUTS

    t_import = time.perf_counter()
    P = _load_problems_module()
    pid = spec["pid"]
    model = P.plain_numpyro_model(pid)
    mcmc = MCMC(
        NUTS(model),
        num_warmup=spec["warmup"],
        num_samples=spec["samples"],
        num_chains=spec["chains"],
        chain_method=spec["chain_method"],
        progress_bar=False,
    )
    t_build = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(0), extra_fields=("diverging",))
    samples = mcmc.get_samples(group_by_chain=True)
    jax.block_until_ready(samples)
    t_run = time.perf_counter()
    end_wall = time.time()

    names = [*P.rate_constants(pid), "sigma"]
    chains = {n: np.asarray(samples[n]) for n in names}
    stats = nsummary(chains, group_by_chain=True)
    flat = {n: v.reshape((-1,) + v.shape[2:]) for n, v in chains.items()}
    post = _moments(pid, flat, names)
    for n in names:
        post[n]["n_eff"] = np.asarray(stats[n]["n_eff"]).tolist()
        post[n]["r_hat"] = np.asarray(stats[n]["r_hat"]).tolist()
    return {
        "chain_method": spec["chain_method"],
        "devices": jax.local_device_count(),
        "num_warmup": spec["warmup"],
        "num_samples": spec["samples"],
        "num_chains": spec["chains"],
        "import_s": t_import - t0,
        "build_s": t_build - t_import,
        "run_s": t_run - t_build,
        "steps": spec["chains"] * (spec["warmup"] + spec["samples"]),
        "divergences": int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum()),
        "posterior": post,
        "end_wall": end_wall,
    }


def _time_chunks(compiled, state, n_chunks: int, repeats: int = 3):
    """Median over ``repeats`` of the seconds per step of ``n_chunks`` chunks (losses fetched each chunk)."""
    import jax
    import numpy as np

    state, out = compiled(state)  # warm-up chunk
    jax.block_until_ready(out)
    per_step = []
    for _ in range(repeats):
        a = time.perf_counter()
        for _ in range(n_chunks):
            state, out = compiled(state)
            losses = out.losses if hasattr(out, "losses") else out
            np.asarray(losses)  # the host looks at each chunk, as fit() does
        per_step.append((time.perf_counter() - a) / (n_chunks * CHUNK))
    return float(np.median(per_step)), [float(v) for v in per_step], state


def worker_stepcost(spec: dict) -> dict:
    """Steady-state seconds per step: hand-written JAX loop against vifit, problem a."""
    import jax
    import numpy as np

    import inference  # float64 and vifit's settings, for both loops alike

    n_chunks = spec["chunks"]
    out = {"num_particles": NUM_PARTICLES, "chunk_size": CHUNK, "timed_steps": n_chunks * CHUNK}

    # Hand-written loop.
    chunk, carry, unpack = make_hand_loop()
    a = time.perf_counter()
    compiled = chunk.lower(carry).compile()
    out["hand_compile_s"] = time.perf_counter() - a
    step, reps, carry = _time_chunks(compiled, carry, n_chunks)
    out["hand_step_s"], out["hand_step_repeats_s"] = step, reps
    loc, scale_tril = unpack(carry[0])
    z = np.asarray(loc) + np.random.default_rng(0).standard_normal((NUM_DRAWS, 2)) @ np.asarray(scale_tril).T
    k = np.exp(z[:, 0])
    out["hand_posterior_k"] = {"mean": float(k.mean()), "sd": float(k.std(ddof=1)), "steps": (1 + 3 * n_chunks) * CHUNK}

    # vifit's compiled chunk, built as inference.fit builds it (one restart, vmapped).
    P = _load_problems_module()
    model = P.vifit_model("a")
    out["vifit_gradient_method"] = str(getattr(model, "gradient", ""))
    try:
        from numpyro.infer import SVI

        from inference.engine.fit import make_optimizer
        from inference.engine.guides import make_guide
        from inference.engine.loop import init_state, make_chunk
        from inference.engine.objectives import make_objective

        svi = SVI(
            model,
            make_guide("multivariate_normal", model, init_scale=0.1),
            make_optimizer(SVI_LR),
            make_objective("elbo", num_particles=NUM_PARTICLES),
        )
        state = jax.jit(jax.vmap(lambda key: init_state(svi, key)))(jax.random.split(jax.random.PRNGKey(0), 1))
        vchunk = jax.jit(jax.vmap(make_chunk(svi, CHUNK)))
        a = time.perf_counter()
        compiled = vchunk.lower(state).compile()
        out["vifit_compile_s"] = time.perf_counter() - a
        step, reps, _ = _time_chunks(compiled, state, n_chunks)
        out["vifit_step_s"], out["vifit_step_repeats_s"] = step, reps
    except Exception as err:  # noqa: BLE001 - the internal loop API may change; the fit figure below remains
        out["vifit_chunk_error"] = f"{type(err).__name__}: {err}"

    # fit() with a fixed number of steps, twice: the difference in run time over the difference in
    # steps is the cost of a step inside fit (host work per chunk included, compile excluded).
    runs = {}
    for n in spec["fit_steps"]:
        result = inference.fit(
            model, guide="multivariate_normal", num_particles=NUM_PARTICLES, seed=0, progress=False,
            min_steps=n, max_steps=n,
        )
        runs[n] = {"steps": int(result.num_steps), "run_s": float(result.timings.run_s)}
    (n1, r1), (n2, r2) = sorted(runs.items())
    out["vifit_fit_runs"] = {str(k): v for k, v in runs.items()}
    out["vifit_fit_step_s"] = (r2["run_s"] - r1["run_s"]) / max(r2["steps"] - r1["steps"], 1)
    return out


WORKERS = {"vifit": worker_vifit, "svi": worker_svi, "nuts": worker_nuts, "stepcost": worker_stepcost}


def run_worker(spec_text: str) -> int:
    """Entry point of a worker process: run ``spec["kind"]`` and write its JSON to ``spec["result"]``."""
    spec = json.loads(spec_text)
    sys.path.insert(0, str(ROOT))
    record = WORKERS[spec["kind"]](spec)
    record["process_start_wall"] = _T0_WALL
    record["worker_s"] = time.perf_counter() - _T0
    Path(spec["result"]).write_text(json.dumps(jsonable(record)))
    return 0


# -- the orchestrating process (no JAX here) ------------------------------------------------------


def _clean_env(**extra) -> dict:
    env = dict(os.environ)
    for name in ("VIFIT_CACHE_DIR", "VIFIT_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR", "XLA_FLAGS", "JAX_ENABLE_X64"):
        env.pop(name, None)
    env.update(extra)
    return env


def launch(spec: dict, env: dict, timeout: float, label: str) -> dict:
    """Run one worker in a fresh process; return its record with ``total_s`` (launch to results)."""
    print(f"  {label} ...", end="", flush=True)
    with tempfile.NamedTemporaryFile(prefix="vifit-speed-", suffix=".json", delete=False) as f:
        result_path = Path(f.name)
    spec = dict(spec, result=str(result_path))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    launch_wall = time.time()
    a = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - a
        if proc.returncode != 0 or not result_path.stat().st_size:
            print(f" failed (exit {proc.returncode})", flush=True)
            return {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-3000:], "process_s": wall}
        record = json.loads(result_path.read_text())
    except subprocess.TimeoutExpired:
        print(f" timed out after {timeout:.0f} s", flush=True)
        return {"error": f"timed out after {timeout:.0f} s", "process_s": time.perf_counter() - a}
    finally:
        result_path.unlink(missing_ok=True)
    record["process_s"] = wall
    if "end_wall" in record:
        record["startup_s"] = record["process_start_wall"] - launch_wall
        record["total_s"] = record["end_wall"] - launch_wall
    print(f" {record.get('total_s', wall):.1f} s", flush=True)
    return record


def _as_list(x):
    return x if isinstance(x, list) else [x]


def errors_vs_nuts(method: dict, nuts: dict, names) -> dict:
    """``(mean - NUTS mean) / NUTS sd`` and ``sd / NUTS sd`` per rate constant (lists for vectors)."""
    out = {}
    for n in names:
        m, s = _as_list(method["posterior"][n]["mean"]), _as_list(method["posterior"][n]["sd"])
        rm, rs = _as_list(nuts["posterior"][n]["mean"]), _as_list(nuts["posterior"][n]["sd"])
        err = [(a - b) / c for a, b, c in zip(m, rm, rs)]
        ratio = [a / c for a, c in zip(s, rs)]
        scalar = not isinstance(method["posterior"][n]["mean"], list)
        out[n] = {"mean_err_sd": err[0] if scalar else err, "sd_ratio": ratio[0] if scalar else ratio}
    return out


def _accuracy_ok(err: dict) -> tuple[bool, float, float]:
    """Whether every component meets the accuracy target; worst |mean error| and worst |sd ratio - 1|."""
    worst_mean = worst_sd = 0.0
    for e in err.values():
        for a in _as_list(e["mean_err_sd"]):
            worst_mean = max(worst_mean, abs(a))
        for r in _as_list(e["sd_ratio"]):
            worst_sd = max(worst_sd, abs(r - 1))
    return worst_mean <= TARGET_MEAN_SD and worst_sd <= TARGET_SD_REL, worst_mean, worst_sd


def run_benchmark(args) -> dict:
    """Run every measurement, one process at a time; return the results."""
    pids = args.problems
    quick = args.quick
    warmup, samples, chains = (150, 150, 4) if quick else (1000, 1000, 4)
    svi_steps = 500 if quick else SVI_STEPS
    res = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python benchmarks/speed.py", *sys.argv[1:]]),
        "quick": quick,
        "machine": machine_info(),
        "settings": {
            "guide": args.guide,
            "draws": args.draws,
            "svi_steps": svi_steps,
            "svi_lr": SVI_LR,
            "nuts": {"num_warmup": warmup, "num_samples": samples, "num_chains": chains},
            "plain_solver": "diffrax Tsit5, PIDController(rtol=1e-6, atol=1e-8), SaveAt(ts), default adjoint",
        },
        "problems": {},
    }
    timeout = args.timeout
    chain_method = None if args.nuts_chain_method == "fastest" else args.nuts_chain_method
    for pid in pids:
        P = _problem_names()
        entry = {"rate_constants": list(P[pid])}
        print(f"problem {pid}:", flush=True)
        nuts_spec = {"kind": "nuts", "pid": pid, "warmup": warmup, "samples": samples, "chains": chains}
        if chain_method is None:
            runs = {}
            for method in ("vectorized", "parallel"):
                env = _clean_env(**_nuts_env(method, chains))
                runs[method] = launch(dict(nuts_spec, chain_method=method), env, timeout, f"NUTS {method}")
            ok = {m: r for m, r in runs.items() if "error" not in r}
            chain_method = min(ok, key=lambda m: ok[m]["total_s"]) if ok else "vectorized"
            res["nuts_chain_method"] = {
                "chosen": chain_method,
                "measured_on": pid,
                "total_s": {m: r.get("total_s") for m, r in runs.items()},
                "run_s": {m: r.get("run_s") for m, r in runs.items()},
                "errors": {m: _last_error_line(r) for m, r in runs.items() if "error" in r},
            }
            entry["nuts"] = runs[chain_method]
            entry["nuts_other_chain_method"] = runs["parallel" if chain_method == "vectorized" else "vectorized"]
        else:
            if "nuts_chain_method" not in res:
                res["nuts_chain_method"] = {"chosen": chain_method, "measured_on": None}
            env = _clean_env(**_nuts_env(chain_method, chains))
            entry["nuts"] = launch(dict(nuts_spec, chain_method=chain_method), env, timeout, f"NUTS {chain_method}")

        cache = Path(tempfile.mkdtemp(prefix="vifit-speed-cache-"))
        try:
            env = _clean_env(VIFIT_CACHE_DIR=str(cache))
            spec = {"kind": "vifit", "pid": pid, "guide": args.guide, "draws": args.draws}
            entry["vifit_cold"] = launch(spec, env, timeout, f"vifit guide={args.guide}, cold cache")
            entry["vifit_warm"] = launch(spec, env, timeout, f"vifit guide={args.guide}, warm cache")
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        for key, guide in (("svi_normal", "normal"), ("svi_mvn", "multivariate_normal")):
            spec = {"kind": "svi", "pid": pid, "guide": guide, "steps": svi_steps, "draws": args.draws}
            entry[key] = launch(spec, _clean_env(), timeout, f"NumPyro SVI {guide}, {svi_steps} steps")

        nuts = entry["nuts"]
        entry["errors"] = {}
        if "error" not in nuts:
            for key in ("vifit_cold", "vifit_warm", "svi_normal", "svi_mvn"):
                if "error" not in entry[key]:
                    entry["errors"][key] = errors_vs_nuts(entry[key], nuts, entry["rate_constants"])
        res["problems"][pid] = entry

    if "a" in pids:
        print("step cost, problem a:", flush=True)
        spec = {
            "kind": "stepcost",
            "chunks": 5 if quick else 20,
            "fit_steps": [500, 1500] if quick else [1000, 4000],
        }
        cache = Path(tempfile.mkdtemp(prefix="vifit-speed-cache-"))
        try:
            res["step_cost"] = launch(spec, _clean_env(VIFIT_CACHE_DIR=str(cache)), timeout, "hand-written loop and vifit")
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    res["targets"] = targets(res)
    return res


def _last_error_line(record: dict) -> str:
    """Return the exception line of a failed worker's stderr (or its exit status)."""
    lines = [ln for ln in record.get("stderr_tail", "").splitlines() if "Error" in ln or "Exception" in ln]
    return lines[-1].strip()[:200] if lines else record["error"]


def _problem_names() -> dict:
    # Rate constants by problem, without importing JAX here (same table as problems.rate_constants).
    return {"a": ("k",), "b": ("kf", "kb"), "c": ("Vmax", "Km"), "d": ("mu", "tau", "k")}


def _nuts_env(method: str, chains: int) -> dict:
    # "parallel" needs one host device per chain before JAX starts, or NumPyro draws the chains
    # sequentially.
    return {"XLA_FLAGS": f"--xla_force_host_platform_device_count={chains}"} if method == "parallel" else {}


# -- targets and report -----------------------------------------------------------------------------


def _ok(r: dict | None) -> bool:
    return bool(r) and "error" not in r


def targets(res: dict) -> list:
    """List the targets of issue 4, each with the measured value and whether it is met."""
    out = []
    for pid, p in res["problems"].items():
        err = p["errors"].get("vifit_cold")
        if err is None:
            out.append({"target": f"accuracy, problem {pid}", "value": "not measured (a run failed)", "met": False})
            continue
        ok, worst_mean, worst_sd = _accuracy_ok(err)
        out.append(
            {
                "target": f"accuracy, problem {pid}: every rate constant's mean within {TARGET_MEAN_SD} NUTS sd "
                f"and sd within {TARGET_SD_REL:.0%}",
                "value": f"worst |mean error| {worst_mean:.3f} NUTS sd, worst |sd ratio - 1| {worst_sd:.3f}",
                "met": ok,
            }
        )
    for pid in TARGET_SPEED_PROBLEMS:
        p = res["problems"].get(pid)
        if not p:
            continue
        v = p["vifit_cold"]
        for key, need in (("svi_mvn", TARGET_VS_SVI), ("svi_normal", TARGET_VS_SVI), ("nuts", TARGET_VS_NUTS)):
            other = p[key]
            name = METHODS[key]
            if not (_ok(v) and _ok(other)):
                out.append({"target": f"problem {pid}: vifit >= {need:g}x faster than {name}", "value": "a run failed", "met": False})
                continue
            ratio = other["total_s"] / v["total_s"]
            row = {
                "target": f"problem {pid}: vifit end to end (cold cache) >= {need:g}x faster than {name}",
                "value": f"{ratio:.2f}x ({other['total_s']:.1f} s / {v['total_s']:.1f} s)",
                "met": ratio >= need,
            }
            if key == "svi_normal":
                row["target"] = f"problem {pid} (for information; the target uses AutoMVN): vifit vs {name}"
                row["met"] = None
            out.append(row)
    for pid, p in res["problems"].items():
        cold, warm = p["vifit_cold"], p["vifit_warm"]
        if not (_ok(cold) and _ok(warm)):
            out.append({"target": f"problem {pid}: warm run >= {TARGET_WARM:g}x faster", "value": "a run failed", "met": False})
            continue
        ratio = cold["total_s"] / warm["total_s"]
        out.append(
            {
                "target": f"problem {pid}: second run (warm compilation cache) >= {TARGET_WARM:g}x faster than the first",
                "value": f"{ratio:.2f}x ({cold['total_s']:.1f} s / {warm['total_s']:.1f} s)",
                "met": ratio >= TARGET_WARM,
            }
        )
    sc = res.get("step_cost")
    if _ok(sc):
        hand = sc["hand_step_s"]
        vstep = sc.get("vifit_step_s")
        fit_step = sc.get("vifit_fit_step_s")
        if vstep is not None:
            ratio = vstep / hand
            value = f"{ratio:.2f}x ({1e6 * vstep:.1f} us / {1e6 * hand:.1f} us per step)"
            if fit_step is not None:
                value += f"; inside fit(), host work included: {fit_step / hand:.2f}x ({1e6 * fit_step:.1f} us)"
        else:
            ratio = fit_step / hand
            value = f"{ratio:.2f}x inside fit() ({1e6 * fit_step:.1f} us / {1e6 * hand:.1f} us per step); compiled chunk not measured"
        out.append(
            {
                "target": f"problem a: steady-state cost of one vifit step (full-rank, {NUM_PARTICLES} particles) "
                f"<= {TARGET_STEP:g}x the hand-written JAX loop",
                "value": value,
                "met": ratio <= TARGET_STEP,
            }
        )
    elif sc is not None:
        out.append({"target": f"problem a: step cost <= {TARGET_STEP:g}x hand-written", "value": "the run failed", "met": False})
    return out


def fmt(x, nd=2):
    """Format a number with ``nd`` decimals; an empty cell for None or non-finite."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return f"{x:.{nd}f}"


def sig(x):
    """Format a number to 4 significant digits."""
    return "" if x is None else f"{x:.4g}"


def _status(met) -> str:
    return "-" if met is None else ("**met**" if met else "**not met**")


def _worst(values, key):
    i = max(range(len(values)), key=lambda j: key(values[j]))
    return i, values[i]


def markdown(res: dict) -> str:
    """Render the results as Markdown tables."""
    m = res["machine"]
    lines = [
        f"Date {res['date']}; {m['nproc']} cores ({m['cpu']}); " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"Command: `{res['command']}`" + (" (quick: short NUTS, 500 SVI steps)" if res["quick"] else ""),
        "",
    ]
    ch = res.get("nuts_chain_method", {})
    if ch.get("measured_on"):
        ts = ch["total_s"]
        errs = ch.get("errors", {})

        def shown(method):
            return f"{fmt(ts.get(method), 1)} s" if ts.get(method) is not None else f"failed ({errs.get(method, 'no result')})"

        lines += [
            f"NUTS chain method: **{ch['chosen']}** (measured on problem {ch['measured_on']}, end to end: "
            f"vectorized {shown('vectorized')}, parallel {shown('parallel')}).",
            "",
        ]
    elif ch:
        lines += [f"NUTS chain method: {ch['chosen']} (given).", ""]

    lines += ["### Wall time (fresh process per run, seconds)", ""]
    lines += [
        "| problem | method | start | import | build | init | compile | run | draws | total (end to end) | steps | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pid, p in res["problems"].items():
        for key, label in METHODS.items():
            r = p.get(key)
            if not r:
                continue
            if "error" in r:
                lines.append(f"| {pid} | {label} | | | | | | | | failed: {r['error']} | | |")
                continue
            if key == "nuts":
                init = compile_ = None
                run = r["run_s"]
                sample = None
                notes = f"{r['num_chains']} x ({r['num_warmup']} + {r['num_samples']}), {r['chain_method']}, {r['divergences']} divergences"
                steps = r["steps"]
            elif key.startswith("vifit"):
                init, compile_, run, sample = r["init_s"], r["compile_s"], r["run_s"], r["sample_s"]
                notes = f"guide {r['guide']} -> {r['guide_used']}, stop {r['stop_reason']}"
                if r.get("steps_all_attempts") is not None:
                    notes += f", {r['steps_all_attempts']} steps over all attempts"
                steps = r["steps"]
            else:
                init, compile_, run, sample = r["init_s"], r["compile_s"], r["run_s"], r["sample_s"]
                notes = f"svi.run {fmt(r['svi_run_s'])} s (init, compile, run: estimates)"
                steps = r["steps"]
            lines.append(
                f"| {pid} | {label} | {fmt(r.get('startup_s'))} | {fmt(r['import_s'])} | {fmt(r['build_s'])} | "
                f"{fmt(init)} | {fmt(compile_)} | {fmt(run)} | {fmt(sample)} | **{fmt(r.get('total_s'))}** | {steps} | {notes} |"
            )
    lines += [
        "",
        "vifit: init, compile and run are `FitResult.timings`; with `guide=\"auto\"` they are those of the "
        "chosen attempt (the fit total is in the JSON). Plain SVI: `svi.run` is split by a first jitted "
        "`svi.update` timed afterwards (compile = its time minus one step; run = steps x steady step).",
        "",
    ]

    lines += ["### Speed ratios (end to end, other method / vifit)", ""]
    lines += [
        "| problem | vifit cold s | vifit warm s | cold / warm | SVI AutoNormal s | / vifit | SVI AutoMVN s | / vifit | NUTS s | / vifit |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pid, p in res["problems"].items():
        cold, warm = p["vifit_cold"], p["vifit_warm"]
        tc = cold.get("total_s") if _ok(cold) else None
        tw = warm.get("total_s") if _ok(warm) else None

        def ratio(r):
            return fmt(r["total_s"] / tc) + "x" if (_ok(r) and tc) else ""

        lines.append(
            f"| {pid} | {fmt(tc)} | {fmt(tw)} | {fmt(tc / tw) + 'x' if tc and tw else ''} | "
            f"{fmt(p['svi_normal'].get('total_s'))} | {ratio(p['svi_normal'])} | {fmt(p['svi_mvn'].get('total_s'))} | "
            f"{ratio(p['svi_mvn'])} | {fmt(p['nuts'].get('total_s'))} | {ratio(p['nuts'])} |"
        )

    lines += ["", "### Posterior of the rate constants against NUTS (4000 draws each)", ""]
    lines += [
        "| problem | parameter | method | mean | sd | (mean - NUTS mean) / NUTS sd | sd / NUTS sd |",
        "|---|---|---|---|---|---|---|",
    ]
    for pid, p in res["problems"].items():
        for name in p["rate_constants"]:
            for key, label in METHODS.items():
                r = p.get(key)
                if not _ok(r):
                    continue
                post = r["posterior"][name]
                e = p["errors"].get(key, {}).get(name) if key != "nuts" else None
                if isinstance(post["mean"], list):
                    if key == "nuts":
                        n_eff = min(_as_list(post.get("n_eff", [])) or [float("nan")])
                        lines.append(
                            f"| {pid} | {name} (50) | {label} | {sig(min(post['mean']))} to {sig(max(post['mean']))} | "
                            f"{sig(min(post['sd']))} to {sig(max(post['sd']))} | (min n_eff {n_eff:.0f}) | |"
                        )
                        continue
                    if not e:
                        continue
                    i, err = _worst(e["mean_err_sd"], abs)
                    j, rat = _worst(e["sd_ratio"], lambda v: abs(v - 1))
                    lines.append(
                        f"| {pid} | {name}[{i}] (worst mean) | {label} | {sig(post['mean'][i])} | {sig(post['sd'][i])} | "
                        f"{err:+.3f} | {e['sd_ratio'][i]:.3f} |"
                    )
                    lines.append(
                        f"| {pid} | {name}[{j}] (worst sd) | {label} | {sig(post['mean'][j])} | {sig(post['sd'][j])} | "
                        f"{e['mean_err_sd'][j]:+.3f} | {rat:.3f} |"
                    )
                    continue
                if key == "nuts":
                    extra = f"(n_eff {post['n_eff']:.0f}, r_hat {post['r_hat']:.3f})" if "n_eff" in post else ""
                    lines.append(f"| {pid} | {name} | {label} | {sig(post['mean'])} | {sig(post['sd'])} | {extra} | |")
                elif e:
                    lines.append(
                        f"| {pid} | {name} | {label} | {sig(post['mean'])} | {sig(post['sd'])} | "
                        f"{e['mean_err_sd']:+.3f} | {e['sd_ratio']:.3f} |"
                    )

    sc = res.get("step_cost")
    if sc:
        lines += ["", "### Steady-state cost of one step, problem a (full-rank Gaussian, 8 particles)", ""]
        if "error" in sc:
            lines.append(f"failed: {sc['error']}")
        else:
            lines += ["| loop | us per step | compile s | notes |", "|---|---|---|---|"]
            hk = sc["hand_posterior_k"]
            lines.append(
                f"| hand-written JAX (lax.scan chunks of {CHUNK}) | {1e6 * sc['hand_step_s']:.1f} | {fmt(sc['hand_compile_s'])} | "
                f"k mean {hk['mean']:.4g}, sd {hk['sd']:.3g} after {hk['steps']} steps |"
            )
            if sc.get("vifit_step_s") is not None:
                lines.append(
                    f"| vifit compiled chunk (`make_chunk`, as `fit` runs it) | {1e6 * sc['vifit_step_s']:.1f} | "
                    f"{fmt(sc.get('vifit_compile_s'))} | gradient method {sc['vifit_gradient_method']} |"
                )
            else:
                lines.append(f"| vifit compiled chunk | | | not measured: {sc.get('vifit_chunk_error')} |")
            runs = sc["vifit_fit_runs"]
            lines.append(
                f"| vifit inside `fit()` (run time difference of {', '.join(runs)} steps) | {1e6 * sc['vifit_fit_step_s']:.1f} | | "
                "host work per chunk included |"
            )
            lines.append("")
            lines.append(
                f"Timed over {sc['timed_steps']} steps after a warm-up chunk, median of 3 repeats; the host fetches "
                "each chunk's losses in both loops."
            )

    auto_lines = []
    for pid, p in res["problems"].items():
        r = p.get("vifit_cold")
        if _ok(r) and r.get("attempts"):
            for a in r["attempts"]:
                auto_lines.append(
                    f"| {pid} | {a.get('guide')} | {a.get('level')} | {a.get('num_steps')} | {fmt(a.get('seconds'), 1)} | "
                    f"{fmt(a.get('khat'))} | {str(a.get('outcome', '')).replace('|', '/')} |"
                )
    if auto_lines:
        lines += ["", "### guide=\"auto\": attempts (cold run)", ""]
        lines += ["| problem | guide | level | steps | s | k-hat | outcome |", "|---|---|---|---|---|---|---|", *auto_lines]

    lines += ["", "### Targets (issue 4, 2-core CPU)", "", "| target | measured | status |", "|---|---|---|"]
    for t in res["targets"]:
        lines.append(f"| {t['target']} | {t['value']} | {_status(t['met'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Run the benchmark (or, with ``--worker``, one measurement); return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", default="a,b,c,d", help="comma-separated problem ids (default a,b,c,d)")
    parser.add_argument("--guide", default="auto", help='vifit guide (default "auto")')
    parser.add_argument("--quick", action="store_true", help="smoke run: NUTS 4 x (150 + 150), 500 SVI steps")
    parser.add_argument("--out", type=Path, help="results JSON (default benchmarks/out/speed.json, speed-quick.json with --quick)")
    parser.add_argument("--draws", type=int, default=NUM_DRAWS, help=f"posterior draws for the moments (default {NUM_DRAWS})")
    parser.add_argument(
        "--nuts-chain-method",
        choices=("fastest", "vectorized", "parallel"),
        default="fastest",
        help="fastest (default): measure both on the first problem, use the faster",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per process (default 1800)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(args.worker)

    args.problems = [p.strip() for p in args.problems.split(",") if p.strip()]
    unknown = [p for p in args.problems if p not in PROBLEM_IDS]
    if unknown:
        parser.error(f"unknown problem(s) {', '.join(unknown)}; choose from {', '.join(PROBLEM_IDS)}")
    out_json = args.out or OUT / ("speed-quick.json" if args.quick else "speed.json")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    res = run_benchmark(args)
    res["wall_s"] = time.perf_counter() - t_start
    out_json.write_text(json.dumps(jsonable(res), indent=2) + "\n")
    md = markdown(res)
    out_json.with_suffix(".md").write_text(md)
    print()
    print(md)
    print(f"total benchmark wall time {res['wall_s']:.0f} s; results in {out_json} and {out_json.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
