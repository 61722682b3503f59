"""Speed, accuracy and memory of vifit's engine, measured against NUTS and against the engine's targets.

Run from the repository root, on an otherwise idle machine::

    .venv/bin/python benchmarks/speed.py --problems a,b,c     # the full run (several minutes, mostly NUTS)
    .venv/bin/python benchmarks/speed.py --quick               # smoke run: short NUTS, small memory problem

One run, one thing at a time, every measurement in a fresh Python process timed from its launch
(interpreter start, imports and compilation included):

1. **NUTS** (the reference): ``MCMC(NUTS(plain_numpyro_model(pid)))``, 4 chains x (1000 warm-up +
   1000 draws). On the first problem it runs with ``chain_method="vectorized"`` and
   ``"parallel"`` (``XLA_FLAGS`` forcing 4 host devices, one per chain), and the faster is used
   for the other problems (``--nuts-chain-method`` picks one instead).
2. **vifit in Python**: ``inference.fit(vifit_model(pid), seed=0, progress=False)``
   (``guide="auto"``) and 4000 draws, twice with the same new ``VIFIT_CACHE_DIR`` (empty, then
   warm). The fit is split into stages by timing, in that process only, the engine functions
   that make them: ``make_target`` (trace and compile of the model's one program),
   ``find_map`` (multistart MAP), ``fit_flat`` (each guide's optimization),
   ``FitResult.diagnose`` (the verdict) and ``importance_resampled`` (the importance stage);
   every XLA compilation is logged with its program name.
3. **The command line**: ``vifit fit DATA --mechanism ... --initial ... --prior ... --out DIR
   --no-progress`` as a fresh process, start to written results (``posterior.nc``, report,
   plots), with an empty ``VIFIT_CACHE_DIR`` and again with the same, now warm, folder. The data
   are the benchmark CSVs with the time column named ``time``. On the first problem the same
   command also runs in a process that times the engine stages as above and the output stages
   (``to_arviz``, the netCDF file, summary, plots, report).
4. **The floor** (first problem, empty cache): the import, the model, ``make_target`` (one trace
   and compile of the model's log density and gradient), then the cost of one call of that
   program (32 points) and of one density-only call; then the cost of one optimization step inside
   ``fit`` (fresh draws, Adam: the run time of 1500 steps minus that of 500, over 1000), and a
   hand-written JAX loop on problem a (closed form, full-rank Gaussian, the same 32 draws per
   step, ``lax.scan`` chunks) for comparison.
5. **Compiled programs per fit**: ``../shared/tools/compile_count.py --log`` on problems a and
   c (fresh process, empty cache): every program compiled by ``fit(guide="auto")`` and its
   verdict, by name.
6. **Memory**: a synthetic first-order decay data set with ``--memory-rows`` time points (default
   10,000; one experiment, problem a's truth and priors), ``fit`` + ``verdict()`` +
   ``to_arviz()`` in one process; the peak resident set size after each stage
   (``resource.getrusage``) and of the process (``os.wait4``).
7. Optionally (``--svi``) plain NumPyro SVI with AutoNormal and AutoMultivariateNormal (5000 Adam
   steps, one particle), for comparison.

The posterior mean and sd of every parameter (rate constants and sigma) come from 4000 draws; the
error against NUTS is ``(mean - NUTS mean) / NUTS sd`` and ``sd / NUTS sd``, on the natural scale
and, for positive parameters, on the log scale. Every process uses float64.

Output: ``benchmarks/out/speed.json`` and ``speed.md`` (``speed-quick.*`` with ``--quick``), the
Markdown also on stdout, beginning with the table of targets, each marked met or not met.
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
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
COMPILE_COUNT = ROOT.parent / "shared" / "tools" / "compile_count.py"
PROBLEM_IDS = ("a", "b", "c", "d")
CLI_PROBLEMS = ("a", "b", "c")  # d is a hand-written hierarchical model: no command line for it

NUM_DRAWS = 4000
SVI_STEPS = 5000
SVI_LR = 0.01
NUM_PARTICLES = 32  # draws per step of the hand-written loop: vifit's default batch (restarts x particles)
CHUNK = 100  # steps per lax.scan chunk of the hand-written loop
FIT_STEPS = (500, 1500)  # fit(..., min_steps=n, max_steps=n) for the cost of one step inside fit
CALLS = 200  # timed calls of the compiled target per repeat (median of 5 repeats)

# Targets of "One compiled model for every stage" (2-core CPU; NUTS 4 x (1000 + 1000) in the same run).
TARGET_CLI_COLD = 5.0  # `vifit fit` on a, empty cache: at least 5x faster than NUTS
TARGET_CLI_WARM = 8.0  # ... warm cache: at least 8x
TARGET_CLI_C_COLD = 8.0  # `vifit fit` on c, empty cache: at least 8x faster than NUTS
TARGET_FLOOR = 2.0  # fit(model) on a, empty cache: within 2x of the floor
TARGET_PROGRAMS = 3  # programs containing the model per fit(guide="auto") and its verdict: at most 3
TARGET_GRAD_EVALS = 1 / 5  # gradient evaluations of auto: at most a fifth of the previous engine's
TARGET_MEAN_SD = 0.1  # |mean - NUTS mean| <= 0.1 NUTS sd
TARGET_SD_REL = 0.1  # |sd / NUTS sd - 1| <= 0.1
TARGET_MEMORY_BYTES = 1e9  # peak RSS of fit + verdict + ArviZ export on 10,000 rows: under 1 GB
MEMORY_ROWS = 10_000

# Gradient evaluations of guide="auto" in the previous engine (compiled NumPyro SVI chunks, 8 particles
# per step; MAP by scipy L-BFGS-B from 8 starts), estimated as steps x 8 particles for each attempt +
# 8 starts x the L-BFGS iterations of the MAP stage (at least one gradient per iteration; line-search
# retries and the Hessian are not counted, so the estimate is a lower bound). The MAP iterations are
# those of RESULTS.md (previous engine: 17, 32, 34); the attempts' steps are those of a on RESULTS.md
# (600, 600) and, for b and c (not recorded there), of that engine run again (commit 7d1031e, seed 0,
# ArviZ 1.x PSIS standing in for az.psislw): b 600 + 600, c 700 + 700 (its MAP stage: 35 iterations).
PREVIOUS_AUTO = {
    "a": {"map_iterations": 17, "attempt_steps": (600, 600)},
    "b": {"map_iterations": 32, "attempt_steps": (600, 600)},
    "c": {"map_iterations": 34, "attempt_steps": (700, 700)},
}
PREVIOUS_PARTICLES = 8
PREVIOUS_MAP_STARTS = 8

# XLA programs that do not contain the model: the guide families' small programs and JAX's helpers.
SMALL_PROGRAMS = re.compile(
    r"^jit\((begin|update|draw|objective|points|<lambda>|stage|start|surrogate|init\w*|_threefry\w*|_normal\w*|"
    r"_uniform\w*|_einsum|scatter\w*|add|mul|sub|neg|convert_element_type|concatenate|broadcast_in_dim|reshape|"
    r"squeeze|dynamic_slice|dynamic_update_slice|gather|_where|where|clip|_reduce_\w+|_mean|_var|_std|"
    r"true_divide|divide|exp|log|log1p|sqrt|matmul|dot_general|transpose|select_n|_unstack|_split|split|"
    r"_cumulative\w*|iota|_argmax|_argmin|_isfinite|isfinite|_roll|_take|_diag\w*|tril|triu|cholesky|"
    r"_solve\w*|eye|_eye|bitwise_\w+|ne|eq|lt|gt|le|ge|max|min|abs|_pad|pad|_cholesky\w*|fold_in|"
    r"random_\w+|_random_\w+|_gamma\w*|sort|argsort|_sort\w*|cumsum|cumlogsumexp|logsumexp)\)$"
)

METHODS = {
    "nuts": "NumPyro NUTS",
    "vifit_cold": "vifit fit() (empty cache)",
    "vifit_warm": "vifit fit() (warm cache)",
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
    """CPU count and model, memory, platform, package versions and the load average."""
    import platform
    from importlib import metadata

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version()}
    for d in ("vifit", "jax", "jaxlib", "numpyro", "diffrax", "optax", "numpy", "arviz-base", "arviz-stats", "arviz-plots"):
        try:
            versions[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            versions[d] = "not installed"
    out = {"nproc": os.cpu_count(), "cpu": cpu, "platform": platform.platform(), "versions": versions}
    try:
        out["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return out


def other_load() -> dict:
    """Return the load average and the processes using the CPU now (other than this run)."""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    busy = []
    try:
        text = subprocess.run(
            ["ps", "-eo", "pid,ppid,pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True, timeout=10
        ).stdout
        own = {os.getpid()}
        for line in text.splitlines()[1:]:
            parts = line.split(None, 4)
            if len(parts) < 5:
                continue
            pid, ppid, pcpu = int(parts[0]), int(parts[1]), float(parts[2])
            if pid in own or ppid in own or parts[4].startswith("ps "):
                continue
            if pcpu >= 5.0:
                busy.append(f"{pcpu:.0f}% {parts[4][:100]}")
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    return {"loadavg": load, "busy_processes": busy[:8], "time": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}


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


# -- instrumentation (worker processes only) -----------------------------------------------------


class StageClock:
    """Exclusive wall time of named stages, by wrapping the functions that make them.

    A stage called inside another counts for itself only (the outer stage's time excludes it).
    Used only inside the benchmark's worker processes; nothing in vifit is changed.
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.missing: list[str] = []
        self._stack: list[list] = []

    def wrap_everywhere(self, name: str, stage: str, package: str = "inference") -> None:
        """Time the function ``name`` wherever a loaded module of ``package`` holds it (its own and importers)."""
        found: dict[int, tuple] = {}
        for module in list(sys.modules.values()):
            if not getattr(module, "__name__", "").startswith(package):
                continue
            fn = getattr(module, "__dict__", {}).get(name)
            if callable(fn) and not isinstance(fn, type):
                found.setdefault(id(fn), (fn, []))[1].append(module)
        if not found:
            self.missing.append(name)
        for fn, modules in found.values():
            timed = self._timed(fn, stage)
            for module in modules:
                setattr(module, name, timed)

    def wrap(self, owner, name: str, stage: str) -> None:
        """Replace ``owner.name`` by a function that adds its time to ``stage``."""
        if not hasattr(owner, name):
            self.missing.append(f"{getattr(owner, '__name__', owner)}.{name}")
            return
        setattr(owner, name, self._timed(getattr(owner, name), stage))

    def _timed(self, fn, stage: str):
        clock = self

        def timed(*args, **kwargs):
            frame = [stage, 0.0]
            clock._stack.append(frame)
            a = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                total = time.perf_counter() - a
                clock._stack.pop()
                clock.seconds[stage] = clock.seconds.get(stage, 0.0) + total - frame[1]
                clock.calls[stage] = clock.calls.get(stage, 0) + 1
                if clock._stack:
                    clock._stack[-1][1] += total

        timed.__wrapped__ = fn
        return timed


def _engine_clock() -> StageClock:
    """Time the engine's stages: target, MAP, optimization, verdict, importance stage.

    Every module of ``inference.engine`` is imported first, so that each function is replaced in
    every module that imported it by name.
    """
    import importlib
    import pkgutil

    import inference.engine as engine

    for info in pkgutil.iter_modules(engine.__path__):
        importlib.import_module(f"{engine.__name__}.{info.name}")
    from inference.engine.result import FitResult

    clock = StageClock()
    clock.wrap_everywhere("make_target", "target")
    clock.wrap_everywhere("find_map", "map")
    clock.wrap_everywhere("fit_flat", "optimize")
    clock.wrap_everywhere("importance_resampled", "importance")
    clock.wrap(FitResult, "diagnose", "verdict")
    return clock


class CompileLog:
    """Every XLA compilation (program name and seconds), from JAX's compile log."""

    def __init__(self):
        import logging

        import jax

        self.programs: list = []
        self.phase = "import"
        log = self

        class Handler(logging.Handler):
            def emit(self, record):
                m = re.search(r"Finished XLA compilation of (\S+) in ([0-9.e-]+) sec", record.getMessage())
                if m:
                    log.programs.append([m.group(1), float(m.group(2)), log.phase])

        logging.getLogger("jax").addHandler(Handler())
        jax.config.update("jax_log_compiles", True)

    def model_programs(self, phases) -> list:
        """Programs compiled in ``phases`` that are not small programs (those that contain the model)."""
        return [p for p in self.programs if p[2] in phases and not SMALL_PROGRAMS.match(p[0])]


def _maxrss_bytes() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def _moments(pid: str, draws: dict, names) -> dict:
    """Mean and sd (ddof=1) over draws of each named site, natural and (positive sites) log scale."""
    import numpy as np

    out = {}
    for name in names:
        x = np.asarray(draws[name], dtype=float)
        x = x.reshape(-1) if x.ndim <= 1 or (pid != "d" or name != "k") else x.reshape(-1, x.shape[-1])
        entry = {"mean": np.mean(x, axis=0).tolist(), "sd": np.std(x, axis=0, ddof=1).tolist()}
        if np.all(x > 0):
            lx = np.log(x)
            entry["log_mean"] = np.mean(lx, axis=0).tolist()
            entry["log_sd"] = np.std(lx, axis=0, ddof=1).tolist()
        out[name] = entry
    return out


def _enable_x64():
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


def _attempts(result) -> list:
    return [jsonable(a) for a in (getattr(result, "attempts", None) or ())]


def _engine_split(clock: StageClock, attempts: list, fit_s: float) -> dict:
    """Exclusive seconds per stage of one fit, with the rest as ``other``."""
    split = {k: clock.seconds.get(k, 0.0) for k in ("target", "map", "optimize", "verdict", "importance")}
    laplace = [a for a in attempts if a.get("guide") == "laplace"]
    split["map_attempt"] = float(laplace[0]["seconds"]) if laplace else 0.0  # the MAP stage as auto times it
    split["other"] = fit_s - sum(split[k] for k in ("target", "map", "optimize", "verdict", "importance"))
    return split


# -- workers: each runs in a fresh process ----------------------------------------------------------


def worker_vifit(spec: dict) -> dict:
    """``inference.fit`` (guide "auto") on the vifit model and 4000 draws; stages, programs, moments."""
    t0 = time.perf_counter()
    log = CompileLog()
    import inference
    import vi_models.kinetics  # noqa: F401

    t_import = time.perf_counter()
    clock = _engine_clock()  # imports the rest of inference.engine: timed apart, in no figure
    t_clock = time.perf_counter()
    P = _load_problems_module()
    pid = spec["pid"]
    log.phase = "build"
    model = P.vifit_model(pid)
    t_build = time.perf_counter()
    log.phase = "fit"
    result = inference.fit(model, seed=0, progress=False)
    t_fit = time.perf_counter()
    log.phase = "verdict"
    verdict = result.verdict()
    t_verdict = time.perf_counter()
    log.phase = "draws"
    draws = P.with_derived(pid, result.sample(spec["draws"]))
    t_sample = time.perf_counter()
    end_wall = time.time()

    attempts = _attempts(result)
    settings = jsonable(result.settings or {})
    fit_s = t_fit - t_build
    return {
        "guide_used": str(getattr(result, "guide_name", "")),
        "chosen": settings.get("chosen_guide"),
        "verdict": str(getattr(verdict, "level", verdict)),
        "import_s": t_import - t0,
        "instrument_s": t_clock - t_import,
        "build_s": t_build - t_clock,
        "fit_s": fit_s,
        "verdict_s": t_verdict - t_fit,
        "sample_s": t_sample - t_verdict,
        "stages": _engine_split(clock, attempts, fit_s),
        "stage_calls": clock.calls,
        "not_timed": clock.missing,
        "timings": jsonable(result.timings),
        "steps": int(result.num_steps),
        "stop_reason": str(result.stop_reason),
        "batch_size": settings.get("batch_size"),
        "grad_evals": settings.get("grad_evals"),
        "density_evals": settings.get("density_evals"),
        "latent_dimension": settings.get("latent_dimension"),
        "attempts": attempts,
        "programs": log.programs,
        "posterior": _moments(pid, draws, [*P.rate_constants(pid), "sigma"]),
        "end_wall": end_wall,
        "cache_files": sum(1 for _ in Path(os.environ["VIFIT_CACHE_DIR"]).rglob("*") if _.is_file()),
    }


def worker_cli(spec: dict) -> dict:
    """``vifit fit`` run in this process through ``inference.outputs.cli.main``, its stages timed."""
    t0 = time.perf_counter()
    log = CompileLog()
    import inference.outputs.cli as cli
    import vi_models.kinetics  # noqa: F401

    t_import = time.perf_counter()
    log.phase = "command"
    import inference.outputs.report  # noqa: F401 - so that write_report is found and timed
    from inference.engine.result import FitResult

    clock = _engine_clock()
    t_clock = time.perf_counter()
    clock.wrap(FitResult, "to_arviz", "to_arviz")
    clock.wrap(FitResult, "summary", "summary")
    clock.wrap_everywhere("_write_netcdf", "netcdf")
    clock.wrap_everywhere("_write_plots", "plots")
    clock.wrap_everywhere("write_report", "report")
    code = cli.main(spec["argv"])
    t_end = time.perf_counter()
    end_wall = time.time()
    record = json.loads((Path(spec["out_dir"]) / "fit.json").read_text())
    fit_s = record["timings"]["total_s"]
    stages = _engine_split(clock, record["fit"].get("attempts", []), fit_s)
    for k in ("to_arviz", "summary", "netcdf", "plots", "report"):
        stages[k] = clock.seconds.get(k, 0.0)
    return {
        "exit": code,
        "import_s": t_import - t0,
        "instrument_s": t_clock - t_import,
        "main_s": t_end - t_clock,
        "not_timed": clock.missing,
        "command_s": record["timings"]["command_s"],
        "fit_s": fit_s,
        "stages": stages,
        "programs": log.programs,
        "end_wall": end_wall,
    }


def worker_floor(spec: dict) -> dict:
    """Measure the floor: import, model, one compile of the target; the cost of a call and of a step."""
    t0 = time.perf_counter()
    import inference
    import vi_models.kinetics  # noqa: F401

    t_import = time.perf_counter()
    import jax
    import numpy as np

    from inference.engine.target import make_target

    P = _load_problems_module()
    pid = spec["pid"]
    model = P.vifit_model(pid)
    t_build = time.perf_counter()
    B = int(spec["batch_size"])
    target = make_target(model, batch_size=B)
    t_target = time.perf_counter()
    out = {
        "pid": pid,
        "batch_size": B,
        "import_s": t_import - t0,
        "build_s": t_build - t_import,
        "target_s": t_target - t_build,
    }

    # One call of the compiled log density and gradient at B points, as the optimizers make it
    # (device arrays in, device arrays out; the host waits once per repeat).
    u = jax.device_put(target.starts(B, spread=0.5))
    for _ in range(3):
        jax.block_until_ready(target.value_and_grad(u))
    per_call = []
    for _ in range(5):
        a = time.perf_counter()
        for _ in range(CALLS):
            last = target.value_and_grad(u)
        jax.block_until_ready(last)
        per_call.append((time.perf_counter() - a) / CALLS)
    out["call_s"] = float(np.median(per_call))
    out["call_repeats_s"] = per_call
    # The log density alone at B points per call, through the public batched method (the verdict's path).
    points = np.repeat(np.asarray(u), 16, axis=0)  # 16 calls
    target.log_density(points[:B])
    per_density = []
    for _ in range(5):
        a = time.perf_counter()
        target.log_density(points)
        per_density.append((time.perf_counter() - a) / 16)
    out["density_call_s"] = float(np.median(per_density))

    # One optimization step inside fit (fresh draws, Adam): target call + the family's update program
    # + the host's work per chunk; the run time of n2 steps minus that of n1, over n2 - n1.
    runs = {}
    for n in spec["fit_steps"]:
        result = inference.fit(
            model, guide="multivariate_normal", draws="fresh", seed=0, progress=False, min_steps=n, max_steps=n
        )
        runs[n] = {"steps": int(result.num_steps), "run_s": float(result.timings.run_s)}
    (n1, r1), (n2, r2) = sorted(runs.items())
    out["fit_step_runs"] = {str(k): v for k, v in runs.items()}
    out["fit_step_s"] = (r2["run_s"] - r1["run_s"]) / max(r2["steps"] - r1["steps"], 1)

    if pid == "a":
        chunk, carry, unpack = make_hand_loop(num_particles=B)
        a = time.perf_counter()
        compiled = chunk.lower(carry).compile()
        out["hand_compile_s"] = time.perf_counter() - a
        carry, losses = compiled(carry)  # warm-up chunk
        jax.block_until_ready(losses)
        per_step = []
        for _ in range(3):
            a = time.perf_counter()
            for _ in range(spec["hand_chunks"]):
                carry, losses = compiled(carry)
                np.asarray(losses)  # the host looks at each chunk's losses
            per_step.append((time.perf_counter() - a) / (spec["hand_chunks"] * CHUNK))
        out["hand_step_s"] = float(np.median(per_step))
        out["hand_particles"] = B
    return out


def worker_memory(spec: dict) -> dict:
    """Fit + verdict + ArviZ export on a synthetic first-order decay data set; peak RSS per stage."""
    t0 = time.perf_counter()
    stages = []

    def mark(name, since):
        now = time.perf_counter()
        stages.append({"stage": name, "s": now - since, "peak_rss_bytes": _maxrss_bytes()})
        return now

    import numpy as np

    import inference
    import inference.engine.posterior as posterior_mod
    import inference.outputs.arviz_export as export_mod
    from vi_models import kinetics

    t = mark("import", t0)
    P = _load_problems_module()
    info = P.load_problems()
    rows = int(spec["rows"])
    truth = info["truth"]["a"]
    rng = np.random.default_rng(20240611)
    times = np.linspace(0.0, 10.0, rows)
    values = np.exp(-truth["k"] * times) + rng.normal(0.0, truth["sigma"], rows)
    data = kinetics.Dataset.from_arrays(times, {"A": values})
    priors = {name: P.prior_text(info["priors"][name]) for name in info["params"]["a"]}
    model = kinetics.model("A -> B : k", data, priors=priors, initial={"A": 1.0, "B": 0.0}, noise="normal")
    t = mark("data and model", t)

    # Inside to_arviz: the peak after each of its parts (ru_maxrss only grows, so the part that
    # raises it is the one that needed the memory).
    inner = []

    def watch(owner, name, label):
        fn = getattr(owner, name, None)
        if fn is None:
            return

        def timed(*args, **kwargs):
            a = time.perf_counter()
            value = fn(*args, **kwargs)
            inner.append({"part": label, "s": time.perf_counter() - a, "peak_rss_bytes": _maxrss_bytes()})
            return value

        setattr(owner, name, timed)

    watch(posterior_mod.FlatPosterior, "model_draws", "posterior draws with predictive and log likelihood")
    watch(posterior_mod.FlatPosterior, "prior_draws", "prior and prior predictive draws")
    watch(export_mod, "draw_prior", "prior and prior predictive draws (NumPyro path)")
    watch(type(model), "arviz_predictions", "predictions (model.arviz_predictions)")
    clock = _engine_clock()
    t = time.perf_counter()  # the clock's set-up (imports) is in no stage

    result = inference.fit(model, seed=0, progress=False)
    fit_s = time.perf_counter() - t
    t = mark("fit (guide='auto')", t)
    verdict = result.verdict()
    t = mark("verdict", t)
    inner.clear()  # the parts of to_arviz only
    tree = result.to_arviz()
    t = mark("to_arviz", t)
    group_bytes = {}
    for node in tree.subtree:
        if node.path != "/":
            group_bytes[node.path.strip("/")] = int(node.to_dataset().nbytes)
    return {
        "rows": rows,
        "experiments": int(data.n_experiments),
        "observations": int(data.n_observations),
        "chosen": (result.settings or {}).get("chosen_guide"),
        "verdict": str(getattr(verdict, "level", verdict)),
        "grad_evals": (result.settings or {}).get("grad_evals"),
        "density_evals": (result.settings or {}).get("density_evals"),
        "attempts": _attempts(result),
        "stages": stages,
        "fit_stages": _engine_split(clock, _attempts(result), fit_s),
        "to_arviz_parts": inner,
        "group_bytes": group_bytes,
        "peak_rss_bytes": _maxrss_bytes(),
        "end_wall": time.time(),
    }


def worker_svi(spec: dict) -> dict:
    """Plain NumPyro SVI (5000 Adam steps, one particle) and 4000 guide draws."""
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
    return {
        "guide": spec["guide"],
        "import_s": t_import - t0,
        "build_s": t_build - t_import,
        "run_s": t_run - t_build,
        "sample_s": t_sample - t_run,
        "steps": int(spec["steps"]),
        "posterior": _moments(pid, draws, [*P.rate_constants(pid), "sigma"]),
        "end_wall": time.time(),
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
        "divergences": int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum()),
        "posterior": post,
        "end_wall": end_wall,
    }


