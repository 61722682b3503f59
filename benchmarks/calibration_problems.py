"""The calibration set: posteriors with long NUTS references, to measure what the verdict means.

Import it by path (``benchmarks/`` is not a package)::

    import importlib.util
    spec = importlib.util.spec_from_file_location("calibration_problems", "benchmarks/calibration_problems.py")
    calibration_problems = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(calibration_problems)

Every problem is a function with no arguments that returns ``(model, args, kwargs, info)``: fit it
with ``inference.fit(model, *args, **kwargs)``. ``info`` is a dict:

``params``
    Names of the quantities compared with the reference: a latent site (``"k"``), one element of a
    vector site (``"logk[0]"``, the last axis), or a quantity that ``derive`` adds.
``positive``
    The names of ``params`` that are positive; their moments are compared on the log scale.
``truth``
    The values the synthetic data were drawn from (None for the shared problems' data sets where
    ``benchmarks/data/problems.json`` has them, or for real data).
``derive``
    Optional: ``draws -> draws`` adding derived quantities (e.g. problem d's ``k = exp(mu + tau z)``)
    from latent draws with any leading dimensions.
``reference``
    Optional: the model NUTS samples for the reference, when it is not ``model`` itself but has the
    same posterior of every compared quantity (a reparameterization or an analytic solution of the
    same ODE); a dict with ``model``, ``args``, ``kwargs`` and ``why``.
``nuts``
    Options of the reference run (chains, warm-up, draws, target acceptance, chain method).
``modes``
    Optional, for a posterior with two modes that a map ``swap`` (an involution with unit Jacobian
    on the unconstrained scale) exchanges (flip-flop): ``swap``, ``log_ratio`` (draws ->
    ``log p(swap theta) - log p(theta)``), ``in_first`` (draws -> bool, the first mode) and its name
    ``first``. The ``reference`` model then samples the folded density ``p(theta) + p(swap theta)``
    on the first mode's side; see ``benchmarks/calibration.py``.
``description``
    One line.

The shared problems a-d (``benchmarks/problems.py``) and the BOD demo are real or earlier data;
the others are synthetic with known truth, each data set drawn from a fixed NumPy seed, small
enough that the reference takes seconds to minutes. The analytic models are plain NumPyro; the
Michaelis-Menten, the absorbance and the population problems are built by ``vi_models.kinetics``.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Reference runs: chains x (warm-up + draws). Long enough for r_hat <= 1.01 and ESS >= 2000.
NUTS_DEFAULT = {
    "num_chains": 8,
    "num_warmup": 2000,
    "num_samples": 5000,
    "target_accept": 0.9,
    "chain_method": "vectorized",
}


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shared():
    return _load("problems", HERE / "problems.py")


def _nuts(**overrides) -> dict:
    return dict(NUTS_DEFAULT, **overrides)


def _info(params, positive, *, truth=None, description="", nuts=None, **extra) -> dict:
    info = {
        "params": tuple(params),
        "positive": tuple(positive),
        "truth": truth,
        "description": description,
        "nuts": nuts or _nuts(),
    }
    info.update(extra)
    return info


# -- the shared problems a-d and the BOD demo --------------------------------------------------------


def _shared_truth(pid: str) -> dict:
    truth = _shared().true_values(pid)
    return {k: float(v) for k, v in truth.items() if np.ndim(v) == 0}


def problem_a():
    """Shared problem a: ``A -> B : k``, 20 points, known A0 (``vi_models.kinetics`` model)."""
    model = _shared().vifit_model("a")
    info = _info(
        ("k", "sigma"),
        ("k", "sigma"),
        truth=_shared_truth("a"),
        description="shared a: first-order decay, 20 points",
        nuts=_nuts(chain_method="sequential"),
    )
    return model, (), {}, info


def problem_b():
    """Shared problem b: ``A <=> B : kf, kb``, A and B observed."""
    model = _shared().vifit_model("b")
    info = _info(
        ("kf", "kb", "sigma"),
        ("kf", "kb", "sigma"),
        truth=_shared_truth("b"),
        description="shared b: reversible A <=> B, both observed",
        nuts=_nuts(chain_method="sequential"),
    )
    return model, (), {}, info


def problem_c():
    """Shared problem c: Michaelis-Menten ``S -> P : mm(Vmax, Km)``, S observed."""
    model = _shared().vifit_model("c")
    info = _info(
        ("Vmax", "Km", "sigma"),
        ("Vmax", "Km", "sigma"),
        truth=_shared_truth("c"),
        description="shared c: Michaelis-Menten substrate depletion, 25 points",
        nuts=_nuts(chain_method="sequential"),
    )
    return model, (), {}, info


def _d_derive(draws: dict) -> dict:
    out = dict(draws)
    # The kinetics builder names the hierarchy's sites after the rate: k_mu, k_tau, k_z.
    for site in ("mu", "tau", "z"):
        if site not in out and f"k_{site}" in out:
            out[site] = out[f"k_{site}"]
    if "k" not in out:
        mu = np.asarray(out["mu"], dtype=float)[..., None]
        tau = np.asarray(out["tau"], dtype=float)[..., None]
        out["k"] = np.exp(mu + tau * np.asarray(out["z"], dtype=float))
    return out


def _d_reference():
    """Problem d with the same posterior, for NUTS: centred, and ``A(t) = A0 exp(-k t)`` in closed form.

    ``log k_e ~ Normal(mu, tau)`` is the image of ``z_e ~ Normal(0, 1)`` under ``log k_e = mu + tau z_e``,
    and the ODE ``dA/dt = -k A`` has the solution ``A0 exp(-k t)``, so the posterior of ``mu``,
    ``tau``, ``sigma``, ``z`` and ``k`` is that of the vifit model; with 15 informative points per
    experiment the centred form is the one NUTS samples well.
    """
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    shared = _shared()
    info = shared.load_problems()
    data = shared.load_data("d")
    times = jnp.asarray(data["times"])
    values = jnp.asarray(data["values"])
    n_exp = values.shape[0]
    priors = {name: shared.prior_distribution(info["priors"][name]) for name in ("mu", "tau", "sigma")}
    a0 = float(info["setup"]["d"]["A0"])

    def model():
        mu = numpyro.sample("mu", priors["mu"])
        tau = numpyro.sample("tau", priors["tau"])
        with numpyro.plate("experiment", n_exp):
            logk = numpyro.sample("logk", dist.Normal(mu, tau))
        numpyro.deterministic("z", (logk - mu) / tau)
        k = numpyro.deterministic("k", jnp.exp(logk))
        sigma = numpyro.sample("sigma", priors["sigma"])
        mean = a0 * jnp.exp(-k[:, None] * times[None, :])
        with numpyro.plate("experiment", n_exp):
            numpyro.sample("obs", dist.Normal(mean, sigma).to_event(1), obs=values)

    return model


def problem_d():
    """Shared problem d: 50 experiments, ``log k_e = mu + tau z_e`` (non-centred), ODE solves.

    Written as a vifit user writes it, with the kinetics builder's hierarchy (sites ``k_mu``,
    ``k_tau``, ``k_z``, ``sigma``): its log density is the hand-written model's in
    ``benchmarks/problems.py`` to 1e-10 (``tests/vi_models/kinetics/test_experiments.py``).
    """
    from vi_models import kinetics

    shared = _shared()
    info = shared.load_problems()
    priors = {name: shared.prior_text(info["priors"][name]) for name in ("mu", "tau", "sigma")}
    model = kinetics.model(
        shared.SPECS["d"]["mechanism"],
        str(shared.DATA / shared.SPECS["d"]["file"]),
        initial={"A": float(info["setup"]["d"]["A0"]), "B": 0.0},
        hierarchy={"k": "experiment"},
        priors={"k_mu": priors["mu"], "k_tau": priors["tau"], "sigma": priors["sigma"]},
    )
    truth = _shared_truth("d")
    k_true = np.asarray(shared.load_problems()["truth_d_k_i"], dtype=float)
    truth.update({"k[0]": float(k_true[0]), "k[1]": float(k_true[1])})
    info = _info(
        ("mu", "tau", "sigma", "k[0]", "k[1]"),
        ("tau", "sigma", "k[0]", "k[1]"),
        truth=truth,
        description="shared d: hierarchical decay, 50 experiments x 15 points, non-centred (kinetics builder)",
        derive=_d_derive,
        reference={
            "model": _d_reference(),
            "args": (),
            "kwargs": {},
            "why": "centred form of the same hierarchy with the closed-form solution exp(-k t) of the ODE",
        },
        nuts=_nuts(num_samples=6000),
    )
    return model, (), {}, info


def problem_bod():
    """The bundled demo: BOD data (Marske 1967), ``L -> Y : k``, L0 inferred, 6 points."""
    from vi_models.kinetics.job import KineticsJob

    model = KineticsJob.demo().model
    info = _info(
        ("k", "L0", "sigma"),
        ("k", "L0", "sigma"),
        truth=None,
        description="BOD demo (real data, 6 points): k, L0, sigma",
        nuts=_nuts(chain_method="sequential", num_samples=6000, target_accept=0.95),
    )
    return model, (), {}, info


# -- synthetic problems with known truth -------------------------------------------------------------


MM_TRUTH = {"Vmax": 1.0, "Km": 3.0, "sigma": 0.2}
MM_TIMES = (1.0, 3.0, 6.0, 10.0, 15.0)
MM_S0 = 5.0


def _mm_curve(times, vmax, km, s0):
    from scipy.integrate import solve_ivp

    sol = solve_ivp(lambda t, s: -vmax * s / (km + s), (0.0, max(times)), [s0], t_eval=times, rtol=1e-10, atol=1e-12)
    return sol.y[0]


def problem_heavy_tail_mm():
    """Michaelis-Menten elimination seen at 5 sparse times, sigma unknown: heavy-tailed Vmax, Km.

    ``S -> P : mm(Vmax, Km)`` from S0 = 5 (known) with ``Normal(0, sigma)`` noise; the data only
    weakly separate Vmax from Km (below Km the decay is first order with rate Vmax/Km), and with 5
    points and unknown sigma the posterior has long tails. Built by ``vi_models.kinetics``.
    """
    from vi_models import kinetics

    t = np.asarray(MM_TIMES)
    rng = np.random.default_rng(101)
    y = _mm_curve(t, MM_TRUTH["Vmax"], MM_TRUTH["Km"], MM_S0) + MM_TRUTH["sigma"] * rng.normal(size=t.size)
    data = kinetics.Dataset.from_arrays(t, {"S": y}, initial={"S": MM_S0}, source="synthetic (calibration set)")
    model = kinetics.model(
        "S -> P : mm(Vmax, Km)",
        data,
        priors={"Vmax": "LogNormal(0, 1)", "Km": "LogNormal(log(2), 1)", "sigma": "HalfNormal(0.5)"},
        initial={"S": MM_S0, "P": 0.0},
    )
    info = _info(
        ("Vmax", "Km", "sigma"),
        ("Vmax", "Km", "sigma"),
        truth=dict(MM_TRUTH),
        description="heavy tails: Michaelis-Menten, 5 sparse points, sigma unknown",
        nuts=_nuts(chain_method="sequential", num_samples=6000, target_accept=0.95),
    )
    return model, (), {}, info


FLIP_TRUTH = {"ka": 1.2, "ke": 0.25, "V": 20.0, "sigma": 0.1}
FLIP_DOSE = 100.0
FLIP_TIMES = (0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0)


def _oral_one_compartment(t, ka, ke, v, dose):
    """``C = D ka / (V (ka - ke)) (exp(-ke t) - exp(-ka t))``, evaluated stably also at ``ka = ke``."""
    import jax.numpy as jnp

    x = (ka - ke) * t
    small = jnp.abs(x) < 1e-8
    x_safe = jnp.where(small, 1.0, x)
    ratio = jnp.where(small, 1.0 - x / 2, -jnp.expm1(-x_safe) / x_safe)  # (1 - exp(-x)) / x
    return dose * ka / v * t * jnp.exp(-ke * t) * ratio


FLIP_PRIORS = {"ka": (math.log(0.5), 1.0), "ke": (math.log(0.5), 1.0), "V": (math.log(9.0), 1.0)}  # LogNormal


def _flip_flop_model(times, dose, folded: bool = False):
    """The flip-flop model; ``folded=True`` gives the folded density for the reference (see below)."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.distributions import constraints

    t = jnp.asarray(times)

    def model(y=None):
        if folded:
            # The folded density g = p + p o swap on {ka > ke}, on log ka, log ke, log V (where the
            # swap has unit Jacobian; the density of log x under LogNormal(m, s) is Normal(m, s)):
            # log ke free, log ka = log ke + delta with delta > 0 (unit Jacobian), log V free.
            le = numpyro.sample("log_ke", dist.ImproperUniform(constraints.real, (), ()))
            delta = numpyro.sample("delta", dist.ImproperUniform(constraints.positive, (), ()))
            lv = numpyro.sample("log_V", dist.ImproperUniform(constraints.real, (), ()))
            la = le + delta
            log_prior = (
                dist.Normal(*FLIP_PRIORS["ka"]).log_prob(la)
                + dist.Normal(*FLIP_PRIORS["ke"]).log_prob(le)
                + dist.Normal(*FLIP_PRIORS["V"]).log_prob(lv)
            )
            numpyro.factor("prior_and_swap", log_prior + jnp.logaddexp(0.0, _flip_log_ratio_arrays(la, le, lv)))
            ka = numpyro.deterministic("ka", jnp.exp(la))
            ke = numpyro.deterministic("ke", jnp.exp(le))
            v = numpyro.deterministic("V", jnp.exp(lv))
        else:
            ka = numpyro.sample("ka", dist.LogNormal(*FLIP_PRIORS["ka"]))
            ke = numpyro.sample("ke", dist.LogNormal(*FLIP_PRIORS["ke"]))
            v = numpyro.sample("V", dist.LogNormal(*FLIP_PRIORS["V"]))
        sigma = numpyro.sample("sigma", dist.HalfNormal(0.3))
        c = _oral_one_compartment(t, ka, ke, v, dose)
        with numpyro.plate("time", len(times)):
            numpyro.sample("obs", dist.LogNormal(jnp.log(c), sigma), obs=y)

    return model


