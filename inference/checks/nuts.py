r"""``nuts``: a NUTS reference posterior for any NumPyro model, to check a variational fit against.

NUTS (Hoffman & Gelman 2014) draws from the exact posterior :math:`p(z \mid x)`, up to Monte
Carlo error, where a variational fit only finds the closest member of its guide family. It is
slower, so vifit uses it as a reference: run :func:`nuts` once, then
:func:`inference.checks.compare.compare` a fit against it. The sampler is NumPyro's
``MCMC(NUTS(model))``; this module adds argument checks, timings, a frozen result and the ArviZ
hand-off with the same named dimensions as :func:`inference.to_arviz`.

References
----------
Hoffman, M. D. and Gelman, A. (2014). The No-U-Turn sampler: adaptively setting path lengths in
Hamiltonian Monte Carlo. JMLR 15, 1593-1623.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, NamedTuple

import jax
import numpy as np
import numpyro
from numpyro import handlers
from numpyro.infer import MCMC, NUTS, init_to_median

from ..outputs.arviz_export import observed_values, plate_dims, summary_table

__all__ = ["nuts", "NutsResult", "NutsTimings", "CHAIN_METHODS"]

CHAIN_METHODS = ("vectorized", "sequential", "parallel")

# Sampler statistics collected besides the draws and ``diverging`` (ArviZ renames them to
# ``lp``, ``n_steps``/``tree_depth``, ``acceptance_rate`` and ``energy`` in ``sample_stats``).
_EXTRA_FIELDS = ("diverging", "potential_energy", "num_steps", "accept_prob", "energy")


class NutsTimings(NamedTuple):
    """Wall-clock seconds of a :func:`nuts` run.

    Attributes
    ----------
    total_s : float
        The whole :func:`nuts` call: set-up, compiling the sampler, warm-up and sampling.
        NumPyro compiles warm-up and sampling as one program; timing them apart would need a
        second compilation (about 3 s more on reference problem a on 2 CPU cores, a third of
        the run), so only the total is measured.
    """

    total_s: float


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def _default_chain_method(model, args, kwargs) -> str:
    """``"sequential"`` when the model's log density runs a while loop, else ``"vectorized"``."""
    from ..engine.target import _has_while_loop, _log_density_fn, find_layout

    try:
        layout, _ = find_layout(model, tuple(args), dict(kwargs), keep=False)
        value_and_grad, _ = _log_density_fn(model, tuple(args), dict(kwargs), layout)
        return "sequential" if _has_while_loop(value_and_grad, layout.size) else "vectorized"
    except Exception:  # a model the flat layout cannot describe: NumPyro's own error comes later
        return "vectorized"


def _check_chain_method(chain_method: str, num_chains: int) -> str:
    if chain_method not in CHAIN_METHODS:
        raise ValueError(
            f"chain_method must be one of {', '.join(map(repr, CHAIN_METHODS))}, got {chain_method!r}; "
            "use 'vectorized' (all chains in one compiled program, the default) or 'sequential'"
        )
    devices = jax.local_device_count()
    if chain_method == "parallel" and num_chains > devices:
        raise ValueError(
            f"chain_method='parallel' runs one chain per device, and {num_chains} chains were asked for "
            f"on {devices} device(s); use chain_method='vectorized' (or 'sequential'), or give JAX more "
            f"CPU devices with XLA_FLAGS=--xla_force_host_platform_device_count={num_chains} before "
            "importing it"
        )
    return chain_method


