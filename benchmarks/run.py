"""vifit benchmark: time split and accuracy against NUTS on the reference problems a, b, c.

Run from the repository root (``make bench`` runs ``.venv/bin/python benchmarks/run.py``)::

    .venv/bin/python benchmarks/run.py                   # problems a, b, c; about 6-10 min on 2 cores
    .venv/bin/python benchmarks/run.py --quick           # smoke run, short NUTS
    .venv/bin/python benchmarks/run.py --problems a,c

Everything runs in one process on one machine, one thing at a time:

1. the import time of vifit, in fresh subprocesses (``python -c "import inference, vi_models.kinetics"``);
2. the command line ``vifit fit`` on problem a as a fresh process, timed from start to written results,
   once with an empty compilation cache and once with the same, now warm, cache;
3. per problem: the vifit model with the priors of ``data/problems.json`` and known initial
   conditions; ``fit(model, guide="multivariate_normal", seed=0, progress=False)`` with its time split
   (init, compile, run) and posterior mean and sd of every parameter from 4000 guide draws; NumPyro NUTS
   on the same model object (4 chains x (1000 warm-up + 1000 draws), sequential); the error of vifit
   against NUTS per rate constant, in NUTS sds;
4. the mean-field guide (``guide="normal"``) on problem c, the known failure case (sd of Vmax too small).

The in-process fits use a fresh, empty compilation cache (``VIFIT_CACHE_DIR`` set to a new temporary
folder before vifit is imported), so their compile times are those of a first run. Output:
``benchmarks/out/results.json`` (``results-quick.json`` with ``--quick``) and Markdown tables on stdout
(also written next to the JSON, ``.md``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "data"
OUT = HERE / "out"

# What the problems are, beyond problems.json: data file, mechanism, known initial conditions.
PROBLEMS = {
    "a": {"file": "a_decay.csv", "mechanism": "A -> B : k", "initial": {"A": 1.0, "B": 0.0}},
    "b": {"file": "b_reversible.csv", "mechanism": "A <=> B : kf, kb", "initial": {"A": 1.0, "B": 0.0}},
    "c": {"file": "c_mm.csv", "mechanism": "S -> P : mm(Vmax, Km)", "initial": {"S": 10.0, "P": 0.0}},
}

# Figures measured with plain NumPyro + diffrax on a 2-core CPU (/work/shared/benchmarks/README.md).
REFERENCE = {
    "numpyro_svi_total_s_a": 15.6,
    "numpyro_svi_compile_s_a": 13.0,
    "nuts_s": {"a": 23.0, "c": 77.0},
    "meanfield_vmax_sd_c": 0.0036,
    "nuts_vmax_sd_c": 0.0183,
}

CLI_LABELS = {
    "cold_cache": "empty cache",
    "warm_cache": "warm cache (same folder, second run)",
    "hashseed0_populate": "diagnostic: PYTHONHASHSEED=0, empty cache",
    "hashseed0_warm_cache": "diagnostic: PYTHONHASHSEED=0, warm cache",
}
TARGET_CLI_S = 6.0  # target (1): `vifit fit` on problem a, fresh process, start to written results
TARGET_REL = 0.10  # target (2): mean and sd of k within 10% of NUTS on problem a


def prior_text(spec) -> str:
    """``["LogNormal", -0.69, 1.0]`` -> ``"LogNormal(-0.6931471805599453, 1.0)"`` (full precision)."""
    family, *args = spec
    return f"{family}({', '.join(repr(float(a)) for a in args)})"


def python_exe() -> str:
    """Return the interpreter running the benchmark (the venv's)."""
    return sys.executable


def vifit_exe() -> str:
    """Return the ``vifit`` console script next to the interpreter."""
    exe = Path(sys.executable).parent / "vifit"
    return str(exe) if exe.exists() else "vifit"


def machine_info() -> dict:
    """CPU count and model, platform and package versions."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for d in ("vifit", "jax", "jaxlib", "numpyro", "diffrax", "optax", "numpy"):
        try:
            versions[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            versions[d] = "not installed"
    return {"nproc": os.cpu_count(), "cpu": cpu, "platform": platform.platform(), "versions": versions}


# -- fresh processes ------------------------------------------------------------------------------


def time_import(repeats: int) -> dict:
    """Wall time of ``python -c "import inference, vi_models.kinetics"`` in fresh processes."""
    env = dict(os.environ)
    cmd = [python_exe(), "-c", "import inference, vi_models.kinetics"]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)  # warm the file cache
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
        walls.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    subprocess.run([python_exe(), "-c", "pass"], cwd=ROOT, env=env, check=True, capture_output=True)
    bare = time.perf_counter() - t0
    return {"import_s": min(walls), "import_walls_s": walls, "bare_python_s": bare}


def run_cli(priors: dict) -> dict:
    """``vifit fit`` on problem a as a fresh process: empty cache, then the same cache warm."""
    spec = PROBLEMS["a"]
    out_dir = OUT / "cli_a"
    cmd = [
        vifit_exe(),
        "fit",
        str((DATA / spec["file"]).relative_to(ROOT)),
        "--mechanism",
        spec["mechanism"],
        "--initial",
        "A=1",
        "--prior",
        f"k={prior_text(priors['k'])}",
        "--prior",
        f"sigma={prior_text(priors['sigma'])}",
        "--out",
        str(out_dir.relative_to(ROOT)),
        "--no-progress",
    ]
    cache = Path(tempfile.mkdtemp(prefix="vifit-bench-cli-cache-"))
    env = dict(os.environ, VIFIT_CACHE_DIR=str(cache))
    env.pop("VIFIT_COMPILATION_CACHE", None)
    runs = {}
    try:
        for label in ("cold_cache", "warm_cache"):
            shutil.rmtree(out_dir, ignore_errors=True)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            rec = {"wall_s": wall, "returncode": proc.returncode}
            fit_json = out_dir / "fit.json"
            if proc.returncode != 0 or not fit_json.exists():
                rec["stderr_tail"] = proc.stderr[-2000:]
                rec["stdout_tail"] = proc.stdout[-2000:]
            else:
                record = json.loads(fit_json.read_text())
                rec.update(
                    timings=record["timings"],
                    num_steps=record["num_steps"],
                    stop_reason=record["stop_reason"],
                    posterior=record["posterior"],
                )
            runs[label] = rec
        # Diagnostic, not a target: NumPyro's Trace_ELBO sums the sites in the order of a Python set of
        # their names, which changes with the string hash seed of each process; vifit's "elbo"
        # (inference.engine.objectives.OrderedTrace_ELBO) sums them in trace order, so the warm cache is hit
        # whatever the hash seed. This second fresh cache with a fixed PYTHONHASHSEED (populate, then
        # measure) should time the same as the warm run above.
        cache2 = Path(tempfile.mkdtemp(prefix="vifit-bench-cli-cache-"))
        env2 = dict(env, VIFIT_CACHE_DIR=str(cache2), PYTHONHASHSEED="0")
        try:
            for label in ("hashseed0_populate", "hashseed0_warm_cache"):
                shutil.rmtree(out_dir, ignore_errors=True)
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, cwd=ROOT, env=env2, capture_output=True, text=True)
                wall = time.perf_counter() - t0
                rec = {"wall_s": wall, "returncode": proc.returncode}
                fit_json = out_dir / "fit.json"
                if proc.returncode == 0 and fit_json.exists():
                    record = json.loads(fit_json.read_text())
                    rec.update(timings=record["timings"], num_steps=record["num_steps"])
                runs[label] = rec
        finally:
            shutil.rmtree(cache2, ignore_errors=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {"command": cmd_text(cmd), **runs}


def cmd_text(cmd) -> str:
    """Join the command into one shell line, ``vifit`` for the script's full path."""
    import shlex

    return " ".join(shlex.quote(c) for c in [("vifit" if c == vifit_exe() else c) for c in cmd])


# -- in-process fits --------------------------------------------------------------------------------


def build_model(pid: str, problems: dict):
    """Build the vifit model of a problem; return it with its priors as text."""
    from vi_models import kinetics

    spec = PROBLEMS[pid]
    params = problems["params"][pid]
    priors = {name: prior_text(problems["priors"][name]) for name in params}
    model = kinetics.model(
        spec["mechanism"], str(DATA / spec["file"]), priors=priors, initial=spec["initial"], noise="normal"
    )
    return model, priors


def moments(draws: dict, names) -> dict:
    """Mean and sd (ddof=1) of each named site over all draws."""
    import numpy as np

    out = {}
    for n in names:
        x = np.asarray(draws[n], dtype=float).reshape(-1)
        out[n] = {"mean": float(np.mean(x)), "sd": float(np.std(x, ddof=1))}
    return out


def run_vifit(model, guide: str, n_draws: int) -> dict:
    """One ``fit`` with its time split, steps, stop reason and posterior moments."""
    from inference import fit

    t0 = time.perf_counter()
    result = fit(model, guide=guide, seed=0, progress=False)
    t1 = time.perf_counter()
    draws = result.sample(n_draws)
    t2 = time.perf_counter()
    names = list(model.rate_constants) + ["sigma"]
    t = result.timings
    return {
        "guide": guide,
        "init_s": t.init_s,
        "compile_s": t.compile_s,
        "run_s": t.run_s,
        "total_s": t.total_s,
        "fit_call_s": t1 - t0,
        "sample_s": t2 - t1,
        "num_steps": int(result.num_steps),
        "stop_reason": str(result.stop_reason),
        "nonfinite_steps": int(result.nonfinite_steps.sum()),
        "posterior": moments(draws, names),
    }


def run_nuts(model, warmup: int, samples: int, chains: int) -> dict:
    """NUTS on the model: timed run (with compile), timed rerun (without), moments and diagnostics."""
    import jax
    import numpy as np
    from numpyro.diagnostics import summary as nsummary
    from numpyro.infer import MCMC, NUTS

    mcmc = MCMC(
        NUTS(model),
        num_warmup=warmup,
        num_samples=samples,
        num_chains=chains,
        chain_method="sequential",
        progress_bar=False,
    )
    t0 = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(0), extra_fields=("diverging",))
    draws = mcmc.get_samples(group_by_chain=True)
    jax.block_until_ready(draws)
    first = time.perf_counter() - t0
    diverging = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    names = list(model.rate_constants) + ["sigma"]
    stats = nsummary({n: np.asarray(draws[n]) for n in names}, group_by_chain=True)
    flat = {n: np.asarray(v).reshape(-1) for n, v in draws.items()}
    post = moments(flat, names)
    for n in names:
        post[n]["n_eff"] = float(stats[n]["n_eff"])
        post[n]["r_hat"] = float(stats[n]["r_hat"])
    # The same MCMC object again: its compiled sampler is reused, so this is the run without compile.
    t0 = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(1))
    jax.block_until_ready(mcmc.get_samples())
    second = time.perf_counter() - t0
    return {
        "num_warmup": warmup,
        "num_samples": samples,
        "num_chains": chains,
        "run_s": first,
        "rerun_s": second,
        "compile_s_est": first - second,
        "divergences": diverging,
        "posterior": post,
    }