def _flip_log_ratio_arrays(la, le, lv):
    """``log p(swap theta) - log p(theta)`` on the log scale of (ka, ke, V), where the swap has unit Jacobian.

    The likelihood is unchanged by the swap and the priors of log ka and log ke are the same, so only
    the prior of log V differs: ``log V -> log V + log ke - log ka``.
    """
    m, s = FLIP_PRIORS["V"]
    lv2 = lv + le - la
    return -0.5 * ((lv2 - m) / s) ** 2 + 0.5 * ((lv - m) / s) ** 2


def _flip_log_ratio(draws: dict):
    la, le, lv = (np.log(np.asarray(draws[k], dtype=float)) for k in ("ka", "ke", "V"))
    return _flip_log_ratio_arrays(la, le, lv)


def _flip_swap(draws: dict) -> dict:
    """The other mode: ``(ka, ke, V) -> (ke, ka, V ke / ka)`` gives the same curve (an involution)."""
    out = dict(draws)
    ka, ke, v = np.asarray(draws["ka"]), np.asarray(draws["ke"]), np.asarray(draws["V"])
    out["ka"], out["ke"], out["V"] = ke, ka, v * ke / ka
    return out


def problem_flip_flop():
    """One subject, oral dose, one compartment: ka and ke can swap (flip-flop), two modes.

    ``C(t) = D ka / (V (ka - ke)) (exp(-ke t) - exp(-ka t))`` is unchanged by
    ``(ka, ke, V) -> (ke, ka, V ke / ka)``, so the likelihood has two equal modes; the priors of ka
    and ke are the same and that of V is centred between the two volumes, so both modes keep a
    large share of the posterior. Lognormal noise, 7 samples, plain NumPyro, closed form.

    The reference samples the folded density ``g(theta) = p(theta) + p(swap(theta))`` on
    ``ka > ke`` instead (``info["modes"]``), which has one mode; each of its draws stands for the
    pair ``theta`` (weight ``p / (p + p o swap)``) and ``swap(theta)`` (the rest), exact draws of the
    posterior ``p`` with those weights. (NUTS on ``p`` itself keeps most chains in one mode, and
    a chain that crosses diverges: the two modes have different scales.)
    """
    import jax.numpy as jnp

    t = np.asarray(FLIP_TIMES)
    rng = np.random.default_rng(202)
    c = np.asarray(
        _oral_one_compartment(jnp.asarray(t), FLIP_TRUTH["ka"], FLIP_TRUTH["ke"], FLIP_TRUTH["V"], FLIP_DOSE)
    )
    y = jnp.asarray(c * np.exp(FLIP_TRUTH["sigma"] * rng.normal(size=t.size)))
    info = _info(
        ("ka", "ke", "V", "sigma"),
        ("ka", "ke", "V", "sigma"),
        truth=dict(FLIP_TRUTH),
        description="flip-flop: oral one-compartment, one subject, ka and ke swap (two modes)",
        modes={
            "in_first": lambda d: np.asarray(d["ka"]) > np.asarray(d["ke"]),
            "first": "ka > ke",
            "swap": _flip_swap,
            "log_ratio": _flip_log_ratio,
        },
        reference={
            "model": _flip_flop_model(t, FLIP_DOSE, folded=True),
            "args": (y,),
            "kwargs": {},
            "why": "the folded density p(theta) + p(swap theta) on ka > ke (log ka, log ke, log V); each draw "
            "stands for itself and its swap, weighted by their densities (exact for p)",
        },
        nuts=_nuts(target_accept=0.95, init="uniform"),
    )
    return _flip_flop_model(t, FLIP_DOSE), (y,), {}, info


