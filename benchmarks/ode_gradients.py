"""Cost of one SVI step under each ODE gradient method; prints a Markdown table.

One step = one update of a full-rank Gaussian guide (``AutoMultivariateNormal``) with an 8-particle
ELBO, run as ``inference.fit`` runs it (``lax.scan`` chunks of 100 steps, vmapped over one
restart). Steady state: the chunk is compiled and run once before timing, then ``--chunks``
chunks are timed, ``--repeats`` times; the table gives the median seconds per step. Compile time
is the chunk's compile alone.

Problems (``benchmarks/data``, priors from ``problems.json``):

``a``  ``A -> B : k``, initial A = 1 (linear): expm, forward, reverse.
``c``  ``S -> P : mm(Vmax, Km)``, initial S = 10, P = 0: forward, reverse, adjoint.
``chain``  ``2 A0 -> A1 : k0; ...; 2 A15 -> A16 : k15`` (17 species, 16 rate constants: 33 inputs,
       past the forward-mode limit of 32), simulated data on A0, A8 and A16: reverse, adjoint.

The last column compares the gradient of the log density at the prior median with that of the
first method of the problem (relative difference, max over parameters): how accurate each
method is beside how fast.

Usage::

    python benchmarks/ode_gradients.py [--chunks 5] [--repeats 3] [--problems a,c,chain]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

NUM_PARTICLES = 8
CHUNK = 100
METHODS = {"a": ("expm", "forward", "reverse"), "c": ("forward", "reverse", "adjoint"), "chain": ("reverse", "adjoint")}


def _problems():
    spec = importlib.util.spec_from_file_location("problems", HERE / "problems.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_model(pid: str, method: str):
    """Build the model of problem ``pid`` with ODE gradient method ``method``."""
    from vi_models import kinetics

    if pid == "chain":
        mech = kinetics.Mechanism.parse("; ".join(f"2 A{i} -> A{i + 1} : k{i}" for i in range(16)))
        t = np.linspace(0.0, 10.0, 21)
        y0 = np.zeros(17)
        y0[0] = 1.0
        ys, _ = kinetics.solve(mech, y0, t, np.full(16, 0.8))
        rng = np.random.default_rng(0)
        observed = {f"A{i}": np.asarray(ys[:, i]) + 0.01 * rng.standard_normal(t.size) for i in (0, 8, 16)}
        data = kinetics.Dataset.from_arrays(t, observed)
        initial = {"A0": 1.0, "A8": 0.0, "A16": 0.0}
        return kinetics.model(mech, data, initial=initial, solver={"gradient": method})
    P = _problems()
    info = P.load_problems()
    spec = P.SPECS[pid]
    priors = {name: P.prior_text(info["priors"][name]) for name in info["params"][pid]}
    return kinetics.model(
        spec["mechanism"],
        str(P.DATA / spec["file"]),
        priors=priors,
        initial=spec["initial"],
        solver={"gradient": method},
    )


def step_cost(model, chunks: int, repeats: int) -> dict:
    """Compile time and steady-state seconds per SVI step of ``model`` (one restart, vmapped)."""
    import jax
    from numpyro.infer import SVI

    from inference.engine.settings import make_optimizer
    from inference.engine.guides import make_guide
    from inference.engine.loop import init_state, make_chunk
    from inference.engine.objectives import make_objective

    svi = SVI(
        model,
        make_guide("multivariate_normal", model, init_scale=0.1),
        make_optimizer(0.01),
        make_objective("elbo", num_particles=NUM_PARTICLES),
    )
    state = jax.jit(jax.vmap(lambda key: init_state(svi, key)))(jax.random.split(jax.random.PRNGKey(0), 1))
    chunk = jax.jit(jax.vmap(make_chunk(svi, CHUNK)))
    t0 = time.perf_counter()
    compiled = chunk.lower(state).compile()
    compile_s = time.perf_counter() - t0
    state, info = compiled(state)
    np.asarray(info.losses)
    per_step = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(chunks):
            state, info = compiled(state)
            np.asarray(info.losses)  # the host reads each chunk, as fit() does
        per_step.append((time.perf_counter() - t0) / (chunks * CHUNK))
    final_loss = float(np.asarray(info.losses)[0, -1])
    return {"compile_s": compile_s, "step_s": float(np.median(per_step)), "final_loss": final_loss}


def log_density_gradient(model) -> np.ndarray:
    """Gradient of the log density at the prior median of every latent site."""
    import jax
    import jax.numpy as jnp
    from numpyro.infer.util import log_density

    from vi_models.kinetics.model import _prior_median

    point = {name: _prior_median(prior) for name, prior in model.priors.items()}
    grad = jax.jit(jax.grad(lambda p: log_density(model, (), {}, p)[0]))({k: jnp.asarray(v) for k, v in point.items()})
    return np.array([float(grad[name]) for name in model.priors])


def main(argv=None) -> int:
    """Measure every problem and method and print the Markdown table; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=5, help="chunks of 100 steps timed per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (the median is reported)")
    parser.add_argument("--problems", default="a,c,chain", help="comma-separated: a, c, chain")
    args = parser.parse_args(argv)

    import jax

    import inference  # noqa: F401 - float64 and vifit's JAX settings

    rows = []
    for pid in args.problems.split(","):
        reference = None
        for method in METHODS[pid]:
            model = build_model(pid, method)
            cost = step_cost(model, args.chunks, args.repeats)
            grad = log_density_gradient(model)
            if reference is None:
                reference = grad
            rel = float(np.max(np.abs(grad - reference) / np.maximum(np.abs(reference), 1e-300)))
            rows.append((pid, method, cost, rel))
            line = f"  {pid} {method}: {cost['step_s'] * 1e6:.0f} us/step, compile {cost['compile_s']:.1f} s"
            print(line, file=sys.stderr)

    print(f"One SVI step, full-rank guide, {NUM_PARTICLES} particles ({jax.devices()[0].platform}, "
          f"{jax.device_count()} device); median of {args.repeats} x {args.chunks} chunks of {CHUNK} steps.\n")
    print("| problem | gradient | step (us) | vs fastest | chunk compile (s) | grad. rel. diff. |")
    print("|---|---|---:|---:|---:|---:|")
    for pid in dict.fromkeys(r[0] for r in rows):
        group = [r for r in rows if r[0] == pid]
        fastest = min(r[2]["step_s"] for r in group)
        for _, method, cost, rel in group:
            print(
                f"| {pid} | {method} | {cost['step_s'] * 1e6:.0f} | {cost['step_s'] / fastest:.1f}x | "
                f"{cost['compile_s']:.1f} | {rel:.1e} |"
                if math.isfinite(rel)
                else f"| {pid} | {method} | {cost['step_s'] * 1e6:.0f} | {cost['step_s'] / fastest:.1f}x | "
                f"{cost['compile_s']:.1f} | - |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