WORKERS = {
    "vifit": worker_vifit,
    "cli": worker_cli,
    "floor": worker_floor,
    "memory": worker_memory,
    "svi": worker_svi,
    "nuts": worker_nuts,
}


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


def run_process(cmd: list, env: dict, timeout: float, cwd: Path = ROOT) -> dict:
    """Run ``cmd`` as a fresh process; wall seconds, exit code, output and peak RSS (``os.wait4``)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        a = time.perf_counter()
        launch_wall = time.time()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - a
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {
            "wall_s": wall,
            "launch_wall": launch_wall,
            "exit": proc.returncode,
            "timed_out": wall >= timeout,
            "peak_rss_bytes": int(usage.ru_maxrss) * 1024,
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
        }


def launch(spec: dict, env: dict, timeout: float, label: str) -> dict:
    """Run one worker in a fresh process; return its record with ``total_s`` (launch to results)."""
    print(f"  {label} ...", end="", flush=True)
    with tempfile.NamedTemporaryFile(prefix="vifit-speed-", suffix=".json", delete=False) as f:
        result_path = Path(f.name)
    spec = dict(spec, result=str(result_path))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    load_before = _loadavg()
    try:
        proc = run_process(cmd, env, timeout)
        if proc["exit"] != 0 or not result_path.stat().st_size:
            why = f"timed out after {timeout:.0f} s" if proc["timed_out"] else f"exit {proc['exit']}"
            print(f" failed ({why})", flush=True)
            return {"error": why, "stderr_tail": proc["stderr"][-6000:], "process_s": proc["wall_s"]}
        record = json.loads(result_path.read_text())
    finally:
        result_path.unlink(missing_ok=True)
    record["process_s"] = proc["wall_s"]
    record["process_peak_rss_bytes"] = proc["peak_rss_bytes"]
    record["loadavg_before"], record["loadavg_after"] = load_before, _loadavg()
    record["startup_s"] = record["process_start_wall"] - proc["launch_wall"]
    if "end_wall" in record:
        record["total_s"] = record["end_wall"] - proc["launch_wall"]
    print(f" {record.get('total_s', proc['wall_s']):.1f} s", flush=True)
    return record


def _loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def cli_data(pid: str, folder: Path) -> Path:
    """Write the problem's CSV with its time column named ``time`` (``t`` in the benchmark files)."""
    P = _load_problems_module()
    lines = (HERE / "data" / P.SPECS[pid]["file"]).read_text().splitlines()
    header = lines[0].split(",")
    header = ["time" if h.strip() == "t" else h for h in header]
    path = folder / f"{pid}.csv"
    path.write_text("\n".join([",".join(header), *lines[1:]]) + "\n")
    return path


