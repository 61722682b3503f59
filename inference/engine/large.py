r"""``guide="auto"`` for models with many latent dimensions: MAP, then the mean-field ELBO's fixed point on fresh draws.

A hierarchical model of ``E`` experiments has ``d ~ E`` latent dimensions. The ladder of
:mod:`inference.engine.auto` does not scale to ``d`` in the tens of thousands: the Laplace stage
needs a dense ``d x d`` Hessian (``2 d`` gradient evaluations and ``d^2`` numbers), and the Gaussian
families fitted on fixed draws (DADVI) need ``M ~ 2 (d + 1)`` draws per objective. Above
:data:`LARGE_DIM` dimensions ``auto`` therefore does this instead, every stage linear in ``d``:

1. **MAP** by L-BFGS from the prior median (or the model's data-informed starting values), every
   line search one batch of the target, no Hessian (:func:`find_map_large`).
2. **Diagonal curvature** at the MAP by Hutchinson's estimator,
   :math:`\operatorname{diag}(H) \approx \frac1K \sum_k v_k \odot H v_k` with Rademacher probes
   :math:`v_k` and :math:`H v` by central differences of the exact gradient (``2 K`` gradient
   evaluations whatever ``d``; :func:`diagonal_scales`).
3. **The mean-field Gaussian ELBO maximized on fresh draws** by Newton steps on its fixed-point
   equations (:func:`fit_mean_field`: natural-gradient VI with step 1): new antithetic draws every
   iteration estimate :math:`E_q[\nabla \log p]`, the means move by :math:`s^2 \odot E_q[\nabla
   \log p]` and the precisions are the curvature at the new means. From the MAP this converges in
   a few iterations; the first one moves what the MAP gets wrong for the posterior mean (a noise
   scale, which the local latents' spread raises by many of its own sds). With a learning rate or
   an optimizer given, stochastic VI (Adam by default) continues from there in coordinates
   whitened by the fit, so that one learning rate suits a population mean known to 0.001 and a
   noise scale known to 0.1. (Adam alone, from the same start, keeps every coordinate jittering by
   about the learning rate in its own sds: on 10,000 experiments that raised PSIS k-hat from 0.42
   to 1.66, hence Newton steps by default.)
4. **The verdict** from fewer draws than the ladder's 16000 (``8e6 / d``, at least 1000): each
   draw holds ``d`` numbers and costs a pass over all the data.

Every stage calls the model's one compiled :class:`~inference.engine.target.Target` (with
``devices=``, split along the experiments), at ``num_particles`` points per call (4 by default: the
cost of a call grows with its points, and L-BFGS rarely needs more than four trial steps), the
points of a call evaluated one after another (``make_target(..., chunk=1)``) so that one
point's arrays stay in the processor's caches and the cost per experiment stays flat as plates grow.
Draws of a large model are large too (``n x d``; :meth:`FitResult.sample` of every per-experiment
site, with predictions, multiplies that by the data): :func:`site_moments` reads means and sds
straight from the mean-field parameters.

References
----------
Khan, M. E. and Lin, W. (2017). Conjugate-computation variational inference. AISTATS.

Hutchinson, M. F. (1989). A stochastic estimator of the trace of the influence matrix for Laplacian
smoothing splines. Communications in Statistics - Simulation and Computation 18(3), 1059-1076.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from .checkpoint import FitControl
from .families import Family, make_family
from .posterior import FlatPosterior, public_params
from .result import FitResult, Timings
from .settings import FitSettings
from .stopping import PlateauRule, StopReason

__all__ = [
    "LARGE_DIM", "latent_size", "is_large", "fit_large", "find_map_large", "diagonal_scales", "fit_mean_field",
    "MeanFieldRun", "site_moments", "verdict_draws",
]

#: Above this many unconstrained latent dimensions ``guide="auto"`` takes the path of this module.
LARGE_DIM = 1000

#: Particles per step of the mean-field fit (the compiled batch is ``restarts x particles``).
LARGE_PARTICLES = 4

def latent_size(model, args: tuple, kwargs: dict) -> int | None:
    """Unconstrained latent dimensions of ``model`` from an abstract trace (nothing computed); None if the flat engine cannot hold it.

    The trace is kept for the target built next (:func:`inference.engine.target.find_layout`).
    """
    from .target import find_layout

    try:
        layout, trace = find_layout(model, tuple(args), dict(kwargs))
    except ValueError:
        return None
    subsampled = any(
        s["type"] == "plate" and s["args"][1] is not None and s["args"][1] != s["args"][0] for s in trace.values()
    )
    return None if subsampled else layout.size


def is_large(model, args: tuple, kwargs: dict) -> bool:
    """Whether ``guide="auto"`` fits ``model`` by this module's path (more than :data:`LARGE_DIM` dimensions)."""
    size = latent_size(model, args, kwargs)
    return size is not None and size > LARGE_DIM


