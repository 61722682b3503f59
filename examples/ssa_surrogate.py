"""A conditional VAE as a fast surrogate of the Gillespie simulation of gene expression.

The two-stage model of gene expression (``vi_models.gillespie.GENE_EXPRESSION``)::

    0 -> M : k1     transcription        M -> 0 : k2     mRNA decay
    M -> M + P : k3 translation          P -> 0 : k4     protein decay

starts from no molecules; the outcome is the pair of counts (M, P) at T = 10, drawn exactly by
Gillespie's direct method (``vi_models.gillespie.simulate``). The condition is the log of the
transcription and translation rates, log k1 in [log 2, log 10] and log k3 in [log 1, log 5]
(k2 = 1, k4 = 0.5), scaled to [-1, 1]. Training pairs draw a condition uniformly and one outcome
for it; a conditional VAE (2-D latent, negative-binomial decoder for the counts, Sohn et al.
2015) learns p(outcome | condition) with ``inference.fit``. At five new conditions (three with
``--small``) the script draws 300 outcomes (150 with ``--small``) from the surrogate and as many
from the simulator and runs the energy-distance
permutation test (``inference.energy_test``, coordinates scaled by their pooled sd, 999
permutations): the surrogate should pass. The same test with the surrogate given a wrong
condition (k1 lowered by 30%) should fail: that is what shows the test can tell. Last, it times
both at one condition, 20000 draws in one call each (with ``--small``, 20 calls of 150 draws),
compiled beforehand (compile time reported apart).

Writes ``draws.png`` (simulator and surrogate draws at the held-out conditions) to the output
folder.

References: Gillespie (1977), Exact stochastic simulation of coupled chemical reactions; Sohn,
Lee & Yan (2015), Learning structured output representation using deep conditional generative
models; Székely & Rizzo (2004), Testing for equal distributions in high dimension.

Run ``python examples/ssa_surrogate.py`` (``--small`` for a quick run on 3000 pairs; ``--out``
for the figures' folder, ``./ssa-surrogate-example`` by default).
"""

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from inference import energy_test, fit  # noqa: E402
from vi_models.gillespie import GENE_EXPRESSION, simulate  # noqa: E402
from vi_models.vae import VAEFit, build_vae  # noqa: E402

LOW = np.log([2.0, 1.0])  # log k1, log k3
HIGH = np.log([10.0, 5.0])
K2, K4 = 1.0, 0.5
T_END = 10.0
X0 = (0, 0)
WRONG = np.log([0.7, 1.0])  # the deliberately wrong condition: k1 lowered by 30%


def rates(log_k: np.ndarray) -> np.ndarray:
    """Rate constants ``(n, 4)`` in the network's order (k1, k2, k3, k4) from ``(n, 2)`` log k1, log k3."""
    k = np.exp(np.atleast_2d(log_k))
    return np.stack([k[:, 0], np.full(len(k), K2), k[:, 1], np.full(len(k), K4)], 1)


def condition(log_k: np.ndarray) -> np.ndarray:
    """Scale log k1 and log k3 scaled to [-1, 1] over the training box."""
    return (np.asarray(log_k) - (LOW + HIGH) / 2) / ((HIGH - LOW) / 2)