@dataclass(frozen=True, eq=False)
class NutsResult:
    """The result of :func:`nuts`. Arrays are NumPy.

    Attributes
    ----------
    model : callable
        The NumPyro model.
    model_args : tuple
    model_kwargs : dict
    samples : dict of str to ndarray
        Draws of every latent sample site, each with shape ``(chains, draws, *site_shape)``,
        constrained (deterministic sites are left out; they are in :meth:`to_arviz`).
    num_divergences : int
        Post-warm-up transitions that diverged, summed over chains. Any divergence means the
        sampler may have missed part of the posterior.
    seed : int
    timings : NutsTimings
    settings : dict
        The settings of the run (plain data): warm-up, samples, chains, target acceptance,
        chain method, initialization.
    mcmc : numpyro.infer.MCMC
        The NumPyro sampler object, for anything not wrapped here.
    """

    model: Any
    model_args: tuple
    model_kwargs: dict
    samples: dict
    num_divergences: int
    seed: int
    timings: NutsTimings
    settings: dict
    mcmc: Any = field(repr=False)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def method(self) -> str:
        """``"nuts"``: the inference method (a vifit fit's result says which guide instead)."""
        return "nuts"

    @property
    def num_chains(self) -> int:
        """Number of chains ``C``."""
        return int(next(iter(self.samples.values())).shape[0])

    @property
    def num_draws(self) -> int:
        """Kept draws per chain ``D``."""
        return int(next(iter(self.samples.values())).shape[1])

    @property
    def latent_sites(self) -> tuple[str, ...]:
        """Names of the model's latent sample sites, in model order."""
        return tuple(self.samples)

    def sample(self, num_samples: int | None = None, *, seed: int | None = None) -> dict:
        """Pooled draws of every latent site, chains one after the other.

        Parameters
        ----------
        num_samples : int, optional
            How many draws ``n`` to return; all ``C * D`` by default. Fewer are picked evenly
            spaced through the pooled draws (thinning), or at random without replacement when a
            ``seed`` is given; both are deterministic.
        seed : int, optional
            Seed of the random pick; without it the pick is evenly spaced.

        Returns
        -------
        dict of str to ndarray
            Each latent site with shape ``(n, *site_shape)``.
        """
        total = self.num_chains * self.num_draws
        pooled = {name: v.reshape((total,) + v.shape[2:]) for name, v in self.samples.items()}
        if num_samples is None:
            return pooled
        n = _check_int("num_samples", num_samples, 1)
        if n > total:
            raise ValueError(
                f"num_samples={n} is more than the {total} draws NUTS made ({self.num_chains} chains x "
                f"{self.num_draws}); ask for at most {total}, or run nuts with more num_samples or num_chains"
            )
        if seed is None:
            index = np.round(np.linspace(0, total - 1, n)).astype(int)
        else:
            index = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
        return {name: v[index] for name, v in pooled.items()}

    def dims(self) -> dict[str, list[str]]:
        """Dimension names of the posterior sites from the model's plates, ``{site: [dim, ...]}``.

        Latent and deterministic sites; axes outside every plate are ``<site>_dim_<i>``, as in
        :func:`inference.to_arviz`.
        """
        if "dims" not in self._cache:
            trace = _shape_trace(self.model, self.samples, self.model_args, self.model_kwargs)
            names = [n for n in self.mcmc.get_samples() if n in trace]
            self._cache["dims"] = plate_dims(trace, names)
        return {k: list(v) for k, v in self._cache["dims"].items()}

    def to_arviz(self, *, log_likelihood: bool = True):
        """Return the draws as an ArviZ :class:`xarray.DataTree`, made by :func:`arviz_base.from_numpyro`.

        Parameters
        ----------
        log_likelihood : bool
            Add the ``log_likelihood`` group (pointwise, for :func:`arviz_stats.loo`). It runs the
            model once per draw, vectorized and compiled; for an ODE model that is one solve
            per draw, a few seconds. Switch it off when only the posterior is needed.

        Returns
        -------
        xarray.DataTree
            Groups:

            ``posterior``
                Every latent and deterministic site, ``(chain, draw, *plate dims)``; dimensions
                are named after the model's plates and labelled from ``model.coords`` when the
                model has that attribute (as :func:`inference.to_arviz` does).
            ``sample_stats``
                ``diverging``, ``lp``, ``n_steps``, ``tree_depth``, ``acceptance_rate``,
                ``energy`` per chain and draw.
            ``observed_data``
                The observed sites (factors left out); NaN where a masked site was not measured.
            ``log_likelihood``
                Pointwise log likelihood of each observed site. Where some points of a site
                are masked, only the measured points are kept, along ``<site>_point``, with
                coordinates ``<site>_point_<dim>`` giving each point's index in
                ``observed_data`` (the layout of ``docs/arviz.md``).

            ``posterior.attrs`` holds ``inference_library = "vifit-nuts"``, the settings,
            ``num_divergences``, ``seed`` and the run time ``total_s``.

        Notes
        -----
        ``arviz_base.from_numpyro`` is called with ``log_likelihood=False``: its own computation
        would treat a ``numpyro.factor`` site (the kinetics model's ``ode_solve_failed``) as
        data and keep masked points as zeros. The group is computed here instead. Each call
        returns a new object.
        """
        key = ("idata", bool(log_likelihood))
        if key not in self._cache:
            self._cache[key] = self._build_idata(bool(log_likelihood))
        return self._cache[key].copy(deep=True)

    def _build_idata(self, with_log_likelihood: bool):
        import arviz_base
        import xarray as xr

        observed, observed_dims = observed_values(self.model, self.model_args, self.model_kwargs)
        dims = self.dims()
        dims.update(observed_dims)
        used = {d for ds in dims.values() for d in ds}
        coords = {k: list(v) for k, v in dict(getattr(self.model, "coords", {}) or {}).items() if k in used}
        tree = arviz_base.from_numpyro(self.mcmc, coords=coords, dims=dims, log_likelihood=False)
        groups = {
            str(g): tree[g].to_dataset() for g in tree.children if g not in ("observed_data", "log_likelihood")
        }
        # Sites named with a leading underscore are the model's bookkeeping (e.g. a kinetics model's
        # ODE solve status), not parameters: kept out as in inference.to_arviz.
        hidden = [name for name in groups["posterior"].data_vars if str(name).startswith("_")]
        groups["posterior"] = groups["posterior"].drop_vars(hidden)
        if observed:
            groups["observed_data"] = arviz_base.dict_to_dataset(
                observed, coords=coords, dims=observed_dims, sample_dims=[], inference_library=numpyro
            )
        if with_log_likelihood and observed:
            groups["log_likelihood"] = self._log_likelihood(observed, observed_dims, coords)
        groups["posterior"].attrs.update(
            {
                "inference_library": "vifit-nuts",
                "num_divergences": int(self.num_divergences),
                "seed": int(self.seed),
                "total_s": float(self.timings.total_s),
                **{k: v for k, v in self.settings.items() if isinstance(v, (int, float, str))},
            }
        )
        order = ["posterior", "sample_stats", "log_likelihood", "observed_data"]
        names = [g for g in order if g in groups] + [g for g in groups if g not in order]
        return xr.DataTree.from_dict({g: groups[g] for g in names})

    def _log_likelihood(self, observed: dict, observed_dims: dict, coords: dict):
        import arviz_base
        import xarray as xr
        from numpyro.infer import log_likelihood as numpyro_log_likelihood

        flat = self.mcmc.get_samples(group_by_chain=False)
        model, args, kwargs = self.model, self.model_args, self.model_kwargs
        values = jax.jit(lambda s: numpyro_log_likelihood(model, s, *args, **kwargs))(flat)
        C, D = self.num_chains, self.num_draws
        full, pointwise, ll_dims = {}, {}, {}
        for name, obs in observed.items():
            ll = np.asarray(values[name])
            ll = ll.reshape((C, D) + ll.shape[1:])
            batch = ll.shape[2:]  # an event dimension (a multivariate site) has one log density
            if obs.shape[: len(batch)] != batch:  # observations broadcast against the batch
                full[name] = ll
                continue
            ll_dims[name] = observed_dims[name][: len(batch)]
            measured = ~np.isnan(obs).reshape(batch + (-1,)).any(-1)
            if measured.all():
                full[name] = ll
            else:
                pointwise[name] = (ll[:, :, measured], np.nonzero(measured))
        ds = arviz_base.dict_to_dataset(
            full,
            coords=coords,
            dims={k: ll_dims[k] for k in full if k in ll_dims},
            sample_dims=["chain", "draw"],
            inference_library=numpyro,
        )
        for name, (ll, index) in pointwise.items():
            point = f"{name}_point"
            extra = {f"{point}_{dim}": (point, idx) for dim, idx in zip(ll_dims[name], index)}
            ds[name] = xr.DataArray(ll, dims=("chain", "draw", point))
            ds = ds.assign_coords(extra)
        return ds

    def summary(self):
        """Posterior table of the latent sites with convergence checks.

        Returns
        -------
        pandas.DataFrame
            :func:`arviz_stats.summary` of the chains, unrounded: ``mean``, ``sd``, ``hdi_3%``,
            ``hdi_97%`` (the 94% HDI), ``ess_bulk``, ``ess_tail``, ``r_hat``, ``mcse_mean`` and
            ``mcse_sd`` per scalar parameter. Trust the chains when every ``r_hat`` is below 1.01, the ESS is in the
            hundreds or more, and :attr:`num_divergences` is 0.
        """
        if "summary" not in self._cache:
            tree = self.to_arviz(log_likelihood=False)
            self._cache["summary"] = summary_table(tree, var_names=list(self.latent_sites), kind="all")
        return self._cache["summary"].copy()


