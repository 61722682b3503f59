r"""The Concrete (Gumbel-softmax) relaxation of a categorical variable, as NumPyro distributions.

A categorical draw can be written with the Gumbel-max trick: with :math:`G_i` independent
standard Gumbel, :math:`\arg\max_i(\log \pi_i + G_i) \sim \mathrm{Categorical}(\pi)`. Replacing
the arg max by a softmax at temperature :math:`\tau > 0`,

.. math::

    y_i = \frac{\exp((\log \pi_i + G_i) / \tau)}{\sum_{j=1}^K \exp((\log \pi_j + G_j) / \tau)},
    \qquad i = 1, \dots, K,

gives a point :math:`y` of the simplex that is a differentiable function of :math:`\log \pi`
and the parameter-free noise :math:`G`, so that gradients of expectations can be taken by the
pathwise (reparameterization) estimator. As :math:`\tau \to 0` the draws concentrate on the
vertices of the simplex, with :math:`P(y \to e_k) = \pi_k`; as :math:`\tau \to \infty` they
concentrate on the centre. The law of :math:`y` has the density (Maddison, Mnih & Teh 2017,
Definition 1) with respect to Lebesgue measure on the first :math:`K - 1` coordinates

.. math::

    p_{\pi,\tau}(y) = (K-1)!\, \tau^{K-1} \prod_{i=1}^K
    \frac{\pi_i\, y_i^{-\tau-1}}{\sum_{j=1}^K \pi_j\, y_j^{-\tau}},

that is

.. math::

    \log p_{\pi,\tau}(y) = \log (K-1)! + (K-1) \log \tau
    + \sum_{i=1}^K \big(\log \pi_i - (\tau + 1) \log y_i\big)
    - K \operatorname{logsumexp}_{j}\big(\log \pi_j - \tau \log y_j\big).

References
----------
Maddison, C. J., Mnih, A. and Teh, Y. W. (2017). The Concrete distribution: a continuous
relaxation of discrete random variables. ICLR.

Jang, E., Gu, S. and Poole, B. (2017). Categorical reparameterization with Gumbel-softmax. ICLR.

Bengio, Y., Léonard, N. and Courville, A. (2013). Estimating or propagating gradients through
stochastic neurons for conditional computation. arXiv:1308.3432.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, logsumexp
from numpyro.distributions import Distribution, constraints
from numpyro.distributions.util import lazy_property

__all__ = ["RelaxedOneHotCategorical", "RelaxedOneHotCategoricalStraightThrough"]


def _is_concrete(x: Any) -> bool:
    """Tell whether ``x`` holds numbers now (is not a JAX tracer inside jit, vmap or grad)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(x))


def _float_dtype(*xs: Any):
    return jnp.result_type(float, *[jnp.asarray(x).dtype for x in xs if x is not None])