def cli_argv(pid: str, data: Path, out_dir: Path) -> list:
    """``vifit fit`` arguments for problem ``pid`` (priors of problems.json at full precision)."""
    P = _load_problems_module()
    info = P.load_problems()
    spec = P.SPECS[pid]
    argv = ["fit", str(data), "--mechanism", spec["mechanism"]]
    for species, value in spec["initial"].items():
        argv += ["--initial", f"{species}={value:g}"]
    for name in info["params"][pid]:
        argv += ["--prior", f"{name}={P.prior_text(info['priors'][name])}"]
    return argv + ["--out", str(out_dir), "--no-progress"]


def vifit_command() -> list:
    """Return the command that starts ``vifit`` (the console script next to this interpreter)."""
    exe = Path(sys.executable).parent / "vifit"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "inference.outputs.cli"]


def run_cli(argv: list, cache: Path, out_dir: Path, timeout: float, label: str) -> dict:
    """``vifit fit`` as a fresh process, start to written results; the split from its fit.json."""
    print(f"  {label} ...", end="", flush=True)
    load_before = _loadavg()
    proc = run_process(vifit_command() + argv, _clean_env(VIFIT_CACHE_DIR=str(cache)), timeout)
    fit_json = out_dir / "fit.json"
    if proc["exit"] != 0 or not fit_json.exists():
        print(f" failed (exit {proc['exit']})", flush=True)
        return {"error": f"exit {proc['exit']}", "stderr_tail": proc["stderr"][-3000:], "wall_s": proc["wall_s"]}
    record = json.loads(fit_json.read_text())
    written = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file())
    fit = record.get("fit", {})
    timings = record.get("timings", {})
    print(f" {proc['wall_s']:.1f} s", flush=True)
    return {
        "wall_s": proc["wall_s"],
        "peak_rss_bytes": proc["peak_rss_bytes"],
        "loadavg_before": load_before,
        "loadavg_after": _loadavg(),
        "timings": timings,
        "startup_and_import_s": proc["wall_s"] - timings.get("command_s", float("nan")),
        "outputs_s": timings.get("command_s", float("nan")) - timings.get("total_s", float("nan")),
        "chosen": fit.get("chosen_guide"),
        "grad_evals": fit.get("grad_evals"),
        "density_evals": fit.get("density_evals"),
        "attempts": fit.get("attempts"),
        "verdict": (record.get("verdict") or {}).get("level"),
        "written": written,
        "cache_files": sum(1 for _ in cache.rglob("*") if _.is_file()),
    }


