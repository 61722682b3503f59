"""The verdict on the reference problems a, b and c, for both Gaussian guides, next to NUTS.

Run from the repository root::

    .venv/bin/python benchmarks/verdicts.py               # a, b, c; about 5-8 min on 2 cores
    .venv/bin/python benchmarks/verdicts.py --problems c  # one problem

For each problem, in one process: NUTS (4 chains x (1000 warm-up + 1000 draws), vectorized) on the
vifit model with the priors of ``data/problems.json``; then ``fit(model, guide=g, restarts=2,
seed=0)`` for ``g`` in ``normal`` (mean-field) and ``multivariate_normal`` (full-rank), its verdict
(``result.verdict()``: PSIS k-hat from 16000 draws, the curvature and restart checks), and
``inference.compare(result, nuts)``: the standardized mean difference and the sd ratio of every
parameter against NUTS, from the guide draws and from the PSIS-corrected draws where k-hat allows
them. Output: Markdown on stdout and ``benchmarks/out/verdicts.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import DATA, OUT, build_model  # noqa: E402

GUIDES = ("normal", "multivariate_normal")


def psis_comparison(result, reference):
    """Compare the PSIS-corrected draws with the reference, or None when k-hat is above 0.7."""
    import arviz_base

    from inference import compare

    try:
        draws = result.sample_psis(4000)
    except ValueError:
        return None
    idata = arviz_base.from_dict({"posterior": {k: v[None] for k, v in draws.items()}})
    return compare(idata, reference)


def run_problem(pid: str, problems: dict) -> dict:
    from inference import compare, fit, nuts

    model, priors = build_model(pid, problems)
    t0 = time.perf_counter()
    reference = nuts(model, num_warmup=1000, num_samples=1000, num_chains=4, seed=0, progress=False)
    out = {"nuts_s": time.perf_counter() - t0, "priors": priors, "guides": {}}
    for guide in GUIDES:
        t0 = time.perf_counter()
        result = fit(model, guide=guide, restarts=2, seed=0, progress=False)
        t1 = time.perf_counter()
        verdict = result.verdict()
        t2 = time.perf_counter()
        comparison = compare(result, reference)
        corrected = psis_comparison(result, reference)
        out["guides"][guide] = {
            "fit_s": t1 - t0,
            "verdict_s": t2 - t1,
            "steps": result.num_steps,
            "stop_reason": str(result.stop_reason),
            "verdict": verdict.to_dict(),
            "compare": comparison.table.to_dict(orient="index"),
            "compare_psis": None if corrected is None else corrected.table.to_dict(orient="index"),
        }
    return out


def markdown(results: dict) -> str:
    lines = [
        "| problem | guide | verdict | k-hat | main reason | parameter | smd vs NUTS | sd ratio vs NUTS | "
        "PSIS-corrected smd | PSIS-corrected sd ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pid, res in results.items():
        for guide, g in res["guides"].items():
            v = g["verdict"]
            first = True
            for param, row in g["compare"].items():
                psis_row = (g["compare_psis"] or {}).get(param)
                lines.append(
                    "| "
                    + " | ".join(
                        [
                            pid if first else "",
                            guide if first else "",
                            f"**{v['level']}**" if first else "",
                            f"{v['khat']:.2f}" if first and v["khat"] is not None else "",
                            v["reason"].replace("|", "/") if first else "",
                            param,
                            f"{row['smd']:+.2f}",
                            f"{row['sd_ratio']:.2f}",
                            f"{psis_row['smd']:+.2f}" if psis_row else "-",
                            f"{psis_row['sd_ratio']:.2f}" if psis_row else "-",
                        ]
                    )
                    + " |"
                )
                first = False
    times = [
        f"- problem {pid}: NUTS {res['nuts_s']:.1f} s; "
        + "; ".join(
            f"{guide} fit {g['fit_s']:.1f} s ({g['steps']} steps, {g['stop_reason']}), verdict {g['verdict_s']:.1f} s"
            for guide, g in res["guides"].items()
        )
        for pid, res in results.items()
    ]
    return "\n".join(lines + ["", "Times (2 restarts per fit; first runs, compile included):", ""] + times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", default="a,b,c", help="comma-separated problem ids (default a,b,c)")
    args = parser.parse_args(argv)
    problems = json.loads((DATA / "problems.json").read_text())
    results = {pid: run_problem(pid, problems) for pid in args.problems.split(",")}
    OUT.mkdir(exist_ok=True)
    (OUT / "verdicts.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    text = markdown(results)
    (OUT / "verdicts.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
