r"""Gillespie's stochastic simulation algorithm (SSA) for small reaction networks, in JAX.

A well-mixed network of species :math:`x \in \mathbb N^S` and mass-action reactions
:math:`r = 1..R` with rate constants :math:`k_r`, reactant orders :math:`\nu_{rs}` and
state change :math:`\Delta_r`, is a continuous-time Markov chain with propensities

.. math::

    a_r(x) = k_r \prod_s \binom{x_s}{\nu_{rs}}.

The direct method (Gillespie 1977) draws the waiting time to the next reaction,
:math:`\tau \sim \mathrm{Exp}(a_0)` with :math:`a_0 = \sum_r a_r`, and which reaction fires,
:math:`P(r) = a_r / a_0`, until the time passes :math:`T`; the state at :math:`T` is one exact draw
of the chemical master equation's solution. Here one trajectory is a ``lax.while_loop``, and many
are ``vmap``-ed (each with its own rate constants if wanted), compiled once per shape.

Networks are written as text, one reaction a line or separated by ``;``::

    0 -> M : k1; M -> 0 : k2; M -> M + P : k3; P -> 0 : k4
    A + B <=> C : kf, kb
    2 A -> A2 : k

(``0`` is the empty side.) :data:`BIRTH_DEATH` and :data:`GENE_EXPRESSION` (the two-stage model of
transcription and translation, Thattai & van Oudenaarden 2001) are built in, with their exact
moments for testing (:func:`birth_death_moments`, :func:`gene_expression_moments`).

References
----------
Gillespie, D. T. (1977). Exact stochastic simulation of coupled chemical reactions. J. Phys.
Chem. 81(25), 2340-2361.

Thattai, M. and van Oudenaarden, A. (2001). Intrinsic noise in gene regulatory networks. PNAS
98(15), 8614-8619.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Network",
    "SSAResult",
    "BIRTH_DEATH",
    "GENE_EXPRESSION",
    "simulate",
    "birth_death_moments",
    "gene_expression_moments",
]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, eq=False)
class Network:
    """A mass-action reaction network.

    Attributes
    ----------
    species : tuple of str
        Species names, in the order of the state vector (``S`` of them).
    rates : tuple of str
        Rate-constant names, one per reaction (``R`` of them), in reaction order.
    reactants, products : ndarray of int, shape (R, S)
        Stoichiometric coefficients of each reaction's left and right side.
    text : str
        The reactions as parsed.
    """

    species: tuple
    rates: tuple
    reactants: np.ndarray
    products: np.ndarray
    text: str = ""
    _compiled: dict = field(default_factory=dict, repr=False)

    @property
    def change(self) -> np.ndarray:
        """State change of each reaction, ``products - reactants``, shape ``(R, S)``."""
        return self.products - self.reactants

    @classmethod
    def parse(cls, text: str) -> Network:
        """Parse reactions such as ``"0 -> M : k1; M -> 0 : k2"`` or ``"A + B <=> C : kf, kb"``.

        Raises
        ------
        ValueError
            With the reaction and what to write instead.
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError("Network.parse needs reactions as text, e.g. '0 -> M : k1; M -> 0 : k2'")
        species: list[str] = []
        rates: list[str] = []
        sides: list[tuple[dict, dict]] = []

        def side(part: str, line: str) -> dict:
            out: dict[str, int] = {}
            part = part.strip()
            if part in {"0", "", "∅"}:
                return out
            for term in part.split("+"):
                m = re.fullmatch(r"\s*(\d+)?\s*([A-Za-z_][A-Za-z0-9_]*)\s*", term)
                if m is None:
                    raise ValueError(
                        f"reaction {line!r}: cannot read the term {term.strip()!r}; write species as names with an "
                        "optional integer coefficient, e.g. '2 A + B', and '0' for nothing"
                    )
                coef = int(m.group(1) or 1)
                name = m.group(2)
                if name not in species:
                    species.append(name)
                out[name] = out.get(name, 0) + coef
            return out

        for line in re.split(r"[;\n]", text):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.count(":") != 1:
                raise ValueError(f"reaction {line!r} needs one ':' before its rate constant(s), e.g. 'A -> B : k'")
            body, names = (p.strip() for p in line.split(":"))
            names = [n.strip() for n in names.split(",")]
            for n in names:
                if not _NAME.match(n):
                    raise ValueError(f"reaction {line!r}: the rate-constant name {n!r} is not a name; use e.g. k1")
            if "<=>" in body:
                left, right = body.split("<=>")
                if len(names) != 2:
                    raise ValueError(f"reversible reaction {line!r} needs two rate constants, e.g. ': kf, kb'")
                lhs, rhs = side(left, line), side(right, line)
                sides += [(lhs, rhs), (rhs, lhs)]
                rates += names
            elif "->" in body:
                left, right = body.split("->", 1)
                if len(names) != 1:
                    raise ValueError(f"reaction {line!r} needs one rate constant, e.g. ': k'")
                sides.append((side(left, line), side(right, line)))
                rates += names
            else:
                raise ValueError(f"reaction {line!r} needs an arrow: '->' (irreversible) or '<=>' (reversible)")
        if len(set(rates)) != len(rates):
            raise ValueError(f"every reaction needs its own rate constant; {rates} repeats a name")
        if not species:
            raise ValueError(f"the network {text!r} has no species")
        R, S = len(sides), len(species)
        reactants = np.zeros((R, S), dtype=int)
        products = np.zeros((R, S), dtype=int)
        for r, (lhs, rhs) in enumerate(sides):
            for name, coef in lhs.items():
                reactants[r, species.index(name)] = coef
            for name, coef in rhs.items():
                products[r, species.index(name)] = coef
        return cls(tuple(species), tuple(rates), reactants, products, text)

    def propensities(self, x, k):
        """Mass-action propensities ``a_r(x) = k_r prod_s C(x_s, nu_rs)``, shape ``(R,)``."""
        x = jnp.asarray(x)
        nu = jnp.asarray(self.reactants)
        order = int(self.reactants.max(initial=0))
        comb = jnp.ones(nu.shape, dtype=jnp.result_type(float))
        for j in range(order):
            # falling factorial x (x - 1) ... (x - nu + 1) / nu!
            comb = comb * jnp.where(nu > j, jnp.maximum(x - j, 0) / (j + 1), 1.0)
        return jnp.asarray(k) * jnp.prod(comb, axis=-1)

    def _check(self, k, x0, t_end, max_events):
        R, S = len(self.rates), len(self.species)
        k = np.asarray(k, dtype=float)
        if k.shape[-1:] != (R,) or k.ndim > 2:
            raise ValueError(
                f"simulate: rate constants must have shape ({R},) or (n, {R}) in the order {list(self.rates)}, got "
                f"shape {k.shape}"
            )
        if not np.all(np.isfinite(k)) or np.any(k < 0):
            raise ValueError("simulate: rate constants must be finite and non-negative")
        x0 = np.asarray(x0)
        if x0.shape != (S,):
            raise ValueError(f"simulate: x0 must have shape ({S},) in the order {list(self.species)}, got {x0.shape}")
        if not np.all((x0 >= 0) & (x0 == np.round(x0))):
            raise ValueError(f"simulate: x0 must hold non-negative integer molecule counts, got {x0.tolist()}")
        if not (isinstance(t_end, (int, float, np.number)) and math.isfinite(t_end) and t_end > 0):
            raise ValueError(f"simulate: t_end must be a positive time, got {t_end!r}")
        if isinstance(max_events, bool) or not isinstance(max_events, (int, np.integer)) or max_events < 1:
            raise ValueError(f"simulate: max_events must be a positive integer, got {max_events!r}")
        return k, x0.astype(np.int64)

    def _runner(self, max_events: int):
        """Compiled ``run(keys (n, 2), k (n, R), x0 (S,), t_end) -> (x (n, S), events (n,), truncated (n,))``."""
        if max_events not in self._compiled:
            change = jnp.asarray(self.change, dtype=jnp.int64)

            def one(key, k, x0, t_end):
                def cond(state):
                    t, _, _, n, done = state
                    return (~done) & (n < max_events)

                def body(state):
                    t, x, key, n, _ = state
                    key, k_t, k_r = jax.random.split(key, 3)
                    a = self.propensities(x, k)
                    a0 = jnp.sum(a)
                    tau = jax.random.exponential(k_t) / a0  # inf where nothing can happen
                    t_next = t + tau
                    done = t_next > t_end
                    r = jax.random.categorical(k_r, jnp.log(jnp.where(a0 > 0, a, 1.0)))
                    x = jnp.where(done, x, x + change[r])
                    return t_next, x, key, n + jnp.where(done, 0, 1), done

                state = (jnp.zeros(()), x0, key, jnp.zeros((), jnp.int64), jnp.zeros((), bool))
                _, x, _, n, done = jax.lax.while_loop(cond, body, state)
                return x, n, ~done

            self._compiled[max_events] = jax.jit(jax.vmap(one, in_axes=(0, 0, None, None)))
        return self._compiled[max_events]