def run_compile_count(pid: str, timeout: float) -> dict:
    """``../shared/tools/compile_count.py --log`` on problem ``pid`` with an empty cache."""
    if not COMPILE_COUNT.exists():
        return {"error": f"{COMPILE_COUNT} not found"}
    print(f"  compile_count.py --problem {pid} ...", end="", flush=True)
    cache = Path(tempfile.mkdtemp(prefix="vifit-speed-cache-"))
    try:
        proc = run_process(
            [sys.executable, str(COMPILE_COUNT), "--log", "--problem", pid],
            _clean_env(VIFIT_CACHE_DIR=str(cache)),
            timeout,
        )
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if proc["exit"] != 0:
        print(f" failed (exit {proc['exit']})", flush=True)
        return {"error": f"exit {proc['exit']}", "stderr_tail": proc["stderr"][-3000:]}
    programs, summary = [], {}
    for line in proc["stdout"].splitlines():
        m = re.match(r"\s*([0-9.]+) s\s+(\S+)\s*$", line)
        if m:
            programs.append([m.group(2), float(m.group(1))])
        elif line.startswith("{"):
            summary = json.loads(line)
    model = [p for p in programs if not SMALL_PROGRAMS.match(p[0])]
    print(f" {len(model)} with the model", flush=True)
    return {"programs": programs, "model_programs": model, "summary": summary, "wall_s": proc["wall_s"]}


def _as_list(x):
    return x if isinstance(x, list) else [x]


