r"""Guide families over the flat unconstrained vector: small pure functions that contain no model.

Each family is a reparameterized density :math:`q_\phi(u)` on :math:`\mathbb R^d` given by a map
:math:`u = g_\phi(\epsilon)` of standard normal noise :math:`\epsilon \sim N(0, I_d)`, with

.. math::

    \log q_\phi(u) = \log N(\epsilon; 0, I) - \log\lvert\det \partial g_\phi / \partial\epsilon\rvert .

A :class:`Family` is three pure functions, in the manner of BlackJAX's VI modules:
``init(loc, scale_tril, key) -> params`` (a pytree, started from a Gaussian such as the Laplace
approximation), ``sample(params, eps) -> (u, log_q)`` for a batch of noise ``eps`` of shape
``(n, d)``, and ``moments(params) -> (mean, cov)`` where they are closed-form (Gaussians). The
model enters only through the log density of :class:`inference.engine.target.Target`, so these
programs compile in well under a second.

Families
--------
``normal``
    Mean-field Gaussian: :math:`u = \mu + \sigma \odot \epsilon` (``2 d`` parameters). Fast, but
    blind to correlations: do not use it on correlated rates (Michaelis-Menten ``Vmax`` and ``Km``).
``multivariate_normal``
    Full-rank Gaussian: :math:`u = \mu + L \epsilon` with :math:`L` lower triangular with a
    positive diagonal (Kucukelbir et al. 2017).
``low_rank``
    :math:`u = \mu + W \epsilon_1 + D^{1/2} \epsilon_2`: covariance :math:`W W^T + D` with rank
    ``r`` (Ong, Nott & Smith 2018); ``d + r`` noise dimensions.
``multivariate_t``
    Full-rank multivariate Student-t: :math:`u = \mu + L t` with :math:`t \sim t_\nu(0, I)`
    (:math:`\nu = 5` by default), drawn as :math:`t = z / \sqrt{w}`, :math:`w = \sum_{i \le \nu}
    g_i^2 / \nu` from ``d + nu`` standard normals: heavy tails for posteriors from sparse data.
``iaf``, ``iaf_t``
    An inverse autoregressive flow (Kingma et al. 2016) on whitened coordinates:
    :math:`u = \mu + L f(\epsilon)` with :math:`f` two affine autoregressive layers (NumPyro's
    ``AutoregressiveNN``) started at the identity, so the flow starts exactly at the Gaussian
    ``(mu, L)`` it is given and learns the non-Gaussian part. ``iaf_t`` puts the flow on a
    Student-t base (Jaini et al. 2020) for heavy tails a Gaussian base cannot reach.

References
----------
Kucukelbir, A., Tran, D., Ranganath, R., Gelman, A. and Blei, D. M. (2017). Automatic
differentiation variational inference. JMLR 18(14), 1-45.

Ong, V. M.-H., Nott, D. J. and Smith, M. S. (2018). Gaussian variational approximation with a
factor covariance structure. J. Comput. Graph. Stat. 27(3), 465-478.

Kingma, D. P., Salimans, T., Jozefowicz, R., Chen, X., Sutskever, I. and Welling, M. (2016).
Improved variational inference with inverse autoregressive flow. NeurIPS.

Jaini, P., Kobyzev, I., Yu, Y. and Brubaker, M. (2020). Tails of Lipschitz triangular flows.
ICML.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Family", "FAMILIES", "make_family", "through_map"]

_LOG_2PI = math.log(2 * math.pi)


class Family(NamedTuple):
    r"""A guide family over the flat vector (see the module docstring).

    Attributes
    ----------
    name : str
    noise_dim : int
        Dimension of the noise ``eps`` (``d``, or ``d + r`` for ``low_rank``).
    init : callable
        ``init(loc (d,), scale_tril (d, d), key) -> params``.
    sample : callable
        ``sample(params, eps (n, noise_dim)) -> (u (n, d), log_q (n,))``.
    moments : callable
        ``moments(params) -> (mean (d,), cov (d, d))``; for flows, of the Gaussian it is built on.
    push : callable or None
        ``push(params, x (n, d)) -> (u (n, d), log_det (n,))``: the family's bijection
        :math:`T_\phi` from its ``d``-dimensional base variable to ``u``, with
        :math:`\log\lvert\det \partial T_\phi / \partial x\rvert` (the transport map of the exact
        stage, :mod:`inference.engine.transport`); None where there is none (``low_rank``).
    base : str
        The base distribution: ``"normal"`` or ``"student_t"``.
    through : NonCentring or None
        A fixed bijection ``v -> u`` the family is fitted through (:func:`through_map`): ``init``,
        ``moments`` and the parameters live in its coordinates ``v``, ``sample`` and ``push`` give
        the model's ``u``. None: the family is on ``u`` itself.
    """

    name: str
    noise_dim: int
    init: Callable
    sample: Callable
    moments: Callable
    push: Callable | None = None
    base: str = "normal"
    through: Any = None


def through_map(family: Family, bijection) -> Family:
    r"""``family`` fitted in the coordinates ``v`` of a fixed bijection ``u = T(v)``.

    With :math:`v = g_\phi(\epsilon)` the family's draw, :math:`u = T(v)` and
    :math:`\log q(u) = \log q_\phi(v) - \log\lvert\det \partial T / \partial v\rvert`:
    a family that is Gaussian in partially centred coordinates of a hierarchy
    (:func:`inference.engine.noncentring.partial_centring`) is not Gaussian in the model's own.
    ``bijection`` has ``push(v (n, d)) -> (u, log_det (n,))`` and ``pull(u) -> v``.
    """

    def sample(params, eps):
        v, log_q = family.sample(params, eps)
        u, log_det = bijection.push(v)
        return u, log_q - log_det

    push = None
    if family.push is not None:

        def push(params, x):
            v, log_det_v = family.push(params, x)
            u, log_det_u = bijection.push(v)
            return u, log_det_v + log_det_u

    return family._replace(sample=sample, push=push, through=bijection)


def _std_normal_logpdf(eps):
    return -0.5 * jnp.sum(eps**2, axis=-1) - 0.5 * eps.shape[-1] * _LOG_2PI


def _inv_softplus(x):
    return jnp.log(jnp.expm1(x))


def _student_t_base(eps, d: int, df: int):
    r"""Student-t draws from standard normal noise: ``eps (n, d + df)`` to ``(t (n, d), log t_df(t))``.

    :math:`t = z / \sqrt{w}` with :math:`z` the first ``d`` columns and :math:`w = \sum_i g_i^2 / \nu`
    from the last :math:`\nu` (an integer): exactly multivariate :math:`t_\nu(0, I)`, a
    reparameterized map of parameter-free noise.
    """
    z, g = eps[:, :d], eps[:, d:]
    w = jnp.sum(g**2, axis=-1) / df
    t = z / jnp.sqrt(w)[:, None]
    return t, _student_t_logpdf(t, df)


def _student_t_logpdf(t, df: int):
    d = t.shape[-1]
    return (
        jax.scipy.special.gammaln((df + d) / 2)
        - jax.scipy.special.gammaln(df / 2)
        - 0.5 * d * jnp.log(df * jnp.pi)
        - 0.5 * (df + d) * jnp.log1p(jnp.sum(t**2, axis=-1) / df)
    )


# -- mean-field -----------------------------------------------------------------------------------
def _normal(d: int) -> Family:
    def init(loc, scale_tril, key):
        sd = jnp.sqrt(jnp.sum(scale_tril**2, axis=1))
        return {"loc": jnp.asarray(loc), "scale": _inv_softplus(sd)}

    def sample(params, eps):
        sd = jax.nn.softplus(params["scale"])
        u = params["loc"] + sd * eps
        return u, _std_normal_logpdf(eps) - jnp.sum(jnp.log(sd))

    def moments(params):
        sd = jax.nn.softplus(params["scale"])
        return params["loc"], jnp.diag(sd**2)

    def push(params, x):
        sd = jax.nn.softplus(params["scale"])
        return params["loc"] + sd * x, jnp.full(x.shape[0], jnp.sum(jnp.log(sd)))

    return Family("normal", d, init, sample, moments, push)


# -- full rank ------------------------------------------------------------------------------------
def _tril(params, d):
    off = jnp.tril(params["tril"], -1)
    return off + jnp.diag(jax.nn.softplus(params["diag"]))


def _multivariate_normal(d: int, df: int | None = None) -> Family:
    """Full-rank Gaussian, or with ``df`` a full-rank multivariate Student-t (``u = mu + L t``)."""

    def init(loc, scale_tril, key):
        return {
            "loc": jnp.asarray(loc),
            "tril": jnp.tril(jnp.asarray(scale_tril), -1),
            "diag": _inv_softplus(jnp.diag(jnp.asarray(scale_tril))),
        }

    def sample(params, eps):
        L = _tril(params, d)
        if df is None:
            x, log_base = eps, _std_normal_logpdf(eps)
        else:
            x, log_base = _student_t_base(eps, d, df)
        u = params["loc"] + x @ L.T
        return u, log_base - jnp.sum(jnp.log(jnp.diag(L)))

    def moments(params):
        L = _tril(params, d)
        # The t's covariance is df / (df - 2) L L^T (for df > 2); the Gaussian's is L L^T.
        factor = 1.0 if df is None else (df / (df - 2.0) if df > 2 else jnp.inf)
        return params["loc"], factor * (L @ L.T)

    def push(params, x):
        L = _tril(params, d)
        return params["loc"] + x @ L.T, jnp.full(x.shape[0], jnp.sum(jnp.log(jnp.diag(L))))

    if df is None:
        return Family("multivariate_normal", d, init, sample, moments, push)
    return Family("multivariate_t", d + df, init, sample, moments, push, "student_t")


# -- low rank -------------------------------------------------------------------------------------
def _low_rank(d: int, rank: int) -> Family:
    def init(loc, scale_tril, key):
        # The top-r principal directions carry half their variance in W, the rest goes to D.
        cov = scale_tril @ scale_tril.T
        w, v = jnp.linalg.eigh(cov)
        top = jnp.argsort(w)[::-1][:rank]
        W = v[:, top] * jnp.sqrt(jnp.maximum(w[top], 0.0)) * math.sqrt(0.5)
        D = jnp.maximum(jnp.diag(cov) - jnp.sum(W**2, axis=1), 1e-2 * jnp.diag(cov))
        return {"loc": jnp.asarray(loc), "W": W, "diag": _inv_softplus(jnp.sqrt(D))}

    def cov_of(params):
        D = jax.nn.softplus(params["diag"]) ** 2
        return params["W"] @ params["W"].T + jnp.diag(D)

    def sample(params, eps):
        W = params["W"]
        sd = jax.nn.softplus(params["diag"])
        u = params["loc"] + eps[:, :rank] @ W.T + sd * eps[:, rank:]
        # Density of u under N(loc, W W^T + D), by the matrix determinant lemma and Woodbury.
        x = u - params["loc"]
        Dinv = 1.0 / sd**2
        cap = jnp.eye(rank) + (W.T * Dinv) @ W
        cap_chol = jnp.linalg.cholesky(cap)
        logdet = 2 * jnp.sum(jnp.log(sd)) + 2 * jnp.sum(jnp.log(jnp.diag(cap_chol)))
        xd = x * Dinv
        proj = jax.scipy.linalg.solve_triangular(cap_chol, (xd @ W).T, lower=True).T
        maha = jnp.sum(x * xd, axis=-1) - jnp.sum(proj**2, axis=-1)
        return u, -0.5 * (maha + logdet + d * _LOG_2PI)

    def moments(params):
        return params["loc"], cov_of(params)

    return Family("low_rank", d + rank, init, sample, moments)


# -- inverse autoregressive flow --------------------------------------------------------------------
def _iaf(d: int, num_flows: int = 2, hidden_dims=None, df: int | None = None) -> Family:
    from jax.example_libraries import stax
    from numpyro.nn import AutoregressiveNN

    hidden = [max(8, 2 * d)] * 2 if hidden_dims is None else list(hidden_dims)
    nets = []
    for i in range(num_flows):
        perm = np.arange(d) if i % 2 == 0 else np.arange(d)[::-1]
        nets.append(AutoregressiveNN(d, hidden, permutation=perm, nonlinearity=stax.Elu))
    mvn = _multivariate_normal(d)

    # Network weights drawn once with NumPy (Glorot-scaled normals; the masks are applied by the
    # layers), the last layer of each network at zero so that every flow starts as the identity.
    rng = np.random.default_rng(0)
    weights = []
    for init_fn, _ in nets:
        shapes = jax.eval_shape(lambda k, f=init_fn: f(k, (d,))[1], jax.random.PRNGKey(0))
        layers = []
        for j, layer in enumerate(shapes):
            last = j == len(shapes) - 1
            leaves = []
            for leaf in jax.tree.leaves(layer):
                if last or leaf.ndim < 2:
                    leaves.append(np.zeros(leaf.shape))
                else:
                    leaves.append(rng.normal(0.0, math.sqrt(2.0 / sum(leaf.shape)), leaf.shape))
            layers.append(jax.tree.unflatten(jax.tree.structure(layer), leaves))
        weights.append(layers)

    def init(loc, scale_tril, key):
        params = mvn.init(loc, scale_tril, key)
        params["flows"] = jax.tree.map(jnp.asarray, weights)
        return params

    def flow(params, eps):
        x, logdet = eps, jnp.zeros(eps.shape[0])
        for (_, apply_fn), p in zip(nets, params["flows"]):
            mean, log_scale = apply_fn(p, x)
            # Stable IAF update (Kingma et al. 2016, eq. 14): a gate between x and the shift.
            gate = jax.nn.sigmoid(log_scale + 2.0)
            x = gate * x + (1 - gate) * mean
            logdet = logdet + jnp.sum(jnp.log(gate), axis=-1)
        return x, logdet

    def sample(params, eps):
        # Change of variables from the base variable: u = loc + L f(x), x standard normal or t.
        if df is None:
            base, log_base = eps, _std_normal_logpdf(eps)
        else:
            base, log_base = _student_t_base(eps, d, df)
        x, logdet = flow(params, base)
        L = _tril(params, d)
        u = params["loc"] + x @ L.T
        return u, log_base - logdet - jnp.sum(jnp.log(jnp.diag(L)))

    def moments(params):
        return mvn.moments(params)

    def push(params, base):
        x, logdet = flow(params, base)
        L = _tril(params, d)
        return params["loc"] + x @ L.T, logdet + jnp.sum(jnp.log(jnp.diag(L)))

    def init_identity(loc, scale_tril, key):
        params = init(loc, scale_tril, key)
        # With zero last layers each flow is x -> g x with g = sigmoid(2): undo the shrink.
        g = (1.0 / (1.0 + math.exp(-2.0))) ** num_flows
        params["tril"] = params["tril"] / g
        params["diag"] = _inv_softplus(jax.nn.softplus(params["diag"]) / g)
        return params

    if df is None:
        return Family("iaf", d, init_identity, sample, moments, push)
    return Family("iaf_t", d + df, init_identity, sample, moments, push, "student_t")


FAMILIES = ("normal", "multivariate_normal", "multivariate_t", "low_rank", "iaf", "iaf_t")

#: Degrees of freedom of the Student-t base of ``multivariate_t`` and ``iaf_t`` by default.
DEFAULT_DF = 5


def make_family(name: str, d: int, options: dict | None = None) -> Family:
    """The family called ``name`` over ``d`` flat coordinates.

    Parameters
    ----------
    name : str
        One of :data:`FAMILIES`.
    d : int
    options : dict, optional
        ``rank`` (``low_rank``; ``round(sqrt(d))`` by default), ``num_flows`` and ``hidden_dims``
        (``iaf``, ``iaf_t``), ``df`` (``multivariate_t``, ``iaf_t``: degrees of freedom of the
        Student-t base, an integer, 5 by default).
    """
    options = dict(options or {})
    if name == "normal":
        return _normal(d)
    if name == "multivariate_normal":
        return _multivariate_normal(d)
    if name in ("multivariate_t", "iaf_t"):
        df = options.get("df", DEFAULT_DF)
        if isinstance(df, bool) or not isinstance(df, (int, np.integer)) or not 1 <= df <= 100:
            raise ValueError(f"df of the {name!r} guide is an integer from 1 to 100 (degrees of freedom), got {df!r}")
        if name == "multivariate_t":
            return _multivariate_normal(d, int(df))
    if name == "low_rank":
        rank = int(options.get("rank") or max(1, round(math.sqrt(d))))
        if not 1 <= rank <= d:
            raise ValueError(f"rank must be between 1 and the latent dimension {d}, got {rank}")
        return _low_rank(d, rank)
    if name in ("iaf", "iaf_t"):
        if d < 2:
            raise ValueError(f"the {name!r} guide needs at least two latent dimensions; use 'multivariate_normal'")
        df = int(options.get("df", DEFAULT_DF)) if name == "iaf_t" else None
        return _iaf(d, int(options.get("num_flows", 2)), options.get("hidden_dims"), df)
    raise ValueError(f"no flat guide family named {name!r}; the families are {', '.join(FAMILIES)}")
