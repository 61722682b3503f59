"""A conditional VAE as a fast surrogate of the Gillespie simulation of gene expression.

The two-stage model of gene expression (``vi_models.gillespie.GENE_EXPRESSION``)::

    0 -> M : k1     transcription        M -> 0 : k2     mRNA decay
    M -> M + P : k3 translation          P -> 0 : k4     protein decay

starts from no molecules; the outcome is the pair of counts (M, P) at T = 10, drawn exactly by
Gillespie's direct method (``vi_models.gillespie.simulate``). The condition is the log of the
transcription and translation rates, log k1 in [log 2, log 10] and log k3 in [log 1, log 5]
(k2 = 1, k4 = 0.5), scaled to [-1, 1]. Training pairs draw a condition uniformly and one outcome
for it; a conditional VAE (Sohn et al. 2015) learns p(outcome | condition) with ``inference.fit``:
2-D latent, two hidden layers (64 units; 32 with ``--small``), negative-binomial likelihoods, and
an *autoregressive* decoder, p(M, P | z, c) = p(M | z, c) p(P | M, z, c). The autoregressive
decoder is needed: the mRNA count is exactly Poisson, and a decoder that draws M and P
independently given z can only correlate them through an M mean that varies with z, which makes
M over-dispersed (variance = mean + Var E[M | z]); it then has to trade a too wide M against a
too weak M-P correlation. The learning rate decays on a cosine schedule over all steps (10000
from 5e-3; 3000 from 1e-2 with ``--small``).

At five new conditions (three with ``--small``) the script compares 1000 outcomes from the
surrogate (300 with ``--small``) with 1000 from the simulator by the energy-distance permutation
test (``inference.energy_test``, coordinates scaled by their pooled sd, 999 permutations; 399 with
``--small``): the surrogate should pass. The same test with the surrogate given a wrong
condition (k1 lowered by 30%) should fail: that is what shows the test can tell. Last, it times
both at one condition, 20000 draws in one call each (with ``--small``, 5 calls of 1000 draws),
compiled beforehand (compile time reported apart).

Writes ``draws.png`` (simulator and surrogate draws at the held-out conditions) to the output
folder.

References: Gillespie (1977), Exact stochastic simulation of coupled chemical reactions; Sohn,
Lee & Yan (2015), Learning structured output representation using deep conditional generative
models; Székely & Rizzo (2004), Testing for equal distributions in high dimension.

Run ``python examples/ssa_surrogate.py`` (``--small`` for a quick run on 10000 pairs; ``--out``
for the figures' folder, ``./ssa-surrogate-example`` by default).
"""

import argparse
import time
from pathlib import Path

import matplotlib
import optax

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