def errors_vs_nuts(method: dict, nuts: dict, names, log: bool = False) -> dict:
    """``(mean - NUTS mean) / NUTS sd`` and ``sd / NUTS sd`` per parameter (natural or log scale)."""
    mk, sk = ("log_mean", "log_sd") if log else ("mean", "sd")
    out = {}
    for n in names:
        mine, ref = method["posterior"][n], nuts["posterior"][n]
        if mk not in mine or mk not in ref:
            continue
        m, s = _as_list(mine[mk]), _as_list(mine[sk])
        rm, rs = _as_list(ref[mk]), _as_list(ref[sk])
        err = [(a - b) / c for a, b, c in zip(m, rm, rs)]
        ratio = [a / c for a, c in zip(s, rs)]
        scalar = not isinstance(mine[mk], list)
        out[n] = {"mean_err_sd": err[0] if scalar else err, "sd_ratio": ratio[0] if scalar else ratio}
    return out


def _worst(err: dict) -> tuple[bool, tuple, tuple]:
    """Whether every component meets the accuracy target; the worst mean error and sd ratio as (value, name).

    The worst mean error is the one largest in absolute value; the worst sd ratio the one farthest from 1.
    """
    worst_mean, worst_sd = (0.0, ""), (1.0, "")
    for name, e in err.items():
        for i, a in enumerate(_as_list(e["mean_err_sd"])):
            label = name if not isinstance(e["mean_err_sd"], list) else f"{name}[{i}]"
            if abs(a) >= abs(worst_mean[0]):
                worst_mean = (a, label)
        for i, r in enumerate(_as_list(e["sd_ratio"])):
            label = name if not isinstance(e["sd_ratio"], list) else f"{name}[{i}]"
            if abs(r - 1) >= abs(worst_sd[0] - 1):
                worst_sd = (r, label)
    ok = abs(worst_mean[0]) <= TARGET_MEAN_SD and abs(worst_sd[0] - 1) <= TARGET_SD_REL
    return ok, worst_mean, worst_sd


def previous_grad_evals(pid: str) -> int | None:
    """Return the previous engine's gradient evaluations of guide="auto" on ``pid`` (:data:`PREVIOUS_AUTO`)."""
    prev = PREVIOUS_AUTO.get(pid)
    if prev is None:
        return None
    return PREVIOUS_PARTICLES * sum(prev["attempt_steps"]) + PREVIOUS_MAP_STARTS * prev["map_iterations"]


