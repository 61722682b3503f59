"""A variational autoencoder on the UCI optical digits: held-out ELBO, reconstructions, a 2-D latent.

The 1797 8x8 digits of Alpaydin & Kaynak (1998), shipped with scikit-learn (``pip install
'vifit[digits]'``), are binarized (grey level above 8 of 16) and split 75/25 into training and
held-out images. A VAE with a 2-D latent, a one-hidden-layer encoder and decoder (32 units; 16
with ``--small``) and a Bernoulli likelihood per pixel is trained with ``inference.fit`` (analytic-KL ELBO, minibatches of 128
images, at most 10000 steps: more steps or wider layers fit the training images better and the
held-out ones worse). The script prints

* the held-out ELBO per image (nats, a lower bound of log p(x)) of the trained model, of the model
  at initialization, and of the baseline without a latent: independent Bernoulli pixels with the
  training-set pixel means (an exact log likelihood, no bound);
* the reconstruction accuracy (share of held-out pixels right after encoding to the posterior
  mean and decoding at probability 0.5), next to the baseline's (each pixel's majority value);

and writes to the output folder ``latent_scatter.png`` (posterior means of the held-out images,
coloured by digit), ``interpolation.png`` (decoded images along straight lines in latent space
between the encodings of two held-out images, one row per pair), ``loss.png`` and
``latent_posterior.nc`` (the latent posterior of 10 held-out images as an ArviZ DataTree).

Reference: Kingma, D. P. and Welling, M. (2014). Auto-encoding variational Bayes. ICLR.

Run ``python examples/vae_digits.py`` (``--small`` for a quick run: 600 images, 1500 steps; ``--out`` for
the figures' folder, ``./vae-digits-example`` by default).
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from inference import fit  # noqa: E402
from vi_models.vae import VAEFit, build_vae, load_digits  # noqa: E402

PAIRS = ((0, 1), (3, 8), (4, 7), (2, 5), (6, 9))


def bernoulli_baseline(train: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    """Log likelihood per held-out image and pixel accuracy of independent pixels with the training means."""
    p = np.clip(train.mean(0), 1e-3, 1 - 1e-3)
    loglik = (test * np.log(p) + (1 - test) * np.log1p(-p)).sum(1).mean()
    return float(loglik), float(np.mean((p > 0.5) == (test > 0.5)))


def train_vae(train: np.ndarray, *, hidden: int, max_steps: int, seed: int = 0, progress: bool = False):
    """Fit the 2-D-latent Bernoulli VAE on the training images; return ``(vae, VAEFit)``."""
    vae = build_vae({"pixels": (64, "bernoulli")}, latent_dim=2, hidden=hidden, seed=seed)
    result = fit(
        vae,
        *vae.args(train),
        guide=vae.guide,
        objective="meanfield_elbo",
        num_particles=1,
        lr=3e-3,
        batch_size=128,
        seed=seed,
        min_steps=min(2000, max_steps),
        max_steps=max_steps,
        progress=progress,
    )
    return vae, VAEFit.from_result(vae, result)


def interpolation_rows(trained: VAEFit, test: np.ndarray, labels: np.ndarray, steps: int = 10) -> np.ndarray:
    """Decode pixel probabilities along lines between encodings: ``(len(PAIRS), steps, 8, 8)``."""
    loc = trained.encode(test).loc
    rows = []
    for a, b in PAIRS:
        za, zb = loc[np.flatnonzero(labels == a)[0]], loc[np.flatnonzero(labels == b)[0]]
        t = np.linspace(0, 1, steps)[:, None]
        rows.append(trained.decode((1 - t) * za + t * zb)["pixels"].reshape(steps, 8, 8))
    return np.stack(rows)


def plot(trained: VAEFit, digits, grid: np.ndarray, out: Path) -> None:
    """Write the latent scatter, the interpolation grid and the loss trace to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    loc = trained.encode(digits.test).loc
    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(loc[:, 0], loc[:, 1], c=digits.test_labels, cmap="tab10", s=10, vmin=-0.5, vmax=9.5)
    fig.colorbar(sc, ax=ax, ticks=range(10), label="digit")
    ax.set(xlabel="z1 (posterior mean)", ylabel="z2 (posterior mean)", title="Held-out digits in the latent space")
    fig.savefig(out / "latent_scatter.png", dpi=120, bbox_inches="tight")
    plt.close(fig)

    n_rows, n_cols = grid.shape[:2]
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(n_cols * 0.9, n_rows * 0.9))
    for i in range(n_rows):
        for j in range(n_cols):
            axes[i, j].imshow(grid[i, j], cmap="gray_r", vmin=0, vmax=1)
            axes[i, j].axis("off")
        axes[i, 0].set_title(f"{PAIRS[i][0]}->{PAIRS[i][1]}", fontsize=7, loc="left")
    fig.suptitle("Decoded pixel probabilities between two encodings")
    fig.savefig(out / "interpolation.png", dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3))
    losses = trained.result.losses[0] / trained.num_points
    ax.plot(np.arange(1, losses.size + 1), -losses, lw=0.5)
    ax.set(xlabel="step", ylabel="minibatch ELBO per image (nats)", ylim=(np.percentile(-losses, 1), None))
    fig.savefig(out / "loss.png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(small: bool = False, out: Path = Path("vae-digits-example")) -> dict:
    """Train, evaluate and plot; return the held-out figures (nats per image) and accuracies."""
    out = Path(out)
    digits = load_digits(num_points=600 if small else None, seed=0)
    vae, trained = train_vae(digits.train, hidden=16 if small else 32, max_steps=1500 if small else 10000,
                             progress=not small)
    untrained = VAEFit.untrained(vae, digits.train)
    elbo = trained.heldout_elbo(digits.test, num_samples=200)
    elbo0 = untrained.heldout_elbo(digits.test, num_samples=200)
    base_loglik, base_acc = bernoulli_baseline(digits.train, digits.test)
    acc = trained.reconstruction_accuracy(digits.test)
    result = trained.result
    print(
        f"{len(digits.train)} training and {len(digits.test)} held-out images; stopped: {result.stop_reason} after "
        f"{result.num_steps} steps ({result.timings.total_s:.1f} s, of which compiling {result.timings.compile_s:.1f} s)"
    )
    print(
        f"held-out ELBO per image: trained {elbo.mean:.2f} (MC se {elbo.mc_se:.3f}), untrained {elbo0.mean:.2f}, "
        f"independent-pixel baseline (exact log likelihood) {base_loglik:.2f}"
    )
    print(f"reconstruction accuracy (held-out pixels): VAE {acc:.3f}, baseline {base_acc:.3f}")
    grid = interpolation_rows(trained, digits.test, digits.test_labels)
    plot(trained, digits, grid, out)
    idata = trained.to_arviz(digits.test, points=range(10), num_samples=500)
    idata.to_netcdf(str(out / "latent_posterior.nc"))
    print(f"figures and latent_posterior.nc written to {out}/")
    return {
        "num_train": len(digits.train),
        "num_test": len(digits.test),
        "elbo": elbo.mean,
        "elbo_mc_se": elbo.mc_se,
        "elbo_untrained": elbo0.mean,
        "elbo_baseline": base_loglik,
        "accuracy": acc,
        "accuracy_baseline": base_acc,
        "stop_reason": str(result.stop_reason),
        "num_steps": result.num_steps,
        "seconds": result.timings.total_s,
        "out": out,
        "digits": digits,
        "trained": trained,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a short run on 600 images")
    parser.add_argument("--out", type=Path, default=Path("vae-digits-example"), help="folder for the figures")
    args = parser.parse_args()
    main(args.small, args.out)