class RelaxedOneHotCategorical(Distribution):
    r"""The Concrete / Gumbel-softmax distribution on the probability simplex.

    A draw is :math:`y = \operatorname{softmax}((\text{logits} + G) / \tau)` with :math:`G`
    independent standard Gumbel noise, computed in log space (log-softmax, then exp) and
    clipped below at the smallest positive normal number so that no coordinate is exactly 0.
    ``log_prob`` is the Concrete log density (see the module docstring) with respect to
    Lebesgue measure on the first :math:`K - 1` coordinates of the simplex. Draws are
    reparameterized: they are differentiable in ``logits`` (or ``probs``) and ``temperature``.

    Parameters
    ----------
    temperature : float or array
        :math:`\tau > 0`, broadcast against the batch shape. Small temperatures give draws
        close to one-hot vectors; it is usually annealed from about 1 towards 0.1 during a fit
        (``fit(..., schedules={"temperature": exponential_anneal(1.0, 0.1, n)})``, see
        :mod:`inference.engine.schedules`).
    probs : array, shape (..., K), optional
        Category probabilities :math:`\pi` (non-negative, summing to 1 along the last axis).
    logits : array, shape (..., K), optional
        Unnormalized log probabilities, :math:`\pi = \operatorname{softmax}(\text{logits})`.
        Give exactly one of ``probs`` and ``logits``.
    validate_args : bool, optional
        NumPyro's argument validation.

    Attributes
    ----------
    batch_shape : tuple
        ``broadcast(temperature.shape, logits.shape[:-1])``.
    event_shape : tuple
        ``(K,)``.

    Notes
    -----
    ``sample_with_intermediates`` (what ``numpyro.sample`` calls) also returns the log of the
    draw, and ``log_prob(value, intermediates)`` then uses it instead of ``log(value)``: a
    guide's own draw is scored without the rounding of coordinates that underflow at very low
    temperatures. Everywhere else (the model's copy of a guide draw, or a direct call) the
    density is evaluated at ``value``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> d = RelaxedOneHotCategorical(0.5, logits=jnp.array([0.0, 1.0, -1.0]))
    >>> y = d.sample(jax.random.PRNGKey(0), (4,))
    >>> y.shape, d.log_prob(y).shape
    ((4, 3), (4,))
    """

    arg_constraints = {"temperature": constraints.positive, "logits": constraints.real_vector}
    support = constraints.simplex
    # Draws are differentiable in every parameter; ``has_rsample`` is then True.
    reparametrized_params = ["temperature", "logits"]

    def __init__(
        self,
        temperature: Any,
        probs: Any = None,
        logits: Any = None,
        *,
        validate_args: bool | None = None,
    ) -> None:
        name = type(self).__name__
        if (probs is None) == (logits is None):
            raise ValueError(
                f"{name} needs exactly one of probs and logits, got "
                f"{'both' if probs is not None else 'neither'}; pass probs=... or logits=..."
            )
        if temperature is None:
            raise ValueError(f"{name} needs a temperature > 0, got None")
        params = probs if probs is not None else logits
        which = "probs" if probs is not None else "logits"
        if jnp.ndim(params) < 1 or jnp.shape(params)[-1] < 2:
            raise ValueError(
                f"{name} needs {which} with the K >= 2 categories on the last axis, got shape "
                f"{jnp.shape(params)}; for a single binary variable use K = 2 (or RelaxedBernoulli)"
            )
        if _is_concrete(temperature):
            t = np.asarray(temperature, dtype=float)
            if not np.all(t > 0):
                raise ValueError(
                    f"{name} needs temperature > 0, got {temperature!r}; the relaxation is "
                    "discrete only in the limit, so anneal towards a small positive value "
                    "(e.g. 0.1) instead"
                )
        dtype = _float_dtype(temperature, params)
        if probs is not None:
            if _is_concrete(probs):
                p = np.asarray(probs, dtype=float)
                if not (np.all(p >= 0) and np.allclose(p.sum(-1), 1.0, atol=1e-5)):
                    raise ValueError(
                        f"{name} needs probs that are non-negative and sum to 1 along the last "
                        f"axis, got sums {np.round(p.sum(-1), 6).tolist()} and minimum {p.min():.3g}; "
                        "normalize them, or pass unnormalized log probabilities as logits=..."
                    )
            probs = jnp.asarray(probs, dtype)
            logits = jnp.log(jnp.clip(probs, jnp.finfo(dtype).tiny))
        else:
            logits = jnp.asarray(logits, dtype)
            if _is_concrete(logits) and np.any(np.isnan(np.asarray(logits))):
                raise ValueError(
                    f"{name} got NaN in logits; logits must be real numbers "
                    "(for a category of probability 0, pass probs=...)"
                )
        temperature = jnp.asarray(temperature, dtype)
        batch_shape = jnp.broadcast_shapes(jnp.shape(temperature), jnp.shape(logits)[:-1])
        num_categories = jnp.shape(logits)[-1]
        self.temperature = jnp.broadcast_to(temperature, batch_shape)
        self.logits = jnp.broadcast_to(logits, batch_shape + (num_categories,))
        super().__init__(batch_shape=batch_shape, event_shape=(num_categories,), validate_args=validate_args)

    @lazy_property
    def probs(self) -> jax.Array:
        r"""Category probabilities :math:`\pi = \operatorname{softmax}(\text{logits})`."""
        return jax.nn.softmax(self.logits, axis=-1)

    @property
    def has_rsample(self) -> bool:
        """Draws are reparameterized (differentiable in the parameters)."""
        return True

    def _log_sample(self, key: jax.Array, sample_shape: tuple[int, ...]) -> jax.Array:
        """Log of a relaxed draw: ``log_softmax((logits + G) / temperature)``."""
        shape = tuple(sample_shape) + self.batch_shape + self.event_shape
        gumbel = jax.random.gumbel(key, shape, dtype=self.logits.dtype)
        return jax.nn.log_softmax((self.logits + gumbel) / self.temperature[..., None], axis=-1)

    def _from_log(self, log_y: jax.Array) -> jax.Array:
        # Clip below so that no coordinate is exactly zero (the density needs log y > -inf).
        return jnp.clip(jnp.exp(log_y), jnp.finfo(log_y.dtype).tiny, 1.0)

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        """Draw ``sample_shape + batch_shape + (K,)`` relaxed one-hot vectors."""
        return self._from_log(self._log_sample(key, sample_shape))

    def sample_with_intermediates(self, key: jax.Array, sample_shape: tuple[int, ...] = ()):
        """Draw as :meth:`sample`; also return ``[log draw]``, which :meth:`log_prob` uses to score it exactly."""
        log_y = self._log_sample(key, sample_shape)
        return self._from_log(log_y), [log_y]

    def log_prob(self, value: Any, intermediates: list | None = None) -> jax.Array:
        """Concrete log density at ``value`` (shape ``(..., K)``); returns shape ``value.shape[:-1]``.

        ``intermediates``, when given, is ``[log value]`` as returned by
        :meth:`sample_with_intermediates` for this very draw.
        """
        if self._validate_args:
            self._validate_sample(value)
        if intermediates:
            log_y = intermediates[0]
        else:
            value = jnp.asarray(value)
            log_y = jnp.log(jnp.clip(value, jnp.finfo(_float_dtype(value)).tiny))
        return self._concrete_log_density(log_y)

    def _concrete_log_density(self, log_y: jax.Array) -> jax.Array:
        k = self.event_shape[-1]
        tau = self.temperature[..., None]
        log_pi = jax.nn.log_softmax(self.logits, axis=-1)
        log_norm = gammaln(float(k)) + (k - 1) * jnp.log(self.temperature)
        terms = jnp.sum(log_pi - (tau + 1.0) * log_y, axis=-1)
        return log_norm + terms - k * logsumexp(log_pi - tau * log_y, axis=-1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(batch_shape={self.batch_shape}, event_shape={self.event_shape})"


class RelaxedOneHotCategoricalStraightThrough(RelaxedOneHotCategorical):
    r"""Gumbel-softmax with the straight-through estimator: one-hot forward, relaxed backward.

    ``sample`` draws a relaxed vector :math:`y` as :class:`RelaxedOneHotCategorical` does and
    returns

    .. math::  h + (y - \operatorname{stop\_gradient}(y)), \qquad h = e_{\arg\max_i y_i},

    whose value is exactly the one-hot vector :math:`h` (a draw of
    :math:`\mathrm{Categorical}(\pi)`, by the Gumbel-max trick) and whose gradient is that of
    the relaxed draw :math:`y` (Bengio, Léonard & Courville 2013; Jang, Gu & Poole 2017,
    section 2.2).

    ``log_prob(value)`` is the **categorical** log probability
    :math:`\sum_i \text{value}_i \log \pi_i`, i.e. :math:`\log \pi_k` for the one-hot vector
    :math:`e_k`. The Concrete density of the relaxed draw cannot be recovered from the hard
    value, and the Concrete density *at* a one-hot vector is degenerate. So an ELBO with this
    distribution in the guide (and a categorical prior in the model, e.g. this class again
    with the prior's probabilities) is the ELBO of the *discrete* model, estimated without bias
    in value; its gradient is the straight-through gradient, which is **biased** (it
    differentiates the relaxed draw in place of the discrete one). The temperature then only
    shapes the gradient, not the objective.

    Pyro's class of the same name differs: there the one-hot tensor carries the relaxed draw as
    an attribute and ``log_prob`` returns the Concrete density of that relaxed draw. JAX arrays
    carry no attributes, and NumPyro's ``replay`` hands the model only the value, so that choice
    cannot be made consistently for model and guide here.

    For values that are not one-hot, ``log_prob`` returns the same linear formula, which is not
    a density; pass one-hot vectors.

    Parameters
    ----------
    temperature, probs, logits, validate_args
        As for :class:`RelaxedOneHotCategorical`.
    """

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        """One-hot draws (exact values) carrying the relaxed draws' gradients."""
        relaxed = super().sample(key, sample_shape)
        hard = jax.nn.one_hot(jnp.argmax(relaxed, axis=-1), self.event_shape[-1], dtype=relaxed.dtype)
        # hard + (y - y): the bracket is exactly 0 in value, so the value is exactly one-hot.
        return hard + (relaxed - jax.lax.stop_gradient(relaxed))

    def sample_with_intermediates(self, key: jax.Array, sample_shape: tuple[int, ...] = ()):
        """Draw as :meth:`sample`; there are no intermediates."""
        return self.sample(key, sample_shape), []

    def log_prob(self, value: Any, intermediates: list | None = None) -> jax.Array:
        """Categorical log probability ``sum(value * log_softmax(logits), -1)``; ``log pi_k`` at one-hot ``e_k``."""
        if self._validate_args:
            self._validate_sample(value)
        log_pi = jax.nn.log_softmax(self.logits, axis=-1)
        # A category of probability 0 (logit -inf) counts 0 where value is 0, not 0 * -inf = NaN;
        # clipping (not masking) keeps the gradient in ``value``, which is the straight-through path.
        log_pi = jnp.maximum(log_pi, jnp.finfo(log_pi.dtype).min)
        return jnp.sum(value * log_pi, axis=-1)