class SSAResult(NamedTuple):
    """Draws of the state at ``t_end``.

    Attributes
    ----------
    counts : ndarray of int, shape (n, S)
        Molecule counts of each species at ``t_end``, one row per trajectory.
    events : ndarray of int, shape (n,)
        Reactions fired in each trajectory.
    truncated : ndarray of bool, shape (n,)
        Trajectories stopped at ``max_events`` before reaching ``t_end`` (their counts are not
        draws at ``t_end``; raise ``max_events``).
    """

    counts: np.ndarray
    events: np.ndarray
    truncated: np.ndarray


def simulate(
    network: Network,
    k,
    x0,
    t_end: float,
    *,
    num_samples: int | None = None,
    seed: int = 0,
    max_events: int = 100_000,
) -> SSAResult:
    """Draw the state of ``network`` at ``t_end`` by the direct SSA, many trajectories at once.

    Parameters
    ----------
    network : Network
    k : array_like, shape (R,) or (n, R)
        Rate constants in the order of ``network.rates``; a row per trajectory, or one row for
        all ``num_samples`` trajectories.
    x0 : array_like of int, shape (S,)
        Initial molecule counts.
    t_end : float
        The time of the outcome.
    num_samples : int, optional
        Number of trajectories when ``k`` is one row (default 1); must match ``n`` otherwise.
    seed : int
    max_events : int
        Upper bound on reactions per trajectory (a guard; see :attr:`SSAResult.truncated`).

    Returns
    -------
    SSAResult
    """
    k, x0 = network._check(k, x0, t_end, max_events)
    if k.ndim == 2:
        if num_samples is not None and num_samples != k.shape[0]:
            raise ValueError(f"simulate: num_samples={num_samples} but k has {k.shape[0]} rows; give one or match them")
        n = k.shape[0]
    else:
        n = 1 if num_samples is None else int(num_samples)
        if n < 1:
            raise ValueError(f"simulate: num_samples must be a positive integer, got {num_samples!r}")
        k = np.broadcast_to(k, (n, k.size))
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    x, events, truncated = network._runner(int(max_events))(keys, jnp.asarray(k), jnp.asarray(x0), float(t_end))
    return SSAResult(np.asarray(x), np.asarray(events), np.asarray(truncated))


