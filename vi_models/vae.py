r"""Variational autoencoders: amortized Gaussian latents with the likelihood the data need.

A VAE (Kingma & Welling 2014) explains each data point :math:`x_i` by a latent
:math:`z_i \in \mathbb R^L` with prior :math:`p(z) = \mathcal N(0, I)` and a decoder network
:math:`f_\theta` that gives the parameters of the likelihood :math:`p_\theta(x_i \mid z_i)`.
The guide is *amortized*: one encoder network :math:`g_\phi` maps a data point to the mean and
scale of its Gaussian posterior approximation,

.. math::

    q_\phi(z_i \mid x_i) = \mathcal N(\mu_\phi(x_i), \operatorname{diag}\sigma_\phi(x_i)^2),
    \qquad z_i = \mu_\phi(x_i) + \sigma_\phi(x_i) \odot \epsilon_i,\quad
    \epsilon_i \sim \mathcal N(0, I),

and both networks are trained by maximizing the evidence lower bound

.. math::

    \mathcal L(\theta, \phi) = \sum_{i=1}^N \Big(
        \mathbb E_{q_\phi(z_i \mid x_i)}[\log p_\theta(x_i \mid z_i)]
        - \mathrm{KL}(q_\phi(z_i \mid x_i) \,\|\, p(z_i)) \Big),
    \qquad
    \mathrm{KL} = \tfrac12 \sum_{l=1}^L (\mu_{il}^2 + \sigma_{il}^2 - 1 - \log \sigma_{il}^2),

with the Gaussian KL in closed form (NumPyro's ``TraceMeanField_ELBO``, ``objective=
"meanfield_elbo"`` of :func:`inference.fit`) and the expected log likelihood by the
reparameterization above. Each step uses a minibatch of ``B`` rows (``numpyro.plate`` with
``subsample_size=B``), whose sum is scaled by ``N / B``: an unbiased estimate of the full ELBO
that touches only ``B`` rows.

A conditional VAE (Sohn, Lee & Yan 2015) adds an observed condition :math:`c_i` to both networks,
:math:`q_\phi(z_i \mid x_i, c_i)` and :math:`p_\theta(x_i \mid z_i, c_i)`, with the prior kept at
:math:`\mathcal N(0, I)`; drawing :math:`z \sim \mathcal N(0, I)` and then :math:`x \sim
p_\theta(x \mid z, c)` samples the learned conditional distribution :math:`p(x \mid c)`.

With ``autoregressive=True`` the modalities are decoded in order, each given ``z``, ``c`` and the
values of the modalities before it, :math:`p_\theta(x \mid z, c) = \prod_j p_\theta(x_j \mid z, c,
x_{<j})`. One decoder MLP does this: its input also holds the data (counts as ``log1p``) with the
blocks from modality :math:`j` on set to zero. Without it the modalities are independent given
:math:`z` and :math:`c`, and a count block whose marginal is exactly Poisson cannot be correlated
with another (any dependence on :math:`z` adds :math:`\operatorname{Var} E[x_j \mid z]` to its
variance); ``examples/ssa_surrogate.py`` needs it for the mRNA and protein counts.

Data may have several *modalities* (for example binary accessibility and expression counts of
the same cell), each with its own likelihood and all decoded from the one latent :math:`z_i`:

``"bernoulli"``
    Binary data; the decoder gives logits.
``"poisson"``
    Counts; the decoder gives the log rate.
``"negative_binomial"``
    Over-dispersed counts: mean from the decoder (log scale), a learned concentration
    :math:`r_d` per feature, variance :math:`\mu + \mu^2 / r_d`.
``"normal"``
    Continuous data; the decoder gives the mean, a learned scale per feature.

Every head has a per-feature offset (initialized from the data: logit of the mean, log of the
mean, or the mean), so an untrained decoder already predicts each feature's average. Counts enter
the encoder as ``log1p(x)``.

The networks are small equinox MLPs registered through :func:`numpyro.contrib.module.eqx_module`;
training is :func:`inference.fit` (stopping rule, non-finite guard, progress bar)::

    from inference import fit
    from vi_models.vae import VAEFit, build_vae

    vae = build_vae({"pixels": (64, "bernoulli")}, latent_dim=2)
    result = fit(vae, *vae.args(train), guide=vae.guide, objective="meanfield_elbo",
                 num_particles=1, lr=3e-3, batch_size=128)
    trained = VAEFit.from_result(vae, result)
    trained.heldout_elbo(test).mean        # nats per data point

References
----------
Kingma, D. P. and Welling, M. (2014). Auto-encoding variational Bayes. ICLR.

Sohn, K., Lee, H. and Yan, X. (2015). Learning structured output representation using deep
conditional generative models. NeurIPS.

Jammalamadaka, S. R. and SenGupta, A. (2001). Topics in Circular Statistics. World Scientific,
section 8.2.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.module import eqx_module
from numpyro.distributions import constraints

__all__ = [
    "LIKELIHOODS",
    "Modality",
    "VAE",
    "AmortizedNormalGuide",
    "VAEFit",
    "Encoding",
    "ELBOEstimate",
    "Digits",
    "CellCycleData",
    "build_vae",
    "load_digits",
    "simulate_cell_cycle",
    "circular_correlation",
    "phase_recovery",
]

LIKELIHOODS = ("bernoulli", "poisson", "negative_binomial", "normal")
_COUNTS = ("poisson", "negative_binomial")
_MIN_SCALE = 1e-4


# -- specification -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Modality:
    """One block of features with its own likelihood.

    Attributes
    ----------
    name : str
        Name of the block; also the name of its observed NumPyro site and its key in the data
        dict.
    dim : int
        Number of features ``D``; the data of the block have shape ``(N, D)``.
    likelihood : str
        One of :data:`LIKELIHOODS`.
    """

    name: str
    dim: int
    likelihood: str = "bernoulli"

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier() or self.name in {"z", "point"}:
            raise ValueError(
                f"Modality name {self.name!r} is not usable: give a Python identifier other than 'z' and 'point' "
                "(those name the latent site and the data plate)"
            )
        if isinstance(self.dim, bool) or not isinstance(self.dim, (int, np.integer)) or self.dim < 1:
            raise ValueError(f"Modality {self.name!r}: dim must be a positive integer, got {self.dim!r}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(
                f"Modality {self.name!r}: unknown likelihood {self.likelihood!r}; use one of {', '.join(LIKELIHOODS)}"
            )


def _as_modalities(modalities) -> tuple[Modality, ...]:
    if isinstance(modalities, Modality):
        return (modalities,)
    if isinstance(modalities, Mapping):
        out = []
        for name, spec in modalities.items():
            if not (isinstance(spec, tuple) and len(spec) == 2):
                raise ValueError(
                    f"build_vae: modality {name!r} must be given as (dim, likelihood), e.g. (64, 'bernoulli'); "
                    f"got {spec!r}"
                )
            out.append(Modality(name, spec[0], spec[1]))
        modalities = out
    modalities = tuple(modalities)
    if not modalities or not all(isinstance(m, Modality) for m in modalities):
        raise ValueError(
            "build_vae: modalities must be a Modality, a sequence of Modality, or a dict {name: (dim, likelihood)}"
        )
    names = [m.name for m in modalities]
    if len(set(names)) != len(names):
        raise ValueError(f"build_vae: modality names must be distinct, got {names}")
    return modalities


@dataclass(frozen=True, eq=False)
class VAE:
    """A (conditional) VAE: the specification, the networks at initialization, and the NumPyro model.

    Calling the object runs the NumPyro model ``vae(data, condition=None, *, batch_size=None)``;
    :attr:`guide` is its amortized guide. Build one with :func:`build_vae`; fit it with
    ``inference.fit(vae, *vae.args(data), guide=vae.guide, objective="meanfield_elbo", batch_size=B)``
    and wrap the result with :meth:`VAEFit.from_result`.

    Model arguments
    ---------------
    data : dict of str to array
        ``{modality name: array (N, D_m)}``.
    condition : array (N, C), optional
        The condition of each row (conditional VAE only).
    batch_size : int, optional
        Rows per step (``numpyro.plate`` subsampling); all rows when ``None``.

    Sites: ``z`` (latent, shape ``(B, L)``, in the plate ``point``), one observed site per
    modality (shape ``(B, D_m)``), network parameters ``encoder$params`` and ``decoder$params``,
    per-feature ``<name>_offset`` and, where the likelihood has one, ``<name>_concentration``
    (negative binomial) or ``<name>_scale`` (normal).

    Attributes
    ----------
    modalities : tuple of Modality
    latent_dim : int
        ``L``.
    condition_dim : int
        ``C``; 0 for a plain VAE.
    hidden, depth : int
        Width and number of hidden layers of both MLPs.
    encoder, decoder : equinox.nn.MLP
        The networks at initialization (``D + C -> 2 L`` and ``L + C -> D``, ``D`` the total
        number of features; ``L + C + D -> D`` for an autoregressive decoder).
    seed : int
        Seed of the network initialization.
    autoregressive : bool
        Whether modality ``j`` is decoded from ``z``, ``c`` and the values of modalities
        ``1..j-1`` (see :func:`build_vae`) instead of from ``z`` and ``c`` alone.
    """

    modalities: tuple
    latent_dim: int
    condition_dim: int
    hidden: int
    depth: int
    encoder: Any
    decoder: Any
    seed: int
    autoregressive: bool = False
    _static: dict = field(default_factory=dict, repr=False)

    @property
    def names(self) -> tuple[str, ...]:
        """Modality names, in order."""
        return tuple(m.name for m in self.modalities)

    @property
    def data_dim(self) -> int:
        """Total number of features ``D``."""
        return sum(m.dim for m in self.modalities)

    @property
    def guide(self) -> AmortizedNormalGuide:
        """The amortized Gaussian guide ``q(z | x, c)``."""
        if "guide" not in self._static:
            self._static["guide"] = AmortizedNormalGuide(self)
        return self._static["guide"]

    # -- validation ------------------------------------------------------------------------------

    def check_data(self, data, condition=None, *, where: str = "data") -> tuple[dict, Any]:
        """Validate and convert data (and condition) to JAX arrays; raise ValueError with the fix.

        Parameters
        ----------
        data : dict of str to array_like, or array_like
            ``{name: (N, D_m)}``; a plain array for a single modality.
        condition : array_like (N, C), optional
            Required for a conditional VAE, refused otherwise.
        where : str
            Name of the caller, used in the error sentences.

        Returns
        -------
        (dict of str to jax.Array, jax.Array or None)
        """
        if not isinstance(data, Mapping):
            if len(self.modalities) != 1:
                raise ValueError(
                    f"{where}: this VAE has modalities {list(self.names)}; pass the data as a dict with those keys"
                )
            data = {self.names[0]: data}
        missing = [n for n in self.names if n not in data]
        extra = [n for n in data if n not in self.names]
        if missing or extra:
            raise ValueError(
                f"{where}: the data keys {sorted(data)} do not match the modalities {list(self.names)}; "
                f"{'add ' + ', '.join(missing) if missing else 'remove ' + ', '.join(extra)}"
            )
        out, rows = {}, None
        for m in self.modalities:
            x = np.asarray(data[m.name])
            if x.ndim == 1 and m.dim == 1:
                x = x[:, None]
            if x.ndim != 2 or x.shape[1] != m.dim:
                raise ValueError(
                    f"{where}: modality {m.name!r} must have shape (N, {m.dim}) (rows are data points), got shape "
                    f"{x.shape}; reshape it to (N, {m.dim})"
                )
            if rows is None:
                rows = x.shape[0]
            elif x.shape[0] != rows:
                raise ValueError(
                    f"{where}: modality {m.name!r} has {x.shape[0]} rows and {self.names[0]!r} has {rows}; every "
                    "modality needs one row per data point"
                )
            if x.shape[0] == 0:
                raise ValueError(f"{where}: modality {m.name!r} has no rows; pass at least one data point")
            if not np.issubdtype(x.dtype, np.number) and x.dtype != bool:
                raise ValueError(f"{where}: modality {m.name!r} must be numeric, got dtype {x.dtype}")
            x = x.astype(float)
            if not np.all(np.isfinite(x)):
                bad = int(np.sum(~np.isfinite(x)))
                raise ValueError(f"{where}: modality {m.name!r} has {bad} non-finite values; remove or impute them")
            if m.likelihood == "bernoulli" and not np.all((x == 0) | (x == 1)):
                raise ValueError(
                    f"{where}: modality {m.name!r} has a Bernoulli likelihood but values other than 0 and 1 "
                    f"(e.g. {x[(x != 0) & (x != 1)][0]:g}); binarize it (e.g. x > threshold) or use likelihood='normal'"
                )
            if m.likelihood in _COUNTS and not np.all((x >= 0) & (x == np.round(x))):
                bad = x[(x < 0) | (x != np.round(x))][0]
                raise ValueError(
                    f"{where}: modality {m.name!r} has a {m.likelihood} likelihood but a value that is not a "
                    f"non-negative integer ({bad:g}); pass raw counts, or use likelihood='normal' for transformed data"
                )
            out[m.name] = jnp.asarray(x)
        if self.condition_dim == 0:
            if condition is not None:
                raise ValueError(
                    f"{where}: this VAE takes no condition; build it with build_vae(..., condition_dim=C) for a "
                    "conditional VAE, or drop the condition"
                )
            return out, None
        if condition is None:
            raise ValueError(
                f"{where}: this conditional VAE needs a condition of shape (N, {self.condition_dim}) for every row"
            )
        c = np.asarray(condition, dtype=float)
        if c.ndim == 1 and self.condition_dim == 1:
            c = c[:, None]
        if c.ndim != 2 or c.shape != (rows, self.condition_dim):
            raise ValueError(
                f"{where}: condition must have shape ({rows}, {self.condition_dim}) (one row per data point), got "
                f"shape {c.shape}"
            )
        if not np.all(np.isfinite(c)):
            raise ValueError(f"{where}: condition has non-finite values; every condition must be a finite number")
        return out, jnp.asarray(c)

    # -- networks --------------------------------------------------------------------------------

    def encoder_input(self, data: dict, condition=None):
        """Encoder input ``(..., D + C)``: Bernoulli and normal blocks as given, counts as ``log1p``."""
        parts = [jnp.log1p(data[m.name]) if m.likelihood in _COUNTS else data[m.name] for m in self.modalities]
        if condition is not None:
            parts.append(condition)
        return jnp.concatenate(parts, axis=-1)

    def encode_with(self, encoder, data: dict, condition=None):
        """``(loc, scale)`` of ``q(z | x, c)``, each ``(N, L)``, with the encoder network ``encoder``."""
        out = jax.vmap(encoder)(self.encoder_input(data, condition))
        L = self.latent_dim
        return out[..., :L], jax.nn.softplus(out[..., L:]) + _MIN_SCALE

    def _decoder_input(self, z, condition):
        """Concatenate ``(z, c)`` along the last axis, ``condition`` broadcast against ``z``'s leading axes."""
        if condition is None:
            return z
        return jnp.concatenate([z, jnp.broadcast_to(condition, z.shape[:-1] + (self.condition_dim,))], axis=-1)

    def _head(self, j: int, h, extras: dict):
        """Return the distribution of modality ``j`` (batch shape ``(..., D_j)``) from the decoder output ``h``."""
        m = self.modalities[j]
        start = sum(mm.dim for mm in self.modalities[:j])
        eta = h[..., start : start + m.dim] + extras[f"{m.name}_offset"]
        if m.likelihood == "bernoulli":
            return dist.Bernoulli(logits=eta)
        if m.likelihood == "poisson":
            return dist.Poisson(jnp.exp(jnp.clip(eta, -30.0, 30.0)))
        if m.likelihood == "negative_binomial":
            mean = jnp.exp(jnp.clip(eta, -30.0, 30.0))
            return dist.NegativeBinomial2(mean, extras[f"{m.name}_concentration"])
        return dist.Normal(eta, extras[f"{m.name}_scale"])

    def _run_decoder(self, decoder, inp, j: int | None = None, previous=None):
        """Run the decoder on ``inp = (z, c)`` of shape ``(..., L + C)``; return its output ``(..., D)``.

        For an autoregressive VAE the input also holds ``previous`` (encoder-style values
        ``(..., D)`` of the data) with the blocks of modality ``j`` and later set to zero, so that
        the output block of modality ``j`` depends on modalities ``1..j-1`` only.
        """
        if self.autoregressive:
            start = sum(m.dim for m in self.modalities[:j])
            mask = (jnp.arange(self.data_dim) < start).astype(inp.dtype)
            previous = jnp.broadcast_to(previous, inp.shape[:-1] + (self.data_dim,))
            inp = jnp.concatenate([inp, previous * mask], axis=-1)
        flat = inp.reshape(-1, inp.shape[-1])
        return jax.vmap(decoder)(flat).reshape(inp.shape[:-1] + (self.data_dim,))

    def likelihoods_with(self, decoder, extras: dict, z, condition=None, data=None) -> dict:
        """Decoder distributions ``{name: distribution with batch shape (..., D_m)}`` at latents ``z (..., L)``.

        ``extras`` holds the per-feature parameters (``<name>_offset``, ``<name>_concentration``,
        ``<name>_scale``); ``condition`` is broadcast against ``z``'s leading axes. An
        autoregressive VAE also needs ``data`` (``{name: (..., D_m)}``, broadcast likewise): the
        values that each later modality is conditioned on.
        """
        inp = self._decoder_input(z, condition)
        if not self.autoregressive:
            h = self._run_decoder(decoder, inp)
            return {m.name: self._head(j, h, extras) for j, m in enumerate(self.modalities)}
        if data is None:
            raise ValueError(
                "likelihoods_with: an autoregressive VAE decodes each modality given the earlier ones; pass their "
                "values as data={name: array}"
            )
        previous = self.encoder_input(data)
        return {
            m.name: self._head(j, self._run_decoder(decoder, inp, j, previous), extras)
            for j, m in enumerate(self.modalities)
        }

    def sample_with(self, decoder, extras: dict, z, condition, key) -> dict:
        """Draw every modality once per row of ``z (..., L)``: ``{name: (..., D_m)}``.

        An autoregressive VAE draws the modalities in order, each given the draws before it.
        """
        keys = jax.random.split(key, len(self.modalities))
        if not self.autoregressive:
            out = self.likelihoods_with(decoder, extras, z, condition)
            return {name: d.sample(k) for (name, d), k in zip(out.items(), keys)}
        inp = self._decoder_input(z, condition)
        drawn = {m.name: jnp.zeros(z.shape[:-1] + (m.dim,)) for m in self.modalities}
        for j, m in enumerate(self.modalities):
            previous = self.encoder_input({k: jnp.asarray(v, dtype=z.dtype) for k, v in drawn.items()})
            drawn[m.name] = self._head(j, self._run_decoder(decoder, inp, j, previous), extras).sample(keys[j])
        return drawn

    def _initial_extras(self, data: dict) -> dict:
        """Per-feature parameters at initialization, from the data (see the module docstring)."""
        extras = {}
        for m in self.modalities:
            x = data[m.name]
            mean = jnp.mean(x, axis=0)
            if m.likelihood == "bernoulli":
                p = jnp.clip(mean, 0.01, 0.99)
                extras[f"{m.name}_offset"] = jnp.log(p) - jnp.log1p(-p)
            elif m.likelihood in _COUNTS:
                extras[f"{m.name}_offset"] = jnp.log(mean + 0.1)
                if m.likelihood == "negative_binomial":
                    extras[f"{m.name}_concentration"] = jnp.full(m.dim, 10.0)
            else:
                extras[f"{m.name}_offset"] = mean
                extras[f"{m.name}_scale"] = jnp.maximum(jnp.std(x, axis=0), 1e-3)
        return extras

    def initial_params(self, data, condition=None) -> dict:
        """Every parameter at initialization (constrained), as :func:`inference.fit` would start from ``data``."""
        data, _ = self.check_data(data, condition, where="initial_params")
        params = {
            "encoder$params": eqx.filter(self.encoder, eqx.is_inexact_array),
            "decoder$params": eqx.filter(self.decoder, eqx.is_inexact_array),
        }
        params.update(self._initial_extras(data))
        return params

    def networks(self, params: dict):
        """``(encoder, decoder, extras)`` rebuilt from a parameter dict (a fit's ``params``)."""
        enc = eqx.combine(params["encoder$params"], eqx.filter(self.encoder, eqx.is_inexact_array, inverse=True))
        dec = eqx.combine(params["decoder$params"], eqx.filter(self.decoder, eqx.is_inexact_array, inverse=True))
        extras = {k: jnp.asarray(v) for k, v in params.items() if not k.endswith("$params")}
        return enc, dec, extras

    # -- the NumPyro model -----------------------------------------------------------------------

    def args(self, data, condition=None) -> tuple:
        """The model's positional arguments for :func:`inference.fit`, validated (:meth:`check_data`).

        Returns
        -------
        tuple
            ``(data,)`` or, for a conditional VAE, ``(data, condition)``, as JAX arrays.
        """
        data, condition = self.check_data(data, condition, where="VAE.args")
        return (data,) if condition is None else (data, condition)

    def _rows(self, data, batch_size):
        """``(data as a dict, N, subsample size or None)``; checks ``batch_size``."""
        if not isinstance(data, Mapping):
            data = {self.names[0]: data}
        n = data[self.names[0]].shape[0]
        if batch_size is not None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
                raise ValueError(f"VAE: batch_size must be a positive integer (rows per step) or None, got {batch_size!r}")
            if batch_size >= n:
                batch_size = None
        return data, n, batch_size

    def __call__(self, data: dict, condition=None, *, batch_size: int | None = None):
        """The NumPyro model: ``z_i ~ N(0, I)``, ``x_i ~ p(x | decoder(z_i, c_i))`` for a minibatch of rows."""
        data, n, batch_size = self._rows(data, batch_size)
        decoder = eqx_module("decoder", self.decoder)
        extras = {}
        for m in self.modalities:
            name = f"{m.name}_offset"
            extras[name] = numpyro.param(name, _initial(self, data, name))
            if m.likelihood == "negative_binomial":
                name = f"{m.name}_concentration"
                extras[name] = numpyro.param(name, _initial(self, data, name), constraint=constraints.positive)
            if m.likelihood == "normal":
                name = f"{m.name}_scale"
                extras[name] = numpyro.param(name, _initial(self, data, name), constraint=constraints.positive)
        with numpyro.plate("point", n, subsample_size=batch_size) as idx:
            z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([self.latent_dim]).to_event(1))
            c = None if condition is None else condition[idx]
            batch = {m.name: data[m.name][idx] for m in self.modalities}
            likelihoods = self.likelihoods_with(decoder, extras, z, c, batch)
            for m in self.modalities:
                numpyro.sample(m.name, likelihoods[m.name].to_event(1), obs=batch[m.name])


