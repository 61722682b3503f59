"""A hierarchical population model in the real-experiments syntax: guide="auto" against NUTS.

Synthetic study with known truth: ``n`` subjects (default 30), four sparse samples each (different
times per subject), a per-subject bolus dose (50, 100 or 200), the observable ``C = Central / V``
(not a species), ``ke`` and ``V`` partially pooled by subject (non-centred), lognormal noise.
Fits it with ``inference.fit(guide="auto")`` and with NUTS (4 chains, vectorized, in the same
process) and prints, for the population parameters, the difference of the means in NUTS sds,
the ratio of the sds, and the wall times (compilation included in both).

Run ``.venv/bin/python benchmarks/population.py`` (``--subjects 30 --warmup 500 --samples 1000``).
"""

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inference import fit, nuts  # noqa: E402
from vi_models import kinetics  # noqa: E402

spec = importlib.util.spec_from_file_location("real_experiments", ROOT / "examples" / "real_experiments.py")
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)

POPULATION = ("ke_mu", "ke_tau", "V_mu", "V_tau", "sigma")


def main(subjects: int = 30, warmup: int = 500, samples: int = 1000) -> dict:
    template, conditions = example.population_template(subjects)
    truth = example.population_truth(subjects)
    mech = "Central -> 0 : ke"
    opts = example.POPULATION_OPTIONS
    data = kinetics.model(mech, template, conditions=conditions, **opts).synthetic(truth, seed=4)
    model = kinetics.model(mech, data, conditions=conditions, **opts)

    t0 = time.perf_counter()
    result = fit(model, guide="auto", seed=0, progress=False, num_particles=4 * subjects + 12)
    t_vi = time.perf_counter() - t0
    vi = result.sample(4000, seed=1)

    t0 = time.perf_counter()
    ref = nuts(model, num_warmup=warmup, num_samples=samples, num_chains=4, seed=0, progress=False)
    t_nuts = time.perf_counter() - t0
    draws = ref.samples

    rows = {}
    print(f"{subjects} subjects, {int(np.sum(data.mask))} measurements; guide chosen: {result.guide_name}")
    print(f"{'site':8s} {'truth':>8s} {'NUTS mean':>10s} {'NUTS sd':>8s} {'VI mean':>9s} {'VI sd':>8s} {'d/sd':>6s} {'sd ratio':>8s}")
    for name in POPULATION:
        n = np.asarray(draws[name]).reshape(-1)
        v = np.asarray(vi[name]).reshape(-1)
        d = (v.mean() - n.mean()) / n.std()
        r = v.std() / n.std()
        rows[name] = (float(d), float(r))
        print(f"{name:8s} {truth[name]:8.4f} {n.mean():10.4f} {n.std():8.4f} {v.mean():9.4f} {v.std():8.4f} {d:6.3f} {r:8.3f}")
    print(f"time: auto {t_vi:.1f} s, NUTS {t_nuts:.1f} s ({warmup}+{samples} x 4 chains): {t_nuts / t_vi:.1f}x")
    return {"rows": rows, "t_vi": t_vi, "t_nuts": t_nuts}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--samples", type=int, default=1000)
    a = parser.parse_args()
    main(a.subjects, a.warmup, a.samples)