TWO_CPT_TRUTH = {"CL": 5.0, "V1": 10.0, "Q": 8.0, "V2": 30.0, "sigma": 0.1}
TWO_CPT_DOSE = 100.0
TWO_CPT_TIMES = (0.5, 2.0, 6.0, 12.0, 24.0)


def _two_compartment(t, cl, v1, q, v2, dose):
    """IV bolus into the central compartment: ``C = D/V1 (a e^{-alpha t} + b e^{-beta t})``."""
    import jax.numpy as jnp

    k10, k12, k21 = cl / v1, q / v1, q / v2
    s = k10 + k12 + k21
    root = jnp.sqrt((k10 - k21) ** 2 + k12**2 + 2 * k12 * (k10 + k21))  # sqrt(s^2 - 4 k10 k21) > 0
    alpha, beta = (s + root) / 2, 2 * k10 * k21 / (s + root)
    a, b = (alpha - k21) / root, (k21 - beta) / root
    return dose / v1 * (a * jnp.exp(-alpha * t) + b * jnp.exp(-beta * t))


def problem_two_compartment():
    """Two-compartment elimination (IV bolus) seen at 5 sparse times: Q and V2 weakly identified."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    t = np.asarray(TWO_CPT_TIMES)
    tr = TWO_CPT_TRUTH
    rng = np.random.default_rng(303)
    c = np.asarray(_two_compartment(jnp.asarray(t), tr["CL"], tr["V1"], tr["Q"], tr["V2"], TWO_CPT_DOSE))
    y = c * np.exp(tr["sigma"] * rng.normal(size=t.size))
    times = jnp.asarray(t)

    def model(y=None):
        cl = numpyro.sample("CL", dist.LogNormal(math.log(4.0), 0.5))
        v1 = numpyro.sample("V1", dist.LogNormal(math.log(10.0), 0.5))
        q = numpyro.sample("Q", dist.LogNormal(math.log(5.0), 0.7))
        v2 = numpyro.sample("V2", dist.LogNormal(math.log(20.0), 0.7))
        sigma = numpyro.sample("sigma", dist.HalfNormal(0.3))
        mean = _two_compartment(times, cl, v1, q, v2, TWO_CPT_DOSE)
        with numpyro.plate("time", t.size):
            numpyro.sample("obs", dist.LogNormal(jnp.log(mean), sigma), obs=y)

    info = _info(
        ("CL", "V1", "Q", "V2", "sigma"),
        ("CL", "V1", "Q", "V2", "sigma"),
        truth=dict(tr),
        description="two-compartment IV bolus, 5 sparse samples, lognormal noise",
        nuts=_nuts(target_accept=0.95),
    )
    return model, (jnp.asarray(y),), {}, info


SLOW_TRUTH = {"k": 0.002, "A0": 1.0, "sigma": 0.01}


def problem_rate_near_zero():
    """``A -> B`` with k = 0.002 over t in [1, 10]: 2% decay against 1% noise, A0 uncertain.

    The data bound k from above only; below it the lognormal prior takes over, so log k has a
    long left tail.
    """
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    t = np.linspace(1.0, 10.0, 10)
    tr = SLOW_TRUTH
    rng = np.random.default_rng(404)
    y = tr["A0"] * np.exp(-tr["k"] * t) + tr["sigma"] * rng.normal(size=t.size)
    times = jnp.asarray(t)

    def model(y=None):
        k = numpyro.sample("k", dist.LogNormal(math.log(0.05), 1.5))
        a0 = numpyro.sample("A0", dist.LogNormal(0.0, 0.05))
        sigma = numpyro.sample("sigma", dist.HalfNormal(0.05))
        with numpyro.plate("time", t.size):
            numpyro.sample("obs", dist.Normal(a0 * jnp.exp(-k * times), sigma), obs=y)

    info = _info(
        ("k", "A0", "sigma"),
        ("k", "A0", "sigma"),
        truth=dict(tr),
        description="rate near zero: 2% decay over the window, prior-bounded below",
        nuts=_nuts(target_accept=0.95),
    )
    return model, (jnp.asarray(y),), {}, info


FUNNEL_GROUPS = 8
FUNNEL_TIMES = (2.0, 6.0)
FUNNEL_TRUTH = {"mu": math.log(0.2), "tau": 0.15, "sigma": 0.05}


def _funnel_data():
    tr = FUNNEL_TRUTH
    rng = np.random.default_rng(505)
    logk = tr["mu"] + tr["tau"] * rng.normal(size=FUNNEL_GROUPS)
    t = np.asarray(FUNNEL_TIMES)
    y = np.exp(-np.exp(logk)[:, None] * t[None, :]) + tr["sigma"] * rng.normal(size=(FUNNEL_GROUPS, t.size))
    return logk, y


def _funnel_model(centred: bool):
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    times = jnp.asarray(FUNNEL_TIMES)

    def model(y=None):
        mu = numpyro.sample("mu", dist.Normal(math.log(0.2), 1.0))
        tau = numpyro.sample("tau", dist.HalfNormal(0.5))
        with numpyro.plate("group", FUNNEL_GROUPS):
            if centred:
                logk = numpyro.sample("logk", dist.Normal(mu, tau))
            else:
                z = numpyro.sample("z", dist.Normal(0.0, 1.0))
                logk = numpyro.deterministic("logk", mu + tau * z)
        sigma = numpyro.sample("sigma", dist.HalfNormal(0.1))
        mean = jnp.exp(-jnp.exp(logk)[:, None] * times[None, :])
        with numpyro.plate("group", FUNNEL_GROUPS):
            numpyro.sample("obs", dist.Normal(mean, sigma).to_event(1), obs=y)

    return model


def problem_funnel():
    """Hierarchical decay, 8 groups x 2 points, centred ``log k_g ~ Normal(mu, tau)``: a funnel in tau.

    The reference samples the non-centred form of the same model (same posterior).
    """
    import jax.numpy as jnp

    logk, y = _funnel_data()
    truth = dict(FUNNEL_TRUTH, **{"logk[0]": float(logk[0]), "logk[1]": float(logk[1])})
    info = _info(
        ("mu", "tau", "sigma", "logk[0]", "logk[1]"),
        ("tau", "sigma"),
        truth=truth,
        description="funnel: hierarchical decay, 8 groups x 2 points, centred",
        reference={
            "model": _funnel_model(centred=False),
            "args": (jnp.asarray(y),),
            "kwargs": {},
            "why": "non-centred form of the same hierarchy (log k_g = mu + tau z_g)",
        },
        nuts=_nuts(num_samples=6000, target_accept=0.95),
    )
    return _funnel_model(centred=True), (jnp.asarray(y),), {}, info


ARRH_TRUTH = {"lnA": 21.0, "Ea": 60.0, "sigma": 0.02}  # Ea in kJ/mol
ARRH_TEMPS = (300.0, 310.0, 320.0, 330.0)
R_KJ = 8.314462618e-3  # kJ / (mol K)


def problem_correlated_arrhenius():
    """Decay at four temperatures, ``k(T) = exp(lnA - Ea / (R T))`` with no reference temperature.

    Only ``lnA - Ea / (R T_mean)`` and the slope are well determined, so lnA and Ea are correlated
    at about 0.999.
    """
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    temps = np.asarray(ARRH_TEMPS)
    t = np.linspace(0.5, 10.0, 6)
    tr = ARRH_TRUTH
    rng = np.random.default_rng(606)
    k = np.exp(tr["lnA"] - tr["Ea"] / (R_KJ * temps))
    y = np.exp(-k[:, None] * t[None, :]) + tr["sigma"] * rng.normal(size=(temps.size, t.size))
    times, inv_rt = jnp.asarray(t), jnp.asarray(1.0 / (R_KJ * temps))

    def model(y=None):
        ln_a = numpyro.sample("lnA", dist.Normal(20.0, 10.0))
        ea = numpyro.sample("Ea", dist.Normal(60.0, 20.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(0.1))
        kt = jnp.exp(ln_a - ea * inv_rt)
        mean = jnp.exp(-kt[:, None] * times[None, :])
        with numpyro.plate("temperature", temps.size):
            numpyro.sample("obs", dist.Normal(mean, sigma).to_event(1), obs=y)

    info = _info(
        ("lnA", "Ea", "sigma"),
        ("sigma",),
        truth=dict(tr),
        description="strong correlation: Arrhenius without reference temperature (corr ~0.999)",
        nuts=_nuts(),
    )
    return model, (jnp.asarray(y),), {}, info


SCALE_TRUTH = {"k": 0.3, "eps": 1.5, "A0": 2.0, "sigma": 0.02}


def problem_scale_product():
    """``A -> B : k`` seen only as ``Abs = eps * A`` with A0 inferred: only eps * A0 is identified.

    The posterior of (eps, A0) is a ridge along ``log eps + log A0 = const``, bounded by the priors.
    Built by ``vi_models.kinetics`` (an observable and an inferred initial amount).
    """
    from vi_models import kinetics

    tr = SCALE_TRUTH
    t = np.linspace(0.5, 10.0, 8)
    rng = np.random.default_rng(707)
    y = tr["eps"] * tr["A0"] * np.exp(-tr["k"] * t) + tr["sigma"] * rng.normal(size=t.size)
    data = kinetics.Dataset.from_arrays(t, {"Abs": y}, source="synthetic (calibration set)")
    model = kinetics.model(
        "A -> B : k",
        data,
        observables={"Abs": "eps * A"},
        priors={
            "k": "LogNormal(log(0.3), 1)",
            "eps": "LogNormal(0, 1)",
            "A0": "LogNormal(log(1.5), 0.7)",
            "sigma": "HalfNormal(0.1)",
        },
        initial={"A": "infer", "B": 0.0},
    )
    info = _info(
        ("k", "eps", "A0", "sigma"),
        ("k", "eps", "A0", "sigma"),
        truth=dict(tr),
        description="product-identifiable: absorbance eps * A with A0 inferred",
        nuts=_nuts(chain_method="sequential"),
    )
    return model, (), {}, info


POPULATION_SUBJECTS = 8


def problem_population_small():
    """``benchmarks/population.py``'s hierarchical population model at 8 subjects (kinetics builder).

    ``Central -> 0 : ke`` with a per-subject bolus dose, ``C = Central / V`` at four sparse times per
    subject, ``ke`` and ``V`` partially pooled (non-centred), lognormal noise; the truth and the
    synthetic data of ``examples/real_experiments.py`` (data seed 4).
    """
    from vi_models import kinetics

    n = POPULATION_SUBJECTS
    rng = np.random.default_rng(0)
    times = [np.sort(rng.choice(np.arange(1, 25), size=4, replace=False)).astype(float) for _ in range(n)]
    subjects = [f"s{i:02d}" for i in range(n)]
    template = kinetics.Dataset.from_arrays(times, [{"C": np.ones_like(t)} for t in times], experiments=subjects)
    conditions = {"subject": subjects, "dose": rng.choice([50.0, 100.0, 200.0], size=n)}
    options = dict(
        observables={"C": "Central / V"},
        hierarchy={"ke": "subject", "V": "subject"},
        doses=[{"species": "Central", "amount": "dose", "time": 0}],
        priors={"V": "LogNormal(log(10), 0.5)", "ke": "LogNormal(log(0.2), 1)"},
        noise="lognormal",
    )
    truth = {"ke_mu": math.log(0.15), "ke_tau": 0.3, "V_mu": math.log(8.0), "V_tau": 0.2, "sigma": 0.1}
    z = np.random.default_rng(5)
    full_truth = dict(truth, ke_z=z.normal(size=n), V_z=z.normal(size=n))
    mech = "Central -> 0 : ke"
    data = kinetics.model(mech, template, conditions=conditions, **options).synthetic(full_truth, seed=4)
    model = kinetics.model(mech, data, conditions=conditions, **options)
    info = _info(
        ("ke_mu", "ke_tau", "V_mu", "V_tau", "sigma"),
        ("ke_tau", "V_tau", "sigma"),
        truth=truth,
        description="population: 8 subjects x 4 sparse samples, ke and V pooled (non-centred)",
        nuts=_nuts(chain_method="sequential", num_samples=6000, target_accept=0.99),
    )
    return model, (), {}, info


PROBLEMS = {
    "a": problem_a,
    "b": problem_b,
    "c": problem_c,
    "d": problem_d,
    "bod": problem_bod,
    "heavy_tail_mm": problem_heavy_tail_mm,
    "flip_flop": problem_flip_flop,
    "two_compartment": problem_two_compartment,
    "rate_near_zero": problem_rate_near_zero,
    "funnel": problem_funnel,
    "correlated_arrhenius": problem_correlated_arrhenius,
    "scale_product": problem_scale_product,
    "population_small": problem_population_small,
}
"""Every problem of the calibration set, by name."""


def build(name: str):
    """``(model, args, kwargs, info)`` of problem ``name``."""
    if name not in PROBLEMS:
        raise ValueError(f"unknown calibration problem {name!r}; choose from {', '.join(PROBLEMS)}")
    return PROBLEMS[name]()


def split_name(param: str) -> tuple[str, int | None]:
    """``"k[3]" -> ("k", 3)``, ``"sigma" -> ("sigma", None)``."""
    if param.endswith("]") and "[" in param:
        site, index = param[:-1].split("[", 1)
        return site, int(index)
    return param, None


def extract(draws: dict, info: dict) -> dict:
    """The compared quantities of ``info["params"]`` from draws with any leading dimensions.

    Returns
    -------
    dict of str to ndarray
        One array per parameter, with the draws' leading dimensions (a vector site's element is
        taken from its last axis).
    """
    derive = info.get("derive")
    values = derive(draws) if derive is not None else draws
    out = {}
    for param in info["params"]:
        site, index = split_name(param)
        arr = np.asarray(values[site], dtype=float)
        out[param] = arr[..., index] if index is not None else arr
    return out
