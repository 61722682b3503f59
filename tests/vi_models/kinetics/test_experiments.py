"""Real experiments: observables, conditions, temperature laws, doses, hierarchy, and their errors."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from numpyro.infer.util import log_density

from vi_models import kinetics
from vi_models.kinetics.conditions import R_GAS, TemperatureLaw, temperature_rate

ROOT = Path(__file__).resolve().parents[3]


def _fit(m, seed=0, **kw):
    from inference import fit

    return fit(m, guide="multivariate_normal", seed=seed, progress=False, **kw)


def _within(result, truth, n_sd=3.0):
    draws = result.sample(2000, seed=1)
    for name, value in truth.items():
        x = np.asarray(draws[name], dtype=float).reshape(2000, -1)
        mean, sd = x.mean(0), x.std(0)
        z = np.abs(mean - np.asarray(value)) / sd
        assert np.all(z < n_sd), f"{name}: mean {mean}, sd {sd}, truth {value}"


# -- expressions --------------------------------------------------------------------------------


def test_expression_precedence_and_functions():
    e = kinetics.Expression.parse("-a + b * c ^ 2 / 4 - exp(log(d)) + 2 ** 3")
    assert e.names == ("a", "b", "c", "d")
    v = float(e.evaluate({"a": 1.0, "b": 2.0, "c": 3.0, "d": 5.0}))
    assert v == pytest.approx(-1 + 2 * 9 / 4 - 5 + 8)


@pytest.mark.parametrize(
    "text, words",
    [
        ("__import__('os')", "unexpected character"),
        ("A +", "expected a number"),
        ("(A + B", r"expected '\)'"),
        ("sin(A)", "unknown function 'sin'"),
        ("A B", "unexpected 'B'"),
    ],
)
def test_expression_syntax_errors_are_sentences(text, words):
    with pytest.raises(kinetics.ExpressionError, match=words):
        kinetics.Expression.parse(text, what="observable 'Y'")


# -- observables ----------------------------------------------------------------------------------

ABS_KW = dict(
    observables={"A280": "eps_A * A + eps_B * B + base"},
    initial={"A": [1.0, 0.5], "B": 0.0},
    priors={"eps_A": "LogNormal(0, 1)", "eps_B": "LogNormal(0, 1)", "base": "Normal(0, 0.5)"},
)
ABS_TRUTH = {"k": 0.4, "eps_A": 1.5, "eps_B": 0.3, "base": 0.05, "sigma": 0.005}


@pytest.fixture(scope="module")
def absorbance_template():
    t = np.linspace(0, 8, 15)
    return kinetics.Dataset.from_arrays([t, t], [{"A280": np.ones_like(t)}] * 2)


def test_absorbance_with_unknown_baseline_recovers_truth(absorbance_template):
    m = kinetics.model("A -> B : k", absorbance_template, **ABS_KW)
    assert isinstance(m, kinetics.ExperimentModel)
    assert m.latent_sites == ("k", "eps_A", "eps_B", "base", "sigma")
    data = m.synthetic(ABS_TRUTH, seed=2)
    _within(_fit(kinetics.model("A -> B : k", data, **ABS_KW)), ABS_TRUTH)


def test_observable_naming_unknown_name_says_so(absorbance_template):
    kw = dict(ABS_KW, observables={"A280": "eps_A * A + esp_B * B + base"})
    with pytest.raises(kinetics.ExpressionError, match=r"names 'esp_B'.*did you mean 'eps_B'"):
        kinetics.model("A -> B : k", absorbance_template, **kw)


def test_unexplained_column_says_what_to_write(absorbance_template):
    with pytest.raises(ValueError, match="neither a species of the mechanism"):
        kinetics.model("A -> B : k", absorbance_template, initial={"A": 1.0}, conditions={"T": [300, 310]})


def test_per_observable_noise_has_its_own_sigma():
    t = np.linspace(0, 5, 8)
    data = kinetics.Dataset.from_arrays(t, {"A": np.exp(-0.5 * t), "B": 1 - np.exp(-0.5 * t) + 0.01})
    m = kinetics.model("A -> B : k", data, initial={"A": 1.0, "B": 0.0}, noise={"A": "normal", "B": "proportional"})
    assert m.latent_sites == ("k", "sigma_A", "sigma_B")
    lp, tr = log_density(m, (), {}, {"k": 0.5, "sigma_A": 0.01, "sigma_B": 0.1})
    assert {"obs_normal", "obs_proportional"} <= set(tr)
    assert np.isfinite(float(lp))


# -- conditions and temperature laws -----------------------------------------------------------------


def test_temperature_laws_formulas():
    p = {"k": 2.0, "Ea": 50e3, "dH": 70e3, "dS": -20.0}
    arr = TemperatureLaw("k", "arrhenius", ("k", "Ea"))
    assert float(temperature_rate(arr, p, 300.0, 300.0)) == pytest.approx(2.0)
    assert float(temperature_rate(arr, p, 310.0, 300.0)) == pytest.approx(2.0 * math.exp(-50e3 / R_GAS * (1 / 310 - 1 / 300)))
    ey = TemperatureLaw("k_dH", "eyring", ("dH", "dS"))
    expected = 1.380649e-23 * 300 / 6.62607015e-34 * math.exp(-20 / R_GAS - 70e3 / (R_GAS * 300))
    assert float(temperature_rate(ey, p, 300.0, 0.0)) == pytest.approx(expected, rel=1e-12)


@pytest.fixture(scope="module")
def temperature_series():
    t = np.linspace(0, 10, 12)
    template = kinetics.Dataset.from_arrays([t] * 4, [{"A": np.ones_like(t)}] * 4)
    conds = {"T": [290.0, 300.0, 310.0, 320.0]}
    m = kinetics.model("A -> B : arrhenius(k, Ea)", template, conditions=conds, initial={"A": 1.0})
    return m, conds


def test_arrhenius_temperature_series_recovers_truth(temperature_series):
    m, conds = temperature_series
    assert m.T_ref == pytest.approx(305.0)
    assert m.latent_sites == ("k", "Ea", "sigma")
    truth = {"k": 0.3, "Ea": 60e3, "sigma": 0.01}
    data = m.synthetic(truth, seed=1)
    _within(_fit(kinetics.model("A -> B : arrhenius(k, Ea)", data, conditions=conds, initial={"A": 1.0})), truth)


@pytest.mark.slow
def test_arrhenius_90_percent_intervals_cover(temperature_series):
    m, conds = temperature_series
    truth = {"k": 0.3, "Ea": 60e3, "sigma": 0.01}
    hits, n = 0, 0
    for seed in range(10):
        data = m.synthetic(truth, seed=100 + seed)
        r = _fit(kinetics.model("A -> B : arrhenius(k, Ea)", data, conditions=conds, initial={"A": 1.0}))
        draws = r.sample(2000, seed=1)
        for name in ("k", "Ea"):
            lo, hi = np.quantile(np.asarray(draws[name]), [0.05, 0.95])
            hits += int(lo <= truth[name] <= hi)
            n += 1
    # 20 intervals at 90%: expect 18; fewer than 14 happens with probability < 0.5%.
    assert hits >= 14, f"{hits} of {n} intervals cover the truth"


def test_read_csv_conditions_and_initial_from_columns(tmp_path):
    path = tmp_path / "runs.csv"
    rows = ["run,t,A,T,A0"]
    for run, (T, a0) in enumerate([(300, 1.0), (320, 2.0)]):
        for t in (0, 1, 2, 3):
            rows.append(f"{run},{t},{a0 * math.exp(-0.3 * t):.5f},{T},{a0}")
    path.write_text("\n".join(rows) + "\n")
    m = kinetics.model(
        "A -> B : arrhenius(k, Ea)", path, conditions=["T", "A0"], initial={"A": "A0"}, T_ref=310.0
    )
    assert m.dataset.species == ("A",)
    np.testing.assert_allclose(m.conditions.values["T"], [300.0, 320.0])
    np.testing.assert_allclose(m.known_initial[:, 0], [1.0, 2.0])
    assert m.T_ref == 310.0


def test_condition_missing_on_some_rows_names_the_lines(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("run,t,A,T\n0,0,1.0,300\n0,1,0.7,\n1,0,1.0,310\n1,1,0.6,310\n")
    with pytest.raises(kinetics.DataError, match=r"column 'T'.*missing on 1 row \(line 3\)"):
        kinetics.read_csv(path, ["T"])


def test_condition_changing_within_an_experiment_is_refused(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("run,t,A,T\n0,0,1.0,300\n0,1,0.7,301\n")
    with pytest.raises(kinetics.DataError, match="one value per experiment"):
        kinetics.read_csv(path, ["T"])


def test_temperature_law_without_temperature_column_says_so(absorbance_template):
    t = np.linspace(0, 5, 5)
    data = kinetics.Dataset.from_arrays(t, {"A": np.exp(-t)})
    with pytest.raises(ValueError, match="condition 'T', which the data do not have"):
        kinetics.model("A -> B : arrhenius(k, Ea)", data, initial={"A": 1.0})


# -- doses ---------------------------------------------------------------------------------------------


def test_two_boluses_match_the_closed_form():
    t = np.linspace(0, 24, 25)
    data = kinetics.Dataset.from_arrays([t, t], [{"C": np.ones_like(t)}] * 2)
    m = kinetics.model(
        "Central -> 0 : ke",
        data,
        observables={"C": "Central / V"},
        conditions={"dose": [100.0, 40.0]},
        doses=[kinetics.Dose("Central", "dose", 0.0), {"species": "Central", "amount": 50, "time": [6.0, 12.0]}],
        priors={"V": "LogNormal(log(10), 1)"},
    )
    traj_t = m.simulate({"ke": np.array([0.2]), "V": np.array([8.0]), "sigma": np.array([0.1])}, n_points=49)
    grid = traj_t.times
    for e, (d0, t1) in enumerate([(100.0, 6.0), (40.0, 12.0)]):
        tt = grid[e]
        expected = (d0 * np.exp(-0.2 * tt) + 50 * np.exp(-0.2 * (tt - t1)) * (tt >= t1)) / 8.0
        np.testing.assert_allclose(traj_t.observed[0, e, :, 0], expected, rtol=1e-6, atol=1e-9)


def test_dose_outside_the_data_is_refused():
    t = np.linspace(0, 10, 5)
    data = kinetics.Dataset.from_arrays(t, {"A": np.exp(-t)})
    with pytest.raises(ValueError, match=r"t = 12 in experiment '0', outside its measured times \(0 to 10\)"):
        kinetics.model("A -> B : k", data, initial={"A": 1.0}, doses=[{"species": "A", "amount": 1, "time": 12}])
    with pytest.raises(ValueError, match="no species 'X'"):
        kinetics.model("A -> B : k", data, initial={"A": 1.0}, doses=[{"species": "X", "amount": 1}])


# -- hierarchy -----------------------------------------------------------------------------------------


def _problems():
    spec = importlib.util.spec_from_file_location("problems", ROOT / "benchmarks" / "problems.py")
    problems = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(problems)
    return problems


def test_problem_d_in_the_new_syntax_has_the_hand_written_log_density():
    problems = _problems()
    info = problems.load_problems()
    pri = {name: problems.prior_text(info["priors"][name]) for name in ("mu", "tau", "sigma")}
    m = kinetics.model(
        "A -> B : k",
        str(problems.DATA / "d_hier.csv"),
        initial={"A": 1.0, "B": 0.0},
        hierarchy={"k": "experiment"},
        priors={"k_mu": pri["mu"], "k_tau": pri["tau"], "sigma": pri["sigma"]},
    )
    assert m.latent_sites == ("k_mu", "k_tau", "k_z", "sigma")
    reference = problems.vifit_model("d")
    rng = np.random.default_rng(0)
    for mu, tau, sigma in [(-1.05, 0.3, 0.02), (-0.5, 0.8, 0.05), (0.2, 0.05, 0.3)]:
        z = rng.normal(size=50)
        expected = problems.log_density(reference, {"mu": mu, "tau": tau, "z": z, "sigma": sigma})
        got, _ = log_density(m, (), {}, {"k_mu": mu, "k_tau": tau, "k_z": z, "sigma": sigma})
        assert float(got) == pytest.approx(expected, abs=1e-10, rel=0)


POP_KW = dict(
    observables={"C": "Central / V"},
    hierarchy={"ke": "subject", "V": "subject"},
    doses=[{"species": "Central", "amount": "dose", "time": 0}],
    priors={"V": "LogNormal(log(10), 0.5)", "ke": "LogNormal(log(0.2), 1)"},
    noise="lognormal",
)
POP_TRUTH_SHARED = {"ke_mu": math.log(0.15), "ke_tau": 0.3, "V_mu": math.log(8.0), "V_tau": 0.2, "sigma": 0.1}


def population_template(n_subjects=12, seed=0):
    rng = np.random.default_rng(seed)
    times, values = [], []
    for _ in range(n_subjects):
        t = np.sort(rng.choice(np.arange(1, 25), size=4, replace=False)).astype(float)
        times.append(t)
        values.append({"C": np.ones_like(t)})
    subjects = [f"s{i}" for i in range(n_subjects)]
    doses = rng.choice([50.0, 100.0, 200.0], size=n_subjects)
    return kinetics.Dataset.from_arrays(times, values, experiments=subjects), {"subject": subjects, "dose": doses}


def test_population_of_subjects_recovers_the_population():
    template, conds = population_template()
    m = kinetics.model("Central -> 0 : ke", template, conditions=conds, **POP_KW)
    assert m.latent_sites == ("ke_mu", "ke_tau", "ke_z", "V_mu", "V_tau", "V_z", "sigma")
    rng = np.random.default_rng(5)
    truth = dict(POP_TRUTH_SHARED, ke_z=rng.normal(size=12), V_z=rng.normal(size=12))
    data = m.synthetic(truth, seed=4)
    r = _fit(kinetics.model("Central -> 0 : ke", data, conditions=conds, **POP_KW))
    _within(r, {"ke_mu": truth["ke_mu"], "V_mu": truth["V_mu"], "sigma": 0.1})
    per_subject = m.parameter_values(r.sample(200, seed=0))
    assert per_subject["ke"].shape == (200, 12)


def test_centred_option_and_covariate_sites():
    template, conds = population_template(6)
    conds = dict(conds, weight=np.linspace(50, 100, 6))
    kw = dict(POP_KW, hierarchy={"ke": {"group": "subject", "covariates": ["weight"], "centered": True}})
    m = kinetics.model("Central -> 0 : ke", template, conditions=conds, **kw)
    assert m.latent_sites == ("ke_mu", "ke_tau", "ke_beta_weight", "ke_u", "V", "sigma")
    lp, tr = log_density(
        m, (), {}, {"ke_mu": -2.0, "ke_tau": 0.3, "ke_beta_weight": 0.01, "ke_u": np.full(6, -2.0), "V": 8.0, "sigma": 0.1}
    )
    np.testing.assert_allclose(np.asarray(tr["ke"]["value"]), np.exp(np.full(6, -2.0)))
    assert np.isfinite(float(lp))


def test_hierarchy_errors_are_sentences():
    template, conds = population_template(4)
    one = dict(conds, site=["a"] * 4)
    with pytest.raises(ValueError, match=r"one group only \('a'\); partial pooling needs at least two groups"):
        kinetics.model("Central -> 0 : ke", template, conditions=one, **dict(POP_KW, hierarchy={"ke": "site"}))
    with pytest.raises(ValueError, match="did you mean 'ke'"):
        kinetics.model("Central -> 0 : ke", template, conditions=conds, **dict(POP_KW, hierarchy={"kee": "subject"}))
    with pytest.raises(ValueError, match="did you mean 'group'"):
        kinetics.model(
            "Central -> 0 : ke", template, conditions=conds, **dict(POP_KW, hierarchy={"ke": {"grup": "subject"}})
        )
    with pytest.raises(ValueError, match="not a condition of the data"):
        kinetics.model("Central -> 0 : ke", template, conditions=conds, **dict(POP_KW, hierarchy={"ke": "patient"}))


# -- TOML ----------------------------------------------------------------------------------------------


def test_toml_job_with_real_experiment_sections(tmp_path):
    rows = ["run,t,A280,T"]
    for run, T in enumerate([295, 305, 315]):
        k = 0.3 * math.exp(-50e3 / R_GAS * (1 / T - 1 / 305))
        for t in np.linspace(0, 8, 6):
            a = math.exp(-k * t)
            rows.append(f"{run},{t},{1.5 * a + 0.3 * (1 - a) + 0.05:.5f},{T}")
    (tmp_path / "runs.csv").write_text("\n".join(rows) + "\n")
    config = tmp_path / "fit.toml"
    config.write_text(
        'data = "runs.csv"\nmechanism = "A -> B : arrhenius(k, Ea)"\nconditions = ["T"]\n'
        "[initial]\nA = 1.0\n"
        '[observables]\nA280 = "eps_A * A + eps_B * B + base"\n'
        '[priors]\neps_A = "LogNormal(0, 1)"\neps_B = "LogNormal(0, 1)"\nbase = "Normal(0, 1)"\n'
        '[noise]\nA280 = "normal"\n'
        '[hierarchy]\nk = "experiment"\n'
    )
    job = kinetics.KineticsJob.from_toml(config)
    assert job.model.latent_sites[:4] == ("k_mu", "k_tau", "k_z", "Ea")
    assert "sigma_A280" in job.model.latent_sites
    assert job.describe()["model"]["hierarchy"]["k"]["groups"] == 3
    config.write_text(config.read_text() + "[[doses]]\nspecies = \"A\"\namout = 1\n")
    with pytest.raises(kinetics.ConfigError, match="did you mean 'amount'"):
        kinetics.KineticsJob.from_toml(config)


def _write_subjects(folder, n=4):
    """Sparse samples of C = Central / V after a bolus dose, four subjects, lognormal noise."""
    rng = np.random.default_rng(0)
    rows = ["run,subject,t,C,dose,weight"]
    for i in range(n):
        ke, V = 0.15 * math.exp(0.3 * rng.normal()), 8.0 * math.exp(0.2 * rng.normal())
        dose = [50.0, 100.0, 200.0][i % 3]
        for t in (1.0, 3.0, 8.0, 20.0):
            c = dose / V * math.exp(-ke * t) * math.exp(0.1 * rng.normal())
            rows.append(f"{i},s{i},{t},{c:.5f},{dose},{50 + 10 * i}")
    (folder / "subjects.csv").write_text("\n".join(rows) + "\n")


SUBJECTS_TOML = """\
data = "subjects.csv"
mechanism = "Central -> 0 : ke"
conditions = ["subject", "dose", "weight"]
noise = "lognormal"

