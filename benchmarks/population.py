"""A hierarchical population model in the real-experiments syntax: guide="auto" against NUTS.

Synthetic study with known truth: ``n`` subjects (default 24), four sparse samples each (different
times per subject), a per-subject bolus dose (50, 100 or 200), the observable ``C = Central / V``
(not a species), ``ke`` and ``V`` partially pooled by subject (non-centred), lognormal noise; the
model and truth of ``examples/real_experiments.py``.

Each method runs in its own fresh Python process, one after the other, timed from launch to
exit (interpreter start, imports, the model, compilation and 4000 draws included):

- ``inference.fit(model, seed=0, progress=False)`` (``guide="auto"``, the engine's default number
  of particles unless ``--particles``), then ``result.sample(4000)``;
- ``inference.nuts(model, num_warmup, num_samples, num_chains=4)`` (chains vectorized).

For the population parameters (``ke_mu``, ``ke_tau``, ``V_mu``, ``V_tau``, ``sigma``) it reports
the difference of the means in NUTS sds and the ratio of the sds, against the issue's targets:
every mean within 0.1 NUTS sd, every sd within 10%, ``guide="auto"`` at least 5x faster than NUTS.

Run from the repository root::

    .venv/bin/python benchmarks/population.py                # 24 subjects, NUTS 4 x (1000 + 1000)
    .venv/bin/python benchmarks/population.py --subjects 12 --warmup 500 --samples 500

``--work DIR`` keeps each process's draws and timings; ``--only vi --work DIR`` then reruns one
method (e.g. with other ``--particles``) against the other's saved results.

Output: ``benchmarks/out/population.json`` and ``population.md``, the Markdown also on stdout.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()

import argparse  # noqa: E402
import datetime as _dt  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
POPULATION = ("ke_mu", "ke_tau", "V_mu", "V_tau", "sigma")
MEAN_TOL, SD_TOL, SPEEDUP = 0.1, 0.10, 5.0
DRAWS = 4000


def _model(subjects: int):
    """The example's population model on its synthetic data, and the truth."""
    from vi_models import kinetics

    spec = importlib.util.spec_from_file_location("real_experiments", ROOT / "examples" / "real_experiments.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    template, conditions = example.population_template(subjects)
    truth = example.population_truth(subjects)
    mech = "Central -> 0 : ke"
    opts = example.POPULATION_OPTIONS
    data = kinetics.model(mech, template, conditions=conditions, **opts).synthetic(truth, seed=4)
    return kinetics.model(mech, data, conditions=conditions, **opts), data, truth


def run_part(part: str, args, save: Path) -> None:
    """One method in this process: fit or sample, save the population draws and the timings."""
    sys.path.insert(0, str(ROOT))
    t_import0 = time.perf_counter()
    import inference

    t_import = time.perf_counter() - t_import0
    t0 = time.perf_counter()
    model, data, truth = _model(args.subjects)
    t_model = time.perf_counter() - t0
    info = {"import_s": t_import, "model_s": t_model, "measurements": int(np.sum(data.mask))}
    t0 = time.perf_counter()
    if part == "vi":
        kw = {} if args.particles is None else {"num_particles": args.particles}
        result = inference.fit(model, seed=0, progress=False, **kw)
        info["fit_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        draws = result.sample(DRAWS, seed=1)
        info["sample_s"] = time.perf_counter() - t1
        verdict = result.verdict()
        info.update(
            guide=result.guide_name,
            verdict=verdict.level,
            reason=verdict.reason,
            latent_dim=int(result.settings.get("latent_dimension", 0) or 0),
            timings={k: getattr(result.timings, k) for k in ("init_s", "compile_s", "run_s", "total_s")},
            attempts=[
                {k: a.as_dict()[k] for k in ("guide", "level", "khat", "num_steps", "seconds", "outcome", "grad_evals")}
                for a in result.attempts
            ],
        )
    else:
        ref = inference.nuts(
            model, num_warmup=args.warmup, num_samples=args.samples, num_chains=4, seed=0, progress=False
        )
        info["fit_s"] = time.perf_counter() - t0
        draws = ref.samples
        from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

        info["divergences"] = int(ref.num_divergences)
        info["ess_bulk"] = {k: float(effective_sample_size(np.asarray(draws[k]))) for k in POPULATION}
        info["r_hat"] = {k: float(split_gelman_rubin(np.asarray(draws[k]))) for k in POPULATION}
    arrays = {name: np.asarray(draws[name], dtype=float).reshape(-1) for name in POPULATION}
    info["in_process_s"] = time.perf_counter() - _T0
    np.savez(save / f"{part}.npz", **arrays)
    (save / f"{part}.json").write_text(json.dumps(info, default=float))


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
    from importlib import metadata

    versions = ", ".join(f"{d} {metadata.version(d)}" for d in ("jax", "numpyro", "diffrax"))
    return f"{os.cpu_count()} cores ({cpu}), {mem:.1f} GiB, Python {platform.python_version()}, {versions}"


def launch(part: str, args, work: Path) -> float:
    """Run one part in a fresh process; return its wall time from launch to exit."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", part, "--save", str(work)]
    cmd += ["--subjects", str(args.subjects), "--warmup", str(args.warmup), "--samples", str(args.samples)]
    if args.particles is not None:
        cmd += ["--particles", str(args.particles)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"the {part} process failed with exit status {proc.returncode}")
    return wall


def report(args, vi: dict, ref: dict, vi_info: dict, nuts_info: dict, walls: dict, truth: dict, when: str) -> tuple[str, dict]:
    rows, lines = {}, []
    lines.append(f"# Hierarchical population: guide='auto' against NUTS ({args.subjects} subjects)\n")
    lines.append(f"- Date: {when}")
    lines.append(f"- Machine: {machine()}; load average at the end {os.getloadavg()[0]:.2f}")
    lines.append(
        f"- Data: {args.subjects} subjects, {vi_info['measurements']} measurements; NUTS 4 chains x "
        f"({args.warmup} + {args.samples}), vectorized; {DRAWS} draws from the fit; particles: "
        f"{'engine default' if args.particles is None else args.particles}"
    )
    if args.only:
        lines.append(f"- Only {args.only} was run now; the other method's draws and wall time are from an earlier run in {args.work}")
    lines.append(f"- guide='auto' kept: {vi_info['guide']}; verdict: {vi_info['verdict']} ({vi_info['reason']})\n")
    lines.append("| site | truth | NUTS mean | NUTS sd | VI mean | VI sd | (VI - NUTS) / NUTS sd | VI sd / NUTS sd |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for name in POPULATION:
        n, v = ref[name], vi[name]
        d = (v.mean() - n.mean()) / n.std()
        r = v.std() / n.std()
        rows[name] = {"nuts_mean": n.mean(), "nuts_sd": n.std(), "vi_mean": v.mean(), "vi_sd": v.std(), "d": d, "ratio": r}
        lines.append(
            f"| {name} | {truth[name]:.4f} | {n.mean():.4f} | {n.std():.4f} | {v.mean():.4f} | {v.std():.4f} | {d:+.3f} | {r:.3f} |"
        )
    worst_d = max(POPULATION, key=lambda k: abs(rows[k]["d"]))
    worst_r = max(POPULATION, key=lambda k: abs(rows[k]["ratio"] - 1))
    speedup = walls["nuts"] / walls["vi"]
    targets = {
        "means": abs(rows[worst_d]["d"]) <= MEAN_TOL,
        "sds": abs(rows[worst_r]["ratio"] - 1) <= SD_TOL,
        "speed": speedup >= SPEEDUP,
    }
    mark = {True: "**met**", False: "**not met**"}
    if "divergences" in nuts_info:
        ess = ", ".join(f"{k} {nuts_info['ess_bulk'][k]:.0f}" for k in POPULATION)
        rhat = max(nuts_info["r_hat"].values())
        lines.append("")
        lines.append(f"NUTS: {nuts_info['divergences']} divergences, largest r-hat {rhat:.3f}, ESS {ess}.")
    lines.append("")
    lines.append("| target | measured | status |")
    lines.append("|---|---|---|")
    lines.append(f"| population means within {MEAN_TOL} NUTS sd | worst {worst_d} {rows[worst_d]['d']:+.3f} | {mark[targets['means']]} |")
    lines.append(f"| population sds within {SD_TOL:.0%} | worst {worst_r} {rows[worst_r]['ratio']:.3f} | {mark[targets['sds']]} |")
    lines.append(
        f"| guide='auto' >= {SPEEDUP:.0f}x faster than NUTS, end to end | {speedup:.2f}x (auto {walls['vi']:.1f} s, "
        f"NUTS {walls['nuts']:.1f} s) | {mark[targets['speed']]} |"
    )
    lines.append("")
    t = vi_info["timings"]
    lines.append(
        f"Inside the processes: auto: import {vi_info['import_s']:.1f} s, model and data {vi_info['model_s']:.1f} s, "
        f"fit {vi_info['fit_s']:.1f} s (init {t['init_s']:.1f}, compile {t['compile_s']:.1f}, run {t['run_s']:.1f}), "
        f"{DRAWS} draws {vi_info['sample_s']:.1f} s; NUTS: import {nuts_info['import_s']:.1f} s, model and data "
        f"{nuts_info['model_s']:.1f} s, sampling {nuts_info['fit_s']:.1f} s."
    )
    lines.append("")
    lines.append("| attempt | level | k-hat | steps | gradient evaluations | seconds | outcome |")
    lines.append("|---|---|---|---|---|---|---|")
    for a in vi_info["attempts"]:
        khat = "-" if a["khat"] is None else f"{a['khat']:.2f}"
        lines.append(
            f"| {a['guide']} | {a['level']} | {khat} | {a['num_steps']} | {a['grad_evals']} | {a['seconds']:.1f} | {a['outcome']} |"
        )
    record = {
        "date": when,
        "machine": machine(),
        "subjects": args.subjects,
        "warmup": args.warmup,
        "samples": args.samples,
        "particles": args.particles,
        "walls": walls,
        "speedup": speedup,
        "rows": rows,
        "targets": targets,
        "vi": vi_info,
        "nuts": nuts_info,
    }
    return "\n".join(lines) + "\n", record


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--particles", type=int, default=None, help="num_particles for fit (default: the engine's)")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for population.json and population.md")
    parser.add_argument("--work", type=Path, help="keep each process's draws and timings in this folder (default: a temporary one)")
    parser.add_argument(
        "--only", choices=("vi", "nuts"), help="run this method only, reusing the other's draws and timings from --work"
    )
    parser.add_argument("--part", choices=("vi", "nuts"), help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:
        run_part(args.part, args, args.save)
        return None
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if args.only and args.work is None:
        parser.error("--only needs --work (the folder with the other method's results)")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for part in ("vi", "nuts"):
            if args.only in (None, part):
                wall = launch(part, args, work)
                (work / f"{part}.wall").write_text(repr(wall))
        walls = {part: float((work / f"{part}.wall").read_text()) for part in ("vi", "nuts")}
        vi = dict(np.load(work / "vi.npz"))
        ref = dict(np.load(work / "nuts.npz"))
        vi_info = json.loads((work / "vi.json").read_text())
        nuts_info = json.loads((work / "nuts.json").read_text())
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("real_experiments", ROOT / "examples" / "real_experiments.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    text, record = report(args, vi, ref, vi_info, nuts_info, walls, example.POPULATION_TRUTH, when)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "population.md").write_text(text)
    (args.out / "population.json").write_text(json.dumps(record, indent=1, default=float))
    print(text)
    return record


if __name__ == "__main__":
    main()