def training_pairs(num_pairs: int, seed: int = 0, batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``num_pairs`` conditions uniformly in the box and one simulated outcome each: ``(log_k, counts)``.

    With ``batch``, the simulator is called on ``batch`` pairs at a time (seeds ``seed + 1``,
    ``seed + 2``, ...): one compiled shape, which the checks can share.
    """
    log_k = np.random.default_rng(seed).uniform(LOW, HIGH, size=(num_pairs, 2))
    batch = batch or num_pairs
    sims = [simulate(GENE_EXPRESSION, rates(log_k[i : i + batch]), X0, T_END, seed=seed + 1 + i // batch)
            for i in range(0, num_pairs, batch)]
    if any(sim.truncated.any() for sim in sims):
        raise RuntimeError("a training trajectory hit max_events; raise max_events in simulate")
    return log_k, np.concatenate([sim.counts for sim in sims])


def train_surrogate(log_k, counts, *, hidden: int, max_steps: int, lr: float = 5e-3, seed: int = 0,
                    progress: bool = False) -> VAEFit:
    """Fit the conditional VAE p(M, P | condition) on the pairs: M first, then P given M.

    All ``max_steps`` steps are run; the learning rate decays on a cosine schedule from ``lr`` to
    ``lr / 20``.
    """
    vae = build_vae({"M": (1, "negative_binomial"), "P": (1, "negative_binomial")}, latent_dim=2, hidden=hidden,
                    depth=2, condition_dim=2, autoregressive=True, seed=seed)
    result = fit(
        vae,
        *vae.args({"M": counts[:, :1], "P": counts[:, 1:]}, condition(log_k)),
        guide=vae.guide,
        objective="meanfield_elbo",
        num_particles=1,
        lr=optax.cosine_decay_schedule(lr, max_steps, alpha=0.05),
        batch_size=256,
        seed=seed,
        min_steps=max_steps,
        max_steps=max_steps,
        progress=progress,
    )
    return VAEFit.from_result(vae, result)


def surrogate_draws(surrogate: VAEFit, log_k, num_samples: int, seed: int = 0) -> np.ndarray:
    """``num_samples`` outcomes (M, P) from the surrogate at one condition (``log_k`` of shape (2,))."""
    out = surrogate.generate(num_samples, condition(np.asarray(log_k)), seed=seed)
    return np.concatenate([out["M"], out["P"]], axis=1)


def simulator_draws(log_k, num_samples: int, seed: int = 0) -> np.ndarray:
    """``num_samples`` outcomes (M, P) from the Gillespie simulation at one condition."""
    return simulate(GENE_EXPRESSION, rates(log_k)[0], X0, T_END, num_samples=num_samples, seed=seed).counts


def check(surrogate: VAEFit, log_k, num_samples: int = 1000, num_reference: int = 1000, seed: int = 0,
          n_permutations: int = 999) -> dict:
    """Energy tests at ``log_k``: surrogate vs simulator, and surrogate at the wrong condition vs simulator.

    ``num_samples`` surrogate draws at the condition and as many at the wrong condition are each
    compared with the same ``num_reference`` simulator draws (at most as many). The surrogate draws
    are the first ``num_samples`` of ``num_reference``, so that every call has the same shape and
    the sampler compiles once.
    """
    sim = simulator_draws(log_k, num_reference, seed=1000 + seed)
    good = surrogate_draws(surrogate, log_k, num_reference, seed=2000 + seed)[:num_samples]
    wrong = surrogate_draws(surrogate, np.asarray(log_k) + WRONG, num_reference, seed=3000 + seed)[:num_samples]
    return {
        "log_k": np.asarray(log_k).tolist(),
        "held_out": energy_test(sim, good, standardize=True, seed=seed, n_permutations=n_permutations),
        "wrong": energy_test(sim, wrong, standardize=True, seed=seed, n_permutations=n_permutations),
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
        # As many draws of each, jittered alike, so that the two clouds can be compared by eye.
        n = min(len(c["simulator"]), len(c["surrogate"]))
        jitter = np.random.default_rng(0).uniform(-0.3, 0.3, size=(n, 2))
        ax.scatter(*(c["simulator"][:n] + jitter).T, s=4, alpha=0.5, label="Gillespie")
        ax.scatter(*(c["surrogate"][:n] + jitter).T, s=4, alpha=0.5, label="CVAE")
        ax.set(xlabel="M", title=f"k1={k1:.2f}, k3={k3:.2f}\np={c['held_out'].p_value:.2f}")
    axes[0, 0].set_ylabel("P")
    axes[0, 0].legend(fontsize=7, markerscale=3)
    fig.savefig(out / "draws.png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(small: bool = False, out: Path = Path("ssa-surrogate-example")) -> dict:
    """Simulate pairs, train the surrogate, test it at held-out conditions, time it; return the figures."""
    out = Path(out)
    num_pairs = 10000 if small else 20000
    t0 = time.perf_counter()
    # The small run simulates in calls of 1000, the shape of the checks' simulator draws.
    log_k, counts = training_pairs(num_pairs, seed=0, batch=1000 if small else None)
    t_sim = time.perf_counter() - t0
    if small:
        surrogate = train_surrogate(log_k, counts, hidden=32, max_steps=3000, lr=1e-2)
    else:
        surrogate = train_surrogate(log_k, counts, hidden=64, max_steps=10000, lr=5e-3, progress=True)
    res = surrogate.result
    print(
        f"{num_pairs} training pairs simulated in {t_sim:.1f} s; surrogate stopped {res.stop_reason} after "
        f"{res.num_steps} steps ({res.timings.total_s:.1f} s)"
    )
    held_out = np.random.default_rng(123).uniform(LOW, HIGH, size=(3 if small else 5, 2))
    # The small run's 399 permutations resolve p down to 1/400, below 0.01 / 3, the level of each of its tests.
    num_draws, num_reference, n_permutations = (300, 1000, 399) if small else (1000, 1000, 999)
    checks = [check(surrogate, lk, num_draws, num_reference, seed=i, n_permutations=n_permutations)
              for i, lk in enumerate(held_out)]
    for c in checks:
        k1, k3 = np.exp(c["log_k"])
        print(
            f"k1={k1:5.2f} k3={k3:4.2f}: energy test p = {c['held_out'].p_value:.3g} at the held-out condition, "
            f"p = {c['wrong'].p_value:.3g} with k1 30% too low"
        )
    # The small run times batches of the size the simulator already compiled for the checks.
    timing = speed(surrogate, held_out[0], num_reference, repeats=5) if small else speed(surrogate, held_out[0], 20000)
    print(
        f"speed at k1={np.exp(held_out[0][0]):.2f}, k3={np.exp(held_out[0][1]):.2f}, {timing['batch']} draws a "
        f"call: simulator "
        f"{timing['simulator']['per_second']:.0f} draws/s, surrogate {timing['surrogate']['per_second']:.0f} draws/s "
        f"(speed-up {timing['speedup']:.0f}x; first calls incl. compile {timing['simulator']['compile_and_first_s']:.2f} s "
        f"and {timing['surrogate']['compile_and_first_s']:.2f} s)"
    )
    plot(checks, out)
    total = time.perf_counter() - t0
    print(f"figure written to {out}/draws.png; {total:.0f} s in all")
    return {
        "num_pairs": num_pairs,
        "num_draws": num_draws,
        "num_reference": num_reference,
        "n_permutations": n_permutations,
        "held_out": held_out,
        "p_held_out": [c["held_out"].p_value for c in checks],
        "p_wrong": [c["wrong"].p_value for c in checks],
        "speed": timing,
        "stop_reason": str(res.stop_reason),
        "num_steps": res.num_steps,
        "surrogate": surrogate,
        "seconds": total,
        "out": out,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a short run on 10000 training pairs")
    parser.add_argument("--out", type=Path, default=Path("ssa-surrogate-example"), help="folder for the figure")
    args = parser.parse_args()
    main(args.small, args.out)
