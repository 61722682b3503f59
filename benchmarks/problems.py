"""The reference problems a, b, c and d as NumPyro models, shared by the benchmarks and the tests.

Import it by path (``benchmarks/`` is not a package)::

    import importlib.util
    spec = importlib.util.spec_from_file_location("problems", "benchmarks/problems.py")
    problems = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(problems)

Two versions of every problem, with the same priors (``data/problems.json``) and the same
likelihood (i.i.d. ``Normal(0, sigma)`` noise on the observed species, known initial conditions):

:func:`vifit_model`
    What a user of vifit writes. Problems a, b and c are built by ``vi_models.kinetics.model``
    exactly as ``benchmarks/run.py`` and ``tests/conftest.py`` build them. Problem d (50
    experiments, ``log k_e = mu + tau z_e``, non-centred) is a hand-written NumPyro model that
    solves every experiment with vifit's solver (``vi_models.kinetics.make_solver``), vmapped
    over experiments.
:func:`plain_numpyro_model`
    What a user writes with plain NumPyro and diffrax, without vifit: ``diffrax.diffeqsolve``
    with ``Tsit5``, ``PIDController(rtol=1e-6, atol=1e-8)``, ``SaveAt(ts=...)`` and the default
    adjoint, inside a NumPyro model (problem d vmapped over experiments). A solve that fails
    (``max_steps`` reached) makes the draw impossible (``throw=False`` and a ``-inf`` factor), as
    in vifit's models; with diffrax's default ``throw=True`` NUTS aborts at its first wild draw.

Nothing here imports vifit at module level, so a plain NumPyro benchmark run that imports this
module does not load vifit. The caller enables float64 (``jax_enable_x64``) before building a
model; vifit does it on import.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"

PROBLEM_IDS = ("a", "b", "c", "d")

# What the problems are beyond problems.json: data file, mechanism, known initial conditions
# (the same table as benchmarks/run.py and tests/conftest.py).
SPECS = {
    "a": {"file": "a_decay.csv", "mechanism": "A -> B : k", "initial": {"A": 1.0, "B": 0.0}},
    "b": {"file": "b_reversible.csv", "mechanism": "A <=> B : kf, kb", "initial": {"A": 1.0, "B": 0.0}},
    "c": {"file": "c_mm.csv", "mechanism": "S -> P : mm(Vmax, Km)", "initial": {"S": 10.0, "P": 0.0}},
    "d": {"file": "d_hier.csv", "mechanism": "A -> B : k", "initial": {"A": 1.0, "B": 0.0}},
}

_RATE_CONSTANTS = {"a": ("k",), "b": ("kf", "kb"), "c": ("Vmax", "Km"), "d": ("mu", "tau", "k")}

RTOL, ATOL = 1e-6, 1e-8
"""Tolerances of the plain diffrax solves (``PIDController``)."""


def _check(pid: str) -> str:
    if pid not in PROBLEM_IDS:
        raise ValueError(f"unknown problem {pid!r}; choose from {', '.join(PROBLEM_IDS)}")
    return pid


@lru_cache(maxsize=1)
def _problems_json() -> str:
    return (DATA / "problems.json").read_text()


def load_problems() -> dict:
    """Return ``data/problems.json``: truth, set-up, priors and parameters of every problem.

    Returns
    -------
    dict
        A fresh copy (the caller may change it).
    """
    return json.loads(_problems_json())


def prior_text(spec) -> str:
    """Format a prior of ``problems.json`` as vifit prior text at full precision.

    Parameters
    ----------
    spec : sequence
        ``[family, *args]``, e.g. ``["LogNormal", -0.6931471805599453, 1.0]``.

    Returns
    -------
    str
        E.g. ``"LogNormal(-0.6931471805599453, 1.0)"``.
    """
    family, *args = spec
    return f"{family}({', '.join(repr(float(a)) for a in args)})"


def prior_distribution(spec):
    """Return the NumPyro distribution of a prior of ``problems.json``.

    Parameters
    ----------
    spec : sequence
        ``[family, *args]`` with family ``Normal``, ``LogNormal`` or ``HalfNormal``.

    Returns
    -------
    numpyro.distributions.Distribution
    """
    import numpyro.distributions as dist

    family, *args = spec
    families = {"Normal": dist.Normal, "LogNormal": dist.LogNormal, "HalfNormal": dist.HalfNormal}
    if family not in families:
        raise ValueError(f"prior family {family!r} is not used by the reference problems")
    return families[family](*(float(a) for a in args))


def rate_constants(pid: str) -> tuple[str, ...]:
    """Names of the sites that are rate constants of problem ``pid``.

    Parameters
    ----------
    pid : {"a", "b", "c", "d"}

    Returns
    -------
    tuple of str
        a: ``k``; b: ``kf, kb``; c: ``Vmax, Km``; d: ``mu, tau, k``, where ``k`` is the
        deterministic site of the 50 per-experiment rates ``k_e = exp(mu + tau z_e)``.
    """
    return _RATE_CONSTANTS[_check(pid)]


def load_data(pid: str) -> dict:
    """Return the measurements of problem ``pid`` as arrays.

    Parameters
    ----------
    pid : {"a", "b", "c", "d"}

    Returns
    -------
    dict
        ``times`` (T,) and ``values`` (T, n_observed) with ``species`` (the observed columns)
        for a, b and c; for d, ``times`` (T,) (the same grid in every experiment) and
        ``values`` (E, T) of species A.
    """
    path = DATA / SPECS[_check(pid)]["file"]
    table = np.genfromtxt(path, delimiter=",", names=True)
    names = table.dtype.names
    if pid != "d":
        species = tuple(n for n in names if n != "t")
        values = np.stack([np.asarray(table[s], dtype=float) for s in species], axis=-1)
        return {"times": np.asarray(table["t"], dtype=float), "values": values, "species": species}
    exp_ids = np.asarray(table["exp"], dtype=int)
    experiments = np.unique(exp_ids)
    times = np.stack([np.asarray(table["t"][exp_ids == e], dtype=float) for e in experiments])
    values = np.stack([np.asarray(table["A"][exp_ids == e], dtype=float) for e in experiments])
    if not np.allclose(times, times[0]):
        raise ValueError(f"{path.name}: the experiments do not share one time grid")
    return {"times": times[0], "values": values, "species": ("A",)}


def true_values(pid: str) -> dict:
    """Return the true values of the latent sites of problem ``pid`` (``problems.json``).

    Parameters
    ----------
    pid : {"a", "b", "c", "d"}

    Returns
    -------
    dict of str to float or ndarray
        For d: ``mu``, ``tau``, ``sigma`` and ``z = (log k_e - mu) / tau`` from the true
        per-experiment rates ``truth_d_k_i``.
    """
    info = load_problems()
    truth = {name: float(v) for name, v in info["truth"][_check(pid)].items()}
    if pid == "d":
        k = np.asarray(info["truth_d_k_i"], dtype=float)
        truth["z"] = (np.log(k) - truth["mu"]) / truth["tau"]
    return truth


def with_derived(pid: str, draws: dict) -> dict:
    """Add the deterministic rate constants to draws that lack them.

    Guide draws hold the latent sites only; for problem d this adds ``k = exp(mu + tau z)``
    (shape ``(..., 50)``) from ``mu``, ``tau`` and ``z``.

    Parameters
    ----------
    pid : {"a", "b", "c", "d"}
    draws : dict of str to array
        Latent draws, leading dimensions alike.

    Returns
    -------
    dict
        A new dict with the same draws (as NumPy arrays), plus ``k`` for d.
    """
    out = {name: np.asarray(v) for name, v in draws.items()}
    if _check(pid) == "d" and "k" not in out:
        mu = np.asarray(out["mu"], dtype=float)[..., None]
        tau = np.asarray(out["tau"], dtype=float)[..., None]
        out["k"] = np.exp(mu + tau * np.asarray(out["z"], dtype=float))
    return out


# -- vifit ------------------------------------------------------------------------------------------


def vifit_model(pid: str):
    """Build the model of problem ``pid`` as a vifit user writes it.

    Parameters
    ----------
    pid : {"a", "b", "c", "d"}

    Returns
    -------
    callable
        For a, b and c the ``vi_models.kinetics.KineticsModel`` of
        ``kinetics.model(mechanism, csv, priors=..., initial=...)`` (noise ``"normal"``); for d a
        NumPyro model function (no arguments) with sites ``mu``, ``tau``, ``z`` (plate
        ``experiment``), deterministic ``k``, ``sigma`` and ``obs``.
    """
    from vi_models import kinetics

    info = load_problems()
    spec = SPECS[_check(pid)]
    if pid != "d":
        priors = {name: prior_text(info["priors"][name]) for name in info["params"][pid]}
        return kinetics.model(spec["mechanism"], str(DATA / spec["file"]), priors=priors, initial=spec["initial"])
    return _vifit_hierarchical(info)


def _hierarchical_priors(info: dict) -> dict:
    return {name: prior_distribution(info["priors"][name]) for name in ("mu", "tau", "z", "sigma")}


def _vifit_hierarchical(info: dict):
    import jax
    import jax.numpy as jnp
    import numpyro

    from vi_models.kinetics import Mechanism, make_solver

    data = load_data("d")
    times = jnp.asarray(data["times"])
    values = jnp.asarray(data["values"])
    n_exp = values.shape[0]
    priors = _hierarchical_priors(info)
    y0 = jnp.array([float(info["setup"]["d"]["A0"]), 0.0])
    solve_one = make_solver(Mechanism.parse(SPECS["d"]["mechanism"]))  # (y0, times, k) -> (ys, failed)

    def model():
        mu = numpyro.sample("mu", priors["mu"])
        tau = numpyro.sample("tau", priors["tau"])
        with numpyro.plate("experiment", n_exp):
            z = numpyro.sample("z", priors["z"])
        k = numpyro.deterministic("k", jnp.exp(mu + tau * z))
        ys, failed = jax.vmap(solve_one, in_axes=(None, None, 0))(y0, times, k[:, None])
        # A failed solve is an impossible draw, as in vifit's kinetics models.
        numpyro.factor("ode_solve_failed", jnp.where(jnp.any(failed), -jnp.inf, 0.0))
        sigma = numpyro.sample("sigma", priors["sigma"])
        with numpyro.plate("experiment", n_exp):
            numpyro.sample("obs", numpyro.distributions.Normal(ys[..., 0], sigma).to_event(1), obs=values)

    return model


# -- plain NumPyro + diffrax ------------------------------------------------------------------------


def _rhs(pid: str):
    import jax.numpy as jnp

    if pid in ("a", "d"):
        return lambda t, y, k: -k * y
    if pid == "b":

        def reversible(t, y, args):
            kf, kb = args
            flux = kf * y[0] - kb * y[1]
            return jnp.stack([-flux, flux])

        return reversible

    def michaelis_menten(t, y, args):
        vmax, km = args
        return -vmax * y / (km + y)

    return michaelis_menten


def _diffrax_solve(rhs, y0, times, args):
    """Solve from ``t0 = 0``; return ``(ys, failed)`` with zeros where the solve failed.

    ``throw=False`` and a failed solve as an impossible draw is what a plain user must add for
    NUTS and SVI to run at all: with diffrax's default ``throw=True`` the first draw whose solve
    reaches ``max_steps`` (a wild step of NUTS warm-up, say) aborts the whole run.
    """
    import diffrax
    import jax.numpy as jnp

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(rhs),
        diffrax.Tsit5(),
        t0=0.0,
        t1=times[-1],
        dt0=None,
        y0=y0,
        args=args,
        saveat=diffrax.SaveAt(ts=times),
        stepsize_controller=diffrax.PIDController(rtol=RTOL, atol=ATOL),
        throw=False,
    )
    failed = (sol.result != diffrax.RESULTS.successful) | ~jnp.all(jnp.isfinite(sol.ys))
    return jnp.where(failed, 0.0, sol.ys), failed


def plain_numpyro_model(pid: str):
    """Build the model of problem ``pid`` as a user writes it with plain NumPyro and diffrax.

    Parameters
    ----------
    pid : {"a", "b", "c", "d"}

    Returns
    -------
    callable
        A NumPyro model function (no arguments) with the priors of ``problems.json``, the ODE
        solved by ``diffrax.diffeqsolve`` (``Tsit5``, ``PIDController(rtol=1e-6, atol=1e-8)``,
        ``SaveAt(ts=times)``, default adjoint, ``throw=False`` with a failed solve as an
        impossible draw) and ``Normal(y, sigma)`` measurements. Site names are those of
        :func:`vifit_model`.
    """
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    info = load_problems()
    data = load_data(_check(pid))
    times = jnp.asarray(data["times"])
    values = jnp.asarray(data["values"])
    setup = info["setup"][pid]
    rhs = _rhs(pid)

    if pid == "d":
        priors = _hierarchical_priors(info)
        n_exp = values.shape[0]
        y0 = jnp.array([float(setup["A0"])])

        def hierarchical():
            mu = numpyro.sample("mu", priors["mu"])
            tau = numpyro.sample("tau", priors["tau"])
            with numpyro.plate("experiment", n_exp):
                z = numpyro.sample("z", priors["z"])
            k = numpyro.deterministic("k", jnp.exp(mu + tau * z))
            ys, failed = jax.vmap(lambda k_e: _diffrax_solve(rhs, y0, times, k_e))(k)  # (E, T, 1)
            numpyro.factor("ode_solve_failed", jnp.where(jnp.any(failed), -jnp.inf, 0.0))
            sigma = numpyro.sample("sigma", priors["sigma"])
            with numpyro.plate("experiment", n_exp):
                numpyro.sample("obs", dist.Normal(ys[..., 0], sigma).to_event(1), obs=values)

        return hierarchical

    names = rate_constants(pid)
    priors = {name: prior_distribution(info["priors"][name]) for name in (*names, "sigma")}
    if pid == "b":
        y0 = jnp.array([float(setup["A0"]), float(setup["B0"])])
        observed = values  # (T, 2): A and B
    else:
        y0 = jnp.array([float(setup["A0" if pid == "a" else "S0"])])
        observed = values[:, 0]  # (T,)

    def ode_model():
        k = [numpyro.sample(name, priors[name]) for name in names]
        args = k[0] if pid == "a" else tuple(k)
        ys, failed = _diffrax_solve(rhs, y0, times, args)
        numpyro.factor("ode_solve_failed", jnp.where(failed, -jnp.inf, 0.0))
        mu = ys if pid == "b" else ys[:, 0]
        sigma = numpyro.sample("sigma", priors["sigma"])
        numpyro.sample("obs", dist.Normal(mu, sigma).to_event(mu.ndim), obs=observed)

    return ode_model


def log_density(model, values: dict) -> float:
    """Log joint density of ``model`` (conditioned on its data) at latent ``values``.

    Parameters
    ----------
    model : callable
        A NumPyro model taking no arguments.
    values : dict
        Constrained values of every latent sample site.

    Returns
    -------
    float
    """
    from numpyro.infer.util import log_density as numpyro_log_density

    lp, _ = numpyro_log_density(model, (), {}, values)
    return float(lp)
