"""Calibration of the verdict: does "reliable" mean what it says, on posteriors with known answers?

Two commands, run from the repository root::

    nice -n 5 .venv/bin/python benchmarks/calibration.py references            # long NUTS references
    nice -n 5 .venv/bin/python benchmarks/calibration.py references --problems d funnel --force
    nice -n 5 .venv/bin/python benchmarks/calibration.py run > /tmp/calib_run.log 2>&1 &
    .venv/bin/python benchmarks/calibration.py run --problems a bod --guides auto --out /tmp/calib_ab.json

``references``
    For every problem of ``calibration_problems.py``, NumPyro NUTS with many chains (default 8 x
    (2000 warm-up + 5000 draws), dense mass matrix, target acceptance 0.9-0.95; the per-problem
    settings are in the problem's ``info["nuts"]``). A run whose largest r_hat is above 1.01 or
    whose smallest bulk or tail ESS is below 2000 is repeated once with twice the draws and
    another seed. Per compared quantity it stores the mean and sd (and, for a positive one, the
    mean and sd of its log), the 5%, 50% and 95% quantiles, the rank-normalized split r_hat and
    the bulk and tail ESS (``arviz_stats``), with the settings, seconds, divergences and versions,
    in ``data/calibration/references.json``. Problems already there are skipped unless ``--force``.

    A problem whose ``info`` names a ``reference`` model is sampled on that model (the same
    posterior in a form NUTS samples well: a centred or non-centred twin, an ODE replaced by its
    closed-form solution). A problem with ``modes`` (flip-flop: two modes exchanged by a map
    ``swap`` with unit Jacobian on the unconstrained scale; NUTS chains on ``p`` stay in one mode,
    and those that cross diverge) is sampled through the folded density ``g = p + p o swap`` on one
    side of the boundary between the modes, which has a single mode; each draw ``theta`` of ``g``
    stands for ``theta`` with weight ``p / (p + p o swap)`` and ``swap(theta)`` with the rest, which
    together are exact draws of ``p``. Moments and quantiles are weighted; r_hat and ESS are those
    of the per-draw weighted average of each quantity (see :func:`param_stats`).

``run``
    Fits every problem with ``inference.fit(model, *args, guide=g, seed=0, progress=False)`` for
    ``g`` in ``auto``, ``normal``, ``multivariate_normal``, ``low_rank``, ``iaf`` and ``laplace``,
    timing each call (wall clock, compilation included), then ``result.verdict()`` and
    ``result.sample(20000)``; in the same process it times ``inference.nuts(model, *args, seed=0,
    progress=False)`` (4 chains x (1000 + 1000)) on every problem. Against the reference, per
    compared quantity: the error of the mean in reference sds and the ratio of the sds (log scale
    for positive quantities). The worst quantity sets the true error class: **A** every mean
    within 0.1 reference sd and every sd within 10%, **B** within 0.25 sd and 25%, **C** beyond.
    Output: ``out/calibration.json`` (every row; ``--out`` another path) and ``calibration.md``
    beside it (the tables); with ``--results`` also the section "## Calibration of the verdict
    (issue: hard posteriors)" of ``RESULTS.md`` (replaced when it is there, appended when not).
    ``--problems``, ``--guides`` and ``--no-nuts`` run a part of it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
REFERENCES = HERE / "data" / "calibration" / "references.json"
RESULTS = HERE / "RESULTS.md"
HEADING = "## Calibration of the verdict (issue: hard posteriors)"

GUIDES = ("auto", "normal", "multivariate_normal", "low_rank", "iaf", "laplace")
LEVELS = ("reliable", "use with care", "unreliable")
CLASSES = ("A", "B", "C")
CLASS_LIMITS = {"A": (0.10, 0.10), "B": (0.25, 0.25)}  # (mean error in reference sds, |sd ratio - 1|)
RHAT_MAX, ESS_MIN = 1.01, 2000.0
DRAWS = 20000
_TOL = 1e-9  # a boundary value (0.1 sd, 10%) counts as inside, whatever its floating-point rounding


def _problems():
    spec = importlib.util.spec_from_file_location("calibration_problems", HERE / "calibration_problems.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- classification ----------------------------------------------------------------------------------


def error_class(mean_errors, sd_ratios) -> str:
    """The true error class of a posterior from its per-quantity errors.

    Parameters
    ----------
    mean_errors : sequence of float
        (mean - reference mean) / reference sd, per quantity (log scale for positive ones).
    sd_ratios : sequence of float
        sd / reference sd, per quantity.

    Returns
    -------
    str
        ``"A"`` when every ``|mean error| <= 0.1`` and every ``|sd ratio - 1| <= 0.1``, ``"B"``
        when within 0.25 and 0.25, else ``"C"`` (also for any non-finite value or no quantities).
    """
    m = np.abs(np.asarray(mean_errors, dtype=float))
    r = np.abs(np.asarray(sd_ratios, dtype=float) - 1.0)
    if m.size == 0 or r.size == 0 or not (np.all(np.isfinite(m)) and np.all(np.isfinite(r))):
        return "C"
    for cls in ("A", "B"):
        mean_lim, sd_lim = CLASS_LIMITS[cls]
        if np.all(m <= mean_lim + _TOL) and np.all(r <= sd_lim + _TOL):
            return cls
    return "C"


def compare_to_reference(values: dict, reference: dict, positive) -> dict:
    """Per quantity: mean error in reference sds and sd ratio, on the log scale for positive ones.

    Parameters
    ----------
    values : dict of str to array
        Draws of each compared quantity (any shape; flattened).
    reference : dict
        ``references.json``'s ``params`` of the problem.
    positive : collection of str
        Quantities compared on the log scale.

    Returns
    -------
    dict of str to dict
        ``mean_error``, ``sd_ratio`` and ``scale`` (``"log"`` or ``"natural"``) per quantity.
    """
    out = {}
    for name, ref in reference.items():
        x = np.asarray(values[name], dtype=float).reshape(-1)
        log = name in positive
        if log:
            with np.errstate(divide="ignore", invalid="ignore"):
                x = np.where(x > 0, np.log(np.where(x > 0, x, 1.0)), np.nan)
            mu, sd = ref["log_mean"], ref["log_sd"]
        else:
            mu, sd = ref["mean"], ref["sd"]
        if x.size == 0 or not np.all(np.isfinite(x)):
            out[name] = {"mean_error": float("nan"), "sd_ratio": float("nan"), "scale": "log" if log else "natural"}
            continue
        out[name] = {
            "mean_error": float((np.mean(x) - mu) / sd),
            "sd_ratio": float(np.std(x) / sd),
            "scale": "log" if log else "natural",
        }
    return out


def worst_names(errors: dict) -> tuple[str | None, str | None]:
    """The quantities with the largest |mean error| and with the sd ratio farthest from 1."""
    if not errors:
        return None, None

    def key(v):
        return v if math.isfinite(v) else math.inf

    m = max(errors, key=lambda n: key(abs(errors[n]["mean_error"])))
    r = max(errors, key=lambda n: key(abs(errors[n]["sd_ratio"] - 1)))
    return m, r


def worst(errors: dict) -> tuple[float, float, str]:
    """The largest |mean error|, the sd ratio farthest from 1 (signed values) and the class."""
    if not errors:
        return float("nan"), float("nan"), "C"
    means = [e["mean_error"] for e in errors.values()]
    ratios = [e["sd_ratio"] for e in errors.values()]
    m = max(means, key=lambda v: abs(v) if math.isfinite(v) else math.inf)
    r = max(ratios, key=lambda v: abs(v - 1) if math.isfinite(v) else math.inf)
    return float(m), float(r), error_class(means, ratios)


# -- reference statistics ----------------------------------------------------------------------------


def _weighted_quantiles(x, w, probs):
    order = np.argsort(x)
    xs, ws = x[order], w[order]
    cdf = (np.cumsum(ws) - 0.5 * ws) / np.sum(ws)
    return np.interp(probs, cdf, xs)


def _moments(x, w=None) -> dict:
    """Mean, sd and quantiles of pooled draws ``x`` (1-D), with optional weights ``w``."""
    if w is None:
        w = np.full(x.shape, 1.0 / x.size)
    w = w / np.sum(w)
    mean = float(np.sum(w * x))
    sd = float(np.sqrt(np.sum(w * (x - mean) ** 2)))
    q05, q50, q95 = (float(q) for q in _weighted_quantiles(x, w, [0.05, 0.5, 0.95]))
    return {"mean": mean, "sd": sd, "q05": q05, "q50": q50, "q95": q95}


def _chain_diagnostics(x) -> dict:
    """r_hat (rank-normalized split) and bulk and tail ESS of ``x`` with shape (chains, draws)."""
    from arviz_stats import ess, rhat

    x = np.asarray(x, dtype=float)
    return {
        "r_hat": float(rhat(x, method="rank")),
        "ess_bulk": float(ess(x, method="bulk")),
        "ess_tail": float(ess(x, method="tail", prob=0.05)),
    }


def param_stats(x, positive: bool, swapped=None, weights=None) -> dict:
    """Reference statistics of one quantity from draws ``x`` with shape (chains, draws).

    With ``swapped`` and ``weights`` (same shape; a two-mode problem sampled through its symmetrized
    density), each draw stands for itself with weight ``w`` and for its swap with weight ``1 - w``:
    moments and quantiles are those of the weighted pooled draws, and r_hat and ESS are those of
    the per-draw average ``w g(x) + (1 - w) g(swapped)`` (``g`` the log for a positive quantity),
    whose mean is the posterior mean of ``g``.
    """
    x = np.asarray(x, dtype=float)
    g = np.log if positive else (lambda v: v)
    if swapped is None:
        pooled, w, chains = x.reshape(-1), None, g(x)
    else:
        s = np.asarray(swapped, dtype=float)
        w = np.asarray(weights, dtype=float)
        pooled = np.concatenate([x.reshape(-1), s.reshape(-1)])
        chains = w * g(x) + (1 - w) * g(s)
        w = np.concatenate([w.reshape(-1), (1 - w).reshape(-1)])
    stats = _moments(pooled, w)
    if positive:
        logm = _moments(np.log(pooled), w)
        stats["log_mean"], stats["log_sd"] = logm["mean"], logm["sd"]
    stats.update(_chain_diagnostics(chains))
    stats["positive"] = bool(positive)
    return stats


# -- references --------------------------------------------------------------------------------------


def _versions() -> dict:
    from importlib import metadata

    return {d: metadata.version(d) for d in ("jax", "numpyro", "diffrax", "arviz_stats")}


def machine() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.1f} GiB, Python {platform.python_version()}"


def commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "inference", "vi_models"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        return sha + (" (engine with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def load_references() -> dict:
    if REFERENCES.exists():
        return json.loads(REFERENCES.read_text())
    return {"about": {}, "problems": {}}


def _save_references(refs: dict) -> None:
    REFERENCES.parent.mkdir(parents=True, exist_ok=True)
    tmp = REFERENCES.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(refs, indent=1, sort_keys=False) + "\n")
    tmp.replace(REFERENCES)


def run_reference(name: str, seed: int = 1, scale: int = 1) -> dict:
    """One long NUTS reference; ``scale`` multiplies the draws."""
    import jax
    from numpyro.infer import MCMC, NUTS, init_to_median, init_to_uniform

    problems = _problems()
    model, args, kwargs, info = problems.build(name)
    opts = dict(info["nuts"])
    opts["num_samples"] = int(opts["num_samples"] * scale)
    ref = info.get("reference")
    r_model, r_args, r_kwargs = (
        (ref["model"], tuple(ref["args"]), dict(ref["kwargs"])) if ref else (model, args, kwargs)
    )
    init = init_to_uniform(radius=2) if opts.get("init") == "uniform" else init_to_median(num_samples=15)
    kernel = NUTS(r_model, target_accept_prob=opts["target_accept"], dense_mass=True, init_strategy=init)
    mcmc = MCMC(
        kernel,
        num_warmup=opts["num_warmup"],
        num_samples=opts["num_samples"],
        num_chains=opts["num_chains"],
        chain_method=opts["chain_method"],
        progress_bar=False,
    )
    modes = info.get("modes")
    t0 = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), *r_args, extra_fields=("diverging",), **r_kwargs)
    seconds = time.perf_counter() - t0
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    values = problems.extract(samples, info)
    divergences = int(np.sum(np.asarray(mcmc.get_extra_fields()["diverging"])))
    mode_info = None
    if modes is None:
        params = {p: param_stats(values[p], p in info["positive"]) for p in info["params"]}
    else:
        from scipy.special import expit

        swapped = modes["swap"](samples)
        w = expit(-np.asarray(modes["log_ratio"](samples), dtype=float))  # p / (p + p o swap)
        values_swapped = problems.extract(swapped, info)
        params = {
            p: param_stats(values[p], p in info["positive"], swapped=values_swapped[p], weights=w)
            for p in info["params"]
        }
        first, first_swapped = np.asarray(modes["in_first"](samples)), np.asarray(modes["in_first"](swapped))
        mode_info = {
            "first_mode": modes.get("first", "first"),
            "mass_first_mode": float(np.mean(w * first + (1 - w) * first_swapped)),
            "fraction_of_sampled_draws_in_first_mode": float(np.mean(first)),
        }
    entry = {
        "description": info["description"],
        "params": params,
        "positive": list(info["positive"]),
        "truth": info.get("truth"),
        "nuts": {
            **opts,
            "dense_mass": True,
            "init": "init_to_uniform(radius=2)" if opts.get("init") == "uniform" else "init_to_median",
            "seed": seed,
            "seconds": round(seconds, 2),
            "divergences": divergences,
            "model": "the problem's model" if ref is None else f"reference model: {ref['why']}",
        },
        "max_r_hat": max(s["r_hat"] for s in params.values()),
        "min_ess_bulk": min(s["ess_bulk"] for s in params.values()),
        "min_ess_tail": min(s["ess_tail"] for s in params.values()),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "versions": _versions(),
    }
    if mode_info is not None:
        entry["modes"] = mode_info
    return entry


def _good(entry: dict) -> bool:
    return entry["max_r_hat"] <= RHAT_MAX and min(entry["min_ess_bulk"], entry["min_ess_tail"]) >= ESS_MIN


def references(names, force: bool) -> None:
    refs = load_references()
    refs["about"] = {
        "what": "Long NUTS references of the calibration set (benchmarks/calibration_problems.py), "
        "made by `benchmarks/calibration.py references`. Per compared quantity: mean and sd on the natural "
        "scale, log_mean and log_sd for positive quantities, 5/50/95% quantiles, rank-normalized split r_hat, "
        "bulk and tail ESS (arviz_stats). nuts.seconds: MCMC.run, compilation included. Two-mode problems "
        "(modes): sampled through the folded density p + p o swap, each draw weighted with its swap; mass_first_mode "
        "is the posterior probability of the first mode.",
        "machine": machine(),
    }
    for name in names:
        if name in refs["problems"] and not force:
            print(f"{name}: in {REFERENCES.name} already (use --force to redo)", flush=True)
            continue
        print(f"{name}: NUTS reference ...", flush=True)
        entry = run_reference(name, seed=1)
        if not _good(entry):
            print(
                f"{name}: r_hat {entry['max_r_hat']:.4f}, ESS bulk {entry['min_ess_bulk']:.0f}, tail "
                f"{entry['min_ess_tail']:.0f} after {entry['nuts']['seconds']:.0f} s; again with twice the draws",
                flush=True,
            )
            entry = run_reference(name, seed=2, scale=2)
        entry["meets_rhat_ess"] = _good(entry)
        refs["problems"][name] = entry
        _save_references(refs)
        print(
            f"{name}: {entry['nuts']['seconds']:.0f} s, r_hat <= {entry['max_r_hat']:.4f}, ESS bulk >= "
            f"{entry['min_ess_bulk']:.0f}, tail >= {entry['min_ess_tail']:.0f}, "
            f"divergences {entry['nuts']['divergences']}"
            + (
                f", mass of {entry['modes']['first_mode']}: {entry['modes']['mass_first_mode']:.3f}"
                if "modes" in entry
                else ""
            ),
            flush=True,
        )


# -- the run -----------------------------------------------------------------------------------------


def _fit_row(name, guide, model, args, kwargs, info, reference) -> dict:
    from inference import fit

    row = {"problem": name, "guide": guide}
    try:
        t0 = time.perf_counter()
        result = fit(model, *args, guide=guide, seed=0, progress=False, **kwargs)
        row["fit_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        verdict = result.verdict()
        row["verdict_s"] = time.perf_counter() - t0
        row["verdict"] = verdict.level
        row["reason"] = verdict.reason
        row["checks"] = [[c.name, c.level, c.message] for c in verdict.checks]
        row["khat"] = None if not math.isfinite(verdict.khat) else float(verdict.khat)
        t0 = time.perf_counter()
        draws = result.sample(DRAWS)
        row["sample_s"] = time.perf_counter() - t0
        settings = result.settings or {}
        row["guide_used"] = result.guide_name
        if guide == "auto":
            row["chosen_guide"] = settings.get("chosen_guide")
            row["draws_from"] = settings.get("draws_from")
            row["attempts"] = [a.as_dict() for a in result.attempts]
        values = _problems().extract({k: np.asarray(v) for k, v in draws.items()}, info)
        errors = compare_to_reference(values, reference["params"], set(info["positive"]))
        row["errors"] = errors
        row["worst_mean_error"], row["worst_sd_ratio"], row["class"] = worst(errors)
        row["worst_mean_param"], row["worst_sd_param"] = worst_names(errors)
        if name == "bod":
            k = np.asarray(values["k"], dtype=float).reshape(-1)
            row["bod_k"] = {
                "log_mean": float(np.mean(np.log(k))),
                "log_sd": float(np.std(np.log(k))),
                "q05": float(np.quantile(k, 0.05)),
                "q95": float(np.quantile(k, 0.95)),
            }
    except Exception as exc:  # a failure is a result of the run, not the end of it
        row["error"] = f"{type(exc).__name__}: {exc}"
        row["traceback"] = traceback.format_exc(limit=6)
        row["class"] = None
        row["verdict"] = "error"
    return row


def _nuts_row(name, model, args, kwargs, info, reference) -> dict:
    from inference import nuts

    row = {"problem": name, "guide": "nuts 4x(1000+1000)"}
    try:
        t0 = time.perf_counter()
        res = nuts(model, *args, seed=0, progress=False, **kwargs)
        row["fit_s"] = time.perf_counter() - t0
        row["divergences"] = int(res.num_divergences)
        samples = {k: np.asarray(v) for k, v in res.samples.items()}
        values = _problems().extract(samples, info)
        errors = compare_to_reference(values, reference["params"], set(info["positive"]))
        row["errors"] = errors
        row["worst_mean_error"], row["worst_sd_ratio"], row["class"] = worst(errors)
        row["worst_mean_param"], row["worst_sd_param"] = worst_names(errors)
        row["max_r_hat"] = max(_chain_diagnostics(values[p])["r_hat"] for p in info["params"])
        row["verdict"] = "n/a"
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
        row["traceback"] = traceback.format_exc(limit=6)
        row["class"] = None
        row["verdict"] = "error"
    return row


def _short(row) -> str:
    if "error" in row:
        return f"{row['problem']:>22} {row['guide']:>22}  ERROR {row['error'][:120]}"
    return (
        f"{row['problem']:>22} {row['guide']:>22}  {row.get('verdict', ''):>13}  class {row['class']}  "
        f"mean {row['worst_mean_error']:+.3f}  sd {row['worst_sd_ratio']:.3f}  {row['fit_s']:.1f} s"
        + (f"  -> {row.get('chosen_guide')}" if row["guide"] == "auto" else "")
    )


def run(names, guides, with_nuts: bool, write_results: bool, out_path: Path = OUT / "calibration.json") -> dict:
    refs = load_references()["problems"]
    missing = [n for n in names if n not in refs]
    if missing:
        raise SystemExit(f"no reference for {', '.join(missing)}: run `benchmarks/calibration.py references` first")
    problems = _problems()
    started = _dt.datetime.now().isoformat(timespec="seconds")
    t_start = time.perf_counter()
    rows = []
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out = {
        "started": started,
        "machine": machine(),
        "commit": commit(),
        "versions": _versions(),
        "argv": " ".join(sys.argv[1:]) or "run",
        "rows": rows,
    }
    for name in names:
        model, args, kwargs, info = problems.build(name)
        for guide in guides:
            row = _fit_row(name, guide, model, args, kwargs, info, refs[name])
            rows.append(row)
            print(_short(row), flush=True)
            out_path.write_text(json.dumps(out, indent=1, default=_json_default))
        if with_nuts:
            row = _nuts_row(name, model, args, kwargs, info, refs[name])
            rows.append(row)
            print(_short(row), flush=True)
        out_path.write_text(json.dumps(out, indent=1, default=_json_default))
    out["total_s"] = time.perf_counter() - t_start
    out["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    out_path.write_text(json.dumps(out, indent=1, default=_json_default))
    md = markdown(out, refs)
    out_path.with_suffix(".md").write_text(md)
    print(md, flush=True)
    if write_results:
        write_section(md)
    return out


def _json_default(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


# -- report ------------------------------------------------------------------------------------------


def confusion(rows) -> dict:
    """Counts by verdict level and true class; fits that raised are counted under ``error``."""
    table = {level: dict.fromkeys((*CLASSES, "error"), 0) for level in LEVELS}
    table["error"] = dict.fromkeys((*CLASSES, "error"), 0)
    for r in rows:
        if "error" in r:
            table["error"]["error"] += 1
        else:
            table.setdefault(r["verdict"], dict.fromkeys((*CLASSES, "error"), 0))[r["class"]] += 1
    return table


def _fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def targets(out: dict, refs: dict) -> list[tuple[str, str, str]]:
    """(target, measured, met / not met) per target of the issue's point 2."""
    rows = [r for r in out["rows"] if not r["guide"].startswith("nuts")]
    auto = [r for r in rows if r["guide"] == "auto"]
    res = []
    bad = [r["problem"] for r in auto if "error" in r or not (r["class"] == "A" or r["verdict"] == "unreliable")]
    if auto:
        res.append(
            (
                "auto: every problem class A, or verdict 'unreliable'",
                f"{len(auto) - len(bad)} of {len(auto)}" + (f"; not: {', '.join(bad)}" if bad else ""),
                "met" if auto and not bad else "not met",
            )
        )
    for label, subset in (("auto", auto), ("all guides", rows)):
        if not subset:
            continue
        rel = [f"{r['problem']}/{r['guide']}" for r in subset if r.get("verdict") == "reliable" and r["class"] != "A"]
        care = [
            f"{r['problem']}/{r['guide']}" for r in subset if r.get("verdict") == "use with care" and r["class"] == "C"
        ]
        res.append(
            (
                f"{label}: zero 'reliable' outside class A",
                f"{len(rel)}" + (f" ({', '.join(rel)})" if rel else ""),
                "met" if not rel else "not met",
            )
        )
        res.append(
            (
                f"{label}: zero 'use with care' in class C",
                f"{len(care)}" + (f" ({', '.join(care)})" if care else ""),
                "met" if not care else "not met",
            )
        )
    nuts_rows = {r["problem"]: r for r in out["rows"] if r["guide"].startswith("nuts") and "error" not in r}
    auto_ok = {r["problem"]: r for r in auto if "error" not in r}
    common = sorted(set(nuts_rows) & set(auto_ok))
    if common:
        t_auto = sum(auto_ok[p]["fit_s"] for p in common)
        t_auto_v = sum(auto_ok[p]["fit_s"] + auto_ok[p]["verdict_s"] for p in common)
        t_nuts = sum(nuts_rows[p]["fit_s"] for p in common)
        res.append(
            (
                "auto total wall time <= 1/5 of NUTS 4x(1000+1000) (fit + verdict)",
                f"ratio {t_auto_v / t_nuts:.3f} (auto {t_auto_v:.0f} s with verdicts, {t_auto:.0f} s fit only, "
                f"ratio {t_auto / t_nuts:.3f}; NUTS {t_nuts:.0f} s; {len(common)} problems)",
                "met" if t_auto_v <= t_nuts / 5 else "not met",
            )
        )
    bod = next((r for r in auto if r["problem"] == "bod" and "bod_k" in r), None)
    if bod is not None and "bod" in refs:
        ref = refs["bod"]["params"]["k"]
        b = bod["bod_k"]
        me = (b["log_mean"] - ref["log_mean"]) / ref["log_sd"]
        sr = b["log_sd"] / ref["log_sd"]
        q05, q95 = b["q05"] / ref["q05"] - 1, b["q95"] / ref["q95"] - 1
        ok = abs(me) <= 0.1 + _TOL and abs(sr - 1) <= 0.1 + _TOL and abs(q05) <= 0.1 + _TOL and abs(q95) <= 0.1 + _TOL
        res.append(
            (
                "BOD, auto: k log-mean within 0.1 sd, log-sd within 10%, q05 and q95 within 10% of NUTS",
                f"mean {me:+.3f} sd, sd ratio {sr:.3f}, q05 {q05:+.1%}, q95 {q95:+.1%}",
                "met" if ok else "not met",
            )
        )
    return res