def _strategy_name(strategy) -> str:
    """Name of an initialization strategy; a ``functools.partial`` is named by its function."""
    name = getattr(strategy, "__name__", None) or getattr(getattr(strategy, "func", None), "__name__", None)
    return name or repr(strategy)


def _shape_trace(model, samples: dict, args: tuple, kwargs: dict) -> dict:
    """Abstract trace of ``model`` at the first draw, for :func:`plate_dims`.

    Each sample or deterministic site gets its ``value`` (shape only, nothing is computed), its
    plate frames ``cond_indep_stack`` and an ``fn`` that carries only its ``event_shape``.
    """
    first = {name: v[0, 0] for name, v in samples.items()}
    static: dict = {}

    def run():
        tr = handlers.trace(handlers.substitute(handlers.seed(model, 0), data=first)).get_trace(*args, **kwargs)
        out = {}
        for name, site in tr.items():
            if site["type"] in ("sample", "deterministic"):
                event_shape = tuple(getattr(site.get("fn"), "event_shape", ()))
                static[name] = (site.get("cond_indep_stack", ()), event_shape)
                out[name] = site["value"]
        return out

    shapes = jax.eval_shape(run)
    return {
        name: {
            "value": shapes[name],
            "cond_indep_stack": static[name][0],
            "fn": SimpleNamespace(event_shape=static[name][1]),
        }
        for name in shapes
    }