[observables]
C = "Central / V"

[priors]
V = "LogNormal(log(10), 0.5)"
ke = "LogNormal(log(0.2), 1)"

[hierarchy]
ke = { group = "subject", covariates = ["weight"] }
V = "subject"

[[doses]]
species = "Central"
amount = "dose"
time = 0
"""


def _vifit(*args, cwd, monkeypatch, capsys):
    """Run ``vifit ARGS`` in this process from the folder ``cwd``: its exit code, stdout and stderr.

    The console script itself is run by ``tests/inference/test_cli.py``; here the point is what
    the command line makes of the TOML tables.
    """
    from inference.outputs import cli

    monkeypatch.chdir(cwd)
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_command_line_fits_a_toml_with_the_real_experiment_tables(tmp_path, monkeypatch, capsys):
    _write_subjects(tmp_path)
    (tmp_path / "fit.toml").write_text(SUBJECTS_TOML)
    code, stdout, stderr = _vifit(
        "fit", "fit.toml", "--out", "out", "--no-progress", "--samples", "50", "--guide", "normal",
        cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys,
    )
    assert code == 0, stdout + stderr
    out = tmp_path / "out"
    for name in ("fit.json", "posterior.nc", "report.html", "summary.csv"):
        assert (out / name).is_file(), name
    assert {p.name for p in (out / "plots").glob("*.png")} >= {"elbo.png", "fit.png", "marginals.png"}
    summary = (out / "summary.csv").read_text()
    for site in ("ke_mu", "ke_tau", "ke_beta_weight", "V_mu", "V_tau", "sigma"):
        assert site in summary, site
    assert "ke_mu" in stdout and "verdict:" in stdout


def test_command_line_refuses_a_typo_in_the_hierarchy_table(tmp_path, monkeypatch, capsys):
    _write_subjects(tmp_path)
    (tmp_path / "fit.toml").write_text(SUBJECTS_TOML.replace('{ group = "subject"', '{ grup = "subject"'))
    code, stdout, stderr = _vifit("fit", "fit.toml", "--out", "out", "--no-progress", cwd=tmp_path,
                                  monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2, stdout + stderr
    assert "unknown key 'grup' in [hierarchy] ke; did you mean 'group'?" in stderr
    assert not (tmp_path / "out").exists()
