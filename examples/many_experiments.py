"""A plate of experiments fitted as one hierarchical model, and the shrinkage it brings.

A synthetic plate of first-order decays ``A -> B : k`` (each well its own rate, drawn from a
log-normal population; 10 noisy points per well, known truth) is written as a long CSV, read back
with ``kinetics.read_plate`` and fitted with ``guide="auto"``. With more than 1000 latent dimensions
``auto`` takes its large-model path (MAP, then the mean-field ELBO's fixed point on fresh draws).
The shrinkage plot compares each well fitted alone (no pooling) with its posterior under the
population model (partial pooling) and the truth.

Run ``python examples/many_experiments.py`` (``--small`` for a quick run, ``--out`` a folder for
the figure; ``--devices N`` splits the wells over N devices, which on a CPU needs
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` set before the run). See
docs/many-experiments.md.
"""

import argparse
import math
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from inference import fit, site_moments  # noqa: E402
from vi_models import kinetics  # noqa: E402

TRUTH = {"mu": math.log(0.35), "tau": 0.3, "sigma": 0.05}


def write_plate(path: Path, wells: int, seed: int = 0) -> np.ndarray:
    """A long CSV (well, time, A) of ``wells`` decays; returns the true log k of each well."""
    rng = np.random.default_rng(seed)
    log_k = TRUTH["mu"] + TRUTH["tau"] * rng.standard_normal(wells)
    t = np.linspace(0.0, 8.0, 10)
    y = np.exp(-np.exp(log_k)[:, None] * t) + TRUTH["sigma"] * rng.standard_normal((wells, t.size))
    pd.DataFrame({"well": np.repeat([f"W{i:05d}" for i in range(wells)], t.size), "time": np.tile(t, wells),
                  "A": y.ravel()}).to_csv(path, index=False)
    return log_k


def no_pooling(data: kinetics.PlateData) -> np.ndarray:
    """Each well fitted alone: the least-squares log k on a fine grid (vectorized over wells)."""
    grid = np.linspace(math.log(0.02), math.log(5.0), 801)
    t, y, m = np.asarray(data.times), np.asarray(data.values)[..., 0], np.asarray(data.mask)[..., 0]
    sse = np.stack([np.sum(m * (y - np.exp(-math.exp(g) * t)) ** 2, axis=1) for g in grid], axis=1)
    return grid[np.argmin(sse, axis=1)]


def main(small: bool = False, out: str = "docs/img", devices: int | None = None, seed: int = 0) -> dict:
    wells = 1200 if small else 5000
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "plate.csv"
        log_k = write_plate(csv, wells, seed)
        data = kinetics.read_plate(csv)
    print(data.describe())
    model = kinetics.plate_model("A -> B : k", data, initial={"A": 1.0, "B": 0.0}, hierarchical="k")
    result = fit(model, data, seed=seed, progress=not small, devices=devices)
    print("guide='auto' tried:", ", ".join(f"{a.guide} ({a.outcome})" for a in result.attempts))
    print(result.verdict())

    moments = site_moments(result)  # means and sds on the unconstrained scale, straight from the guide
    mu, mu_sd = (float(x) for x in moments["k_mu"])
    log_tau, log_tau_sd = (float(x) for x in moments["k_tau"])
    m_u, s_u = moments["k_u"]
    cover = float(np.mean(np.abs(m_u - log_k) < 1.645 * s_u))
    raw = no_pooling(data)
    print(f"population: median k = {math.exp(mu):.4f} (truth {math.exp(TRUTH['mu']):.4f}), "
          f"tau = {math.exp(log_tau):.3f} (truth {TRUTH['tau']})")
    print(f"90% intervals of log k cover the truth in {cover:.1%} of the {wells} wells; "
          f"error of log k: pooled {np.sqrt(np.mean((m_u - log_k) ** 2)):.4f}, "
          f"each well alone {np.sqrt(np.mean((raw - log_k) ** 2)):.4f} (root mean square)")

    # The shrinkage plot. Left: the 30 wells that pooling moved most, each alone and pooled, with
    # the truth. Right: every well, how far pooling moved it against its own estimate.
    moved = m_u - raw
    pick = np.argsort(-np.abs(moved))[:30]
    pick = pick[np.argsort(raw[pick])]
    x = np.arange(pick.size)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    ax.axhline(mu, color="0.5", ls="--", lw=1, label="population median (log k)")
    ax.plot(x, raw[pick], "o", mfc="none", color="C1", label="each well alone")
    ax.errorbar(x, m_u[pick], yerr=1.645 * s_u[pick], fmt="o", color="C0", ms=4, capsize=2,
                label="hierarchical posterior (90%)")
    ax.plot(x, log_k[pick], "x", color="k", label="truth")
    for i, j in enumerate(pick):
        ax.annotate("", (i, m_u[j]), (i, raw[j]), arrowprops={"arrowstyle": "->", "color": "0.6", "lw": 0.8})
    ax.set_xticks([])
    ax.set_xlabel("the 30 wells pooling moved most, by their own estimate")
    ax.set_ylabel("log k")
    ax.legend(fontsize=7, loc="upper left")
    ax2.axhline(0.0, color="0.5", lw=0.8)
    ax2.axvline(mu, color="0.5", ls="--", lw=1)
    ax2.plot(raw, moved, ".", ms=2, alpha=0.4, color="C0")
    ax2.set_xlabel("log k, each well alone")
    ax2.set_ylabel("pooled - alone")
    ax2.set_title(f"all {wells} wells", fontsize=9)
    fig.suptitle(f"{wells} wells: partial pooling pulls wells towards the population", fontsize=10)
    fig.tight_layout()
    Path(out).mkdir(parents=True, exist_ok=True)
    figure = Path(out) / "many-experiments-shrinkage.png"
    fig.savefig(figure, dpi=110)
    plt.close(fig)
    return {
        "wells": wells,
        "guide": result.guide_name,
        "attempts": [a.guide for a in result.attempts],
        "verdict": result.verdict().level,
        "mu": (mu, mu_sd),
        "log_tau": (log_tau, log_tau_sd),
        "coverage90": cover,
        "rmse_pooled": float(np.sqrt(np.mean((m_u - log_k) ** 2))),
        "rmse_alone": float(np.sqrt(np.mean((raw - log_k) ** 2))),
        "figure": str(figure),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--out", default="docs/img")
    parser.add_argument("--devices", type=int, default=None)
    args = parser.parse_args()
    main(small=args.small, out=args.out, devices=args.devices)
