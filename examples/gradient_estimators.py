"""Why vifit reparameterizes: the pathwise and score-function gradient estimators side by side.

Two parts:

1. Closed forms. For z ~ Normal(mu, sigma), the gradient of E[f(z)] with respect to mu is
   estimated from 20000 draws in three ways (pathwise, score function, score function with a
   leave-one-out baseline). For f(z) = 3z the pathwise variance is exactly zero. For f(z) = z^2 it
   is 4 sigma^2, shrinking with sigma, while the score-function variance grows as sigma -> 0.
2. A kinetics model. Reference problem a (``A -> B : k``) is fitted with the full-rank guide, and
   ``inference.gradient_variance`` measures the three ELBO gradient estimators at the fitted
   guide, per guide parameter.

Run ``python examples/gradient_estimators.py`` (``--small`` for fewer draws).
"""

import argparse
import json
from pathlib import Path

import jax
import numpy as np
import numpyro.distributions as dist

from inference import fit, gradient_variance
from inference.toolkit.gradients import estimator_samples
from vi_models import kinetics

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "data"


def closed_forms(num_samples: int) -> list[dict]:
    """Measured variances of d/dmu E[f] for linear and quadratic f, next to their formulas."""
    rows = []
    for name, f, formulas in (
        ("3 z", lambda z: 3.0 * z, lambda mu, s: (0.0, 9.0 * (mu**2 + 2 * s**2) / s**2)),
        ("z^2", lambda z: z**2, lambda mu, s: (4 * s**2, None)),
    ):
        for sigma in (1.0, 0.1, 0.01):
            params = {"mu": 1.0, "sigma": sigma}
            s = estimator_samples(
                f,
                lambda p, key: dist.Normal(p["mu"], p["sigma"]).sample(key),
                lambda p, z: dist.Normal(p["mu"], p["sigma"]).log_prob(z),
                params,
                jax.random.PRNGKey(0),
                num_samples,
            )
            path_formula, score_formula = formulas(1.0, sigma)
            rows.append(
                {
                    "f": name,
                    "sigma": sigma,
                    "pathwise_var": float(np.var(s.pathwise["mu"])),
                    "pathwise_formula": path_formula,
                    "score_var": float(np.var(s.score["mu"])),
                    "score_formula": score_formula,
                    "baseline_var": float(np.var(s.baseline["mu"])),
                }
            )
    return rows


def kinetics_report(num_samples: int, small: bool):
    """``gradient_variance`` at the full-rank fit of reference problem a."""
    problems = json.loads((BENCH / "problems.json").read_text())
    priors = {
        name: f"{spec[0]}({', '.join(repr(float(a)) for a in spec[1:])})"
        for name, spec in problems["priors"].items()
        if name in problems["params"]["a"]
    }
    model = kinetics.model("A -> B : k", str(BENCH / "a_decay.csv"), priors=priors, initial={"A": 1.0, "B": 0.0})
    result = fit(model, guide="multivariate_normal", seed=0, progress=not small)
    return gradient_variance(result, num_samples=num_samples)


def main(small: bool = False) -> dict:
    """Print both parts; return the closed-form rows and the kinetics report."""
    rows = closed_forms(2000 if small else 20000)
    print("d/dmu E[f(z)], z ~ Normal(1, sigma): per-draw variance of each estimator")
    print(f"{'f':>4} {'sigma':>6} {'pathwise':>10} {'(formula)':>10} {'score':>12} {'(formula)':>12} {'baseline':>12}")
    for r in rows:
        score_formula = "" if r["score_formula"] is None else f"{r['score_formula']:.4g}"
        print(
            f"{r['f']:>4} {r['sigma']:>6} {r['pathwise_var']:>10.4g} {r['pathwise_formula']:>10.4g} "
            f"{r['score_var']:>12.4g} {score_formula:>12} {r['baseline_var']:>12.4g}"
        )
    report = kinetics_report(200 if small else 2000, small)
    print("\nELBO gradient estimators at the full-rank fit of reference problem a:")
    print(report)
    return {"closed_forms": rows, "kinetics": report}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="fewer draws")
    main(parser.parse_args().small)