BIRTH_DEATH = Network.parse("0 -> M : k1; M -> 0 : k2")
"""Birth and death of one species: ``0 -> M : k1``, ``M -> 0 : k2``."""

GENE_EXPRESSION = Network.parse("0 -> M : k1; M -> 0 : k2; M -> M + P : k3; P -> 0 : k4")
"""Two-stage gene expression: transcription ``k1``, mRNA decay ``k2``, translation ``k3``, protein decay ``k4``."""


def birth_death_moments(k1: float, k2: float, t: float, m0: int = 0) -> tuple[float, float]:
    """Exact mean and variance of ``M(t)`` of :data:`BIRTH_DEATH` from ``M(0) = m0``.

    ``M(t)`` is a Binomial(m0, e^{-k2 t}) survivor count plus an independent Poisson count with
    mean ``(k1 / k2)(1 - e^{-k2 t})``; at stationarity, Poisson with mean ``k1 / k2``.
    """
    p = math.exp(-k2 * t)
    lam = k1 / k2 * (1.0 - p)
    return m0 * p + lam, m0 * p * (1.0 - p) + lam


def gene_expression_moments(k1: float, k2: float, k3: float, k4: float) -> dict:
    """Exact stationary moments of :data:`GENE_EXPRESSION` (Thattai & van Oudenaarden 2001).

    Returns
    -------
    dict
        ``mean_M = k1/k2``, ``var_M = k1/k2``, ``mean_P = k1 k3 / (k2 k4)``,
        ``var_P = mean_P (1 + k3 / (k2 + k4))`` and ``cov_MP = k1 k3 / (k2 (k2 + k4))``.
    """
    mean_m = k1 / k2
    mean_p = k1 * k3 / (k2 * k4)
    return {
        "mean_M": mean_m,
        "var_M": mean_m,
        "mean_P": mean_p,
        "var_P": mean_p * (1.0 + k3 / (k2 + k4)),
        "cov_MP": k1 * k3 / (k2 * (k2 + k4)),
    }