def errors(vi: dict, nuts: dict, names) -> dict:
    """Error of vifit against NUTS per parameter: mean in NUTS sds, relative mean, sd ratio."""
    out = {}
    for n in names:
        v, r = vi["posterior"][n], nuts["posterior"][n]
        out[n] = {
            "mean_err_sd": (v["mean"] - r["mean"]) / r["sd"],
            "mean_rel": (v["mean"] - r["mean"]) / r["mean"],
            "sd_ratio": v["sd"] / r["sd"],
        }
    return out


# -- report --------------------------------------------------------------------------------------


def fmt(x, nd=2):
    """Format a number with ``nd`` decimals, ``n/a`` for None or non-finite."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{nd}f}"


def sig(x):
    """Format a number to 4 significant digits."""
    return f"{x:.4g}"


def markdown(res: dict) -> str:
    """Render the results as Markdown tables."""
    lines = []
    imp = res["import"]
    lines += ["### Time split, vifit (in process, empty compilation cache) and NUTS", ""]
    lines += [
        "| problem | import s | init s | compile s | run s | fit total s | steps | stop | "
        "NUTS run s (with compile) | NUTS rerun s (no compile) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pid, p in res["problems"].items():
        v, n = p["vifit"], p.get("nuts")
        lines.append(
            f"| {pid} | {fmt(imp['import_s'])} | {fmt(v['init_s'])} | {fmt(v['compile_s'])} | {fmt(v['run_s'])} | "
            f"{fmt(v['total_s'])} | {v['num_steps']} | {v['stop_reason']} | "
            f"{fmt(n['run_s'] if n else None, 1)} | {fmt(n['rerun_s'] if n else None, 1)} |"
        )
    lines += ["", "### Posterior mean and sd, vifit (full-rank) against NUTS", ""]
    lines += [
        "| problem | parameter | vifit mean | vifit sd | NUTS mean | NUTS sd | NUTS n_eff | "
        "(mean - NUTS mean) / NUTS sd | sd / NUTS sd |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for pid, p in res["problems"].items():
        v, n = p["vifit"], p.get("nuts")
        for name in p["params"]:
            vp = v["posterior"][name]
            if n:
                np_ = n["posterior"][name]
                e = p["errors"][name]
                lines.append(
                    f"| {pid} | {name} | {sig(vp['mean'])} | {sig(vp['sd'])} | {sig(np_['mean'])} | "
                    f"{sig(np_['sd'])} | {np_['n_eff']:.0f} | {e['mean_err_sd']:+.3f} | {e['sd_ratio']:.3f} |"
                )
            else:
                lines.append(f"| {pid} | {name} | {sig(vp['mean'])} | {sig(vp['sd'])} | | | | | |")
    mf = res.get("meanfield_c")
    if mf:
        lines += ["", "### Mean-field guide (`guide=\"normal\"`) on problem c", ""]
        lines += ["| parameter | mean | sd | sd / NUTS sd | steps | stop |", "|---|---|---|---|---|---|"]
        for name, e in mf["errors"].items():
            vp = mf["vifit"]["posterior"][name]
            lines.append(
                f"| {name} | {sig(vp['mean'])} | {sig(vp['sd'])} | {e['sd_ratio']:.3f} | "
                f"{mf['vifit']['num_steps']} | {mf['vifit']['stop_reason']} |"
            )
    cli = res.get("cli")
    if cli:
        lines += ["", "### `vifit fit` on problem a, fresh process, start to written results", ""]
        lines += [
            "| cache | wall s | in-process init s | compile s | run s | command s (main() start to fit.json) | steps |",
            "|---|---|---|---|---|---|---|",
        ]
        for label in ("cold_cache", "warm_cache", "hashseed0_populate", "hashseed0_warm_cache"):
            if label not in cli:
                continue
            r = cli[label]
            t = r.get("timings", {})
            lines.append(
                f"| {CLI_LABELS[label]} | {fmt(r['wall_s'])} | {fmt(t.get('init_s'))} | "
                f"{fmt(t.get('compile_s'))} | {fmt(t.get('run_s'))} | {fmt(t.get('command_s'))} | "
                f"{r.get('num_steps', 'failed')} |"
            )
    lines += ["", "### Targets", ""]
    for t in res["targets"]:
        lines.append(f"- {t['name']}: {t['value']} -> **{'met' if t['met'] else 'not met'}**")
    return "\n".join(lines) + "\n"


def targets(res: dict) -> list:
    """List the targets, each with its measured value and whether it is met."""
    out = []
    cli = res.get("cli")
    if cli:
        for label in ("cold_cache", "warm_cache"):
            r = cli[label]
            ok = r["returncode"] == 0 and r["wall_s"] < TARGET_CLI_S
            out.append(
                {
                    "name": f"(1) `vifit fit` on a, fresh process, {label.replace('_', ' ')}, under {TARGET_CLI_S:g} s",
                    "value": f"{r['wall_s']:.2f} s" + ("" if r["returncode"] == 0 else f" (exit {r['returncode']})"),
                    "met": ok,
                }
            )
    a = res["problems"].get("a")
    if a and a.get("nuts"):
        e = a["errors"]["k"]
        ok_mean = abs(e["mean_err_sd"]) <= TARGET_REL
        ok_sd = abs(e["sd_ratio"] - 1) <= TARGET_REL
        out.append(
            {
                "name": "(2a) mean of k on a within 10% of NUTS (|mean - NUTS mean| <= 0.1 NUTS sd)",
                "value": f"{e['mean_err_sd']:+.3f} NUTS sd ({100 * e['mean_rel']:+.2f}% of the mean)",
                "met": ok_mean,
            }
        )
        out.append(
            {"name": "(2b) sd of k on a within 10% of NUTS", "value": f"ratio {e['sd_ratio']:.3f}", "met": ok_sd}
        )
    return out


def main(argv=None) -> int:
    """Run the benchmark; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", default="a,b,c", help="comma-separated problem ids (default a,b,c)")
    parser.add_argument("--quick", action="store_true", help="smoke run: short NUTS (2 chains x 200+200)")
    parser.add_argument("--no-cli", action="store_true", help="skip the command-line timing")
    parser.add_argument("--no-nuts", action="store_true", help="skip NUTS (no errors are computed)")
    parser.add_argument("--draws", type=int, default=4000, help="guide draws for the moments (default 4000)")
    parser.add_argument("--out", type=Path, help="results JSON (default benchmarks/out/results.json)")
    args = parser.parse_args(argv)

    pids = [p.strip() for p in args.problems.split(",") if p.strip()]
    unknown = [p for p in pids if p not in PROBLEMS]
    if unknown:
        parser.error(f"unknown problem(s) {', '.join(unknown)}; choose from {', '.join(PROBLEMS)}")
    out_json = args.out or OUT / ("results-quick.json" if args.quick else "results.json")
    OUT.mkdir(parents=True, exist_ok=True)
    warmup, samples, chains = (200, 200, 2) if args.quick else (1000, 1000, 4)
    problems = json.loads((DATA / "problems.json").read_text())
    t_start = time.perf_counter()

    res = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick,
        "machine": machine_info(),
        "reference": REFERENCE,
    }

    # Fresh processes first, before this process loads JAX (one thing at a time on 2 cores).
    print("import time (fresh processes) ...", flush=True)
    res["import"] = time_import(repeats=3)
    if not args.no_cli:
        print("vifit fit on problem a (fresh process, cold then warm cache) ...", flush=True)
        res["cli"] = run_cli(problems["priors"])

    # In-process fits with an empty compilation cache: set before vifit is imported.
    cache = Path(tempfile.mkdtemp(prefix="vifit-bench-cache-"))
    os.environ["VIFIT_CACHE_DIR"] = str(cache)
    os.environ.pop("VIFIT_COMPILATION_CACHE", None)
    sys.path.insert(0, str(ROOT))
    try:
        import inference  # noqa: F401  (float64 and the compilation cache)

        res["problems"] = {}
        for pid in pids:
            model, priors = build_model(pid, problems)
            names = list(model.rate_constants)
            print(f"problem {pid}: vifit (multivariate_normal) ...", flush=True)
            entry = {"mechanism": PROBLEMS[pid]["mechanism"], "priors": priors, "params": names}
            entry["vifit"] = run_vifit(model, "multivariate_normal", args.draws)
            if not args.no_nuts:
                print(f"problem {pid}: NUTS {chains} x ({warmup} + {samples}) ...", flush=True)
                entry["nuts"] = run_nuts(model, warmup, samples, chains)
                entry["errors"] = errors(entry["vifit"], entry["nuts"], names + ["sigma"])
            res["problems"][pid] = entry
            if pid == "c":
                print("problem c: vifit (normal, mean-field) ...", flush=True)
                mf = {"vifit": run_vifit(model, "normal", args.draws)}
                if "nuts" in entry:
                    mf["errors"] = errors(mf["vifit"], entry["nuts"], names)
                res["meanfield_c"] = mf
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    res["targets"] = targets(res)
    res["wall_s"] = time.perf_counter() - t_start
    out_json.write_text(json.dumps(res, indent=2) + "\n")
    md = markdown(res)
    out_json.with_suffix(".md").write_text(md)
    print()
    print(md)
    print(f"total benchmark wall time {res['wall_s']:.0f} s; results in {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
