r"""How noisy is the ELBO gradient? Pathwise against score-function estimators, measured.

Variational inference follows a Monte Carlo estimate of the gradient of an expectation
:math:`\nabla_\phi \mathbb E_{q_\phi(z)}[f(z)]`. Three unbiased estimators, each averaged over
draws :math:`z_s \sim q_\phi`:

*pathwise* (reparameterization; Kingma & Welling 2014, Rezende, Mohamed & Wierstra 2014)
    Write the draw as a differentiable map of parameter-free noise, :math:`z = g_\phi(\epsilon)`,
    :math:`\epsilon \sim p(\epsilon)`; then the gradient of the expectation is the expectation of
    a gradient,

    .. math::

        \nabla_\phi \mathbb E_{q_\phi}[f(z)] = \mathbb E_{p(\epsilon)}
        [\nabla_\phi f(g_\phi(\epsilon))]
        = \mathbb E_{p(\epsilon)}[f'(z)\, \nabla_\phi g_\phi(\epsilon)].

    For the ELBO, :math:`f_\phi(z) = \log p(x, z) - \log q_\phi(z)` and the estimator is the
    gradient of :math:`\log p(x, g_\phi(\epsilon)) - \log q_\phi(g_\phi(\epsilon))`.

*score function* (REINFORCE, likelihood ratio; Williams 1992, Ranganath, Gerrish & Blei 2014)
    From :math:`\nabla_\phi q_\phi = q_\phi \nabla_\phi \log q_\phi`,

    .. math::

        \nabla_\phi \mathbb E_{q_\phi}[f(z)] = \mathbb E_{q_\phi}[f(z)\,
        \nabla_\phi \log q_\phi(z)],

    which needs only :math:`\log q_\phi` and values of :math:`f`, not its derivative: it works
    for discrete and other non-reparameterizable distributions. For the ELBO the extra term
    :math:`\mathbb E_q[\nabla_\phi f_\phi(z)] = -\mathbb E_q[\nabla_\phi \log q_\phi(z)] = 0`
    drops out, so :math:`f` is held fixed (``stop_gradient``) at the drawn :math:`z`.

*score function with a baseline* (a control variate)
    Because :math:`\mathbb E_q[\nabla_\phi \log q_\phi] = 0`, any :math:`b` independent of
    :math:`z_s` can be subtracted: :math:`(f(z_s) - b_s) \nabla_\phi \log q_\phi(z_s)`. Here
    :math:`b_s = \frac{1}{n-1}\sum_{t \ne s} f(z_t)`, the leave-one-out mean of the batch, which
    keeps the estimator unbiased (Mnih & Gregor 2014; Kool, van Hoof & Welling 2019).

The score-function estimator multiplies the whole value of :math:`f` (which for the ELBO is a
sum over every data point, of order hundreds) by a zero-mean score, and ignores the shape of
:math:`f`; the pathwise estimator uses the derivative of :math:`f` and is exact when :math:`f`
is linear. Its variance is typically orders of magnitude lower (Mohamed, Rosca, Figurnov & Mnih
2020). For the same standard error the number of draws needed scales with the variance, so
``score_var / pathwise_var`` is also the factor of draws the score-function estimator needs.

:func:`estimator_samples` gives per-draw samples of all three for any expectation;
:func:`gradient_variance` measures them for the ELBO of a NumPyro model and guide (or a
:class:`inference.FitResult`) and returns a :class:`GradientReport`.

References
----------
Williams, R. J. (1992). Simple statistical gradient-following algorithms for connectionist
reinforcement learning. Machine Learning 8, 229-256.

Kingma, D. P. and Welling, M. (2014). Auto-encoding variational Bayes. ICLR.

Rezende, D. J., Mohamed, S. and Wierstra, D. (2014). Stochastic backpropagation and approximate
inference in deep generative models. ICML.

Ranganath, R., Gerrish, S. and Blei, D. M. (2014). Black box variational inference. AISTATS.

Mnih, A. and Gregor, K. (2014). Neural variational inference and learning in belief networks.
ICML.

Kool, W., van Hoof, H. and Welling, M. (2019). Buy 4 REINFORCE samples, get a baseline for free!
ICLR workshop DeepRLStructPred.

Mohamed, S., Rosca, M., Figurnov, M. and Mnih, A. (2020). Monte Carlo gradient estimation in
machine learning. JMLR 21(132), 1-62.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.infer import Trace_ELBO, TraceGraph_ELBO
from numpyro.infer.util import log_density

from ..engine.result import FitResult

__all__ = [
    "ESTIMATORS",
    "EstimatorSamples",
    "GuideSite",
    "GradientReport",
    "estimator_samples",
    "gradient_variance",
]

#: The three estimators, in the order of the report's columns.
ESTIMATORS = ("pathwise", "score", "baseline")

PATHWISE = "pathwise"
SCORE_FUNCTION = "score function"


class EstimatorSamples(NamedTuple):
    r"""Per-draw gradient samples of the three estimators.

    Every field but ``values`` is a pytree shaped like the parameters, each leaf with a leading
    axis of length ``n`` (one gradient sample per draw).

    Attributes
    ----------
    pathwise : pytree
        :math:`\nabla_\phi f(g_\phi(\epsilon_s))`.
    score : pytree
        :math:`f(z_s)\, \nabla_\phi \log q_\phi(z_s)`.
    baseline : pytree
        :math:`(f(z_s) - b_s)\, \nabla_\phi \log q_\phi(z_s)` with the leave-one-out mean
        :math:`b_s`.
    values : array, shape (n,)
        :math:`f(z_s)`.
    """

    pathwise: Any
    score: Any
    baseline: Any
    values: jax.Array


class GuideSite(NamedTuple):
    """A sample site of a guide and the gradient estimator its distribution allows.

    Attributes
    ----------
    name : str
        Site name.
    distribution : str
        Class name of the site's distribution (wrappers such as ``Independent`` unwrapped).
    has_rsample : bool
        NumPyro's ``has_rsample``: the distribution has a reparameterized sampler.
    estimator : str
        ``"pathwise"`` where ``has_rsample``, else ``"score function"``: the estimator an
        unbiased ELBO gradient must use at the site. NumPyro's ``Trace_ELBO`` differentiates
        through every draw and adds no score-function term, so its gradient is biased at a
        ``"score function"`` site; ``TraceGraph_ELBO`` adds the term.
    """

    name: str
    distribution: str
    has_rsample: bool
    estimator: str


def _check_num_samples(num_samples: Any) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 2:
        raise ValueError(
            f"num_samples must be an integer of at least 2 (a variance needs two draws), got {num_samples!r}; "
            "use a few hundred or more for stable variance estimates"
        )
    return int(num_samples)


def _times_per_draw(values: jax.Array, tree: Any) -> Any:
    """Multiply each leaf (leading axis n) by ``values`` (shape (n,)) draw by draw."""
    return jax.tree.map(lambda leaf: leaf * values.reshape(values.shape + (1,) * (leaf.ndim - 1)), tree)


def _leave_one_out_mean(values: jax.Array) -> jax.Array:
    n = values.shape[0]
    return (jnp.sum(values) - values) / (n - 1)


def _combine(values, pathwise, score_fn):
    """Form the three estimators from per-draw values of f, pathwise gradients and scores."""
    values = jax.lax.stop_gradient(values)
    score = _times_per_draw(values, score_fn)
    baseline = _times_per_draw(values - _leave_one_out_mean(values), score_fn)
    return EstimatorSamples(pathwise, score, baseline, values)


@partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _expectation_samples(f, sample, log_prob, num_samples, params, rng_key):
    keys = jax.random.split(rng_key, num_samples)

    def one(key):
        value, pathwise = jax.value_and_grad(lambda p: f(sample(p, key)))(params)
        z = jax.lax.stop_gradient(sample(params, key))
        return value, pathwise, jax.grad(log_prob)(params, z)

    values, pathwise, score_fn = jax.vmap(one)(keys)
    return _combine(values, pathwise, score_fn)


def estimator_samples(
    f: Callable[[Any], jax.Array],
    sample: Callable[[Any, jax.Array], Any],
    log_prob: Callable[[Any, Any], jax.Array],
    params: Any,
    rng_key: jax.Array,
    num_samples: int,
) -> EstimatorSamples:
    r"""Per-draw samples of three estimators of :math:`\nabla_\phi \mathbb E_{q_\phi}[f(z)]`.

    For :math:`s = 1..n` with independent keys, :math:`z_s = g_\phi(\epsilon_s)` =
    ``sample(params, key_s)``:

    .. math::

        \text{pathwise}_s &= \nabla_\phi f(g_\phi(\epsilon_s)), \\
        \text{score}_s &= f(z_s)\, \nabla_\phi \log q_\phi(z_s), \\
        \text{baseline}_s &= \Big(f(z_s) - \tfrac{1}{n-1}\textstyle\sum_{t \ne s} f(z_t)\Big)
        \nabla_\phi \log q_\phi(z_s).

    All three have mean :math:`\nabla_\phi \mathbb E_{q_\phi}[f]`; their means and variances
    over the draws estimate the gradient and the per-draw variance of each estimator. The same
    draws :math:`z_s` serve all three. Vectorized with :func:`jax.vmap` and compiled with
    :func:`jax.jit` (``f``, ``sample`` and ``log_prob`` are static: a new function object
    compiles anew).

    Parameters
    ----------
    f : callable
        ``f(z) -> scalar``; must not depend on ``params`` (for the ELBO, whose integrand does,
        use :func:`gradient_variance`).
    sample : callable
        ``sample(params, key) -> z``, a reparameterized draw :math:`g_\phi(\epsilon)`,
        differentiable in ``params`` (e.g. ``dist.Normal(p["mu"], p["sigma"]).sample(key)``).
    log_prob : callable
        ``log_prob(params, z) -> scalar``, :math:`\log q_\phi(z)`.
    params : pytree
        :math:`\phi`.
    rng_key : jax.Array
        A PRNG key.
    num_samples : int
        Number of draws :math:`n` (at least 2).

    Returns
    -------
    EstimatorSamples
        Gradient leaves of shape ``(n,) + leaf.shape``; ``values`` of shape ``(n,)``.

    Examples
    --------
    >>> import numpyro.distributions as dist
    >>> s = estimator_samples(
    ...     lambda z: 3.0 * z,
    ...     lambda p, key: dist.Normal(p["mu"], p["sigma"]).sample(key),
    ...     lambda p, z: dist.Normal(p["mu"], p["sigma"]).log_prob(z),
    ...     {"mu": 1.0, "sigma": 1.0}, jax.random.PRNGKey(0), 1000)
    >>> float(s.pathwise["mu"].var())  # the pathwise gradient of a linear f is exact
    0.0
    """
    num_samples = _check_num_samples(num_samples)
    return _expectation_samples(f, sample, log_prob, num_samples, params, rng_key)


# -- NumPyro models and guides -------------------------------------------------------------------
def _base_distribution(fn):
    while hasattr(fn, "base_dist") and type(fn).__name__ in (
        "Independent",
        "ExpandedDistribution",
        "MaskedDistribution",
    ):
        fn = fn.base_dist
    return fn


def _is_delta(fn) -> bool:
    return type(_base_distribution(fn)).__name__ == "Delta"


def _guide_sites(guide_trace) -> tuple[GuideSite, ...]:
    sites = []
    for name, site in guide_trace.items():
        if site["type"] != "sample" or site.get("is_observed", False):
            continue
        rsample = bool(site["fn"].has_rsample)
        sites.append(
            GuideSite(
                name=name,
                distribution=type(_base_distribution(site["fn"])).__name__,
                has_rsample=rsample,
                estimator=PATHWISE if rsample else SCORE_FUNCTION,
            )
        )
    return tuple(sites)


def _free_entries(value: np.ndarray, constraint) -> np.ndarray:
    """Flat indices of the free entries of a parameter (the lower triangle of a Cholesky factor)."""
    idx = np.arange(value.size)
    if value.ndim >= 2 and isinstance(constraint, (constraints._LowerCholesky, constraints._CorrCholesky)):
        rows, cols = np.unravel_index(idx, value.shape)[-2:]
        return idx[rows >= cols]
    return idx


def _labels(name: str, shape: tuple, flat_idx: np.ndarray) -> list[str]:
    if not shape:
        return [name]
    return [f"{name}[{','.join(map(str, np.unravel_index(j, shape)))}]" for j in flat_idx]


def _resolve(model, guide, params, args, kwargs):
    """(model, guide, params, args, kwargs), taken from a FitResult when one is passed."""
    if isinstance(model, FitResult):
        result = model
        if guide is not None or params is not None or args or kwargs:
            raise ValueError(
                "gradient_variance got a FitResult and also a guide, params or model arguments; "
                "pass either gradient_variance(result, num_samples=...) or "
                "gradient_variance(model, guide, params, *args, **kwargs)"
            )
        if getattr(result, "posterior", None) is not None:
            guide, params = result.posterior.numpyro_guide(result.best_restart)
            return result.model, guide, params, tuple(result.model_args), dict(result.model_kwargs)
        return result.model, result.guide, dict(result.params), tuple(result.model_args), dict(result.model_kwargs)
    if guide is None or params is None:
        raise ValueError(
            "gradient_variance needs a guide and its params: gradient_variance(model, guide, params, *args), "
            "or a FitResult as the only positional argument"
        )
    if not isinstance(params, dict):
        raise ValueError(
            f"params must be a dict of the guide's parameter values by name (such as svi.get_params(state) or "
            f"FitResult.params), got {type(params).__name__}"
        )
    return model, guide, dict(params), tuple(args), dict(kwargs)


def _model_param_names(model, args, kwargs, key) -> set:
    tr = handlers.trace(handlers.seed(model, key)).get_trace(*args, **kwargs)
    return {name for name, site in tr.items() if site["type"] == "param"}


def _guide_param_sites(guide, params: dict, args, kwargs, key) -> dict:
    """``{name: (shape, constraint)}`` of the guide's parameters, traced with ``params`` substituted.

    The guide's own initial values are never used: an autoguide set up inside a transformation
    (as ``inference.fit`` does) holds initial values that may not leave it.
    """
    found = {}

    def substitute_fn(msg):
        if msg["type"] != "param":
            return None
        init = msg["args"][0] if msg["args"] else None
        shape = None if init is None or callable(init) else tuple(jnp.shape(init))
        found[msg["name"]] = (shape, msg["kwargs"].get("constraint"))
        if msg["name"] in params:
            return params[msg["name"]]
        if shape is None:
            return None
        constraint = msg["kwargs"].get("constraint") or constraints.real
        return constraint.feasible_like(jnp.zeros(shape))  # a stand-in; the missing name is reported

    try:
        handlers.trace(handlers.seed(handlers.substitute(guide, substitute_fn=substitute_fn), key)).get_trace(
            *args, **kwargs
        )
    except Exception as error:
        missing = [name for name in found if name not in params]
        if missing:
            raise ValueError(
                f"params lacks the guide parameter(s) {', '.join(map(repr, missing))}; pass every parameter of "
                "the guide, e.g. FitResult.params or svi.get_params(state)"
            ) from error
        raise
    return found


def _check_params(guide_params: dict, model_params: set, params: dict) -> dict:
    """Split ``params`` into the guide's (differentiated) and the model's (held fixed)."""
    missing = [name for name in guide_params if name not in params]
    if missing:
        raise ValueError(
            f"params lacks the guide parameter(s) {', '.join(map(repr, missing))}; pass every parameter of the "
            f"guide ({', '.join(map(repr, guide_params))}), e.g. FitResult.params or svi.get_params(state)"
        )
    unknown = [name for name in params if name not in guide_params and name not in model_params]
    if unknown:
        raise ValueError(
            f"params has key(s) {', '.join(map(repr, unknown))} that are not parameters of the guide "
            f"({', '.join(map(repr, guide_params))}); the params must belong to this guide"
        )
    for name, (expected, _) in guide_params.items():
        got = tuple(np.shape(params[name]))
        if expected is not None and expected != got:
            raise ValueError(
                f"params[{name!r}] has shape {got} but the guide's parameter has shape {expected}; the params "
                "must come from a fit of this guide on this model"
            )
    return {name: jnp.asarray(params[name]) for name in guide_params}


def _elbo_samples(model, guide, params, fixed, args, kwargs, rng_key, num_samples, pathwise_elbo):
    keys = jax.random.split(rng_key, num_samples)

    def pathwise_one(key):
        def elbo(p):
            return -pathwise_elbo.loss(key, {**fixed, **p}, model, guide, *args, **kwargs)

        return jax.grad(elbo)(params)

    def score_one(key):
        model_key, guide_key = jax.random.split(key)  # the same split as Trace_ELBO: the same draws
        seeded_guide = handlers.seed(guide, guide_key)
        drawn = handlers.trace(handlers.substitute(seeded_guide, data={**fixed, **params})).get_trace(*args, **kwargs)
        # Sampled values held fixed; Delta sites (deterministic maps of the others, as in the
        # autoguides' constrained sites) are recomputed from them.
        values = {
            name: jax.lax.stop_gradient(site["value"])
            for name, site in drawn.items()
            if site["type"] == "sample" and not site.get("is_observed", False) and not _is_delta(site["fn"])
        }

        def log_q(p):
            lq, guide_trace = log_density(seeded_guide, args, kwargs, {**fixed, **p, **values})
            latent = {
                name: site["value"]
                for name, site in guide_trace.items()
                if site["type"] == "sample" and not site.get("is_observed", False)
            }
            return lq, latent

        (lq, latent), score_fn = jax.value_and_grad(log_q, has_aux=True)(params)
        lp, _ = log_density(handlers.seed(model, model_key), args, kwargs, {**fixed, **params, **latent})
        return lp - lq, score_fn

    pathwise = jax.vmap(pathwise_one)(keys)
    values, score_fn = jax.vmap(score_one)(keys)
    return _combine(values, pathwise, score_fn)


@dataclass(frozen=True)
class GradientReport:
    r"""Mean and variance of three ELBO gradient estimators, per scalar guide parameter.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per free scalar guide parameter (``name`` or ``name[i]``, ``name[i,j]``; the
        fixed zeros above the diagonal of a Cholesky factor are left out). Columns
        ``pathwise_mean, pathwise_var, score_mean, score_var, baseline_mean, baseline_var``: the
        mean over the draws (the gradient estimate) and the per-draw variance of each estimator;
        ``score_ratio = score_var / pathwise_var`` and ``baseline_ratio = baseline_var /
        pathwise_var``. The ratios are also *samples needed*: the standard error of a mean of
        :math:`n` draws is :math:`\sqrt{\mathrm{var}/n}`, so for the same standard error
        :math:`n_\text{score} / n_\text{pathwise}` equals the variance ratio.
    sites : tuple of GuideSite
        Every sample site of the guide: name, distribution, ``has_rsample`` and the estimator
        it needs (``"pathwise"`` or ``"score function"``).
    num_samples : int
        Draws per estimator.
    notes : tuple of str
        Sentences a reader should see (non-reparameterizable sites, non-finite gradients).
    f_mean, f_var : float
        Mean and variance of :math:`f(z_s)` over the draws; for the ELBO, :math:`f = \log p(x, z)
        - \log q_\phi(z)` and ``f_mean`` estimates the ELBO. Where the pathwise and the score
        :math:`\nabla_\phi \log q_\phi` have similar variance (a Gaussian guide near the
        optimum), ``score_ratio`` is about :math:`\mathbb E[f^2] = f_\text{mean}^2 + f_\text{var}`:
        the plain score function pays for the size of :math:`f`, the baseline only for its spread.
    """

    table: Any
    sites: tuple[GuideSite, ...]
    num_samples: int
    notes: tuple[str, ...] = ()
    f_mean: float = float("nan")
    f_var: float = float("nan")

    @property
    def median_score_ratio(self) -> float:
        """Median of ``score_ratio`` over the parameters (NaN entries left out; NaN when none)."""
        return _finite_median(self.table["score_ratio"].to_numpy())

    @property
    def median_baseline_ratio(self) -> float:
        """Median of ``baseline_ratio`` over the parameters (NaN entries left out; NaN when none)."""
        return _finite_median(self.table["baseline_ratio"].to_numpy())

    @property
    def summary(self) -> str:
        """One sentence: the median variance ratios."""
        return (
            f"median variance ratio over {len(self.table)} parameters from {self.num_samples} draws: "
            f"score function / pathwise = {self.median_score_ratio:.4g}, with baseline / pathwise = "
            f"{self.median_baseline_ratio:.4g} (= how many times as many draws for the same standard error)"
        )

    def __str__(self) -> str:
        lines = [self.table.to_string(float_format=lambda v: f"{v:.4g}")]
        if self.sites:
            lines += ["", "guide sites:"]
            lines += [
                f"  {s.name}: {s.distribution}, has_rsample={s.has_rsample}, estimator: {s.estimator}"
                for s in self.sites
            ]
        lines += [f"note: {n}" for n in self.notes]
        lines += ["", f"f = integrand over the draws: mean {self.f_mean:.4g}, variance {self.f_var:.4g}", self.summary]
        return "\n".join(lines)

    @classmethod
    def from_samples(
        cls,
        samples: EstimatorSamples,
        sites: tuple[GuideSite, ...] = (),
        notes: tuple[str, ...] = (),
        free: dict | None = None,
    ) -> GradientReport:
        """Build the report from :class:`EstimatorSamples` (of a dict of parameters, or any pytree).

        Parameters
        ----------
        samples : EstimatorSamples
        sites : tuple of GuideSite
        notes : tuple of str
        free : dict, optional
            ``{name: flat indices}`` of the entries to report per parameter (default: all).
        """
        import pandas as pd

        grads = {est: _as_named(getattr(samples, est)) for est in ESTIMATORS}
        n = int(np.asarray(samples.values).shape[0])
        rows, labels = [], []
        for name, leaf in grads["pathwise"].items():
            shape = leaf.shape[1:]
            idx = np.arange(int(np.prod(shape, dtype=int))) if free is None or name not in free else free[name]
            labels += _labels(name, shape, idx)
            flat = {est: grads[est][name].reshape(n, -1)[:, idx] for est in ESTIMATORS}
            with np.errstate(all="ignore"):
                cols = {}
                for est in ESTIMATORS:
                    cols[f"{est}_mean"] = flat[est].mean(0)
                    cols[f"{est}_var"] = flat[est].var(0, ddof=1)
                cols["score_ratio"] = cols["score_var"] / cols["pathwise_var"]
                cols["baseline_ratio"] = cols["baseline_var"] / cols["pathwise_var"]
            rows.append(pd.DataFrame(cols))
        table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=_COLUMNS)
        table.index = pd.Index(labels, name="parameter")
        bad = {
            est: int((~np.isfinite(np.concatenate([g.reshape(n, -1) for g in grads[est].values()], 1))).any(1).sum())
            for est in ESTIMATORS
        }
        notes = tuple(notes) + tuple(
            f"{count} of {n} {est} gradient draws are not finite; its mean and variance are NaN"
            for est, count in bad.items()
            if count
        )
        values = np.asarray(samples.values, dtype=float)
        return cls(
            table=table[list(_COLUMNS)],
            sites=tuple(sites),
            num_samples=n,
            notes=notes,
            f_mean=float(values.mean()),
            f_var=float(values.var(ddof=1)),
        )


_COLUMNS = (
    "pathwise_mean",
    "pathwise_var",
    "score_mean",
    "score_var",
    "baseline_mean",
    "baseline_var",
    "score_ratio",
    "baseline_ratio",
)


def _finite_median(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]  # inf stays: an exact (zero-variance) pathwise gradient
    return float(np.median(values)) if values.size else float("nan")


def _as_named(tree) -> dict:
    """Label the leaves of a pytree ``{label: ndarray}``: dict keys for a dict, paths otherwise."""
    if isinstance(tree, dict):
        return {str(k): np.asarray(v, dtype=float) for k, v in tree.items()}
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    if len(leaves) == 1 and not leaves[0][0]:
        return {"param": np.asarray(leaves[0][1], dtype=float)}
    return {jax.tree_util.keystr(path): np.asarray(leaf, dtype=float) for path, leaf in leaves}


def gradient_variance(
    model: Any,
    guide: Any = None,
    params: dict | None = None,
    *args: Any,
    num_samples: int = 1000,
    seed: int = 0,
    **kwargs: Any,
) -> GradientReport:
    r"""Measure the pathwise and score-function ELBO gradient estimators of a NumPyro guide.

    With :math:`n` = ``num_samples`` independent keys, and for each a guide draw :math:`z_s`
    (the same draw for every estimator), the per-draw gradients with respect to the guide's
    parameters :math:`\phi` are

    pathwise
        :math:`\nabla_\phi[\log p(x, g_\phi(\epsilon_s)) - \log q_\phi(g_\phi(\epsilon_s))]`,
        the gradient of NumPyro's one-particle ``Trace_ELBO`` (negated loss). When the guide has
        a site without ``has_rsample``, NumPyro's ``TraceGraph_ELBO`` is used instead: pathwise
        where the guide is reparameterized, score function at the other sites (``Trace_ELBO``
        would leave their score term out and be biased).
    score function
        :math:`f(z_s)\, \nabla_\phi \log q_\phi(z_s)` with :math:`f = \log p(x, z) -
        \log q_\phi(z)` held fixed: the guide trace is drawn once, then :math:`\log q_\phi` is
        re-evaluated as a function of :math:`\phi` with the sampled sites substituted
        (``numpyro.handlers.substitute``; Delta sites, the autoguides' deterministic map to
        constrained space, are recomputed from them, so a parameter that reaches the model
        only through a Delta site, a point estimate as in ``AutoDelta``, has score-function
        columns of zero).
    with baseline
        :math:`(f(z_s) - b_s) \nabla_\phi \log q_\phi(z_s)`, :math:`b_s` the leave-one-out mean.

    Gradients are taken with respect to the guide's parameters **as given**: the constrained
    values (such as ``FitResult.params``, or ``svi.get_params(state)``), e.g. an AutoNormal's
    positive ``scale``, not its softplus-inverse. The optimizer works in the unconstrained space;
    ratios of variances for location parameters (identity constraint) are the same in both.

    Parameters
    ----------
    model : callable or FitResult
        A NumPyro model, or a :class:`inference.FitResult` (then pass nothing else positional:
        its model, guide, params, ``model_args`` and ``model_kwargs`` are used).
    guide : callable
        A NumPyro guide of ``model`` (e.g. an autoguide).
    params : dict
        Values of every parameter of the guide (constrained); parameters of the model may be
        included and are held fixed.
    *args, **kwargs
        Model and guide arguments.
    num_samples : int
        Draws :math:`n` (at least 2). The relative standard error of a variance from :math:`n`
        draws is about :math:`\sqrt{(\kappa - 1)/n}` with :math:`\kappa` the kurtosis, large for
        these products: a few hundred draws read the order of magnitude (reference problem a,
        200 draws, seeds 0-4: ``score_ratio`` 1500 to 2850 at the fitted guide).
    seed : int
        Random seed.

    Returns
    -------
    GradientReport
        ``table`` with one row per free scalar guide parameter; ``sites``; ``num_samples``.

    Raises
    ------
    ValueError
        If ``num_samples`` < 2 or ``params`` does not match the guide's parameters (missing,
        unknown or wrongly shaped entries).

    Examples
    --------
    >>> report = gradient_variance(result, num_samples=200)  # doctest: +SKIP
    >>> report.table.loc["auto_loc[0]", "score_ratio"]  # doctest: +SKIP
    """
    num_samples = _check_num_samples(num_samples)
    model, guide, params, args, kwargs = _resolve(model, guide, params, args, kwargs)
    key = jax.random.PRNGKey(seed)
    # Trace the guide once outside jit: it sets up an autoguide and gives the sites to check.
    guide_params = _guide_param_sites(guide, params, args, kwargs, key)
    if not guide_params:
        raise ValueError("the guide has no parameters (numpyro.param sites): there is no gradient to measure")
    model_params = _model_param_names(model, args, kwargs, key) if set(params) - set(guide_params) else set()
    diff = _check_params(guide_params, model_params, params)
    fixed = {k: jnp.asarray(v) for k, v in params.items() if k not in diff}
    guide_trace = handlers.trace(handlers.seed(handlers.substitute(guide, data=params), key)).get_trace(
        *args, **kwargs
    )
    sites = _guide_sites(guide_trace)
    nonreparam = [s.name for s in sites if not s.has_rsample]
    notes = ()
    elbo = Trace_ELBO(num_particles=1)
    if nonreparam:
        elbo = TraceGraph_ELBO(num_particles=1)
        notes = (
            f"site(s) {', '.join(map(repr, nonreparam))} cannot be reparameterized (has_rsample is False): the "
            "pathwise columns are TraceGraph_ELBO's gradient, score function at those sites; Trace_ELBO would "
            "be biased there",
        )
    run = jax.jit(lambda p, fx, k: _elbo_samples(model, guide, p, fx, args, kwargs, k, num_samples, elbo))
    samples = run(diff, fixed, jax.random.fold_in(key, 1))
    free = {name: _free_entries(np.asarray(diff[name]), constraint) for name, (_, constraint) in guide_params.items()}
    return GradientReport.from_samples(jax.device_get(samples), sites=sites, notes=notes, free=free)