def training_pairs(num_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``num_pairs`` conditions uniformly in the box and one simulated outcome each: ``(log_k, counts)``."""
    log_k = np.random.default_rng(seed).uniform(LOW, HIGH, size=(num_pairs, 2))
    sim = simulate(GENE_EXPRESSION, rates(log_k), X0, T_END, seed=seed + 1)
    if sim.truncated.any():
        raise RuntimeError("a training trajectory hit max_events; raise max_events in simulate")
    return log_k, sim.counts


def train_surrogate(log_k, counts, *, hidden: int, max_steps: int, seed: int = 0, progress: bool = False) -> VAEFit:
    """Fit the conditional VAE p(counts | condition) on the pairs."""
    vae = build_vae({"counts": (2, "negative_binomial")}, latent_dim=2, hidden=hidden, depth=2, condition_dim=2,
                    seed=seed)
    result = fit(
        vae,
        *vae.args(counts, condition(log_k)),
        guide=vae.guide,
        objective="meanfield_elbo",
        num_particles=1,
        lr=3e-3,
        batch_size=256,
        seed=seed,
        min_steps=min(2000, max_steps),
        max_steps=max_steps,
        progress=progress,
    )
    return VAEFit.from_result(vae, result)


def surrogate_draws(surrogate: VAEFit, log_k, num_samples: int, seed: int = 0) -> np.ndarray:
    """``num_samples`` outcomes (M, P) from the surrogate at one condition (``log_k`` of shape (2,))."""
    return surrogate.generate(num_samples, condition(np.asarray(log_k)), seed=seed)["counts"]


def simulator_draws(log_k, num_samples: int, seed: int = 0) -> np.ndarray:
    """``num_samples`` outcomes (M, P) from the Gillespie simulation at one condition."""
    return simulate(GENE_EXPRESSION, rates(log_k)[0], X0, T_END, num_samples=num_samples, seed=seed).counts


def check(surrogate: VAEFit, log_k, num_samples: int = 300, seed: int = 0) -> dict:
    """Energy tests at ``log_k``: surrogate vs simulator, and surrogate at the wrong condition vs simulator."""
    sim = simulator_draws(log_k, num_samples, seed=1000 + seed)
    good = surrogate_draws(surrogate, log_k, num_samples, seed=2000 + seed)
    wrong = surrogate_draws(surrogate, np.asarray(log_k) + WRONG, num_samples, seed=3000 + seed)
    return {
        "log_k": np.asarray(log_k).tolist(),
        "held_out": energy_test(sim, good, standardize=True, seed=seed),
        "wrong": energy_test(sim, wrong, standardize=True, seed=seed),
        "simulator": sim,
        "surrogate": good,
    }


def speed(surrogate: VAEFit, log_k, batch: int, repeats: int = 1) -> dict:
    """Draws per second of the simulator and the surrogate at one condition, ``batch`` draws per call.

    The first call of each compiles (timed apart, as ``compile_and_first_s``); then ``repeats``
    calls are timed.
    """
    out = {}
    for name, draw in (("simulator", simulator_draws), ("surrogate", lambda lk, n, seed: surrogate_draws(
            surrogate, lk, n, seed))):
        t0 = time.perf_counter()
        draw(log_k, batch, seed=0)
        t1 = time.perf_counter()
        for r in range(repeats):
            draw(log_k, batch, seed=1 + r)
        t2 = time.perf_counter()
        out[name] = {"compile_and_first_s": t1 - t0, "seconds": t2 - t1, "per_second": batch * repeats / (t2 - t1)}
    out["speedup"] = out["surrogate"]["per_second"] / out["simulator"]["per_second"]
    out["batch"] = batch
    out["repeats"] = repeats
    return out


def plot(checks: list, out: Path) -> None:
    """Write ``draws.png``: simulator and surrogate draws of (M, P) at each held-out condition."""
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(checks), figsize=(3.2 * len(checks), 3.2), squeeze=False)
    for ax, c in zip(axes[0], checks):
        k1, k3 = np.exp(c["log_k"])
        jitter = np.random.default_rng(0).uniform(-0.3, 0.3, size=c["simulator"].shape)
        ax.scatter(*(c["simulator"] + jitter).T, s=4, alpha=0.5, label="Gillespie")
        ax.scatter(*(c["surrogate"] + jitter).T, s=4, alpha=0.5, label="CVAE")
        ax.set(xlabel="M", title=f"k1={k1:.2f}, k3={k3:.2f}\np={c['held_out'].p_value:.2f}")
    axes[0, 0].set_ylabel("P")
    axes[0, 0].legend(fontsize=7, markerscale=3)
    fig.savefig(out / "draws.png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(small: bool = False, out: Path = Path("ssa-surrogate-example")) -> dict:
    """Simulate pairs, train the surrogate, test it at held-out conditions, time it; return the figures."""
    out = Path(out)
    num_pairs = 3000 if small else 20000
    t0 = time.perf_counter()
    log_k, counts = training_pairs(num_pairs, seed=0)
    t_sim = time.perf_counter() - t0
    surrogate = train_surrogate(log_k, counts, hidden=32, max_steps=3000 if small else 10000, progress=not small)
    res = surrogate.result
    print(
        f"{num_pairs} training pairs simulated in {t_sim:.1f} s; surrogate stopped {res.stop_reason} after "
        f"{res.num_steps} steps ({res.timings.total_s:.1f} s)"
    )
    held_out = np.random.default_rng(123).uniform(LOW, HIGH, size=(3 if small else 5, 2))
    num_draws = 150 if small else 300
    checks = [check(surrogate, lk, num_draws, seed=i) for i, lk in enumerate(held_out)]
    for c in checks:
        k1, k3 = np.exp(c["log_k"])
        print(
            f"k1={k1:5.2f} k3={k3:4.2f}: energy test p = {c['held_out'].p_value:.3f} at the held-out condition, "
            f"p = {c['wrong'].p_value:.3f} with k1 30% too low"
        )
    # The small run times batches of the size it already compiled for the checks.
    timing = speed(surrogate, held_out[0], num_draws, repeats=20) if small else speed(surrogate, held_out[0], 20000)
    print(
        f"speed at k1={np.exp(held_out[0][0]):.2f}, k3={np.exp(held_out[0][1]):.2f}, {timing['batch']} draws a "
        f"call: simulator "
        f"{timing['simulator']['per_second']:.0f} draws/s, surrogate {timing['surrogate']['per_second']:.0f} draws/s "
        f"(speed-up {timing['speedup']:.0f}x; first calls incl. compile {timing['simulator']['compile_and_first_s']:.2f} s "
        f"and {timing['surrogate']['compile_and_first_s']:.2f} s)"
    )
    plot(checks, out)
    print(f"figure written to {out}/draws.png")
    return {
        "num_pairs": num_pairs,
        "num_draws": num_draws,
        "held_out": held_out,
        "p_held_out": [c["held_out"].p_value for c in checks],
        "p_wrong": [c["wrong"].p_value for c in checks],
        "speed": timing,
        "stop_reason": str(res.stop_reason),
        "num_steps": res.num_steps,
        "surrogate": surrogate,
        "out": out,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a short run on 3000 training pairs")
    parser.add_argument("--out", type=Path, default=Path("ssa-surrogate-example"), help="folder for the figure")
    args = parser.parse_args()
    main(args.small, args.out)