def _initial(vae, data, name):
    """Lazy initial value of a per-feature parameter (computed only when the parameter is created)."""
    return lambda _: vae._initial_extras(data)[name]


@dataclass(frozen=True, eq=False)
class AmortizedNormalGuide:
    """The amortized guide ``q(z_i | x_i, c_i) = N(mu(x_i, c_i), diag sigma(x_i, c_i)^2)`` of a :class:`VAE`.

    Called with the model's arguments; the encoder's parameters are the site ``encoder$params``.
    It subsamples the same rows as the model (the plate ``point`` is replayed).
    """

    vae: VAE

    def __call__(self, data: dict, condition=None, *, batch_size: int | None = None):
        """Draw ``z`` for a minibatch of rows from the encoder's Gaussian."""
        vae = self.vae
        data, n, batch_size = vae._rows(data, batch_size)
        encoder = eqx_module("encoder", vae.encoder)
        with numpyro.plate("point", n, subsample_size=batch_size) as idx:
            batch = {k: v[idx] for k, v in data.items()}
            c = None if condition is None else condition[idx]
            loc, scale = vae.encode_with(encoder, batch, c)
            numpyro.sample("z", dist.Normal(loc, scale).to_event(1))


def build_vae(
    modalities,
    *,
    latent_dim: int = 2,
    hidden: int = 16,
    depth: int = 1,
    condition_dim: int = 0,
    autoregressive: bool = False,
    seed: int = 0,
) -> VAE:
    """Build a (conditional) VAE with small MLP encoder and decoder.

    Parameters
    ----------
    modalities : Modality, sequence of Modality, or dict
        The data blocks and their likelihoods; a dict reads ``{name: (dim, likelihood)}``, e.g.
        ``{"pixels": (64, "bernoulli")}`` or ``{"rna": (40, "negative_binomial"), "atac": (20,
        "bernoulli")}``.
    latent_dim : int
        Dimension ``L`` of the latent ``z``.
    hidden : int
        Width of each hidden layer (tanh activations).
    depth : int
        Number of hidden layers of each network.
    condition_dim : int
        Size ``C`` of the condition ``c``; positive for a conditional VAE (Sohn et al. 2015).
    autoregressive : bool
        Decode the modalities in order, each given ``z``, ``c`` and the values of the modalities
        before it: ``p(x | z, c) = prod_j p(x_j | z, c, x_1..x_{j-1})``. Without it the
        modalities are independent given ``z`` and ``c``, and count likelihoods (never less
        spread than Poisson) cannot give one block a Poisson marginal and a correlation with
        another (docs/surrogate.md).
    seed : int
        Seed of the network weights.

    Returns
    -------
    VAE
        The model (call it) with its :attr:`VAE.guide`.

    Examples
    --------
    >>> vae = build_vae({"pixels": (64, "bernoulli")}, latent_dim=2)
    >>> vae.guide.vae is vae
    True
    """
    mods = _as_modalities(modalities)
    for label, value, low in (("latent_dim", latent_dim, 1), ("hidden", hidden, 1), ("depth", depth, 0),
                              ("condition_dim", condition_dim, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"build_vae: {label} must be an integer of at least {low}, got {value!r}")
    if not isinstance(autoregressive, bool):
        raise ValueError(f"build_vae: autoregressive must be True or False, got {autoregressive!r}")
    d = sum(m.dim for m in mods)
    k_enc, k_dec = jax.random.split(jax.random.PRNGKey(seed))
    encoder = eqx.nn.MLP(d + condition_dim, 2 * latent_dim, hidden, depth, activation=jnp.tanh, key=k_enc)
    decoder_in = latent_dim + condition_dim + (d if autoregressive else 0)
    decoder = eqx.nn.MLP(decoder_in, d, hidden, depth, activation=jnp.tanh, key=k_dec)
    return VAE(mods, int(latent_dim), int(condition_dim), int(hidden), int(depth), encoder, decoder, int(seed),
               autoregressive)


# -- results -----------------------------------------------------------------------------------------


class Encoding(NamedTuple):
    """The encoder's posterior ``q(z | x, c)`` for some rows.

    Attributes
    ----------
    loc : ndarray, shape (N, L)
        Posterior mean of ``z`` per row.
    scale : ndarray, shape (N, L)
        Posterior sd of ``z`` per row.
    draws : ndarray, shape (S, N, L), or None
        Draws ``z = loc + scale * eps`` when ``num_samples`` was given.
    """

    loc: np.ndarray
    scale: np.ndarray
    draws: np.ndarray | None


class ELBOEstimate(NamedTuple):
    """Held-out ELBO per data point, a lower bound of ``log p(x_i)`` (nats).

    Attributes
    ----------
    per_point : ndarray, shape (N,)
        ``E_q[log p(x_i | z)] - KL(q(z | x_i) || p(z))`` per row, the expectation averaged over
        ``num_samples`` draws of ``eps``, the KL in closed form.
    mean : float
        Mean over rows: the held-out ELBO per data point.
    mc_se : float
        Monte Carlo standard error of ``mean`` (from the spread of the draws; the rows held fixed).
    sd : float
        Standard deviation of ``per_point`` over rows (how much the rows differ).
    num_samples : int
        Draws of ``eps`` per row.
    """

    per_point: np.ndarray
    mean: float
    mc_se: float
    sd: float
    num_samples: int


@dataclass(frozen=True, eq=False)
class VAEFit:
    """A VAE with parameters: a trained one (:meth:`from_result`) or the untrained one (:meth:`untrained`).

    Attributes
    ----------
    vae : VAE
    params : dict
        Constrained parameters (network pytrees under ``encoder$params`` and ``decoder$params``).
    result : inference.FitResult or None
        The fit (loss trace, stop reason, timings); ``None`` for an untrained model. Its
        ``losses`` are minibatch estimates of the negative full-data ELBO.
    num_points : int
        Rows the model was trained on (``N``).
    """

    vae: VAE
    params: dict
    result: Any = None
    num_points: int = 0
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_result(cls, vae: VAE, result) -> VAEFit:
        """Wrap the :class:`inference.FitResult` of ``inference.fit(vae, *vae.args(data), guide=vae.guide, ...)``."""
        if getattr(result, "model", None) is not vae:
            raise ValueError(
                "VAEFit.from_result: the result was not fitted to this VAE; pass the VAE object that was given to fit"
            )
        rows = int(np.shape(next(iter(result.model_args[0].values())))[0])
        return cls(vae, dict(result.params), result, rows)

    @classmethod
    def untrained(cls, vae: VAE, data, condition=None) -> VAEFit:
        """The model at initialization: where ``inference.fit`` starts on ``data``."""
        params = vae.initial_params(data, condition)
        rows = np.shape(next(iter(data.values())) if isinstance(data, Mapping) else data)[0]
        return cls(vae, params, None, int(rows))

    def _jit(self, name, fn):
        """``fn(networks, *args)`` compiled once per VAE (shared by every VAEFit of it), called with this fit's parameters."""
        cache = self.vae._static
        if name not in cache:
            vae = self.vae
            cache[name] = jax.jit(lambda params, *args: fn(vae.networks(params), *args))
        compiled = cache[name]
        return lambda *args: compiled(self.params, *args)

    def encode(self, data, condition=None, *, num_samples: int | None = None, seed: int = 0) -> Encoding:
        """Posterior mean and sd of ``z`` for each row (and ``num_samples`` draws of it).

        Returns
        -------
        Encoding
            ``loc`` and ``scale`` of shape ``(N, L)``; ``draws`` ``(S, N, L)`` or ``None``.
        """
        data, condition = self.vae.check_data(data, condition, where="encode")
        vae = self.vae
        loc, scale = self._jit("encode", lambda nets, d, c: vae.encode_with(nets[0], d, c))(data, condition)
        draws = None
        if num_samples is not None:
            eps = jax.random.normal(jax.random.PRNGKey(seed), (int(num_samples),) + loc.shape)
            draws = np.asarray(loc + scale * eps)
        return Encoding(np.asarray(loc), np.asarray(scale), draws)

    def decode(self, z, condition=None, *, given=None) -> dict:
        """Mean of ``p(x | z, c)`` per modality: probabilities (Bernoulli), means (counts, normal).

        Parameters
        ----------
        z : array_like, shape (..., L)
        condition : array_like, shape (..., C) or (C,), optional
            Broadcast against ``z``'s leading axes.
        given : dict of str to array_like, optional
            Autoregressive VAE only: the values ``{name: (..., D_m)}`` that each modality is
            decoded given (those of the earlier modalities are used). Without them each modality
            is decoded given the decoded means of the earlier ones.

        Returns
        -------
        dict of str to ndarray, each ``(..., D_m)``
        """
        z, condition = self._check_latent(z, condition, "decode")
        vae = self.vae
        if given is not None:
            given = {m.name: jnp.asarray(given[m.name], dtype=float) for m in vae.modalities}

        def mean(d):
            return d.probs if isinstance(d, dist.BernoulliLogits) else d.mean

        def means(nets, z, c, given):
            if given is not None or not vae.autoregressive:
                return {k: mean(d) for k, d in vae.likelihoods_with(nets[1], nets[2], z, c, given).items()}
            inp = vae._decoder_input(z, c)
            out = {m.name: jnp.zeros(z.shape[:-1] + (m.dim,)) for m in vae.modalities}
            for j, m in enumerate(vae.modalities):
                h = vae._run_decoder(nets[1], inp, j, vae.encoder_input(out))
                out[m.name] = mean(vae._head(j, h, nets[2]))
            return out

        return {k: np.asarray(v) for k, v in self._jit("decode", means)(z, condition, given).items()}

    def generate(self, num_samples: int, condition=None, *, z=None, seed: int = 0) -> dict:
        """Draw new data: ``z ~ N(0, I)`` (or the given ``z``), then ``x ~ p(x | z, c)``.

        For a conditional VAE, ``condition`` of shape ``(C,)`` gives ``num_samples`` draws of
        ``p(x | c)``; shape ``(num_samples, C)`` gives one draw per condition.

        Returns
        -------
        dict of str to ndarray, each ``(num_samples, D_m)``
        """
        n = int(num_samples)
        key_z, key_x = jax.random.split(jax.random.PRNGKey(seed))
        if z is None:
            z = jax.random.normal(key_z, (n, self.vae.latent_dim))
        z, condition = self._check_latent(z, condition, "generate")
        if z.shape[0] != n:
            raise ValueError(f"generate: z has {z.shape[0]} rows but num_samples is {n}; pass one z per draw")
        draw = self._jit("generate", self._sampler())
        return {k: np.asarray(v) for k, v in draw(z, condition, key_x).items()}

    def _sampler(self):
        """``draw(networks, z, c, key) -> {name: x}``: one draw of every modality per row of ``z`` (pure)."""
        vae = self.vae

        def draw(nets, z, c, key):
            return vae.sample_with(nets[1], nets[2], z, c, key)

        return draw

    def _check_latent(self, z, condition, where):
        z = jnp.asarray(z, dtype=float)
        if z.ndim < 1 or z.shape[-1] != self.vae.latent_dim:
            raise ValueError(f"{where}: z must have shape (..., {self.vae.latent_dim}), got shape {z.shape}")
        if self.vae.condition_dim == 0:
            if condition is not None:
                raise ValueError(f"{where}: this VAE takes no condition; drop it")
            return z, None
        if condition is None:
            raise ValueError(f"{where}: this conditional VAE needs a condition of shape ({self.vae.condition_dim},)")
        condition = jnp.asarray(condition, dtype=float)
        if condition.shape[-1:] != (self.vae.condition_dim,):
            raise ValueError(
                f"{where}: condition must end in an axis of size {self.vae.condition_dim}, got shape {condition.shape}"
            )
        return z, condition

    def heldout_elbo(self, data, condition=None, *, num_samples: int = 100, seed: int = 0) -> ELBOEstimate:
        """ELBO per data point on (held-out) rows, with its Monte Carlo standard error.

        For each row, ``E_q[log p(x_i | z)]`` is averaged over ``num_samples`` draws
        ``z = loc + scale * eps`` and the Gaussian KL to ``N(0, I)`` is exact; no importance
        weighting, so the estimate is a lower bound of ``log p(x_i)`` in expectation.

        Returns
        -------
        ELBOEstimate
        """
        data, condition = self.vae.check_data(data, condition, where="heldout_elbo")
        S = int(num_samples)
        if S < 2:
            raise ValueError(f"heldout_elbo: num_samples must be at least 2 (for the standard error), got {S}")
        vae = self.vae

        def per_draw(nets, d, c, key):
            enc, dec, extras = nets
            loc, scale = vae.encode_with(enc, d, c)
            eps = jax.random.normal(key, (S,) + loc.shape)
            z = loc + scale * eps
            lik = vae.likelihoods_with(dec, extras, z, c, d)
            loglik = sum(jnp.sum(lik[m.name].log_prob(d[m.name]), -1) for m in vae.modalities)  # (S, N)
            kl = 0.5 * jnp.sum(loc**2 + scale**2 - 1.0 - 2.0 * jnp.log(scale), -1)  # (N,)
            return loglik - kl

        values = np.asarray(self._jit(("elbo", S), per_draw)(data, condition, jax.random.PRNGKey(seed)))
        per_point = values.mean(0)
        n = per_point.size
        mc_se = float(np.sqrt(np.sum(values.var(0, ddof=1) / S)) / n)
        sd = float(per_point.std(ddof=1)) if n > 1 else 0.0
        return ELBOEstimate(per_point, float(per_point.mean()), mc_se, sd, S)

    def reconstruction_accuracy(self, data, condition=None, *, modality: str | None = None) -> float:
        """Share of binary features reconstructed correctly: decode the posterior mean, threshold at 0.5.

        Parameters
        ----------
        modality : str, optional
            The Bernoulli modality to score; the only one by default.
        """
        bern = [m.name for m in self.vae.modalities if m.likelihood == "bernoulli"]
        if modality is None:
            if len(bern) != 1:
                raise ValueError(
                    f"reconstruction_accuracy: name the binary modality (modality=...); Bernoulli modalities: {bern}"
                )
            modality = bern[0]
        if modality not in bern:
            raise ValueError(
                f"reconstruction_accuracy scores binary data, and modality {modality!r} is not a Bernoulli modality "
                f"(those are {bern})"
            )
        checked, c = self.vae.check_data(data, condition, where="reconstruction_accuracy")
        loc = self.encode(checked, None if c is None else np.asarray(c)).loc
        probs = self.decode(loc, None if c is None else np.asarray(c), given=checked)[modality]
        return float(np.mean((probs > 0.5) == (np.asarray(checked[modality]) > 0.5)))

    def local_result(self, data, points=None, condition=None):
        """The fit restricted to chosen rows: a :class:`inference.FitResult` whose model sees only them, all at once.

        Its :meth:`~inference.FitResult.verdict` checks ``q(z | x_i)`` against the exact posterior
        ``p(z | x_i)`` of those rows under the fitted decoder (PSIS k-hat of the amortized guide,
        the amortization gap); its :meth:`~inference.FitResult.to_arviz` has every group
        (posterior, log likelihood, posterior predictive, prior, sample stats) for those rows.
        """
        import dataclasses

        if self.result is None:
            raise ValueError("local_result needs a fitted model; this VAEFit is untrained")
        checked, c = self.vae.check_data(data, condition, where="local_result")
        n = next(iter(checked.values())).shape[0]
        idx = _points(points, n, "local_result")
        sub = {k: v[idx] for k, v in checked.items()}
        args = (sub,) if c is None else (sub, c[idx])
        return dataclasses.replace(self.result, model_args=args, model_kwargs={"batch_size": None}, _cache={})

    def to_arviz(self, data, points=None, condition=None, *, num_samples: int = 500, seed: int = 0):
        """The latent posterior of chosen rows as an ArviZ :class:`xarray.DataTree`.

        Parameters
        ----------
        data : dict or array
            The rows (all of them; ``points`` picks some).
        points : sequence of int, optional
            Row indices; all rows when ``None``.
        num_samples : int
            Draws of ``z`` per row.

        Returns
        -------
        xarray.DataTree
            ``posterior``: ``z`` with dims ``(chain, draw, point, latent)``, one chain, ``point``
            labelled by row index; ``observed_data``: each modality ``(point, <name>_feature)``;
            with ``constant_data`` holding the encoder's ``z_loc`` and ``z_scale`` (``(point,
            latent)``) and, after a fit, ``optimization``: the loss trace ``(chain, step)``.
        """
        import arviz_base
        import xarray as xr

        checked, c = self.vae.check_data(data, condition, where="to_arviz")
        n = next(iter(checked.values())).shape[0]
        idx = _points(points, n, "to_arviz")
        sub = {k: np.asarray(v)[idx] for k, v in checked.items()}
        csub = None if c is None else np.asarray(c)[idx]
        enc = self.encode(sub, csub, num_samples=num_samples, seed=seed)
        coords = {"point": idx, "latent": np.arange(self.vae.latent_dim)}
        dims = {"z": ["point", "latent"]}
        observed = {}
        for m in self.vae.modalities:
            observed[m.name] = sub[m.name]
            dims[m.name] = ["point", f"{m.name}_feature"]
        constant = {"z_loc": enc.loc, "z_scale": enc.scale}
        dims.update({"z_loc": ["point", "latent"], "z_scale": ["point", "latent"]})
        if csub is not None:
            constant["condition"] = csub
            dims["condition"] = ["point", "condition_dim"]
        idata = arviz_base.from_dict(
            {"posterior": {"z": enc.draws[None]}, "observed_data": observed, "constant_data": constant},
            coords=coords,
            dims=dims,
        )
        if self.result is not None:
            losses = np.asarray(self.result.losses, dtype=float)
            ds = xr.Dataset(
                {"loss": (("chain", "step"), losses)},
                coords={"chain": np.arange(losses.shape[0]), "step": np.arange(1, losses.shape[1] + 1)},
            )
            idata["optimization"] = xr.DataTree(ds)
        idata.posterior.attrs.update(
            {
                "inference_library": "vifit",
                "model": "vae",
                "latent_dim": self.vae.latent_dim,
                "likelihoods": ",".join(f"{m.name}:{m.likelihood}" for m in self.vae.modalities),
                "stop_reason": "untrained" if self.result is None else str(self.result.stop_reason),
            }
        )
        return idata


def _points(points, n: int, where: str) -> np.ndarray:
    """Row indices in ``[0, n)`` (all rows for ``None``); negative indices count from the end."""
    idx = np.arange(n) if points is None else np.asarray(points).reshape(-1)
    if idx.size == 0 or not np.issubdtype(idx.dtype, np.integer) or idx.min() < -n or idx.max() >= n:
        raise ValueError(f"{where}: points must be integer row indices in [0, {n}), got {idx.tolist()[:5]}")
    return idx % n


# -- data --------------------------------------------------------------------------------------------


class Digits(NamedTuple):
    """The UCI optical-recognition digits (8x8), binarized, split into training and held-out rows.

    Attributes
    ----------
    train, test : ndarray, shape (N_train, 64), (N_test, 64)
        Pixels in {0, 1} (``pixel > threshold`` of the 0..16 grey levels), row-major 8x8.
    train_labels, test_labels : ndarray of int
        The digit (0-9) of each row.
    """

    train: np.ndarray
    test: np.ndarray
    train_labels: np.ndarray
    test_labels: np.ndarray


def load_digits(*, threshold: int = 8, test_fraction: float = 0.25, num_points: int | None = None,
                seed: int = 0) -> Digits:
    """Load the 1797 UCI optical digits shipped with scikit-learn (no download), binarized and split.

    Source: Alpaydin, E. and Kaynak, C. (1998), Optical Recognition of Handwritten Digits, UCI
    Machine Learning Repository (``sklearn.datasets.load_digits``).

    Parameters
    ----------
    threshold : int
        A pixel is 1 where its grey level (0..16) exceeds this.
    test_fraction : float
        Share of rows held out (a seeded random split).
    num_points : int, optional
        Use only this many rows (a seeded random subset) before splitting.
    seed : int
        Seed of the subset and the split.

    Returns
    -------
    Digits
    """
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as err:
        raise ImportError(
            "load_digits needs scikit-learn, which ships the digits data; install it with pip install 'vifit[digits]'"
        ) from err
    if not 0 < test_fraction < 1:
        raise ValueError(f"load_digits: test_fraction must be in (0, 1), got {test_fraction!r}")
    bunch = _load()
    x = (np.asarray(bunch.data) > threshold).astype(float)
    y = np.asarray(bunch.target, dtype=int)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    if num_points is not None:
        if not 2 <= num_points <= len(x):
            raise ValueError(f"load_digits: num_points must be between 2 and {len(x)}, got {num_points!r}")
        order = order[: int(num_points)]
    n_test = max(1, int(round(test_fraction * len(order))))
    test, train = order[:n_test], order[n_test:]
    return Digits(x[train], x[test], y[train], y[test])


class CellCycleData(NamedTuple):
    """Simulated single-cell-like data with a known cyclic programme.

    Attributes
    ----------
    counts : ndarray, shape (N, G)
        Negative-binomial expression counts.
    accessibility : ndarray, shape (N, P) or None
        Binary accessibility of ``P`` regions driven by the same phase.
    phase : ndarray, shape (N,)
        True phase ``theta`` of each cell, in ``[0, 2 pi)``.
    gene_baseline, gene_amplitude, gene_peak : ndarray, shape (G,)
        ``a_g``, ``b_g`` and ``phi_g`` of the log-mean ``a_g + b_g cos(theta - phi_g)``.
    concentration : float
        Negative-binomial concentration ``r`` (variance ``mu + mu^2 / r``).
    """

    counts: np.ndarray
    accessibility: np.ndarray | None
    phase: np.ndarray
    gene_baseline: np.ndarray
    gene_amplitude: np.ndarray
    gene_peak: np.ndarray
    concentration: float


def simulate_cell_cycle(
    num_cells: int = 600,
    num_genes: int = 40,
    *,
    num_regions: int = 0,
    concentration: float = 5.0,
    seed: int = 0,
) -> CellCycleData:
    """Simulate cells on a cycle: ``theta ~ U(0, 2 pi)``, ``log mu_g = a_g + b_g cos(theta - phi_g)``.

    Counts are ``NegativeBinomial(mean mu_g, concentration r)``, with ``a_g ~ U(0.5, 2.5)``,
    ``b_g ~ U(0.5, 1.5)`` and peak phases ``phi_g ~ U(0, 2 pi)``. With ``num_regions > 0``,
    region ``p`` is open with probability ``sigmoid(2.5 cos(theta - psi_p))``.

    Returns
    -------
    CellCycleData
    """
    for label, value, low in (("num_cells", num_cells, 2), ("num_genes", num_genes, 1), ("num_regions", num_regions, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"simulate_cell_cycle: {label} must be an integer of at least {low}, got {value!r}")
    if not concentration > 0:
        raise ValueError(f"simulate_cell_cycle: concentration must be positive, got {concentration!r}")
    rng = np.random.default_rng(seed)
    theta = rng.uniform(0, 2 * np.pi, num_cells)
    a = rng.uniform(0.5, 2.5, num_genes)
    b = rng.uniform(0.5, 1.5, num_genes)
    phi = rng.uniform(0, 2 * np.pi, num_genes)
    mu = np.exp(a + b * np.cos(theta[:, None] - phi))
    # Gamma-Poisson mixture: NB with mean mu and concentration r.
    counts = rng.poisson(rng.gamma(concentration, mu / concentration)).astype(float)
    access = None
    if num_regions:
        psi = rng.uniform(0, 2 * np.pi, num_regions)
        p = 1.0 / (1.0 + np.exp(-2.5 * np.cos(theta[:, None] - psi)))
        access = (rng.uniform(size=p.shape) < p).astype(float)
    return CellCycleData(counts, access, theta, a, b, phi, float(concentration))


# -- circular statistics -----------------------------------------------------------------------------


def _circular_mean(a):
    return np.arctan2(np.sin(a).mean(), np.cos(a).mean())


def circular_correlation(alpha, beta) -> float:
    r"""Jammalamadaka–SenGupta circular correlation of two angle samples (radians).

    .. math::

        r = \frac{\sum_i \sin(\alpha_i - \bar\alpha) \sin(\beta_i - \bar\beta)}
        {\sqrt{\sum_i \sin^2(\alpha_i - \bar\alpha) \sum_i \sin^2(\beta_i - \bar\beta)}}

    with :math:`\bar\alpha, \bar\beta` the circular means. It is unchanged by rotating either
    sample and changes sign when one is reflected.
    """
    alpha = np.asarray(alpha, dtype=float).ravel()
    beta = np.asarray(beta, dtype=float).ravel()
    if alpha.shape != beta.shape or alpha.size < 2:
        raise ValueError(
            f"circular_correlation needs two angle samples of the same length (at least 2), got {alpha.size} and "
            f"{beta.size}"
        )
    sa = np.sin(alpha - _circular_mean(alpha))
    sb = np.sin(beta - _circular_mean(beta))
    return float(np.sum(sa * sb) / np.sqrt(np.sum(sa**2) * np.sum(sb**2)))


def phase_recovery(latent, phase) -> tuple[float, np.ndarray]:
    """How well a 2-D latent recovers a known phase, up to rotation and reflection.

    The angle of each (centred) latent point, ``atan2(z_2, z_1)``, is compared with the true phase
    by :func:`circular_correlation`; the better of the unreflected and reflected angle is taken.

    Parameters
    ----------
    latent : array_like, shape (N, 2)
        For example the posterior means of ``z``.
    phase : array_like, shape (N,)

    Returns
    -------
    (float, ndarray of shape (N,))
        The circular correlation (in ``[-1, 1]``; 1 is perfect recovery) and the latent angle
        (reflected where that was the better match).
    """
    z = np.asarray(latent, dtype=float)
    if z.ndim != 2 or z.shape[1] != 2:
        raise ValueError(f"phase_recovery needs a 2-D latent of shape (N, 2), got shape {z.shape}")
    z = z - z.mean(0)
    angle = np.arctan2(z[:, 1], z[:, 0])
    r = circular_correlation(angle, phase)
    r_reflected = circular_correlation(-angle, phase)
    return (r, angle) if r >= r_reflected else (r_reflected, -angle)
