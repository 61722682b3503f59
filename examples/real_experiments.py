"""One mechanism fitted across real experiments: a temperature series, a population, an absorbance.

Three synthetic studies with known truth, each written as a chemist describes it:

1. **Temperature series.** ``A -> B : arrhenius(k, Ea)`` measured at five temperatures (a ``T``
   condition, kelvin), fitted globally; the Arrhenius plot shows ``ln k`` against ``1/T`` with the
   posterior band and the true rate constants.
2. **Population.** A one-compartment model ``Central -> 0 : ke`` with a per-subject bolus dose,
   measured as a plasma concentration ``C = Central / V`` at four sparse times per subject;
   ``ke`` and ``V`` vary by subject (partial pooling, non-centred). The shrinkage plot shows each
   subject's estimate of ``ke`` with its interval, the truth and the population median.
3. **Absorbance.** ``A -> B : k`` seen only through ``A280 = eps_A * A + eps_B * B + base`` with
   unknown extinction coefficients and an unknown baseline.

Run ``python examples/real_experiments.py`` (``--small`` for a quick run; ``--out`` a folder for
the figures). See docs/real-experiments.md.
"""

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from inference import fit  # noqa: E402
from vi_models import kinetics  # noqa: E402
from vi_models.kinetics.conditions import R_GAS  # noqa: E402

TEMPERATURE_TRUTH = {"k": 0.25, "Ea": 55e3, "sigma": 0.01}
POPULATION_TRUTH = {"ke_mu": math.log(0.15), "ke_tau": 0.3, "V_mu": math.log(8.0), "V_tau": 0.2, "sigma": 0.1}
ABSORBANCE_TRUTH = {"k": 0.4, "eps_A": 1.5, "eps_B": 0.3, "base": 0.05, "sigma": 0.005}


def temperature_series(small: bool, out: Path, guide: str) -> dict:
    temperatures = [288.0, 298.0, 308.0, 318.0, 328.0]
    t = np.linspace(0.0, 12.0, 10 if small else 20)
    template = kinetics.Dataset.from_arrays([t] * 5, [{"A": np.ones_like(t)}] * 5, experiments=temperatures)
    mech = "A -> B : arrhenius(k, Ea)"
    conditions = {"T": temperatures}
    data = kinetics.model(mech, template, conditions=conditions, initial={"A": 1.0}).synthetic(TEMPERATURE_TRUTH, seed=1)
    model = kinetics.model(mech, data, conditions=conditions, initial={"A": 1.0})
    result = fit(model, guide=guide, seed=0, progress=not small)
    print("Temperature series, T_ref =", model.T_ref, "K")
    print(result.summary(num_samples=500 if small else 2000))
    draws = result.sample(2000, seed=1)
    k, Ea = np.asarray(draws["k"]), np.asarray(draws["Ea"])
    inv_T = np.linspace(1 / 330, 1 / 285, 60)
    ln_k = np.log(k)[:, None] - Ea[:, None] / R_GAS * (inv_T[None, :] - 1 / model.T_ref)
    lo, mid, hi = np.percentile(ln_k, [5, 50, 95], axis=0)
    truth = [
        math.log(TEMPERATURE_TRUTH["k"]) - TEMPERATURE_TRUTH["Ea"] / R_GAS * (1 / T - 1 / model.T_ref) for T in temperatures
    ]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.fill_between(1000 * inv_T, lo, hi, alpha=0.3, label="90% posterior band")
    ax.plot(1000 * inv_T, mid, label="posterior median")
    ax.plot(1000 / np.asarray(temperatures), truth, "o", color="k", label="true k(T)")
    ax.set_xlabel("1000 / T (1/K)")
    ax.set_ylabel("ln k")
    ax.set_title("Arrhenius plot, global fit")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "arrhenius.png", dpi=120)
    plt.close(fig)
    return {name: (float(np.mean(draws[name])), float(np.std(draws[name]))) for name in ("k", "Ea")}


def population_template(n_subjects: int, seed: int = 0):
    """Four sampling times per subject (sparse, different in each subject) and a per-subject dose."""
    rng = np.random.default_rng(seed)
    times = [np.sort(rng.choice(np.arange(1, 25), size=4, replace=False)).astype(float) for _ in range(n_subjects)]
    subjects = [f"s{i:02d}" for i in range(n_subjects)]
    template = kinetics.Dataset.from_arrays(times, [{"C": np.ones_like(t)} for t in times], experiments=subjects)
    return template, {"subject": subjects, "dose": rng.choice([50.0, 100.0, 200.0], size=n_subjects)}


POPULATION_OPTIONS = dict(
    observables={"C": "Central / V"},
    hierarchy={"ke": "subject", "V": "subject"},
    doses=[{"species": "Central", "amount": "dose", "time": 0}],
    priors={"V": "LogNormal(log(10), 0.5)", "ke": "LogNormal(log(0.2), 1)"},
    noise="lognormal",
)