def run_benchmark(args) -> dict:
    """Run every measurement, one process at a time; return the results."""
    pids = args.problems
    quick = args.quick
    warmup, samples, chains = (150, 150, 4) if quick else (1000, 1000, 4)
    res = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python benchmarks/speed.py", *sys.argv[1:]]),
        "quick": quick,
        "machine": machine_info(),
        "load_at_start": other_load(),
        "settings": {
            "draws": args.draws,
            "nuts": {"num_warmup": warmup, "num_samples": samples, "num_chains": chains},
            "plain_solver": "diffrax Tsit5, PIDController(rtol=1e-6, atol=1e-8), SaveAt(ts), default adjoint",
            "memory_rows": args.memory_rows,
            "svi_steps": SVI_STEPS if args.svi else None,
        },
        "problems": {},
    }
    timeout = args.timeout
    chain_method = None if args.nuts_chain_method == "fastest" else args.nuts_chain_method
    work = Path(tempfile.mkdtemp(prefix="vifit-speed-"))
    try:
        for pid in pids:
            P = _problem_names()
            entry = {"parameters": [*P[pid], "sigma"]}
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
                spec = {"kind": "vifit", "pid": pid, "draws": args.draws}
                entry["vifit_cold"] = launch(spec, env, timeout, "vifit fit(), empty cache")
                entry["vifit_warm"] = launch(spec, env, timeout, "vifit fit(), warm cache")
            finally:
                shutil.rmtree(cache, ignore_errors=True)

            if pid in CLI_PROBLEMS:
                data = cli_data(pid, work)
                cache = Path(tempfile.mkdtemp(prefix="vifit-speed-cache-"))
                try:
                    for key, label in (("cli_cold", "empty cache"), ("cli_warm", "warm cache")):
                        out_dir = work / f"{pid}_{key}"
                        entry[key] = run_cli(cli_argv(pid, data, out_dir), cache, out_dir, timeout, f"vifit fit, {label}")
                finally:
                    shutil.rmtree(cache, ignore_errors=True)
                if pid == pids[0]:
                    cache = Path(tempfile.mkdtemp(prefix="vifit-speed-cache-"))
                    try:
                        env = _clean_env(VIFIT_CACHE_DIR=str(cache))
                        for key, label in (("cli_split_cold", "empty cache"), ("cli_split_warm", "warm cache")):
                            out_dir = work / f"{pid}_{key}"
                            spec = {"kind": "cli", "argv": cli_argv(pid, data, out_dir), "out_dir": str(out_dir)}
                            entry[key] = launch(spec, env, timeout, f"vifit fit with its stages timed, {label}")
                    finally:
                        shutil.rmtree(cache, ignore_errors=True)

            if args.svi:
                for key, guide in (("svi_normal", "normal"), ("svi_mvn", "multivariate_normal")):
                    spec = {"kind": "svi", "pid": pid, "guide": guide, "steps": SVI_STEPS, "draws": args.draws}
                    entry[key] = launch(spec, _clean_env(), timeout, f"NumPyro SVI {guide}, {SVI_STEPS} steps")

            nuts = entry["nuts"]
            entry["errors"], entry["log_errors"] = {}, {}
            if "error" not in nuts:
                for key in ("vifit_cold", "vifit_warm", "svi_normal", "svi_mvn"):
                    if _ok(entry.get(key)):
                        entry["errors"][key] = errors_vs_nuts(entry[key], nuts, entry["parameters"])
                        entry["log_errors"][key] = errors_vs_nuts(entry[key], nuts, entry["parameters"], log=True)
            res["problems"][pid] = entry

        first = pids[0]
        cold = res["problems"][first].get("vifit_cold")
        batch = int(cold.get("batch_size") or 32) if _ok(cold) else 32
        print(f"floor, problem {first}:", flush=True)
        cache = Path(tempfile.mkdtemp(prefix="vifit-speed-cache-"))
        try:
            spec = {
                "kind": "floor",
                "pid": first,
                "batch_size": batch,
                "fit_steps": list(FIT_STEPS),
                "hand_chunks": 5 if quick else 20,
            }
            res["floor"] = launch(spec, _clean_env(VIFIT_CACHE_DIR=str(cache)), timeout, "import, one compile, calls, steps")
        finally:
            shutil.rmtree(cache, ignore_errors=True)

        print("programs compiled per fit(guide='auto') and verdict:", flush=True)
        res["compile_count"] = {pid: run_compile_count(pid, timeout) for pid in ("a", "c")}

        if args.memory_rows:
            print(f"memory, {args.memory_rows} rows:", flush=True)
            cache = Path(tempfile.mkdtemp(prefix="vifit-speed-cache-"))
            try:
                spec = {"kind": "memory", "rows": args.memory_rows}
                res["memory"] = launch(spec, _clean_env(VIFIT_CACHE_DIR=str(cache)), timeout, "fit + verdict + to_arviz")
            finally:
                shutil.rmtree(cache, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["load_at_end"] = other_load()
    res["targets"] = targets(res)
    return res


def _last_error_line(record: dict) -> str:
    """Return the exception line of a failed worker's stderr (or its exit status)."""
    lines = [ln for ln in record.get("stderr_tail", "").splitlines() if re.match(r"^\w*(Error|Exception)\b", ln)]
    return lines[-1].strip()[:200].replace("|", "/") if lines else record["error"]


def _problem_names() -> dict:
    # Rate constants by problem, without importing JAX here (same table as problems.rate_constants).
    return {"a": ("k",), "b": ("kf", "kb"), "c": ("Vmax", "Km"), "d": ("mu", "tau", "k")}


def _nuts_env(method: str, chains: int) -> dict:
    # "parallel" needs one host device per chain before JAX starts, or NumPyro draws the chains
    # sequentially.
    return {"XLA_FLAGS": f"--xla_force_host_platform_device_count={chains}"} if method == "parallel" else {}


def _ok(r: dict | None) -> bool:
    return bool(r) and "error" not in r


# -- targets and report -----------------------------------------------------------------------------


def floor_figures(res: dict) -> dict | None:
    """Return the floor of target 3 and the in-process fit it is compared with (first problem, empty cache)."""
    fl = res.get("floor")
    if not _ok(fl):
        return None
    cold = res["problems"].get(fl["pid"], {}).get("vifit_cold")
    if not _ok(cold):
        return None
    B = fl["batch_size"]
    calls = (cold.get("grad_evals") or 0) / B
    density_calls = (cold.get("density_evals") or 0) / B
    steps_s = calls * fl["call_s"]
    floor_s = fl["import_s"] + fl["build_s"] + fl["target_s"] + steps_s
    fit_s = cold["import_s"] + cold["build_s"] + cold["fit_s"]
    return {
        "pid": fl["pid"],
        "floor_s": floor_s,
        "floor_import_s": fl["import_s"],
        "floor_build_s": fl["build_s"],
        "floor_target_s": fl["target_s"],
        "floor_steps_s": steps_s,
        "target_calls": calls,
        "call_s": fl["call_s"],
        "density_calls": density_calls,
        "density_call_s": fl["density_call_s"],
        "floor_with_density_s": floor_s + density_calls * fl["density_call_s"],
        "fit_s": fit_s,
        "ratio": fit_s / floor_s,
    }


def targets(res: dict) -> list:
    """List the targets of "One compiled model for every stage", each measured and marked met or not."""
    out = []
    probs = res["problems"]

    def nuts_total(pid):
        r = probs.get(pid, {}).get("nuts")
        return r["total_s"] if _ok(r) else None

    for tid, pid, key, need, what in (
        ("1", "a", "cli_cold", TARGET_CLI_COLD, "`vifit fit` on a, empty compilation cache"),
        ("1", "a", "cli_warm", TARGET_CLI_WARM, "`vifit fit` on a, warm compilation cache"),
        ("2", "c", "cli_cold", TARGET_CLI_C_COLD, "`vifit fit` on c, empty compilation cache"),
    ):
        name = f"{what}, start to written results: >= {need:g}x faster than NUTS"
        r = probs.get(pid, {}).get(key)
        n = nuts_total(pid)
        if pid not in probs:
            out.append({"id": tid, "target": name, "value": f"not measured (problem {pid} not in this run)", "met": None})
        elif not (_ok(r) and n):
            out.append({"id": tid, "target": name, "value": "a run failed", "met": False})
        else:
            ratio = n / r["wall_s"]
            out.append({"id": tid, "target": name, "met": ratio >= need,
                        "value": f"{ratio:.2f}x (NUTS {n:.1f} s / vifit {r['wall_s']:.1f} s)"})

    ff = floor_figures(res)
    name = f"`fit(model)` on a, empty cache: within {TARGET_FLOOR:g}x of the floor (import + one compile + the steps)"
    if ff is None:
        out.append({"id": "3", "target": name, "value": "not measured (a run failed)", "met": False})
    else:
        out.append({
            "id": "3", "target": name, "met": ff["ratio"] <= TARGET_FLOOR,
            "value": f"{ff['ratio']:.2f}x ({ff['fit_s']:.2f} s against a floor of {ff['floor_s']:.2f} s = import "
                     f"{ff['floor_import_s']:.2f} + model {ff['floor_build_s']:.2f} + compile {ff['floor_target_s']:.2f} + "
                     f"{ff['target_calls']:.0f} calls x {1e3 * ff['call_s']:.3f} ms)",
        })

    for pid, cc in (res.get("compile_count") or {}).items():
        name = f"problem {pid}: programs containing the model per `fit(guide=\"auto\")` + verdict <= {TARGET_PROGRAMS}"
        if not _ok(cc):
            out.append({"id": "4", "target": name, "value": f"not measured ({cc.get('error')})", "met": False})
            continue
        model = cc["model_programs"]
        names = ", ".join(f"{n} {s:.2f} s" for n, s in model)
        out.append({"id": "4", "target": name, "met": len(model) <= TARGET_PROGRAMS,
                    "value": f"{len(model)} ({names}); {len(cc['programs'])} programs in all"})

    for pid, p in probs.items():
        cold = p.get("vifit_cold")
        prev = previous_grad_evals(pid)
        name = f"problem {pid}: gradient evaluations of `guide=\"auto\"` <= 1/5 of the previous engine's"
        if not _ok(cold) or cold.get("grad_evals") is None:
            out.append({"id": "5", "target": name, "value": "not measured", "met": False})
            continue
        per = ", ".join(f"{a['guide']} {a.get('grad_evals')}" for a in cold["attempts"])
        if prev is None:
            out.append({"id": "5", "target": name, "met": None,
                        "value": f"{cold['grad_evals']} ({per}); no previous figure"})
            continue
        ratio = cold["grad_evals"] / prev
        out.append({"id": "5", "target": name, "met": ratio <= TARGET_GRAD_EVALS,
                    "value": f"{cold['grad_evals']} ({per}; density alone {cold.get('density_evals')}) against about "
                             f"{prev} = {ratio:.3f}"})

    for pid, p in probs.items():
        for scale, key in (("natural scale (the target's)", "errors"), ("log scale (positive parameters)", "log_errors")):
            err = p.get(key, {}).get("vifit_cold")
            name = (f"accuracy, problem {pid}, {scale}: every mean within {TARGET_MEAN_SD} NUTS sd and every sd "
                    f"within {TARGET_SD_REL:.0%} ({', '.join(p['parameters'])})")
            if not err:
                out.append({"id": "6", "target": name, "value": "not measured (a run failed)", "met": False})
                continue
            ok, (wm, nm), (ws, ns) = _worst(err)
            out.append({"id": "6", "target": name, "met": ok,
                        "value": f"largest mean error {wm:+.3f} NUTS sd ({nm}); sd ratio farthest from 1: {ws:.3f} ({ns})"})

    mem = res.get("memory")
    name = f"peak memory of fit + verdict + ArviZ export, {MEMORY_ROWS:,} rows: under {TARGET_MEMORY_BYTES / 1e9:g} GB"
    if mem is None:
        out.append({"id": "7", "target": name, "value": "not measured (--memory-rows 0)", "met": None})
    elif not _ok(mem):
        out.append({"id": "7", "target": name, "value": f"the run failed ({mem.get('error')})", "met": False})
    else:
        peak = mem["process_peak_rss_bytes"]
        before = max((s["peak_rss_bytes"] for s in mem["stages"] if s["stage"] != "to_arviz"), default=0)
        rows = f" ({mem['rows']:,} rows: not the target's size)" if mem["rows"] != MEMORY_ROWS else ""
        out.append({"id": "7", "target": name, "met": peak < TARGET_MEMORY_BYTES if not rows else None,
                    "value": f"{peak / 1e9:.2f} GB{rows}; {before / 1e9:.2f} GB up to the verdict, the rest in to_arviz"})
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


def _load_line(load: dict | None) -> str:
    if not load:
        return "unknown"
    la = load.get("loadavg")
    busy = load.get("busy_processes") or []
    text = f"load average {', '.join(f'{v:.2f}' for v in la)}" if la else "load average unknown"
    return text + (f"; other processes using the CPU: {'; '.join(busy)}" if busy else "; no other process above 5% CPU")


def markdown(res: dict) -> str:
    """Render the results as Markdown: the targets first, then the figures behind them."""
    m = res["machine"]
    lines = [
        f"Date {res['date']}; {m['nproc']} cores ({m['cpu']}), {m.get('memory_gib', '?')} GiB; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"Command: `{res['command']}`" + (" (quick: short NUTS, small memory problem)" if res["quick"] else ""),
        f"At the start: {_load_line(res.get('load_at_start'))}.",
        f"At the end: {_load_line(res.get('load_at_end'))}.",
        "",
    ]
    ch = res.get("nuts_chain_method", {})
    if ch.get("measured_on"):
        ts, errs = ch["total_s"], ch.get("errors", {})

        def shown(method):
            return f"{fmt(ts.get(method), 1)} s" if ts.get(method) is not None else f"failed ({errs.get(method, 'no result')})"

        lines += [
            f"NUTS chain method: **{ch['chosen']}** (on problem {ch['measured_on']}, end to end: vectorized "
            f"{shown('vectorized')}, parallel {shown('parallel')}).",
            "",
        ]

    lines += ["### Targets", "", "| # | target | measured | status |", "|---|---|---|---|"]
    for t in res["targets"]:
        lines.append(f"| {t['id']} | {t['target']} | {t['value']} | {_status(t['met'])} |")

    lines += ["", "### End to end (fresh process each; seconds)", ""]
    lines += [
        "| problem | NUTS | `vifit fit` empty cache | warm cache | NUTS / empty | NUTS / warm | `fit()` empty cache | warm cache |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for pid, p in res["problems"].items():
        n = p["nuts"].get("total_s") if _ok(p.get("nuts")) else None
        cc, cw = p.get("cli_cold"), p.get("cli_warm")
        vc, vw = p.get("vifit_cold"), p.get("vifit_warm")
        c_s = cc["wall_s"] if _ok(cc) else None
        w_s = cw["wall_s"] if _ok(cw) else None
        lines.append(
            f"| {pid} | {fmt(n, 1)} | {fmt(c_s)} | {fmt(w_s)} | {fmt(n / c_s) + 'x' if n and c_s else ''} | "
            f"{fmt(n / w_s) + 'x' if n and w_s else ''} | {fmt(vc.get('total_s')) if _ok(vc) else 'failed'} | "
            f"{fmt(vw.get('total_s')) if _ok(vw) else 'failed'} |"
        )
    lines += ["", "`fit()` columns: launch of the process to 4000 draws (import, model, fit with its verdict, draws).", ""]

    lines += ["### Where the time goes: `vifit fit` (seconds)", ""]
    lines += [
        "| problem | cache | wall | start + import | fit | of which MAP stage | outputs | peak RSS MB | chosen | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pid, p in res["problems"].items():
        for key, label in (("cli_cold", "empty"), ("cli_warm", "warm")):
            r = p.get(key)
            if not r:
                continue
            if not _ok(r):
                lines.append(f"| {pid} | {label} | failed: {r['error']} | | | | | | | |")
                continue
            mp = next((a["seconds"] for a in r.get("attempts") or [] if a["guide"] == "laplace"), None)
            lines.append(
                f"| {pid} | {label} | {fmt(r['wall_s'])} | {fmt(r['startup_and_import_s'])} | {fmt(r['timings'].get('total_s'))} | "
                f"{fmt(mp)} | {fmt(r['outputs_s'])} | {r['peak_rss_bytes'] / 2**20:.0f} | {r['chosen']} | {r['verdict']} |"
            )
    stage_cols = ("target", "map", "optimize", "verdict", "importance", "other")
    first = next(iter(res["problems"]))
    split_rows = [(k, res["problems"][first].get(k)) for k in ("cli_split_cold", "cli_split_warm")]
    if any(r for _, r in split_rows):
        lines += [
            "",
            f"The same command on {first}, in a process that times each stage (seconds):",
            "",
            "| cache | process | start + import | trace + compile target | MAP | optimization | verdict | importance | rest of fit | "
            "to_arviz | posterior.nc | summary | plots | report | rest of outputs |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key, r in split_rows:
            if not r:
                continue
            if not _ok(r):
                lines.append(f"| {key} | failed: {r['error']} |" + " |" * 13)
                continue
            st = r["stages"]
            outputs = r["command_s"] - r["fit_s"]
            rest = outputs - sum(st[k] for k in ("to_arviz", "netcdf", "summary", "plots", "report"))
            lines.append(
                f"| {'empty' if key.endswith('cold') else 'warm'} | {fmt(r['total_s'])} | "
                f"{fmt(r['total_s'] - r['command_s'] - r.get('instrument_s', 0.0))} | "
                + " | ".join(fmt(st[k]) for k in stage_cols)
                + " | "
                + " | ".join(fmt(st[k]) for k in ("to_arviz", "netcdf", "summary", "plots", "report"))
                + f" | {fmt(rest)} |"
            )
        for key, r in split_rows:
            if _ok(r) and r.get("programs") is not None:
                model = [f"`{n}` {s:.2f} s" for n, s, _ in r["programs"] if not SMALL_PROGRAMS.match(n)]
                lines += [
                    "",
                    f"With the {'empty' if key.endswith('cold') else 'warm'} cache the command compiled "
                    f"{len(r['programs'])} programs in {sum(s for _, s, _ in r['programs']):.2f} s; "
                    f"{len(model)} not among the small ones: {', '.join(model) or 'none'}.",
                ]

    lines += ["", "### Where the time goes: `fit()` in Python (seconds)", ""]
    lines += [
        "| problem | cache | import | model | trace + compile target | MAP | optimization | verdict | importance | rest | fit | "
        "4000 draws | guide kept |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pid, p in res["problems"].items():
        for key, label in (("vifit_cold", "empty"), ("vifit_warm", "warm")):
            r = p.get(key)
            if not _ok(r):
                lines.append(f"| {pid} | {label} | failed |" + " |" * 10)
                continue
            st = r["stages"]
            lines.append(
                f"| {pid} | {label} | {fmt(r['import_s'])} | {fmt(r['build_s'])} | "
                + " | ".join(fmt(st[k]) for k in stage_cols)
                + f" | {fmt(r['fit_s'])} | {fmt(r['sample_s'])} | {r['chosen']} |"
            )
    lines += [
        "",
        "Stages: `make_target` (trace and compile of the model's one program), `find_map` (multistart L-BFGS and "
        "Hessians), `fit_flat` (each guide's optimization), `FitResult.diagnose` (verdicts), `importance_resampled`; "
        "each exclusive of the others; the rest is the MAP stage's starting points, the mode check and bookkeeping.",
    ]

    missing = sorted({n for p in res["problems"].values() for r in p.values() if isinstance(r, dict)
                      for n in r.get("not_timed") or ()})
    if missing:
        lines += ["", f"**Not timed** (not found in the engine, so their time is in 'rest'): {', '.join(missing)}."]

    ff = floor_figures(res)
    fl = res.get("floor")
    if _ok(fl):
        lines += ["", f"### The floor and the cost of a step (problem {fl['pid']}, batch of {fl['batch_size']} points)", ""]
        lines += ["| figure | value |", "|---|---|"]
        lines.append(f"| import (fresh process) | {fmt(fl['import_s'])} s |")
        lines.append(f"| model | {fmt(fl['build_s'])} s |")
        lines.append(f"| `make_target` (trace + compile, empty cache) | {fmt(fl['target_s'])} s |")
        lines.append(f"| one call of the target, log density and gradient | {1e3 * fl['call_s']:.3f} ms |")
        lines.append(f"| one call, log density alone (through `Target.log_density`) | {1e3 * fl['density_call_s']:.3f} ms |")
        lines.append(
            f"| one optimization step inside `fit` (fresh draws, Adam; {FIT_STEPS[1]} minus {FIT_STEPS[0]} steps) | "
            f"{1e3 * fl['fit_step_s']:.3f} ms |"
        )
        if "hand_step_s" in fl:
            lines.append(
                f"| one step of the hand-written JAX loop (closed form, {fl['hand_particles']} draws, lax.scan) | "
                f"{1e3 * fl['hand_step_s']:.3f} ms ({fl['fit_step_s'] / fl['hand_step_s']:.1f}x faster than vifit's step) |"
            )
        if ff:
            lines.append(
                f"| floor = import + model + compile + {ff['target_calls']:.0f} gradient calls (the fit's) | {fmt(ff['floor_s'])} s "
                f"(with the fit's {ff['density_calls']:.0f} density-only calls: {fmt(ff['floor_with_density_s'])} s) |"
            )
            lines.append(f"| `fit()` (import + model + fit, empty cache) | {fmt(ff['fit_s'])} s = {ff['ratio']:.2f}x the floor |")

    lines += ["", "### What `guide=\"auto\"` did (empty cache)", ""]
    lines += [
        "| problem | attempt | level | steps | gradient evaluations | s | k-hat | outcome |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for pid, p in res["problems"].items():
        r = p.get("vifit_cold")
        if not _ok(r):
            continue
        for a in r["attempts"]:
            lines.append(
                f"| {pid} | {a.get('guide')} | {a.get('level')} | {a.get('num_steps')} | {a.get('grad_evals')} | "
                f"{fmt(a.get('seconds'))} | {fmt(a.get('khat'))} | {str(a.get('outcome', '')).replace('|', '/')} |"
            )
        prev = previous_grad_evals(pid)
        lines.append(
            f"| {pid} | **total** | | | **{r.get('grad_evals')}** (+ {r.get('density_evals')} density alone) | "
            f"{fmt(r['fit_s'])} | | previous engine about {prev if prev is not None else '?'} |"
        )

    cc_all = res.get("compile_count") or {}
    if cc_all:
        lines += ["", "### Programs compiled by `fit(guide=\"auto\")` and its verdict (`compile_count.py --log`, empty cache)", ""]
        lines += ["| problem | program | compile s | contains the model |", "|---|---|---|---|"]
        for pid, cc in cc_all.items():
            if not _ok(cc):
                lines.append(f"| {pid} | failed: {cc.get('error')} | | |")
                continue
            for n, s in cc["programs"]:
                lines.append(f"| {pid} | `{n}` | {s:.3f} | {'**yes**' if not SMALL_PROGRAMS.match(n) else 'no'} |")
            sm = cc.get("summary", {})
            lines.append(f"| {pid} | (the tool's summary) | {fmt(sm.get('compile_s'))} | fit + verdict {fmt(sm.get('fit_and_verdict_s'))} s, "
                         f"verdict {sm.get('verdict')} |")
    for pid, p in res["problems"].items():
        r = p.get("vifit_cold")
        if _ok(r):
            later = [f"`{n}` ({ph})" for n, s, ph in r["programs"] if ph in ("draws",) and not SMALL_PROGRAMS.match(n)]
            if later:
                lines.append(f"\nProblem {pid}: the 4000 draws after the fit compiled {', '.join(later)}.")

    lines += ["", "### Posterior against NUTS (4000 draws each)", ""]
    lines += [
        "| problem | parameter | NUTS mean | NUTS sd | n_eff | vifit mean | vifit sd | mean error (NUTS sd) | sd ratio | "
        "log scale: mean error | log scale: sd ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pid, p in res["problems"].items():
        nuts, r = p.get("nuts"), p.get("vifit_cold")
        if not (_ok(nuts) and _ok(r)):
            continue
        for name in p["parameters"]:
            e, le = p["errors"]["vifit_cold"].get(name), p["log_errors"]["vifit_cold"].get(name)
            ref, mine = nuts["posterior"][name], r["posterior"][name]
            if isinstance(ref["mean"], list):
                _, (wm, nm), (ws, ns) = _worst({name: e})
                lines.append(f"| {pid} | {name} ({len(ref['mean'])}) | | | | | | worst {wm:+.3f} ({nm}) | worst {ws:.3f} ({ns}) | | |")
                continue
            n_eff = ref.get("n_eff")
            lines.append(
                f"| {pid} | {name} | {sig(ref['mean'])} | {sig(ref['sd'])} | {fmt(n_eff, 0)} | {sig(mine['mean'])} | {sig(mine['sd'])} | "
                f"{e['mean_err_sd']:+.3f} | {e['sd_ratio']:.3f} | "
                + (f"{le['mean_err_sd']:+.3f} | {le['sd_ratio']:.3f} |" if le else " | |")
            )

    mem = res.get("memory")
    if mem:
        lines += ["", f"### Memory: fit + verdict + ArviZ export, {res['settings']['memory_rows']:,} rows", ""]
        if not _ok(mem):
            lines.append(f"failed: {mem.get('error')}")
        else:
            lines += ["| stage | s | peak RSS so far (MB) |", "|---|---|---|"]
            for s in mem["stages"]:
                lines.append(f"| {s['stage']} | {fmt(s['s'])} | {s['peak_rss_bytes'] / 1e6:.0f} |")
            for s in mem["to_arviz_parts"]:
                lines.append(f"| to_arviz: {s['part']} | {fmt(s['s'])} | {s['peak_rss_bytes'] / 1e6:.0f} |")
            lines.append(f"| whole process (`os.wait4`) | {fmt(mem['process_s'])} | {mem['process_peak_rss_bytes'] / 1e6:.0f} |")
            fs = mem.get("fit_stages") or {}
            if fs:
                lines += ["", "The fit's stages (s): " + ", ".join(f"{k} {fmt(fs[k])}" for k in (*stage_cols, "map_attempt")) + "."]
            sizes = ", ".join(f"{k} {v / 1e6:.1f}" for k, v in mem["group_bytes"].items())
            lines += ["", f"{mem['observations']:,} observations in {mem['experiments']} experiment(s); "
                          f"guide kept {mem['chosen']}, verdict {mem['verdict']}, {mem['grad_evals']} gradient and "
                          f"{mem['density_evals']} density evaluations. Size of each group of the DataTree (MB): {sizes}."]

    if any(_ok(p.get("svi_mvn")) for p in res["problems"].values()):
        lines += ["", "### Plain NumPyro SVI (for comparison; 5000 Adam steps, one particle)", ""]
        lines += ["| problem | guide | end to end s | worst mean error (NUTS sd) | worst sd ratio |", "|---|---|---|---|---|"]
        for pid, p in res["problems"].items():
            for key in ("svi_normal", "svi_mvn"):
                r, e = p.get(key), p["errors"].get(key)
                if _ok(r) and e:
                    _, (wm, nm), (ws, ns) = _worst(e)
                    lines.append(f"| {pid} | {METHODS[key]} | {fmt(r['total_s'])} | {wm:+.3f} ({nm}) | {ws:.3f} ({ns}) |")

    lines += ["", "### NUTS runs", "", "| problem | chain method | end to end s | run s | divergences | min n_eff | max r_hat |", "|---|---|---|---|---|---|---|"]
    for pid, p in res["problems"].items():
        for key in ("nuts", "nuts_other_chain_method"):
            r = p.get(key)
            if not r:
                continue
            if not _ok(r):
                lines.append(f"| {pid} | the other chain method failed: {_last_error_line(r)} | | | | | |")
                continue
            n_eff = [v for n in p["parameters"] for v in _as_list(r["posterior"][n].get("n_eff", []))]
            r_hat = [v for n in p["parameters"] for v in _as_list(r["posterior"][n].get("r_hat", []))]
            lines.append(
                f"| {pid} | {r['chain_method']} | {fmt(r['total_s'])} | {fmt(r['run_s'])} | {r['divergences']} | "
                f"{min(n_eff):.0f} | {max(r_hat):.3f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Run the benchmark (or, with ``--worker``, one measurement); return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", default="a,b,c", help="comma-separated problem ids (default a,b,c; d has no command line)")
    parser.add_argument("--quick", action="store_true", help="smoke run: NUTS 4 x (150 + 150), 1000-row memory problem")
    parser.add_argument("--out", type=Path, help="results JSON (default benchmarks/out/speed.json, speed-quick.json with --quick)")
    parser.add_argument("--draws", type=int, default=NUM_DRAWS, help=f"posterior draws for the moments (default {NUM_DRAWS})")
    parser.add_argument(
        "--nuts-chain-method",
        choices=("fastest", "vectorized", "parallel"),
        default="fastest",
        help="fastest (default): measure both on the first problem, use the faster",
    )
    parser.add_argument("--memory-rows", type=int, help=f"rows of the memory problem (default {MEMORY_ROWS}, 1000 with --quick; 0 skips it)")
    parser.add_argument("--svi", action="store_true", help="also run plain NumPyro SVI (AutoNormal, AutoMultivariateNormal)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per process (default 1800)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(args.worker)

    args.problems = [p.strip() for p in args.problems.split(",") if p.strip()]
    unknown = [p for p in args.problems if p not in PROBLEM_IDS]
    if unknown or not args.problems:
        parser.error(f"unknown problem(s) {', '.join(unknown)}; choose from {', '.join(PROBLEM_IDS)}")
    if args.memory_rows is None:
        args.memory_rows = 1000 if args.quick else MEMORY_ROWS
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