def verdict_draws(d: int, requested: int = 16000) -> int:
    """Draws of the verdict of a ``d``-dimensional fit: ``8e6 / d``, at least 1000, at most ``requested``."""
    return int(min(requested, max(1000, 8e6 // max(d, 1))))


def diagonal_scales(target, x: np.ndarray, *, probes: int = 32, step: float = 1e-4, seed: int = 0,
                    fallback: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Mean-field scales ``1 / sqrt(-diag H)`` at ``x`` (Hutchinson's estimator; see the module docstring).

    Returns
    -------
    (ndarray (d,), ndarray of bool (d,))
        The scales, and which coordinates had a usable (negative, finite) curvature estimate; the
        others get ``fallback``.
    """
    d, B = target.dim, target.batch_size
    per_call = max(1, B // 2)
    n = max(per_call, int(math.ceil(probes / per_call)) * per_call)
    rng = np.random.default_rng(seed)
    v = rng.choice(np.array([-1.0, 1.0]), size=(n, d))
    points = np.concatenate([x[None] + step * v, x[None] - step * v], axis=0)
    _, g = target.log_density(points, grad=True)
    hv = (g[:n] - g[n:]) / (2 * step)
    diag = np.mean(v * hv, axis=0)
    ok = np.isfinite(diag) & (diag < 0)
    scales = np.where(ok, 1.0 / np.sqrt(np.where(ok, -diag, 1.0)), fallback)
    return scales, ok


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    # Not BLAS: OpenBLAS's threads wait for cores behind XLA's spinning threads after every call of
    # the target (half a second per dot product measured on 2 busy cores); an elementwise sum does not.
    return float(np.sum(a * b))


def _two_loop(g, S, Y):
    """L-BFGS ascent direction ``H g`` (Nocedal & Wright alg. 7.4), without BLAS."""
    q = g.copy()
    alphas = []
    for s, y in reversed(list(zip(S, Y))):
        rho = 1.0 / _dot(y, s)
        a = rho * _dot(s, q)
        alphas.append((a, rho, s, y))
        q -= a * y
    r = (_dot(S[-1], Y[-1]) / _dot(Y[-1], Y[-1])) * q
    for a, rho, s, y in reversed(alphas):
        r += s * (a - rho * _dot(y, r))
    return r


def find_map_large(target, x: np.ndarray, *, max_iter: int = 500, gtol: float = 1e-3, ftol: float = 1e-9,
                   memory: int = 10, stage=None) -> tuple[np.ndarray, float, int]:
    """The MAP from one start by L-BFGS, every line search in batches of the target (no Hessian, nothing ``d x d``).

    Each line search evaluates ``B`` step lengths ``2, 1, 1/2, ...`` along the L-BFGS direction in
    one call, then ``B`` shorter ones while none satisfies the Armijo condition (at most 8 calls),
    and takes the best that does. It stops when the largest gradient component is below ``gtol``
    or two iterations in a row improve the log density by less than ``ftol (1 + |log p|)``.

    A ``stage`` (:class:`inference.engine.checkpoint.Stage`) is read at every iteration: a
    requested stop ends the search there, its state saved; a saved state is continued from.

    Returns
    -------
    (ndarray (d,), float, int)
        The point, its log density and the iterations taken.
    """
    from .checkpoint import list_arrays, list_restore

    B = target.batch_size
    base = 2.0 ** (1 - np.arange(B))
    x = np.array(x, dtype=float)
    d = x.size
    saved = stage.saved if stage is not None else None
    if saved is not None:
        x, f, g = np.array(saved["x"]), float(saved["f"]), np.array(saved["g"])
        S, Y = list_restore("S", saved), list_restore("Y", saved)
        first, small = int(saved["it"]), int(saved["small"])
    else:
        f, g = target.log_density(x[None], grad=True)
        f, g = float(f[0]), g[0]
        if not np.isfinite(f):
            return x, f, 0
        S, Y = [], []
        first, small = 1, 0

    def snapshot():
        return dict(list_arrays("S", S, d), **list_arrays("Y", Y, d), x=x, f=np.asarray(f), g=g,
                    it=np.asarray(it), small=np.asarray(small))

    it = first - 1
    for it in range(first, max_iter + 1):
        if stage is not None and it > first:
            if stage.stop:
                stage.halt(snapshot)
                it -= 1
                break
            stage.save(snapshot)
        p = _two_loop(g, S, Y) if S else g / max(1.0, math.sqrt(_dot(g, g)))
        if not _dot(p, g) > 0:
            S, Y = [], []
            p = g / max(1.0, math.sqrt(_dot(g, g)))
        slope = _dot(p, g)
        found = None
        for shrink in range(8):
            lengths = base * 2.0 ** (-B * shrink)
            ft, gt = target.log_density(x[None] + lengths[:, None] * p[None], grad=True)
            ok = np.isfinite(ft) & (ft >= f + 1e-4 * lengths * slope)
            if ok.any():
                k = int(np.argmax(np.where(ok, ft, -np.inf)))
                found = (lengths[k], ft[k], gt[k])
                break
        if found is None:
            if not S:
                break
            S, Y = [], []
            continue
        step, f_new, g_new = found
        s, y = step * p, g - g_new
        df = float(f_new) - f
        x, f, g = x + s, float(f_new), g_new
        if _dot(s, y) > 1e-12:
            S.append(s)
            Y.append(y)
            if len(S) > memory:
                S.pop(0)
                Y.pop(0)
        small = small + 1 if abs(df) < ftol * (1 + abs(f)) else 0
        if np.max(np.abs(g)) < gtol or small >= 2:
            break
    return x, f, it


def _whitened_normal(x0: np.ndarray, s0: np.ndarray) -> Family:
    """Mean-field Gaussian in coordinates whitened by ``(x0, s0)``: ``u = x0 + s0 (delta + exp(omega) eps)``."""
    x0, s0 = jnp.asarray(x0), jnp.asarray(s0)
    log_s0 = jnp.sum(jnp.log(s0))
    d = int(x0.shape[0])

    def sample(params, eps):
        sd = jnp.exp(params["omega"])
        u = x0 + s0 * (params["delta"] + sd * eps)
        log_q = -0.5 * jnp.sum(eps**2, axis=-1) - 0.5 * d * math.log(2 * math.pi) - jnp.sum(params["omega"]) - log_s0
        return u, log_q

    def moments(params):
        sd = s0 * jnp.exp(params["omega"])
        return x0 + s0 * params["delta"], jnp.diag(sd**2)

    return Family("normal", d, None, sample, moments)


class MeanFieldRun(NamedTuple):
    """What :func:`fit_mean_field` returns (plain NumPy)."""

    loc: np.ndarray
    scale: np.ndarray
    losses: np.ndarray
    stop_reason: StopReason
    iterations: int
    nonfinite: int


def fit_mean_field(target, loc: np.ndarray, scale: np.ndarray, *, max_iter: int = 40, pairs: int = 16,
                   probes: int = 32, settle: float = 0.1, average: int = 4, seed: int = 0, fallback: float = 0.1,
                   progress: bool = False, stage=None) -> MeanFieldRun:
    r"""The mean-field Gaussian ELBO maximized by Newton steps on its fixed-point equations, on fresh draws.

    The optimum of :math:`\mathcal L(m, s) = E_q[\log p(u)] + \sum_i \log s_i + \text{const}`,
    :math:`q = N(m, \operatorname{diag} s^2)`, solves :math:`E_q[\nabla \log p] = 0` and
    :math:`1/s_i^2 = -E_q[\partial_i^2 \log p]`. Each iteration (natural-gradient VI, Khan & Lin 2017):

    * draws ``pairs`` antithetic pairs :math:`u = m \pm s \odot \epsilon` (new every iteration),
      whose mean gradient :math:`\bar g` estimates :math:`E_q[\nabla \log p]` (the pairs cancel
      its linear part), and whose :math:`\log p(u) - \log q(u)` estimate the ELBO (the loss
      trace);
    * proposes the Newton step :math:`s^2 \odot \bar g` for the means (halved while the density
      at the new means is not finite) and, for the sds, the curvature at the new means
      (:func:`diagonal_scales`: the expected curvature up to the posterior's third derivatives);
    * takes the whole step while the means still move systematically (root mean square over the
      coordinates above ``settle`` sds; the step is halved whenever that grows by half, as the
      diagonal Newton step of strongly coupled coordinates can overshoot), then a step of
      ``1 / (n + 1)`` at the ``n``-th iteration after (the running mean of the proposals: their
      Monte Carlo noise averages out instead of setting a floor).

    It stops (``CONVERGED``) after ``average`` averaging iterations whose proposals stay below
    ``settle`` sds, and reports ``MAX_STEPS`` after ``max_iter``. Each iteration costs
    ``2 pairs + 2 probes + 1`` gradient evaluations, whatever ``d``. A ``stage``
    (:class:`inference.engine.checkpoint.Stage`) is read at every iteration: a requested stop
    ends the fit there (``INTERRUPTED``), its state saved; a saved state is continued from.
    """
    from tqdm.auto import tqdm

    d = target.dim
    losses, nonfinite = [], 0
    stop = StopReason.MAX_STEPS
    rate, previous, averaged = 1.0, math.inf, 0
    first = 0
    saved = stage.saved if stage is not None else None
    if saved is not None:
        loc, scale, losses = np.array(saved["loc"]), np.array(saved["scale"]), list(saved["losses"])
        nonfinite, rate, previous = int(saved["nonfinite"]), float(saved["rate"]), float(saved["previous"])
        averaged, first = int(saved["averaged"]), int(saved["it"])

    def snapshot():
        return dict(loc=loc, scale=scale, losses=np.asarray(losses), nonfinite=np.asarray(nonfinite),
                    rate=np.asarray(rate), previous=np.asarray(previous), averaged=np.asarray(averaged),
                    it=np.asarray(it))

    bar = tqdm(total=max_iter, desc="vifit normal (large)", unit="iteration", disable=None if progress else True,
               leave=False, dynamic_ncols=True)
    try:
        for it in range(first, max_iter):
            if stage is not None and it > first:
                if stage.stop:
                    stage.halt(snapshot)
                    stop = StopReason.INTERRUPTED
                    break
                stage.save(snapshot)
            rng = np.random.default_rng([seed, 7, it])
            half = rng.standard_normal((pairs, d))
            eps = np.concatenate([half, -half])
            u = loc[None] + scale[None] * eps
            logp, g = target.log_density(u, grad=True)
            finite = np.isfinite(logp) & np.all(np.isfinite(g), axis=1)
            log_q = -0.5 * np.sum(eps**2, axis=1) - np.sum(np.log(scale)) - 0.5 * d * math.log(2 * math.pi)
            losses.append(float(-np.mean(logp - log_q)) if finite.all() else float("nan"))
            if not finite.any():
                nonfinite += 1
                stop = StopReason.NONFINITE
                break
            nonfinite += int(not finite.all())
            move = scale**2 * g[finite].mean(axis=0)
            rms = math.sqrt(float(np.mean((move / scale) ** 2)))
            if averaged == 0 and rms > settle:
                if rms > 1.5 * previous:
                    rate *= 0.5
                step = rate
            else:
                averaged += 1
                step = 1.0 / (averaged + 1)
            previous = rms
            move = step * move
            for _ in range(10):
                if np.isfinite(target.log_density((loc + move)[None])[0]):
                    break
                move = 0.5 * move
            else:
                move = np.zeros(d)
            proposal, usable = diagonal_scales(target, loc + move, probes=probes, seed=seed + 1000 + it,
                                               fallback=fallback)
            log_scale = np.log(scale) + step * (np.log(np.where(usable, proposal, scale)) - np.log(scale))
            loc, scale = loc + move, np.exp(log_scale)
            bar.update(1)
            bar.set_postfix_str(f"ELBO {-losses[-1]:.6g}, proposal moves {rms:.3f} sd")
            if averaged >= average:
                stop = StopReason.CONVERGED
                break
    except KeyboardInterrupt:
        stop = StopReason.INTERRUPTED
    finally:
        bar.close()
    return MeanFieldRun(loc, scale, np.asarray(losses), stop, len(losses), nonfinite)


@dataclass(frozen=True, eq=False)
class MeanFieldPosterior(FlatPosterior):
    """A mean-field fit over a large target: guide draws made in NumPy, ``n x d`` numbers and no more.

    (The family's compiled draw program makes 4096 draws at a time: 3.3 GB at ``d = 100,000``.)
    """

    def draw_guide(self, restart: int, seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        loc = np.asarray(self.restart_params["loc"][restart], dtype=float)
        sd = np.logaddexp(0.0, np.asarray(self.restart_params["scale"][restart], dtype=float))
        eps = np.random.default_rng([int(seed), 11]).standard_normal((int(n), loc.size))
        log_q = -0.5 * np.einsum("ij,ij->i", eps, eps) - np.sum(np.log(sd)) - 0.5 * loc.size * math.log(2 * math.pi)
        eps *= sd
        eps += loc
        return eps, log_q


def _default_rule(settings: FitSettings) -> PlateauRule:
    if settings.stopping is not None or settings.min_steps is not None or settings.max_steps is not None:
        return settings.rule
    return PlateauRule(min_steps=200, max_steps=5000, window=100, max_window=1000)


def fit_large(model, args: tuple, kwargs: dict, settings: FitSettings, *, control=None) -> FitResult:
    """``guide="auto"`` for a model with more than :data:`LARGE_DIM` latent dimensions (see the module docstring).

    Parameters
    ----------
    model, args, kwargs
        The model and its data.
    settings : FitSettings
        ``num_particles`` (points per call of the model, default 4 here) and ``devices`` apply;
        ``restarts`` does not (one fit, from the MAP). A learning rate, an optimizer or a stopping
        rule adds stochastic VI from the fixed point (in posterior sds per step; the rule's limits
        apply to it). ``guide_options`` may give ``map_starts`` (0 skips the MAP stage) and
        ``khat_draws``.
    control : inference.engine.checkpoint.FitControl, optional
        The interrupt request and checkpoint: the MAP stage and the mean-field fit are stages of
        the checkpoint, each saved at every iteration it takes and continued on resume.

    Returns
    -------
    FitResult
        A mean-field (``"normal"``) fit with its verdict computed, ``attempts`` (the MAP stage and
        the mean-field fit) and ``settings["guide"] == "auto"``.
    """
    from ..checks.diagnostics import RELIABLE
    from .auto import AUTO_OPTIONS, Attempt
    from .target import make_target
    from .vi import fit_family

    t0 = time.perf_counter()
    options = dict(settings.guide_options)
    unknown = sorted(set(options) - set(AUTO_OPTIONS))
    if unknown:
        raise ValueError(f"guide='auto' has no option {unknown[0]!r}; it takes {', '.join(AUTO_OPTIONS)}")
    map_starts = int(options.get("map_starts", 1))
    khat_draws = int(options.get("khat_draws", 16000))
    P = settings.num_particles or LARGE_PARTICLES
    target = make_target(model, args, kwargs, batch_size=max(2, P), devices=settings.devices, chunk=1)
    d = target.dim
    control = control if control is not None else FitControl()
    control.open(target)
    values = dict(getattr(model, "initial_values", lambda: {})() or {}) if callable(getattr(model, "initial_values", None)) else {}
    attempts = []

    # 1. MAP (no Hessian: d x d is out of reach).
    t = time.perf_counter()
    evals0 = target.num_grad_evals
    centre = target.starts(1, seed=settings.seed, values=values)
    x_map = centre[0]
    if map_starts > 0:
        stage = control.stage("map (large)")
        done = stage.result()
        if done is not None:
            found, log_p, iters = np.array(done["x"]), float(done["f"]), int(done["it"])
        else:
            found, log_p, iters = find_map_large(target, centre[0], stage=stage)
            if not stage.halted:
                stage.finish({"x": found, "f": np.asarray(log_p), "it": np.asarray(iters)})
        if np.isfinite(log_p):
            x_map = found
            outcome = "start"
        else:
            outcome = "failed: no finite log density; the mean-field fit starts at the prior median"
        attempts.append(
            Attempt("map", "not judged", f"MAP by L-BFGS in {iters} iterations, no Hessian "
                    f"(d = {d}: the Laplace approximation needs a {d} x {d} matrix)",
                    log_p, float("nan"), iters, time.perf_counter() - t, outcome,
                    grad_evals=int(target.num_grad_evals - evals0))
        )

    # 2. The mean-field ELBO's fixed point by Newton steps on fresh draws, from the Laplace scales.
    t = time.perf_counter()
    evals0 = target.num_grad_evals
    scales, ok = diagonal_scales(target, x_map, seed=settings.seed, fallback=settings.init_scale)
    if not ok.any():
        scales = np.full(d, settings.init_scale)
    stage = control.stage("mean field (large)")
    done = stage.result()
    if done is not None:
        run = MeanFieldRun(np.array(done["loc"]), np.array(done["scale"]), np.array(done["losses"]),
                           StopReason(str(done["stop"])), int(done["iterations"]), int(done["nonfinite"]))
    elif control.stopped:
        # Stopped before this stage: what was learnt is the MAP and the curvature there.
        run = MeanFieldRun(x_map, scales, np.zeros(0), StopReason.INTERRUPTED, 0, 0)
    else:
        run = fit_mean_field(target, x_map, scales, seed=settings.seed, fallback=settings.init_scale,
                             progress=settings.progress, stage=stage)
        if not stage.halted:
            stage.finish({"loc": run.loc, "scale": run.scale, "losses": run.losses, "stop": np.asarray(str(run.stop_reason)),
                          "iterations": np.asarray(run.iterations), "nonfinite": np.asarray(run.nonfinite)})
    loc, sd, losses = run.loc, run.scale, run.losses[None]
    stop, steps, nonfinite = run.stop_reason, run.iterations, np.array([run.nonfinite])
    compile_s = 0.0
    # 3. With a learning rate or an optimizer given: stochastic VI with it (Adam by default) from there,
    # in coordinates whitened by the fixed point (steps in units of each coordinate's sd).
    if (settings.optimizer is not None or settings.lr is not None) and not control.stopped:
        ff = fit_family(
            target, _whitened_normal(loc, sd), {"delta": np.zeros((1, d)), "omega": np.zeros((1, d))},
            optimizer=settings.make_optimizer(), rule=_default_rule(settings), seed=settings.seed,
            chunk_size=settings.chunk_size, nonfinite_limit=settings.nonfinite_limit, progress=settings.progress,
            desc="vifit normal (large, Adam)", stage=control.stage("adam (large)"),
        )
        loc = loc + sd * np.asarray(ff.params["delta"])[0]
        sd = sd * np.exp(np.asarray(ff.params["omega"])[0])
        losses = np.concatenate([losses, ff.losses], axis=1)
        stop, steps, nonfinite = ff.stop_reason, steps + ff.num_steps, nonfinite + ff.nonfinite
        compile_s = ff.compile_s
    family = make_family("normal", d)
    params = {"loc": loc[None], "scale": np.log(np.expm1(np.maximum(sd, 1e-300)))[None]}
    posterior = MeanFieldPosterior(target, family, params)
    public = public_params(family, params)
    record = dict(
        settings.as_dict(),
        guide="auto",
        chosen_guide="normal",
        ladder=["normal"],
        latent_dimension=d,
        num_particles=P,
        batch_size=target.batch_size,
        engine="flat",
        draws="fresh",
        optimizer="adam" if settings.optimizer is None and settings.lr is not None else
        ("natural-gradient fixed point" if settings.optimizer is None else repr(settings.optimizer)),
        restarts=1,
        large_model=f"d = {d} > {LARGE_DIM}: MAP, then the mean-field ELBO's fixed point on fresh draws",
    )
    if target.placement is not None:
        record["devices"] = target.placement.describe()
    result = FitResult(
        model=model,
        guide=posterior,
        guide_name="normal",
        objective_name="elbo",
        model_args=target.args,
        model_kwargs=target.kwargs,
        params={k: v[0] for k, v in public.items()},
        restart_params=public,
        losses=losses,
        best_restart=0,
        stop_reason=stop,
        num_steps=steps,
        nonfinite_steps=nonfinite,
        nonfinite_reason=None,
        timings=Timings(init_s=t - t0 - target.compile_s, compile_s=target.compile_s + compile_s,
                        run_s=time.perf_counter() - t - compile_s, total_s=time.perf_counter() - t0),
        seed=settings.seed,
        settings=record,
        posterior=posterior,
    )
    fit_seconds = time.perf_counter() - t
    fit_evals = int(target.num_grad_evals - evals0)

    # 4. The verdict, from as many draws as memory allows.
    n = verdict_draws(d, khat_draws)
    diagnosis = result.diagnose(n)
    # FitResult.verdict() asks for 16000 draws by default: hand it this one (it says how many draws it used).
    result._cache[("diagnosis", 16000, None)] = diagnosis
    verdict = diagnosis.verdict
    outcome = (
        "accepted" if verdict.level == RELIABLE else
        f"kept: the only guide fitted above {LARGE_DIM} dimensions ({verdict.level})"
    )
    attempts.append(
        Attempt("normal", verdict.level, verdict.reason, diagnosis.elbo, verdict.khat, steps,
                fit_seconds, outcome, grad_evals=fit_evals)
    )
    record["attempts"] = [a.as_dict() for a in attempts]
    record["grad_evals"] = int(sum(a.grad_evals for a in attempts))
    record["density_evals"] = int(target.num_density_evals)
    record["verdict_draws"] = n
    timings = result.timings._replace(total_s=time.perf_counter() - t0)
    return replace(result, attempts=tuple(attempts), settings=record, timings=timings)


def site_moments(result: FitResult) -> dict:
    """Mean and sd of every latent site in the unconstrained space, from a Gaussian fit's parameters (no draws).

    Positive sites (``tau``, ``sigma``, rates) are on the log scale there. Works for the
    mean-field (``auto_scale``) and full-rank (``auto_scale_tril``) flat fits.

    Returns
    -------
    dict of str to (ndarray, ndarray)
        ``{site: (mean, sd)}``, each of the site's unconstrained shape.
    """
    if result.posterior is None:
        raise ValueError("site_moments needs a fit on the flat engine (a Gaussian guide over the flat vector)")
    layout = result.posterior.target.layout
    loc = np.asarray(result.params["auto_loc"])
    if "auto_scale_tril" in result.params:
        tril = np.asarray(result.params["auto_scale_tril"])
        sd = np.sqrt(np.sum(tril**2, axis=1))
    else:
        sd = np.asarray(result.params["auto_scale"])
        if "auto_cov_factor" in result.params:
            W = np.asarray(result.params["auto_cov_factor"])
            sd = np.sqrt(sd**2 + np.sum(W**2, axis=1))
    out, i = {}, 0
    for name, shape in zip(layout.names, layout.shapes):
        size = int(np.prod(shape))
        out[name] = (loc[i : i + size].reshape(shape), sd[i : i + size].reshape(shape))
        i += size
    return out
