r"""Variational fits and MAP over one compiled target: pure steps over NamedTuple state.

Two optimizers drive a :class:`~inference.engine.target.Target`, each calling its one compiled
log density and gradient with batches of ``B`` points:

**Stochastic VI** (:func:`fit_family`). For a family :math:`u = g_\phi(\epsilon)`
(:mod:`inference.engine.families`) the ELBO and its reparameterization gradient are

.. math::

    \mathcal L(\phi) = \mathbb E_\epsilon\big[\log\pi(g_\phi(\epsilon)) - \log q_\phi(g_\phi(\epsilon))\big],
    \qquad
    \nabla_\phi \mathcal L \approx \frac1P \sum_{p=1}^P
      \Big(\frac{\partial g_\phi(\epsilon_p)}{\partial\phi}\Big)^{\!T} \nabla\log\pi(u_p)
      - \nabla_\phi \log q_\phi(g_\phi(\epsilon_p)),

so one step is: the target's gradient at the ``P`` particles of every restart (one call, ``B = R
P`` points), then a small program (no model) that applies the vector-Jacobian product of
:math:`g_\phi`, an optax update and the next draw of noise. Steps whose loss or gradient is not
finite are skipped and counted per restart. The host checks the stopping rule once per chunk.

**Multistart MAP** (:func:`find_map`): L-BFGS (Nocedal & Wright 2006, alg. 7.4) from ``R``
starts at once, on the host, with a line search that tries several step lengths for every
start in one batch of the target; the gradient at the accepted point comes with it.

References
----------
Kingma, D. P. and Welling, M. (2014). Auto-encoding variational Bayes. ICLR.

Nocedal, J. and Wright, S. J. (2006). Numerical Optimization, 2nd ed. Springer.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .checkpoint import list_arrays, list_restore, tree_arrays, tree_restore
from .families import Family
from .stopping import PlateauRule, StopReason, final_window, nonfinite_limit_reached

__all__ = [
    "VIState", "FamilyFit", "MapResult", "fit_family", "fit_family_fixed", "find_map", "laplace_factor",
    "family_fit_arrays", "family_fit_restore", "map_result_arrays", "map_result_restore",
]


class VIState(NamedTuple):
    """State of a stochastic VI run over ``R`` restarts with ``P`` particles each.

    Attributes
    ----------
    params : pytree
        Family parameters, each leaf with leading axis ``R``.
    opt_state : pytree
        The optax state, leading axis ``R``.
    eps : array, shape (R, P, noise_dim)
        The noise of the current step.
    key : PRNGKey
    step : int
        Steps taken.
    losses : array, shape (chunk_size, R)
        Loss (negative ELBO estimate) of each step of the current chunk; NaN when skipped.
    nonfinite : array, shape (R,)
        Skipped steps per restart.
    params_sum : pytree
        Sum of the parameters since the start (iterate averaging on the host).
    """

    params: Any
    opt_state: Any
    eps: jax.Array
    key: jax.Array
    step: jax.Array
    losses: jax.Array
    nonfinite: jax.Array
    params_sum: Any


class FamilyFit(NamedTuple):
    """The result of :func:`fit_family` (plain NumPy data).

    Attributes
    ----------
    params : pytree
        Family parameters per restart (leading axis ``R``), averaged over the final window.
    losses : ndarray, shape (R, num_steps)
    best : int
    stop_reason : StopReason
    num_steps : int
    nonfinite : ndarray, shape (R,)
    grad_evals : int
        Points at which the target's gradient was evaluated.
    seconds : float
    compile_s : float
        Compiling the family's step (no model inside).
    """

    params: Any
    losses: np.ndarray
    best: int
    stop_reason: StopReason
    num_steps: int
    nonfinite: np.ndarray
    grad_evals: int
    seconds: float
    compile_s: float


def family_fit_arrays(ff: FamilyFit) -> dict:
    """A finished :class:`FamilyFit` as named arrays (for a checkpoint)."""
    return dict(
        tree_arrays("params", ff.params),
        losses=ff.losses, best=np.asarray(ff.best), stop_reason=np.asarray(str(ff.stop_reason)),
        num_steps=np.asarray(ff.num_steps), nonfinite=ff.nonfinite, grad_evals=np.asarray(ff.grad_evals),
    )


def family_fit_restore(arrays: dict, like_params) -> FamilyFit:
    """The :class:`FamilyFit` saved by :func:`family_fit_arrays` (``like_params`` gives the tree)."""
    return FamilyFit(
        params=tree_restore("params", arrays, like_params),
        losses=np.array(arrays["losses"]),
        best=int(arrays["best"]),
        stop_reason=StopReason(str(arrays["stop_reason"])),
        num_steps=int(arrays["num_steps"]),
        nonfinite=np.array(arrays["nonfinite"]),
        grad_evals=0,
        seconds=0.0,
        compile_s=0.0,
    )


def map_result_arrays(found: MapResult) -> dict:
    """A finished :class:`MapResult` as named arrays (for a checkpoint)."""
    return {k: np.asarray(v) for k, v in found._asdict().items()}


def map_result_restore(arrays: dict) -> MapResult:
    """The :class:`MapResult` saved by :func:`map_result_arrays`."""
    return MapResult(
        np.array(arrays["locs"]), np.array(arrays["potential"]), np.array(arrays["scale_trils"]), int(arrays["best"]),
        np.array(arrays["iterations"]), np.array(arrays["grad_norm"]), 0,
    )


def _progress_bar(total: int, enabled: bool, desc: str = "vifit"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=None if enabled else True, leave=False, dynamic_ncols=True)


def _programs(family: Family, optimizer, R: int, P: int, d: int, chunk_size: int):
    """The start and update programs of one family (compiled once per family and shape)."""

    def draw(params, eps):
        return jax.vmap(family.sample)(params, eps)

    def start(state):
        u, _ = draw(state.params, state.eps)
        return u.reshape(R * P, d)

    def surrogate(params, eps, g):
        # Its gradient is minus the reparameterization gradient of the ELBO (g = grad log pi(u)).
        u, log_q = family.sample(params, eps)
        return -(jnp.sum(jax.lax.stop_gradient(g) * u) - jnp.sum(log_q)) / P

    def update(state: VIState, logp, grad):
        logp = logp.reshape(R, P)
        g = grad.reshape(R, P, d)
        _, log_q = draw(state.params, state.eps)
        loss = -jnp.mean(logp - log_q, axis=1)
        grads = jax.vmap(jax.grad(surrogate))(state.params, state.eps, g)
        finite = jnp.isfinite(loss) & jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(x).reshape(R, -1), axis=1) for x in jax.tree.leaves(grads)]), axis=0
        )
        grads = jax.tree.map(lambda x: jnp.where(finite.reshape((R,) + (1,) * (x.ndim - 1)), x, 0.0), grads)
        updates, new_opt = jax.vmap(optimizer.update)(grads, state.opt_state, state.params)
        new_params = jax.tree.map(lambda p, u: p + u, state.params, updates)

        def keep(new, old):
            return jnp.where(finite.reshape((R,) + (1,) * (new.ndim - 1)), new, old)

        params = jax.tree.map(keep, new_params, state.params)
        opt_state = jax.tree.map(lambda n, o: keep(n, o) if n.ndim and n.shape[0] == R else n, new_opt, state.opt_state)
        key, sub = jax.random.split(state.key)
        eps = jax.random.normal(sub, state.eps.shape)
        u_next, _ = draw(params, eps)
        losses = state.losses.at[state.step % chunk_size].set(jnp.where(finite, loss, jnp.nan))
        new_state = VIState(
            params,
            opt_state,
            eps,
            key,
            state.step + 1,
            losses,
            state.nonfinite + (~finite).astype(state.nonfinite.dtype),
            jax.tree.map(jnp.add, state.params_sum, params),
        )
        return new_state, u_next.reshape(R * P, d)

    return start, update


def _init_state(family: Family, optimizer, params, R: int, P: int, seed, chunk_size: int) -> VIState:
    opt_state = jax.vmap(optimizer.init)(params)
    key, sub = jax.random.split(jax.random.PRNGKey(seed))
    eps = jax.random.normal(sub, (R, P, family.noise_dim))
    return VIState(
        params,
        opt_state,
        eps,
        key,
        jnp.zeros((), jnp.int32),
        jnp.full((chunk_size, R), jnp.nan),
        jnp.zeros((R,), jnp.int32),
        jax.tree.map(jnp.zeros_like, params),
    )


def fit_family(
    target,
    family: Family,
    init_params,
    *,
    optimizer,
    rule: PlateauRule,
    seed: int = 0,
    chunk_size: int = 100,
    nonfinite_limit: float = 0.1,
    progress: bool = False,
    desc: str = "vifit",
    stage=None,
) -> FamilyFit:
    """Maximize the ELBO of ``family`` against ``target`` from ``init_params`` (one per restart).

    Parameters
    ----------
    target : Target
    family : Family
    init_params : pytree
        Starting parameters, each leaf with leading axis ``R`` (restarts); ``R`` must divide the
        target's batch size ``B``; each restart gets ``P = B / R`` particles.
    optimizer : optax.GradientTransformation
    rule : PlateauRule
    seed : int
    chunk_size : int
        Steps between checks of the stopping rule.
    nonfinite_limit : float
        Stop (``StopReason.NONFINITE``) when more than this fraction of steps (and more than 50)
        were skipped.
    stage : inference.engine.checkpoint.Stage, optional
        Read at every step: a requested stop ends the fit there (``StopReason.INTERRUPTED``);
        the state is saved to its checkpoint periodically and on a stop, and a saved state is
        continued from (the same steps as a fit never interrupted).
    """
    t0 = time.perf_counter()
    R = int(jax.tree.leaves(init_params)[0].shape[0])
    B, d = target.batch_size, target.dim
    if B % R:
        raise ValueError(f"restarts ({R}) must divide the batch size ({B})")
    P = B // R
    start_fn, update_fn = _programs(family, optimizer, R, P, d, chunk_size)

    def begin(params, seed):
        state = _init_state(family, optimizer, params, R, P, seed, chunk_size)
        return state, start_fn(state)

    seed_shape = jax.ShapeDtypeStruct((), jnp.int64)
    begin_c = jax.jit(begin).lower(init_params, seed_shape).compile()
    state, u = begin_c(init_params, np.int64(seed))
    logp_shape = jax.ShapeDtypeStruct((B,), jnp.float64)
    update = jax.jit(update_fn, donate_argnums=0).lower(state, logp_shape, jax.ShapeDtypeStruct((B, d), jnp.float64)).compile()
    t_compiled = time.perf_counter()

    # Host state: the loss trace of whole chunks, the running parameter sums at chunk ends (as
    # many as iterate averaging can use, with the step each was taken at), the plateau count.
    # With ``in_chunk`` steps of the current chunk taken it is all a checkpoint needs to resume.
    keep = math.ceil(rule.max_window / chunk_size) + 2
    chunks: list[np.ndarray] = []
    sums: deque = deque([(0, jax.device_get(state.params_sum))], maxlen=keep)
    steps = in_chunk = plateau = 0
    saved = stage.saved if stage is not None else None
    if saved is not None:
        state = tree_restore("state", saved, state)
        u = np.array(saved["u"])  # as the update program computed it (start_fn may round differently)
        steps, in_chunk, plateau = (int(saved[k]) for k in ("steps", "in_chunk", "plateau"))
        if saved["trace"].shape[1]:
            chunks.append(np.asarray(saved["trace"]))
        sums = deque(
            [(int(at), tree_restore(f"sum{i}", saved, state.params_sum)) for i, at in enumerate(saved["sum_steps"])],
            maxlen=keep,
        )

    def snapshot():
        return dict(
            tree_arrays("state", state),
            u=np.array(u, copy=True),
            steps=np.asarray(steps),
            in_chunk=np.asarray(in_chunk),
            plateau=np.asarray(plateau),
            trace=np.concatenate(chunks, axis=1) if chunks else np.zeros((R, 0)),
            sum_steps=np.asarray([at for at, _ in sums]),
            **{k: v for i, (_, tree) in enumerate(sums) for k, v in tree_arrays(f"sum{i}", tree).items()},
        )

    stop = StopReason.MAX_STEPS
    bar = _progress_bar(rule.max_steps, progress, desc)
    bar.update(steps + in_chunk)
    try:
        while steps < rule.max_steps:
            n = min(chunk_size, rule.max_steps - steps)
            for i in range(in_chunk, n):
                logp, grad = target.value_and_grad(u)
                state, u = update(state, logp, grad)
                if stage is not None and stage.stop:
                    in_chunk = i + 1
                    stop = StopReason.INTERRUPTED
                    break
            if stop == StopReason.INTERRUPTED:
                stage.halt(snapshot)
                break
            in_chunk = 0
            steps += n
            chunk = np.asarray(state.losses)[:n].T  # (R, n)
            chunks.append(chunk)
            sums.append((steps, jax.device_get(state.params_sum)))
            bar.update(n)
            finite = chunk[np.isfinite(chunk)]
            if finite.size:
                bar.set_postfix_str(f"ELBO {-finite.mean():.4g}")
            if nonfinite_limit_reached(int(np.asarray(state.nonfinite).max()), steps, nonfinite_limit):
                stop = StopReason.NONFINITE
                break
            trace = np.concatenate(chunks, axis=1)
            plateau = plateau + 1 if rule.is_plateau(trace) else 0
            if plateau >= rule.patience:
                stop = StopReason.CONVERGED
                break
            if stage is not None:
                stage.save(snapshot)
    finally:
        bar.close()
    if in_chunk:
        # Interrupted within a chunk: its steps so far belong to the trace and the averages.
        chunks.append(np.asarray(state.losses)[:in_chunk].T)
        sums.append((steps + in_chunk, jax.device_get(state.params_sum)))
    trace = np.concatenate(chunks, axis=1) if chunks else np.zeros((R, 0))
    steps = trace.shape[1]
    # Iterate averaging over the final window (whole chunks): the mean of the stationary phase of
    # the optimizer is a lower-variance estimate of the optimum than the last iterate.
    if stop == StopReason.NONFINITE or len(sums) < 2:
        params = jax.device_get(state.params)
    else:
        n_avg = max(1, min(len(sums) - 1, math.ceil(rule.window_length(steps) / chunk_size)))
        (end, last), (begin_at, first) = sums[-1], sums[-1 - n_avg]
        params = jax.tree.map(lambda a, b: (a - b) / (end - begin_at), last, first)
    tail = final_window(trace)
    with np.errstate(all="ignore"):
        final = np.array([np.nanmean(t) if np.isfinite(t).any() else np.inf for t in tail])
    best = int(np.argmin(final)) if R > 1 else 0
    return FamilyFit(
        params=jax.tree.map(np.asarray, params),
        losses=trace,
        best=best,
        stop_reason=stop,
        num_steps=steps,
        nonfinite=np.asarray(state.nonfinite).astype(int),
        grad_evals=steps * B,
        seconds=time.perf_counter() - t0,
        compile_s=t_compiled - t0,
    )


# -- MAP --------------------------------------------------------------------------------------------
class MapResult(NamedTuple):
    """Optima of the log density from several starts, with their Laplace approximations.

    Attributes
    ----------
    locs : ndarray, shape (R, d)
        Unconstrained optimum reached from each start (the flat layout of the target).
    potential : ndarray, shape (R,)
        Minus the log density at each optimum (``inf`` where the start was not finite).
    scale_trils : ndarray, shape (R, d, d)
        Cholesky factor of the inverse of minus the Hessian; NaN where it is not positive definite.
    best : int
        The start with the highest log density.
    iterations : ndarray, shape (R,)
        L-BFGS iterations used.
    grad_norm : ndarray, shape (R,)
        Gradient norm at each optimum.
    grad_evals : int
        Points at which the target's gradient was evaluated (line searches and Hessians included).
    """

    locs: np.ndarray
    potential: np.ndarray
    scale_trils: np.ndarray
    best: int
    iterations: np.ndarray
    grad_norm: np.ndarray
    grad_evals: int = 0

    @property
    def laplace_ok(self) -> bool:
        """Whether the best optimum has a positive definite Hessian."""
        return bool(np.all(np.isfinite(self.scale_trils[self.best])))


def _two_loop(g, S, Y):
    """L-BFGS ascent direction ``H g`` from the pairs ``(s, y)`` (Nocedal & Wright alg. 7.4)."""
    q = g.copy()
    alphas = []
    for s, y in reversed(list(zip(S, Y))):
        rho = 1.0 / (y @ s)
        a = rho * (s @ q)
        alphas.append((a, rho, s, y))
        q -= a * y
    gamma = (S[-1] @ Y[-1]) / (Y[-1] @ Y[-1]) if S else 1.0
    r = gamma * q
    for a, rho, s, y in reversed(alphas):
        b = rho * (y @ r)
        r += s * (a - b)
    return r


STEP_LENGTHS = (1.0, 0.5, 0.2, 0.05)


def step_lengths(batch: int, active: int) -> np.ndarray:
    """Trial step lengths of one line-search pass: :data:`STEP_LENGTHS`, or more when few starts are moving.

    With ``active`` starts and room for ``batch`` points, each start gets ``batch // active``
    trials (at least 4, at most 16): ``2, 1, 1/2, ...`` geometrically, so a straggler uses the
    whole batch instead of padding.
    """
    k = int(min(16, max(len(STEP_LENGTHS), batch // max(active, 1))))
    if k == len(STEP_LENGTHS):
        return np.asarray(STEP_LENGTHS)
    return 2.0 ** (1 - np.arange(k))


def find_map(target, starts: np.ndarray, *, max_iter: int = 200, gtol: float = 1e-6, ftol: float = 1e-10, memory: int = 10,
             hessians: bool = True, stage=None) -> MapResult:
    """Maximize the target's log density from every start at once (batched L-BFGS).

    Each iteration evaluates, for every start still moving, the points ``x + a p`` for several
    step lengths ``a`` (:func:`step_lengths`: as many as fill the batch) and takes, of those that
    satisfy the Armijo condition, the one with the highest log density; the gradient there comes
    with the value. At each
    optimum the Hessian is taken by central differences of the exact gradient
    (:meth:`Target.hessian`), and its Laplace factor (Tierney & Kadane 1986).

    Parameters
    ----------
    target : Target
    starts : ndarray, shape (R, d)
    max_iter : int
    gtol : float
        Stop a start when its largest gradient component is below this.
    ftol : float
        Or when an iteration changes the log density by less than ``ftol (1 + |log p|)``.
    memory : int
        L-BFGS pairs kept.
    hessians : bool
        Take the Laplace factor at every finite optimum (else NaN).
    stage : inference.engine.checkpoint.Stage, optional
        A requested stop ends the search after the current iteration (the optima so far are
        returned); the state is saved to its checkpoint, and a saved state is continued from.
    """
    evals0 = target.num_grad_evals
    x = np.array(starts, dtype=float)
    R, d = x.shape
    saved = stage.saved if stage is not None else None
    if saved is None:
        f, g = target.log_density(x, grad=True)
        active = np.isfinite(f)
        S = [[] for _ in range(R)]
        Y = [[] for _ in range(R)]
        iters = np.zeros(R, dtype=int)
        first = 0
    else:
        x, f, g, active, iters = (np.array(saved[k]) for k in ("x", "f", "g", "active", "iters"))
        S = [list_restore(f"S{r}", saved) for r in range(R)]
        Y = [list_restore(f"Y{r}", saved) for r in range(R)]
        first = int(saved["it"])

    def snapshot():
        pairs = {k: v for r in range(R) for k, v in {**list_arrays(f"S{r}", S[r], d), **list_arrays(f"Y{r}", Y[r], d)}.items()}
        return dict(pairs, x=x, f=f, g=g, active=active, iters=iters, it=np.asarray(it))

    for it in range(first, max_iter):
        if stage is not None and it > first:
            if stage.stop:
                stage.halt(snapshot)
                break
            stage.save(snapshot)
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        lengths = step_lengths(target.batch_size, idx.size)
        K = lengths.size
        dirs = np.zeros((R, d))
        for r in idx:
            p = _two_loop(g[r], S[r], Y[r]) if S[r] else g[r] / max(1.0, np.linalg.norm(g[r]))
            if not p @ g[r] > 0:
                S[r], Y[r] = [], []
                p = g[r] / max(1.0, np.linalg.norm(g[r]))
            dirs[r] = p
        trial = (x[idx, None, :] + lengths[None, :, None] * dirs[idx, None, :]).reshape(-1, d)
        ft, gt = target.log_density(trial, grad=True)
        ft, gt = ft.reshape(idx.size, K), gt.reshape(idx.size, K, d)
        for j, r in enumerate(idx):
            slope = dirs[r] @ g[r]
            ok = np.isfinite(ft[j]) & (ft[j] >= f[r] + 1e-4 * lengths * slope)
            if ok.any():
                k = int(np.argmax(np.where(ok, ft[j], -np.inf)))
            elif np.isfinite(ft[j]).any() and np.nanmax(np.where(np.isfinite(ft[j]), ft[j], -np.inf)) > f[r]:
                k = int(np.nanargmax(np.where(np.isfinite(ft[j]), ft[j], -np.inf)))
            else:
                # No step improves: shrink towards the gradient, and stop after a fresh start fails.
                if not S[r]:
                    active[r] = False
                S[r], Y[r] = [], []
                continue
            s = lengths[k] * dirs[r]
            y = g[r] - gt[j, k]
            df = ft[j, k] - f[r]
            x[r], f[r], g[r] = x[r] + s, ft[j, k], gt[j, k]
            iters[r] = it + 1
            if s @ y > 1e-12:
                S[r].append(s)
                Y[r].append(y)
                if len(S[r]) > memory:
                    S[r].pop(0)
                    Y[r].pop(0)
            if np.max(np.abs(g[r])) < gtol or abs(df) < ftol * (1 + abs(f[r])):
                active[r] = False
    potential = np.where(np.isfinite(f), -f, np.inf)
    best = int(np.argmin(potential))
    trils = np.full((R, d, d), np.nan)
    done = np.flatnonzero(np.isfinite(potential)) if hessians else np.zeros(0, int)
    if done.size:
        # Every optimum's central differences in one pass over the target (2 d points each).
        for r, hess in zip(done, target.hessians(x[done])):
            trils[r] = laplace_factor(hess)
    return MapResult(x, potential, trils, best, iters, np.linalg.norm(g, axis=1), target.num_grad_evals - evals0)


def laplace_factor(hess: np.ndarray) -> np.ndarray:
    """Cholesky factor of :math:`(-H)^{-1}` for the Hessian ``H`` of a log density; NaN if not negative definite."""
    d = hess.shape[0]
    try:
        chol = np.linalg.cholesky(-hess)
        inv = np.linalg.inv(chol)  # (-H)^{-1} = C^{-T} C^{-1}
        return np.linalg.cholesky(inv.T @ inv)
    except np.linalg.LinAlgError:
        return np.full((d, d), np.nan)


# -- the deterministic objective (fixed draws) ---------------------------------------------------------
def fixed_noise(m: int, k: int, seed: int) -> np.ndarray:
    """``m`` standard normal draws in ``R^k`` with exactly zero mean and, where ``m > 2 k``, identity covariance.

    Antithetic pairs ``(e, -e)`` make the sample mean zero; whitening by the sample covariance
    makes the second moments exact. With such draws the fixed-draw ELBO of a Gaussian family is
    exact for a Gaussian posterior (it depends on the draws only through these moments), so the
    fixed sample adds no error there and less elsewhere.
    """
    half = np.random.default_rng(seed).standard_normal(((m + 1) // 2, k))
    eps = np.concatenate([half, -half])[:m]
    eps = eps - eps.mean(axis=0)
    if m // 2 > k:  # the antithetic pairs span the space: whiten
        cov = eps.T @ eps / m
        w, v = np.linalg.eigh(cov)
        eps = eps @ (v / np.sqrt(w)) @ v.T
    else:
        eps = eps / eps.std(axis=0)
    return eps


def fit_family_fixed(
    target,
    family: Family,
    init_params,
    *,
    seed: int = 0,
    max_iter: int = 500,
    tol: float = 1e-7,
    memory: int = 10,
    progress: bool = False,
    stage=None,
) -> FamilyFit:
    r"""Maximize the ELBO estimated on one fixed set of draws, with L-BFGS (DADVI).

    With ``M`` draws :math:`\epsilon_1..\epsilon_M` fixed once (moment-matched,
    :func:`fixed_noise`; ``M`` is the batch size ``B``, or more batches where the noise has more
    than ``B / 2 - 1`` dimensions), the objective

    .. math::

        \hat{\mathcal L}(\phi) = \frac1M \sum_{m=1}^M
            \log\pi\big(g_\phi(\epsilon_m)\big) - \log q_\phi\big(g_\phi(\epsilon_m)\big)

    is deterministic, so a quasi-Newton method with a line search converges in tens of iterations
    and needs no learning rate or noise-aware stopping rule (Giordano, Ingram & Broderick 2024).
    Each evaluation is ``M / B`` calls of the target at the points :math:`g_\phi(\epsilon_m)`; the
    gradient with respect to :math:`\phi` is the vector-Jacobian product of :math:`g_\phi` with
    the target's gradient (a small program without the model). The fixed draws are a sample, so
    the verdict checks the result with fresh draws (PSIS). Restarts run one after the other.

    Parameters
    ----------
    target : Target
    family : Family
    init_params : pytree
        Starting parameters, leading axis ``R``.
    seed : int
        Seed of the fixed draws.
    max_iter : int
        L-BFGS iterations per restart.
    tol : float
        Stop when two iterations in a row improve the objective by less than ``tol (1 + |L|)``.
    memory : int
        L-BFGS pairs kept.
    stage : inference.engine.checkpoint.Stage, optional
        A requested stop ends the fit after the current iteration (``StopReason.INTERRUPTED``);
        the state is saved to its checkpoint, and a saved state is continued from.

    References
    ----------
    Giordano, R., Ingram, M. and Broderick, T. (2024). Black box variational inference with a
    deterministic objective: faster, more accurate, and even more black box. JMLR 25(18), 1-39.
    """
    t0 = time.perf_counter()
    R = int(jax.tree.leaves(init_params)[0].shape[0])
    B, d = target.batch_size, target.dim
    # At least two draws per noise dimension (and a whole number of batches): with fewer, the
    # draws span only part of the space and the fixed-draw objective has no optimum there.
    M = B * -(-max(B, 2 * (family.noise_dim + 1)) // B)
    eps = fixed_noise(M, family.noise_dim, seed)
    first = jax.tree.map(lambda v: np.asarray(v)[0], init_params)
    leaves, treedef = jax.tree.flatten(first)
    shapes = [np.shape(x) for x in leaves]
    sizes = [int(np.prod(s)) for s in shapes]

    def ravel(tree):
        return np.concatenate([np.ravel(np.asarray(x, dtype=float)) for x in jax.tree.leaves(tree)])

    def unravel(phi, xp=jnp):
        parts, i = [], 0
        for shape, size in zip(shapes, sizes):
            parts.append(xp.reshape(phi[i : i + size], shape))
            i += size
        return jax.tree.unflatten(treedef, parts)

    def points(phi):
        return family.sample(unravel(phi), eps)[0]

    def objective(phi, logp, grad):
        def surrogate(phi):
            u, log_q = family.sample(unravel(phi), eps)
            return jnp.mean(jnp.sum(grad * u, axis=1)) - jnp.mean(log_q)

        _, log_q = family.sample(unravel(phi), eps)
        value = jnp.mean(logp) - jnp.mean(log_q)
        return value, jax.grad(surrogate)(phi)

    phi_shape = jax.ShapeDtypeStruct((sum(sizes),), jnp.float64)
    points_c = jax.jit(points).lower(phi_shape).compile()
    objective_c = jax.jit(objective).lower(
        phi_shape, jax.ShapeDtypeStruct((M,), jnp.float64), jax.ShapeDtypeStruct((M, d), jnp.float64)
    ).compile()
    t_compiled = time.perf_counter()

    def evaluate(phi):
        u = points_c(phi)
        if M == B:
            logp, grad = target.value_and_grad(u)
        else:
            logp, grad = target.log_density(np.asarray(u), grad=True)
        value, g = objective_c(phi, logp, grad)
        value, g = float(value), np.asarray(g)
        if not (np.isfinite(value) and np.all(np.isfinite(g))):
            return -np.inf, g
        return value, g

    evals0 = target.num_grad_evals
    results, traces, stops, bad = [], [], [], np.zeros(R, dtype=int)
    saved = stage.saved if stage is not None else None
    first_r = 0
    if saved is not None:
        first_r = int(saved["r"])
        results = [unravel(np.array(v), np) for v in saved["done_phi"]]
        traces = [np.array(saved[f"trace{r}"]) for r in range(first_r)]
        stops = [StopReason(str(v)) for v in saved["done_stop"]]
        bad = np.array(saved["bad"])
    interrupted = False
    for r in range(first_r, R):
        resumed = saved is not None and r == first_r
        if resumed:
            phi, f, g = np.array(saved["phi"]), float(saved["f"]), np.array(saved["g"])
            S, Y = list_restore("S", saved), list_restore("Y", saved)
            small, trace, stop, it0 = int(saved["small"]), list(saved["trace"]), StopReason(str(saved["stop"])), int(saved["it"])
        else:
            phi = ravel(jax.tree.map(lambda v: np.asarray(v)[r], init_params))
            f, g = evaluate(phi)
            trace = [-f]
            S, Y = [], []
            small = 0
            stop = StopReason.MAX_STEPS
            it0 = 0
            if not np.isfinite(f):
                stop = StopReason.NONFINITE
                bad[r] += 1

        def snapshot():
            return dict(
                list_arrays("S", S, phi.size), **list_arrays("Y", Y, phi.size),
                r=np.asarray(r), phi=phi, f=np.asarray(f), g=g, small=np.asarray(small), trace=np.asarray(trace),
                stop=np.asarray(str(stop)), it=np.asarray(it), bad=bad,
                done_phi=np.asarray([ravel(p) for p in results]).reshape(len(results), phi.size),
                done_stop=np.asarray([str(v) for v in stops], dtype=str),
                **{f"trace{k}": t for k, t in enumerate(traces)},
            )

        for it in range(it0, max_iter if np.isfinite(f) else 0):
            if stage is not None and it > it0:
                if stage.stop:
                    stage.halt(snapshot)
                    stop, interrupted = StopReason.INTERRUPTED, True
                    break
                stage.save(snapshot)
            p = _two_loop(g, S, Y) if S else g / max(1.0, np.linalg.norm(g))
            if not p @ g > 0:
                S, Y = [], []
                p = g / max(1.0, np.linalg.norm(g))
            step, accepted = 1.0, False
            for _ in range(30):
                f_new, g_new = evaluate(phi + step * p)
                if np.isfinite(f_new) and f_new >= f + 1e-4 * step * (p @ g):
                    accepted = True
                    break
                step *= 0.5
            if not accepted:
                stop = StopReason.CONVERGED if S else StopReason.NONFINITE
                break
            s, y = step * p, g - g_new
            if s @ y > 1e-12:
                S.append(s)
                Y.append(y)
                if len(S) > memory:
                    S.pop(0)
                    Y.pop(0)
            improvement = f_new - f
            phi, f, g = phi + s, f_new, g_new
            trace.append(-f)
            small = small + 1 if improvement < tol * (1 + abs(f)) else 0
            if small >= 2 or np.max(np.abs(g)) < 1e-6:
                stop = StopReason.CONVERGED
                break
        results.append(unravel(phi, np))
        # The objective after each iteration (the start's value only when no iteration was taken).
        traces.append(np.asarray(trace[1:] if len(trace) > 1 else trace))
        stops.append(stop)
        if interrupted:
            break
    # Restarts not reached before a stop keep their starting parameters (and no trace).
    for r in range(len(results), R):
        phi = ravel(jax.tree.map(lambda v: np.asarray(v)[r], init_params))
        results.append(unravel(phi, np))
        traces.append(np.asarray([np.inf]))
        stops.append(StopReason.INTERRUPTED)
    steps = max(t.size for t in traces)
    losses = np.full((R, steps), np.nan)
    for r, t in enumerate(traces):
        losses[r, : t.size] = t
        losses[r, t.size :] = t[-1]
    final = np.array([t[-1] for t in traces])
    best = int(np.nanargmin(np.where(np.isfinite(final), final, np.inf))) if R > 1 else 0
    params = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *results)
    return FamilyFit(
        params=params,
        losses=losses,
        best=best,
        stop_reason=StopReason.INTERRUPTED if interrupted else stops[best],
        num_steps=steps,
        nonfinite=bad,
        grad_evals=int(target.num_grad_evals - evals0),
        seconds=time.perf_counter() - t0,
        compile_s=t_compiled - t0,
    )