def markdown(out: dict, refs: dict) -> str:
    rows = out["rows"]
    lines = [
        HEADING,
        "",
        "Does the verdict mean what it says? Every problem of the calibration set "
        "(`benchmarks/calibration_problems.py`) fitted with `guide='auto'` and with each single guide, "
        "against a long NUTS reference (`benchmarks/data/calibration/references.json`; 8 chains, dense mass "
        "matrix, r_hat <= 1.01). True error class of a fit, from its worst compared quantity (log scale for "
        "positive ones): **A** every mean within 0.1 reference sd and every sd within 10%, **B** within "
        "0.25 sd and 25%, **C** beyond.",
        "",
        f"- **Date**: {out['started']} to {out.get('finished', '(unfinished)')}",
        f"- **Machine**: {out['machine']}; {', '.join(f'{k} {v}' for k, v in out['versions'].items())}",
        f"- **Commit**: {out['commit']}",
        f"- **Command**: `nice -n 5 .venv/bin/python benchmarks/calibration.py {out.get('argv', 'run')}` "
        "(fits with `seed=0`, "
        f"`progress=False`; {DRAWS} draws per fit; NUTS 4 chains x (1000 + 1000) on the same model in the same "
        "process)",
        "",
        "### Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    for t, m, ok in targets(out, refs):
        lines.append(f"| {t} | {m} | **{ok}** |")
    lines += [
        "",
        "### Confusion: verdict against true error class",
        "",
        "Number of problems per verdict level (column groups) and true class (A, B, C); 'raised': the fit "
        "raised. The verdict is right where 'reliable' has only A and 'use with care' no C.",
        "",
        "| guide | reliable: A | B | C | use with care: A | B | C | unreliable: A | B | C | raised |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    guides = []
    for r in rows:
        if r["guide"] not in guides and not r["guide"].startswith("nuts"):
            guides.append(r["guide"])
    singles = [r for r in rows if r["guide"] != "auto" and not r["guide"].startswith("nuts")]
    for g in [*guides, "every single guide"]:
        sub = singles if g == "every single guide" else [r for r in rows if r["guide"] == g]
        if not sub:
            continue
        t = confusion(sub)
        cells = " | ".join(str(t[level][c]) for level in LEVELS for c in CLASSES)
        lines.append(f"| {g} | {cells} | {t['error']['error']} |")
    lines.append("")
    lines += [
        "### Every fit",
        "",
        "Worst mean error in reference sds and worst sd ratio over the compared quantities; seconds: the "
        "`fit()` call (compilation included) + `verdict()`. For `auto` the guide it chose. NUTS rows: the "
        "4 x (1000 + 1000) run against the long reference (its own Monte Carlo error), no verdict.",
        "",
        "| problem | guide | verdict | class | worst mean error | worst sd ratio | seconds | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['problem']} | {r['guide']} | error | - | - | - | - | {r['error'][:100].replace('|', '/')} |"
            )
            continue
        secs = r["fit_s"] + r.get("verdict_s", 0.0)
        note = ""
        if r["guide"] == "auto":
            path = " > ".join(f"{a['guide']} ({a['level']})" for a in r.get("attempts", []))
            note = f"chose {r.get('chosen_guide')}" + (f"; {r['draws_from']}" if r.get("draws_from") else "")
            note += f"; tried: {path}" if path else ""
        elif r["guide"].startswith("nuts"):
            note = f"r_hat {r['max_r_hat']:.3f}, {r['divergences']} divergences"
        lines.append(
            f"| {r['problem']} | {r['guide']} | {r['verdict']} | {r['class']} | {_fmt(r['worst_mean_error'], '+.3f')} "
            f"({r.get('worst_mean_param')}) | {_fmt(r['worst_sd_ratio'], '.3f')} ({r.get('worst_sd_param')}) | "
            f"{secs:.1f} | {note} |"
        )
    bod = next((r for r in rows if r["problem"] == "bod" and r["guide"] == "auto" and "bod_k" in r), None)
    if bod is not None and "bod" in refs:
        ref = refs["bod"]["params"]["k"]
        b = bod["bod_k"]
        lines += [
            "",
            "### BOD demo: k under `auto` against the NUTS reference",
            "",
            "| | log-scale mean | log-scale sd | q05 | q95 |",
            "|---|---|---|---|---|",
            f"| NUTS reference | {ref['log_mean']:.4f} | {ref['log_sd']:.4f} | {ref['q05']:.4f} | {ref['q95']:.4f} |",
            f"| auto | {b['log_mean']:.4f} | {b['log_sd']:.4f} | {b['q05']:.4f} | {b['q95']:.4f} |",
            f"| difference | {(b['log_mean'] - ref['log_mean']) / ref['log_sd']:+.3f} sd | ratio "
            f"{b['log_sd'] / ref['log_sd']:.3f} | {b['q05'] / ref['q05'] - 1:+.1%} | "
            f"{b['q95'] / ref['q95'] - 1:+.1%} |",
        ]
    lines += [
        "",
        "### The references",
        "",
        "| problem | what | NUTS | max r_hat | min ESS bulk / tail | seconds | divergences |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in refs.items():
        n = e["nuts"]
        extra = f"; mass of {e['modes']['first_mode']}: {e['modes']['mass_first_mode']:.3f}" if "modes" in e else ""
        lines.append(
            f"| {name} | {e['description']}{extra} | {n['num_chains']} x ({n['num_warmup']} + {n['num_samples']}) | "
            f"{e['max_r_hat']:.4f} | {e['min_ess_bulk']:.0f} / {e['min_ess_tail']:.0f} | {n['seconds']:.0f} | "
            f"{n['divergences']} |"
        )
    lines.append("")
    return "\n".join(lines) + "\n"


def write_section(md: str) -> None:
    """Replace this file's section of RESULTS.md (up to the next ``## `` heading), or append it."""
    text = RESULTS.read_text()
    start = text.find(HEADING)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + md
    else:
        nxt = text.find("\n## ", start + len(HEADING))
        text = text[:start] + md + ("" if nxt < 0 else "\n" + text[nxt + 1 :])
    RESULTS.write_text(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    names = list(_problems().PROBLEMS)
    p_ref = sub.add_parser("references", help="long NUTS references into data/calibration/references.json")
    p_ref.add_argument("--problems", nargs="+", default=names, choices=names)
    p_ref.add_argument("--force", action="store_true", help="redo problems already in the file")
    p_run = sub.add_parser("run", help="fit every problem with every guide, time NUTS, report")
    p_run.add_argument("--problems", nargs="+", default=names, choices=names)
    p_run.add_argument("--guides", nargs="+", default=list(GUIDES), choices=list(GUIDES))
    p_run.add_argument("--no-nuts", action="store_true", help="skip the NUTS timing runs")
    p_run.add_argument(
        "--results",
        action="store_true",
        help=f"also write the section {HEADING[3:]!r} of RESULTS.md (replaced or appended)",
    )
    p_run.add_argument(
        "--out", type=Path, default=OUT / "calibration.json", help="the JSON of every row (and .md beside it)"
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import inference  # noqa: F401  (float64 and the compilation cache, as for a user)

    if args.command == "references":
        references(args.problems, args.force)
    else:
        run(args.problems, args.guides, not args.no_nuts, args.results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