def _latent_names(model, samples: dict, args: tuple, kwargs: dict) -> list[str]:
    """Latent sample sites of ``model`` among the sampler's output, in model order."""
    first = {name: np.asarray(v)[0, 0] for name, v in samples.items()}
    names: list[str] = []

    def run():
        tr = handlers.trace(handlers.substitute(handlers.seed(model, 0), data=first)).get_trace(*args, **kwargs)
        names.extend(
            n for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"] and n in samples
        )
        return 0

    jax.eval_shape(run)
    return names


def nuts(
    model: Callable[..., Any],
    *args: Any,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    seed: int = 0,
    progress: bool = True,
    target_accept: float = 0.8,
    init_strategy: Callable[..., Any] | None = None,
    chain_method: str | None = None,
    **kwargs: Any,
) -> NutsResult:
    r"""Sample the posterior of ``model`` with NUTS, as a reference for variational fits.

    Each chain adapts its step size (dual averaging towards ``target_accept``) and a diagonal
    mass matrix during ``num_warmup`` iterations, then keeps ``num_samples`` draws from
    :math:`p(z \mid x) \propto p(x, z)`. The draws are exact up to Monte Carlo error: the
    standard error of a posterior mean is :math:`\mathrm{sd} / \sqrt{\mathrm{ESS}}`, with the
    effective sample size ESS from :meth:`NutsResult.summary`.

    Parameters
    ----------
    model : callable
        A NumPyro model.
    *args, **kwargs
        Passed to the model, e.g. ``nuts(model, x, y=y)``. Keyword arguments that are not
        ``nuts``'s own go to the model.
    num_warmup : int
        Warm-up (adaptation) iterations per chain; they are not kept.
    num_samples : int
        Kept draws per chain.
    num_chains : int
        Independent chains; several are needed for ``r_hat``.
    seed : int
        Random seed; the same seed gives the same draws.
    progress : bool
        Show NumPyro's progress bar.
    target_accept : float
        Target mean acceptance probability of the step-size adaptation, in (0, 1). Raise it
        (0.9, 0.95) when there are divergences: smaller steps, slower, more robust.
    init_strategy : callable, optional
        A NumPyro initialization strategy; ``init_to_median`` (median of 15 prior draws) by
        default.
    chain_method : {"vectorized", "sequential", "parallel"}, optional
        How chains run. ``"vectorized"`` runs them as one compiled program (the right choice on
        one CPU or GPU), ``"sequential"`` one after the other, ``"parallel"`` one per device
        (needs ``num_chains`` devices). Default: ``"vectorized"``, or ``"sequential"`` when the
        model's log density runs a while loop (an adaptive ODE solve with diffrax), which runs
        as slowly as its slowest chain when vectorized (found from the traced density, nothing
        computed).

    Returns
    -------
    NutsResult
        ``samples`` has each latent site with shape ``(num_chains, num_samples, *site_shape)``.

    Examples
    --------
    >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> from inference.checks.nuts import nuts
    >>> def model(y):
    ...     mu = numpyro.sample("mu", dist.Normal(0, 10))
    ...     with numpyro.plate("data", y.shape[0]):
    ...         numpyro.sample("y", dist.Normal(mu, 1), obs=y)
    >>> ref = nuts(model, jnp.array([1.0, 2.0, 3.0]), num_chains=2, progress=False)
    >>> ref.samples["mu"].shape
    (2, 1000)
    """
    t_start = time.perf_counter()
    if not callable(model):
        raise ValueError(f"model must be a NumPyro model (a callable), got {type(model).__name__}")
    num_warmup = _check_int("num_warmup", num_warmup, 0)
    num_samples = _check_int("num_samples", num_samples, 1)
    num_chains = _check_int("num_chains", num_chains, 1)
    seed = _check_int("seed", seed, 0)
    is_number = isinstance(target_accept, (int, float, np.floating)) and not isinstance(target_accept, bool)
    if not (is_number and 0 < target_accept < 1 and math.isfinite(target_accept)):
        raise ValueError(
            f"target_accept must be a probability strictly between 0 and 1 (e.g. 0.8), got {target_accept!r}"
        )
    if init_strategy is not None and not callable(init_strategy):
        raise ValueError(
            f"init_strategy must be a NumPyro initialization strategy such as init_to_median or "
            f"init_to_value(values=...), got {init_strategy!r}"
        )
    if chain_method is None:
        chain_method = _default_chain_method(model, args, kwargs)
    chain_method = _check_chain_method(chain_method, num_chains)

    strategy = init_strategy if init_strategy is not None else init_to_median
    kernel = NUTS(model, target_accept_prob=float(target_accept), init_strategy=strategy)
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method=chain_method,
        progress_bar=bool(progress),
    )
    mcmc.run(jax.random.PRNGKey(seed), *args, extra_fields=_EXTRA_FIELDS, **kwargs)
    draws = jax.device_get(mcmc.get_samples(group_by_chain=True))

    latent = _latent_names(model, draws, args, kwargs)
    samples = {name: np.asarray(draws[name]) for name in latent}
    diverging = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["diverging"])
    settings = {
        "num_warmup": num_warmup,
        "num_samples": num_samples,
        "num_chains": num_chains,
        "target_accept": float(target_accept),
        "chain_method": chain_method,
        "init_strategy": _strategy_name(strategy),
    }
    return NutsResult(
        model=model,
        model_args=tuple(args),
        model_kwargs=dict(kwargs),
        samples=samples,
        num_divergences=int(diverging.sum()),
        seed=seed,
        timings=NutsTimings(total_s=time.perf_counter() - t_start),
        settings=settings,
        mcmc=mcmc,
    )
