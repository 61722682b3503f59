"""Many experiments: how a plate fit scales with the number of experiments, and problem d against NUTS.

Synthetic plates of ``E`` experiments x 15 times on [0, 10] (hierarchical first-order decay
``A -> B : k``, ``log k_e ~ Normal(mu, tau)`` with ``mu = log 0.35``, ``tau = 0.3``, noise
``sigma = 0.02``; the truth is known), written as a long CSV (``experiment, time, A``). For each size,
one fresh process, timed from its launch to its exit, does what a user does::

    data = kinetics.read_plate("plate.csv")
    model = kinetics.plate_model("A -> B : k", data, initial={"A": 1, "B": 0}, hierarchical="k")
    result = inference.fit(model, data)          # guide="auto", its verdict included

and reports wall time (launch to exit, and the fit alone), the fit's steps, the time of one
evaluation of the log density and gradient of the whole plate at one point (the unit of work of
every step; the fastest of 10 calls, as other jobs share the cores) next to the same for a
hand-written JAX log density of the plate (no vifit or NumPyro code: what the machine gives as the
data outgrow its caches), peak memory (``ru_maxrss``), the recovery of ``mu`` and ``tau`` (posterior mean within
3 posterior sds of the truth, on the unconstrained scale: ``mu`` and ``log tau``), the coverage of the
per-experiment ``k`` (how often the truth lies in the central 50% and 90% posterior intervals), the
guide and the verdict, and how many XLA programs containing the model were compiled.

``--problem-d`` adds the hierarchical reference problem d (50 experiments, ``d_hier.csv``): vifit
(the same three lines) against NUTS, each in a fresh process timed launch to exit, in the same run:

* NUTS 4 chains x (1000 + 1000) on the plain NumPyro + diffrax model of ``problems.py`` (what a
  user writes without vifit; the comparator of ``speed.py``), and on the plate model itself;
* a long NUTS reference, 4 chains x (2000 + 10000) on the plate model (closed-form solution,
  centred, the same priors as problem d), for the posterior means and sds of ``mu`` and ``tau``.

Usage::

    nice .venv/bin/python benchmarks/scaling.py                       # 10 ... 100,000, about 10 min
    nice .venv/bin/python benchmarks/scaling.py --sizes 10,100,1000 --problem-d

Writes ``benchmarks/out/scaling.json`` and ``scaling.md`` (git-ignored) and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MU, TAU, SIGMA, T_MAX, N_T = float(np.log(0.35)), 0.3, 0.02, 10.0, 15


def write_plate(E: int, path: Path, seed: int = 0) -> np.ndarray:
    """A synthetic plate of ``E`` experiments as a long CSV; returns the true ``log k`` per experiment."""
    import pandas as pd

    rng = np.random.default_rng([seed, E])
    log_k = MU + TAU * rng.standard_normal(E)
    t = np.linspace(0.0, T_MAX, N_T)
    y = np.exp(-np.exp(log_k)[:, None] * t[None]) + SIGMA * rng.standard_normal((E, N_T))
    frame = pd.DataFrame({"experiment": np.repeat(np.arange(E), N_T), "time": np.tile(t, E), "A": y.ravel()})
    frame.to_csv(path, index=False, float_format="%.10g")
    return log_k


def hand_written_point_s(data, x0: np.ndarray, points: int = 4) -> float:
    """Seconds per point of a hand-written JAX log density and gradient of the same plate (the machine's floor).

    Centred hierarchical decay, ``y_et ~ Normal(exp(-exp(u_e) t_et), sigma)``, ``u_e ~ Normal(mu, tau)``,
    with ``jax.scipy.stats`` and no vifit or NumPyro code, ``points`` points one after another as
    vifit's large-model path evaluates them; the fastest of 10 calls.
    """
    import jax
    import jax.numpy as jnp
    from jax.scipy.stats import norm

    t = jnp.asarray(data.times)
    y = jnp.asarray(data.values)[..., 0]

    def log_density(x):
        mu, log_tau, log_sigma, u = x[0], x[1], x[2], x[3:]
        mean = jnp.exp(-jnp.exp(u)[:, None] * t)
        return norm.logpdf(y, mean, jnp.exp(log_sigma)).sum() + norm.logpdf(u, mu, jnp.exp(log_tau)).sum()

    program = jax.jit(lambda xs: jax.lax.map(jax.value_and_grad(log_density), xs))
    xs = np.repeat(np.asarray(x0, dtype=float)[None], points, axis=0)
    jax.block_until_ready(program(xs))
    times = []
    for _ in range(10):
        s = time.perf_counter()
        jax.block_until_ready(program(xs))
        times.append((time.perf_counter() - s) / points)
    return float(np.min(times))


# -- the worker: one fresh process per fit -------------------------------------------------------------
def worker(csv: str, truth: str, out: str) -> None:
    import logging
    import resource

    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    import jax

    programs = []

    class Collect(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            if "Finished XLA compilation of" in msg:
                programs.append(msg.split("Finished XLA compilation of ")[1].split(" ")[0])

    logging.getLogger("jax").addHandler(Collect())
    jax.config.update("jax_log_compiles", True)
    from inference import fit, site_moments
    from vi_models import kinetics

    t_import = time.perf_counter()
    data = kinetics.read_plate(csv)
    t_read = time.perf_counter()
    model = kinetics.plate_model("A -> B : k", data, initial={"A": 1.0, "B": 0.0}, hierarchical="k")
    result = fit(model, data, seed=0, progress=False)
    verdict = result.verdict()
    t_fit = time.perf_counter()
    log_k = np.load(truth)
    E = data.n_experiments
    order = np.asarray([int(x) for x in data.experiments])
    log_k = log_k[order]
    if result.posterior is not None and result.guide_name == "normal":
        moments = site_moments(result)
        mu, mu_sd = (float(x) for x in moments["k_mu"])
        lt, lt_sd = (float(x) for x in moments["k_tau"])
        m_u, s_u = moments["k_u"]
        inside50 = np.abs(m_u - log_k) < 0.6745 * s_u
        inside90 = np.abs(m_u - log_k) < 1.6449 * s_u
        source = "guide parameters"
    else:
        draws = result.sample(4000, seed=1)
        mu, mu_sd = float(np.mean(draws["k_mu"])), float(np.std(draws["k_mu"]))
        lt, lt_sd = float(np.mean(np.log(draws["k_tau"]))), float(np.std(np.log(draws["k_tau"])))
        q = np.quantile(draws["k_u"], [0.05, 0.25, 0.75, 0.95], axis=0)
        inside50 = (q[1] <= log_k) & (log_k <= q[2])
        inside90 = (q[0] <= log_k) & (log_k <= q[3])
        source = "4000 draws"
    t_summary = time.perf_counter()
    # The unit of work: the log density and gradient of the whole plate at one point.
    target = result.posterior.target
    x = np.repeat(np.asarray(result.params["auto_loc"])[None], target.batch_size, axis=0)
    jax.block_until_ready(target.value_and_grad(x))
    times = []
    for _ in range(10):
        s = time.perf_counter()
        jax.block_until_ready(target.value_and_grad(x))
        times.append((time.perf_counter() - s) / target.batch_size)
    record = {
        "experiments": E,
        "latent_dimension": int(target.dim),
        "import_s": t_import - t0,
        "read_s": t_read - t_import,
        "fit_s": t_fit - t_read,
        "summary_s": t_summary - t_fit,
        "steps": int(result.num_steps),
        "stop_reason": str(result.stop_reason),
        "grad_evals": int(result.settings.get("grad_evals", 0)),
        "density_evals": int(result.settings.get("density_evals", 0)),
        "point_s": float(np.min(times)),  # the least loaded of 10 calls (2 shared cores)
        "hand_point_s": hand_written_point_s(data, np.concatenate([[MU, np.log(TAU), np.log(SIGMA)], log_k])),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "data_mb": data.nbytes / 2**20,
        "guide": result.guide_name,
        "attempts": [(a.guide, a.outcome, a.num_steps, round(a.seconds, 2)) for a in result.attempts],
        "verdict": verdict.level,
        "verdict_reason": verdict.reason,
        "khat": float(verdict.khat),
        "khat_draws": int(verdict.khat_draws),
        "mu": [mu, mu_sd, (mu - MU) / mu_sd],
        "log_tau": [lt, lt_sd, (lt - np.log(TAU)) / lt_sd],
        "coverage50": float(np.mean(inside50)),
        "coverage90": float(np.mean(inside90)),
        "moments_from": source,
        "model_programs": sum(1 for p in programs if "target_program" in p),
        "programs": len(programs),
        "load_start": load0,
        "load_end": os.getloadavg()[0],
    }
    Path(out).write_text(json.dumps(record))


def nuts_worker(which: str, warmup: int, samples: int, out: str) -> None:
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    import jax

    import inference  # noqa: F401 - float64, as every process of the benchmarks

    from numpyro.infer import MCMC, NUTS  # noqa: I001 - after inference: float64 first

    sys.path.insert(0, str(HERE))
    import problems

    if which == "plain":
        model, args = problems.plain_numpyro_model("d"), ()
    else:
        from vi_models import kinetics

        data = kinetics.read_plate(HERE / "data" / "d_hier.csv")
        model = kinetics.plate_model("A -> B : k", data, initial={"A": 1.0, "B": 0.0}, hierarchical="k")
        args = (data,)
    mcmc = MCMC(NUTS(model), num_warmup=warmup, num_samples=samples, num_chains=4, chain_method="vectorized",
                progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), *args)
    draws = mcmc.get_samples(group_by_chain=True)
    mu = np.asarray(draws["k_mu" if which != "plain" else "mu"])
    tau = np.asarray(draws["k_tau" if which != "plain" else "tau"])
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

    extra = mcmc.get_extra_fields()
    record = {
        "which": which, "warmup": warmup, "samples": samples, "chains": 4,
        "total_s": time.perf_counter() - t0,
        "mu": [float(mu.mean()), float(mu.std())],
        "log_tau": [float(np.log(tau).mean()), float(np.log(tau).std())],
        "tau": [float(tau.mean()), float(tau.std())],
        "rhat": [float(split_gelman_rubin(mu)), float(split_gelman_rubin(tau))],
        "ess": [float(effective_sample_size(mu)), float(effective_sample_size(tau))],
        "divergences": int(np.sum(np.asarray(extra["diverging"]))),
        "load_start": load0, "load_end": os.getloadavg()[0],
    }
    Path(out).write_text(json.dumps(record))


def vifit_d_worker(out: str) -> None:
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    from inference import fit
    from vi_models import kinetics

    data = kinetics.read_plate(HERE / "data" / "d_hier.csv")
    model = kinetics.plate_model("A -> B : k", data, initial={"A": 1.0, "B": 0.0}, hierarchical="k")
    result = fit(model, data, seed=0, progress=False)
    verdict = result.verdict()
    t_fit = time.perf_counter()
    draws = result.sample(8000, seed=1)
    record = {
        "total_s": time.perf_counter() - t0, "fit_s": t_fit - t0, "guide": result.guide_name,
        "attempts": [(a.guide, a.outcome) for a in result.attempts], "verdict": verdict.level,
        "khat": float(verdict.khat),
        "mu": [float(np.mean(draws["k_mu"])), float(np.std(draws["k_mu"]))],
        "tau": [float(np.mean(draws["k_tau"])), float(np.std(draws["k_tau"]))],
        "log_tau": [float(np.mean(np.log(draws["k_tau"]))), float(np.std(np.log(draws["k_tau"])))],
        "load_start": load0, "load_end": os.getloadavg()[0],
    }
    Path(out).write_text(json.dumps(record))


# -- the driver ---------------------------------------------------------------------------------------------
def launch(args: list[str], timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, *args, "--result", str(out)], cwd=ROOT, timeout=timeout,
                              capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not out.exists():
            return {"error": proc.stderr[-2000:], "wall_s": wall}
        record = json.loads(out.read_text())
        record["wall_s"] = wall
        return record


def machine() -> dict:
    import jax
    import numpyro

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"cores": os.cpu_count(), "cpu": cpu, "memory": mem, "python": platform.python_version(),
            "jax": jax.__version__, "numpyro": numpyro.__version__, "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def scaling_table(rows: list[dict]) -> str:
    lines = [
        "| experiments | d | wall s (launch to exit) | fit s | steps | s per plate gradient | per experiment: vifit / "
        "hand-written | peak memory | mu: (mean - truth) / sd | log tau: (mean - truth) / sd | k coverage 50% / 90% | "
        "guide, verdict (k-hat) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r.get('experiments', '?')} | | failed after {r['wall_s']:.0f} s | | | | | | | | | |")
            continue
        lines.append(
            f"| {r['experiments']:,} | {r['latent_dimension']:,} | {r['wall_s']:.1f} | {r['fit_s']:.1f} | {r['steps']} | "
            f"{r['point_s'] * 1e3:.3g} ms | {r['point_s'] / r['experiments'] * 1e6:.3f} / "
            f"{r.get('hand_point_s', float('nan')) / r['experiments'] * 1e6:.3f} us | {r['peak_rss_mb'] / 1024:.2f} GB | {r['mu'][2]:+.2f} | {r['log_tau'][2]:+.2f} | "
            f"{r['coverage50']:.3f} / {r['coverage90']:.3f} | {r['guide']}, {r['verdict']} ({r['khat']:.2f}) |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10,100,1000,10000,100000")
    ap.add_argument("--problem-d", action="store_true", help="also problem d against NUTS")
    ap.add_argument("--nuts-long", default="2000,10000", help="warm-up,draws of the long NUTS reference")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--out", default=str(HERE / "out" / "scaling.json"))
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--nuts-worker", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--vifit-d", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.worker:
        worker(*opts.worker, opts.result)
        return 0
    if opts.nuts_worker:
        which, warmup, samples = opts.nuts_worker
        nuts_worker(which, int(warmup), int(samples), opts.result)
        return 0
    if opts.vifit_d:
        vifit_d_worker(opts.result)
        return 0

    report = {"machine": machine(), "sizes": [], "problem_d": None}
    print(json.dumps(report["machine"]))
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for E in [int(s) for s in opts.sizes.split(",")]:
            csv, truth = Path(tmp) / f"plate{E}.csv", Path(tmp) / f"truth{E}.npy"
            np.save(truth, write_plate(E, csv))
            row = launch(["--worker", str(csv), str(truth)], opts.timeout)
            row.setdefault("experiments", E)
            report["sizes"].append(row)
            print(json.dumps(row), flush=True)
            Path(opts.out).write_text(json.dumps(report, indent=1))
    if opts.problem_d:
        warm, draws = (int(x) for x in opts.nuts_long.split(","))
        d = {
            "vifit": launch(["--vifit-d"], opts.timeout),
            "nuts_plain": launch(["--nuts-worker", "plain", "1000", "1000"], opts.timeout),
            "nuts_plate": launch(["--nuts-worker", "plate", "1000", "1000"], opts.timeout),
            "reference": launch(["--nuts-worker", "plate", str(warm), str(draws)], opts.timeout),
        }
        report["problem_d"] = d
        print(json.dumps(d), flush=True)
    Path(opts.out).write_text(json.dumps(report, indent=1))
    md = [scaling_table(report["sizes"])]
    if report["problem_d"]:
        d = report["problem_d"]
        ref = d["reference"]
        v = d["vifit"]
        if "error" not in ref and "error" not in v:
            md.append(
                f"\nproblem d: vifit {v['wall_s']:.1f} s ({v['guide']}, {v['verdict']}); NUTS plain "
                f"{d['nuts_plain'].get('wall_s', float('nan')):.1f} s; NUTS on the plate model "
                f"{d['nuts_plate'].get('wall_s', float('nan')):.1f} s; mu: {(v['mu'][0] - ref['mu'][0]) / ref['mu'][1]:+.3f} "
                f"reference sd, tau: {(v['tau'][0] - ref['tau'][0]) / ref['tau'][1]:+.3f} reference sd"
            )
    text = "\n".join(md)
    Path(opts.out).with_suffix(".md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