def population_truth(n_subjects: int, seed: int = 5) -> dict:
    rng = np.random.default_rng(seed)
    return dict(POPULATION_TRUTH, ke_z=rng.normal(size=n_subjects), V_z=rng.normal(size=n_subjects))


def population(small: bool, out: Path, guide: str) -> dict:
    n = 10 if small else 24
    template, conditions = population_template(n)
    mech = "Central -> 0 : ke"
    truth = population_truth(n)
    data = kinetics.model(mech, template, conditions=conditions, **POPULATION_OPTIONS).synthetic(truth, seed=4)
    model = kinetics.model(mech, data, conditions=conditions, **POPULATION_OPTIONS)
    result = fit(model, guide=guide, seed=0, progress=not small)
    print(f"Population of {n} subjects")
    print(result.summary(num_samples=500 if small else 2000))
    draws = result.sample(2000, seed=1)
    ke = model.parameter_values(draws)["ke"]  # (draws, subjects)
    true_ke = np.exp(truth["ke_mu"] + truth["ke_tau"] * truth["ke_z"])
    lo, mid, hi = np.percentile(ke, [5, 50, 95], axis=0)
    pop = np.exp(np.asarray(draws["ke_mu"]))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    x = np.arange(n)
    ax.axhspan(*np.percentile(pop, [5, 95]), color="C1", alpha=0.2, label="population median, 90%")
    ax.errorbar(x, mid, yerr=[mid - lo, hi - mid], fmt="o", label="subject estimate, 90%")
    ax.plot(x, true_ke, "x", color="k", label="true subject ke")
    ax.set_xticks(x, data.experiments, rotation=90, fontsize=7)
    ax.set_ylabel("ke (1/h)")
    ax.set_title("Shrinkage: each subject against the population")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "shrinkage.png", dpi=120)
    plt.close(fig)
    inside = np.mean((lo <= true_ke) & (true_ke <= hi))
    return {
        "ke_mu": (float(np.mean(draws["ke_mu"])), float(np.std(draws["ke_mu"]))),
        "V_mu": (float(np.mean(draws["V_mu"])), float(np.std(draws["V_mu"]))),
        "subject_coverage": float(inside),
    }


def absorbance(small: bool, out: Path, guide: str) -> dict:
    t = np.linspace(0.0, 8.0, 12 if small else 25)
    template = kinetics.Dataset.from_arrays([t, t], [{"A280": np.ones_like(t)}] * 2, experiments=["1 mM", "0.5 mM"])
    options = dict(
        observables={"A280": "eps_A * A + eps_B * B + base"},
        initial={"A": [1.0, 0.5], "B": 0.0},
        priors={"eps_A": "LogNormal(0, 1)", "eps_B": "LogNormal(0, 1)", "base": "Normal(0, 0.5)"},
    )
    data = kinetics.model("A -> B : k", template, **options).synthetic(ABSORBANCE_TRUTH, seed=2)
    model = kinetics.model("A -> B : k", data, **options)
    result = fit(model, guide=guide, seed=0, progress=not small)
    print("Absorbance with an unknown baseline")
    print(result.summary(num_samples=500 if small else 2000))
    draws = result.sample(2000, seed=1)
    curves = model.simulate(draws, n_points=80)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for e, label in enumerate(data.experiments):
        lo, hi = np.percentile(curves.observed[:, e, :, 0], [5, 95], axis=0)
        ax.fill_between(curves.times[e], lo, hi, alpha=0.3, color=f"C{e}")
        n = int(data.n_times[e])
        ax.plot(data.times[e, :n], data.values[e, :n, 0], "o", ms=3, color=f"C{e}", label=label)
    ax.set_xlabel("time")
    ax.set_ylabel("A280")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "absorbance.png", dpi=120)
    plt.close(fig)
    return {name: (float(np.mean(draws[name])), float(np.std(draws[name]))) for name in ("k", "eps_A", "eps_B", "base")}


def main(small: bool = False, out: str | Path = "real-experiments-output", guide: str | None = None) -> dict:
    """Run the three studies; return posterior (mean, sd) of the key parameters of each."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    guide = guide or ("multivariate_normal" if small else "auto")
    return {
        "temperature": temperature_series(small, out, guide),
        "population": population(small, out, guide),
        "absorbance": absorbance(small, out, guide),
        "figures": sorted(p.name for p in out.glob("*.png")),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a short run")
    parser.add_argument("--out", default="real-experiments-output", help="folder for the figures")
    parser.add_argument("--guide", default=None, help="guide name (default auto; multivariate_normal with --small)")
    args = parser.parse_args()
    main(args.small, args.out, args.guide)
