"""Objectives by name, their errors, the deterministic Trace_ELBO, and process-independent programs."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from numpyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

from inference.engine.objectives import OBJECTIVES, RENYI_ALPHA, OrderedTrace_ELBO, make_objective, parse_objective

ROOT = Path(__file__).resolve().parents[2]
Y = jnp.asarray([0.3, -0.4, 1.2, 0.8, 0.1])


def model(y):
    # Several latent sites (with names whose set order varies between processes), a plate.
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    log_s = numpyro.sample("log_s", dist.Normal(-1.0, 1.0))
    tau = numpyro.sample("tau", dist.HalfNormal(1.0))
    gamma = numpyro.sample("gamma", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu + 0.1 * gamma * tau, jnp.exp(log_s)), obs=y)


@pytest.fixture(scope="module", params=["normal", "multivariate_normal"])
def guide_and_params(request):
    guide = (AutoNormal if request.param == "normal" else AutoMultivariateNormal)(model)
    svi = SVI(model, guide, optax.adam(0.01), Trace_ELBO())
    state = svi.init(jax.random.PRNGKey(3), Y)
    params = svi.get_params(state)
    # Move the guide away from its initial scale so that the sites' terms differ in size.
    params = {k: v + 0.05 * jnp.arange(v.size).reshape(v.shape) if "loc" in k else v for k, v in params.items()}
    return guide, params


@pytest.mark.parametrize("num_particles", [1, 5])
def test_ordered_trace_elbo_equals_numpyro(guide_and_params, num_particles):
    guide, params = guide_and_params
    key = jax.random.PRNGKey(7)

    @jax.jit
    def both(p):
        return [
            jax.value_and_grad(lambda p: cls(num_particles=num_particles).loss(key, p, model, guide, Y))(p)
            for cls in (OrderedTrace_ELBO, Trace_ELBO)
        ]

    (ours, g_ours), (theirs, g_theirs) = both(params)
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-12, atol=1e-12)
    for name in params:
        np.testing.assert_allclose(np.asarray(g_ours[name]), np.asarray(g_theirs[name]), rtol=1e-10, atol=1e-12)


def test_ordered_trace_elbo_per_site_terms(guide_and_params):
    guide, params = guide_and_params
    key = jax.random.PRNGKey(2)
    ours = OrderedTrace_ELBO(sum_sites=False).loss(key, params, model, guide, Y)
    theirs = Trace_ELBO(sum_sites=False).loss(key, params, model, guide, Y)
    assert {"mu", "log_s", "tau", "gamma", "y"} <= set(ours)  # plus guide-only sites (_auto_latent)
    assert set(ours) == set(theirs)
    for name in ours:
        np.testing.assert_allclose(float(ours[name]), float(theirs[name]), rtol=1e-12, atol=1e-12)


def test_names_and_classes():
    assert set(OBJECTIVES) == {"elbo", "trace_elbo", "meanfield_elbo", "renyi", "iwae"}
    elbo = make_objective("elbo", num_particles=4)
    assert isinstance(elbo, OrderedTrace_ELBO) and isinstance(elbo, Trace_ELBO)
    assert elbo.num_particles == 4 and elbo.vectorize_particles is True
    assert isinstance(make_objective("Trace-ELBO"), OrderedTrace_ELBO)
    mf = make_objective("meanfield_elbo", num_particles=3)
    assert isinstance(mf, TraceMeanField_ELBO) and mf.vectorize_particles is True
    renyi = make_objective("renyi", num_particles=6)
    assert isinstance(renyi, RenyiELBO) and renyi.alpha == RENYI_ALPHA == 0.5 and renyi.num_particles == 6
    assert renyi.vectorize_particles is True  # particles through jax.vmap
    assert make_objective("renyi", alpha=0.25).alpha == 0.25
    assert make_objective("renyi:-0.5").alpha == -0.5
    assert make_objective("renyi:0.25", alpha=0.25).alpha == 0.25
    iwae = make_objective("iwae", num_particles=16)
    assert isinstance(iwae, RenyiELBO) and iwae.alpha == 0.0 and iwae.num_particles == 16
    custom = Trace_ELBO()
    assert make_objective(custom) is custom
    assert parse_objective(" Renyi:0.75 ") == ("renyi", 0.75)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("renyi",), {"alpha": 1.0}, "alpha = 1 is the ordinary ELBO.*objective='elbo'"),
        (("renyi:1",), {}, "objective='elbo'"),
        (("iwae",), {"num_particles": 1}, "raise num_particles"),
        (("renyi",), {"num_particles": 1}, "raise num_particles"),
        (("elbo",), {"alpha": 0.5}, "objective='renyi' with alpha=0.5"),
        (("iwae",), {"alpha": 0.5}, "use objective='renyi' with alpha=0.5"),
        (("renyi:0.5",), {"alpha": 0.25}, "give one"),
        (("renyi:half",), {}, "must be a number"),
        (("elbo:0.5",), {}, "only 'renyi' takes an order"),
        (("kl",), {}, "unknown objective 'kl'; use one of elbo"),
        (("elbo",), {"num_particles": 0}, "positive integer"),
        (("renyi",), {"alpha": float("nan")}, "finite number"),
    ],
)
def test_errors_are_sentences(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_objective(*args, **kwargs)
    with pytest.raises(TypeError, match="name"):
        make_objective(3)


def test_iwae_bound_is_tighter_than_the_elbo(guide_and_params):
    """With many particles the IWAE bound (a log-mean of weights) lies above the ELBO (a mean of logs)."""
    guide, params = guide_and_params
    keys = jax.random.split(jax.random.PRNGKey(0), 4)

    @jax.jit
    def losses(keys):
        out = {}
        for name in ("iwae", "renyi", "elbo"):
            obj = make_objective(name, num_particles=64)
            out[name] = jnp.mean(jax.vmap(lambda k: obj.loss(k, params, model, guide, Y))(keys))
        return out

    loss = {name: float(v) for name, v in losses(keys).items()}
    # Losses are negated bounds: iwae <= renyi(0.5) <= elbo (the Renyi bound decreases in alpha).
    assert loss["iwae"] < loss["renyi"] < loss["elbo"]


# -- the compiled chunk is the same program in every process -----------------------------------------

_LOWER = textwrap.dedent(
    """
    import hashlib, os, sys
    os.environ["VIFIT_COMPILATION_CACHE"] = "0"
    sys.path.insert(0, {root!r})
    import jax, jax.numpy as jnp, optax
    import numpyro, numpyro.distributions as dist
    from numpyro.infer import SVI
    import inference
    from inference.engine.guides import make_guide
    from inference.engine.loop import init_state, make_chunk
    from inference.engine.objectives import make_objective
    from vi_models import kinetics

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
        log_s = numpyro.sample("log_s", dist.Normal(-1.0, 1.0))
        tau = numpyro.sample("tau", dist.HalfNormal(1.0))
        gamma = numpyro.sample("gamma", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("y", dist.Normal(mu + 0.1 * gamma * tau, jnp.exp(log_s)), obs=y)

    data = kinetics.Dataset.from_arrays([0.0, 2.0, 4.0, 8.0], {{"S": [10.0, 7.9, 5.9, 2.6]}})
    ode = kinetics.model("S -> P : mm(Vmax, Km)", data, initial={{"S": 10.0, "P": 0.0}})
    y = (jnp.linspace(-1.0, 1.0, 5),)
    runs = [(model, y, "normal", o) for o in ("elbo", "meanfield_elbo", "renyi", "iwae")]
    runs += [(model, y, "multivariate_normal", "elbo"), (ode, (), "multivariate_normal", "elbo")]
    for m, args, g, o in runs:
        svi = SVI(m, make_guide(g, m), optax.adam(0.01), make_objective(o, num_particles=4))
        state = jax.eval_shape(lambda key: init_state(svi, key, args), jax.random.PRNGKey(0))  # no compile
        text = jax.jit(make_chunk(svi, 2, args)).lower(state).as_text()
        print(g, o, "ode" if m is ode else "plain", hashlib.sha256(text.encode()).hexdigest(),
              text.count("python_cpu_callback"))
    """
)


def test_chunk_program_does_not_depend_on_the_hash_seed(tmp_path):
    """The same fit lowered in two processes with different PYTHONHASHSEED gives the same program.

    The persistent compilation cache keys on the program text; with NumPyro's own Trace_ELBO the
    sites are summed in set order and the text changes with the hash seed. The ODE model's
    program must also be free of host callbacks, which JAX never caches.
    """
    script = tmp_path / "lower.py"
    script.write_text(_LOWER.format(root=str(ROOT)))
    outputs = []
    procs = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, JAX_PLATFORMS="cpu")
        procs.append(subprocess.Popen([sys.executable, "-W", "ignore", str(script)], env=env, cwd=str(ROOT),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        outputs.append(out.strip().splitlines())
    first, second = outputs
    assert len(first) == 6
    assert first == second, "\n".join(f"{a}\n{b}" for a, b in zip(first, second) if a != b)
    assert all(line.split()[-1] == "0" for line in first), "a program has host callbacks"
