"""The engine by hand: one compiled target, a batched MAP, and DADVI on fixed draws, checked exactly.

What: a straight line with known noise sd, ``y_i ~ Normal(a + b x_i, 0.5)`` with priors
``a, b ~ Normal(0, 10)``. The prior is conjugate, so the posterior of ``(a, b)`` is Gaussian
with a closed-form mean and covariance. The script runs the stages of ``inference.fit`` itself:

1. ``make_target``: the model traced once, its log density and gradient compiled once over a
   batch of ``B`` points (the only program that contains the model);
2. ``find_map``: batched L-BFGS from four starts, and the Laplace approximation at the best
   optimum (Hessian by central differences of the exact gradient);
3. ``make_family`` and ``fit_family_fixed``: a full-rank Gaussian fitted by L-BFGS on one fixed,
   moment-matched set of ``B`` draws (DADVI), started at the prior median with scale 0.1;
4. ``fit(..., guide="multivariate_normal")``, which runs the same stages.

Each result is compared with the closed form, and the gradient evaluations of each stage are
counted (``Target.num_grad_evals``, ``FitResult.settings["grad_evals"]``).

Why: it shows what ``fit`` does between the model and the result, and how to call the target
directly (another optimizer, another objective). On a Gaussian posterior the Laplace
approximation is exact, and so is DADVI with moment-matched draws: the fixed-draw ELBO of a
Gaussian family depends on the draws only through their first two moments, which are exact.
Both match the closed form to optimizer tolerance, not to Monte Carlo error.

References: Giordano, R., Ingram, M. and Broderick, T. (2024), Black box variational inference
with a deterministic objective, JMLR 25(18); Nocedal, J. and Wright, S. J. (2006), Numerical
Optimization, Springer. The page "The engine" of the documentation explains the stages.

Run ``python examples/engine_tour.py`` (``--small`` skips the ``fit`` call at the end).
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from inference import find_map, fit, make_family, make_target
from inference.engine.vi import fit_family_fixed

PRIOR_SD, NOISE_SD = 10.0, 0.5


def line(x, y):
    """``y ~ Normal(a + b x, 0.5)`` with ``a, b ~ Normal(0, 10)``."""
    a = numpyro.sample("a", dist.Normal(0.0, PRIOR_SD))
    b = numpyro.sample("b", dist.Normal(0.0, PRIOR_SD))
    with numpyro.plate("obs", x.shape[0]):
        numpyro.sample("y", dist.Normal(a + b * x, NOISE_SD), obs=y)


def data(n: int = 12, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """``n`` points on ``x`` in [2, 4] (far from 0, so ``a`` and ``b`` are strongly correlated)."""
    rng = np.random.default_rng(seed)
    x = np.linspace(2.0, 4.0, n)
    return jnp.asarray(x), jnp.asarray(1.0 + 2.0 * x + NOISE_SD * rng.standard_normal(n))


def closed_form(x, y) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and covariance of ``(a, b)``: precision ``X^T X / s^2 + I / s0^2``."""
    X = np.stack([np.ones_like(x), np.asarray(x)], axis=1)
    cov = np.linalg.inv(X.T @ X / NOISE_SD**2 + np.eye(2) / PRIOR_SD**2)
    return cov @ X.T @ np.asarray(y) / NOISE_SD**2, cov


def main(small: bool = False) -> dict:
    """Run the stages by hand and return each one's error against the closed form."""
    x, y = data()
    mean, cov = closed_form(x, y)
    print(f"closed form: mean {np.round(mean, 4)}, sds {np.round(np.sqrt(np.diag(cov)), 4)}, "
          f"correlation {cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1]):.3f}")

    # 1. The target: layout by an abstract trace, one program compiled for B = 16 points.
    target = make_target(line, (x, y), batch_size=16)
    print(f"target: sites {target.layout.names}, d = {target.dim}, B = {target.batch_size}, "
          f"compiled in {target.compile_s:.2f} s")

    # 2. Multistart MAP: four starts (the prior median, three spread around it), one batch per iteration.
    starts = target.starts(4, spread=0.5, seed=0)
    found = find_map(target, starts)
    laplace_cov = found.scale_trils[found.best] @ found.scale_trils[found.best].T
    map_error = float(np.max(np.abs(found.locs[found.best] - mean)))
    laplace_error = float(np.max(np.abs(laplace_cov - cov)))
    print(f"MAP: {np.round(found.locs[found.best], 4)} after at most {found.iterations.max()} L-BFGS iterations, "
          f"{found.grad_evals} gradient evaluations; |MAP - mean| {map_error:.1e}, "
          f"|Laplace cov - cov| {laplace_error:.1e}")

    # 3. DADVI: a full-rank Gaussian on B fixed draws, from the prior median with scale 0.1.
    family = make_family("multivariate_normal", target.dim)
    params = family.init(starts[0], 0.1 * np.eye(target.dim), jax.random.PRNGKey(0))
    params = jax.tree.map(lambda v: np.asarray(v)[None], params)  # leading axis: one restart
    before = target.num_grad_evals
    fitted = fit_family_fixed(target, family, params, seed=0)
    q_mean, q_cov = family.moments(jax.tree.map(lambda v: v[0], fitted.params))
    dadvi_mean_error = float(np.max(np.abs(np.asarray(q_mean) - mean)))
    dadvi_cov_error = float(np.max(np.abs(np.asarray(q_cov) - cov)))
    print(f"DADVI: {fitted.stop_reason} after {fitted.num_steps} L-BFGS iterations, "
          f"{target.num_grad_evals - before} gradient evaluations, ELBO {-fitted.losses[0, -1]:.4f}; "
          f"|mean error| {dadvi_mean_error:.1e}, |cov error| {dadvi_cov_error:.1e}")
    out = {
        "map_error": map_error,
        "laplace_error": laplace_error,
        "dadvi_mean_error": dadvi_mean_error,
        "dadvi_cov_error": dadvi_cov_error,
        "sd": np.sqrt(np.diag(cov)),
        "grad_evals": target.num_grad_evals,
    }

    # 4. fit() runs the same stages (one target of its own, fixed draws for a Gaussian family).
    if not small:
        result = fit(line, x, y, guide="multivariate_normal", seed=0, progress=False)
        fit_mean = np.asarray(result.params["auto_loc"])
        print(f"fit: draws={result.settings['draws']}, engine={result.settings['engine']}, "
              f"{result.num_steps} steps, {result.settings['grad_evals']} gradient evaluations; "
              f"|mean error| {np.max(np.abs(fit_mean - mean)):.1e}")
        out["fit_mean_error"] = float(np.max(np.abs(fit_mean - mean)))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="skip the fit() call at the end")
    args = parser.parse_args()
    main(args.small)
