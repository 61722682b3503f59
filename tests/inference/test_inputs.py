"""Every input refused in words: the defects of the input report, one test each.

Each input below was once accepted, or refused with Python's own words (an AttributeError, a
codec error, ``'<' not supported``) or a traceback. Now it is accepted or refused with a
ValueError / TypeError whose sentence names the place (file, line, column, TOML key, argument)
and the fix; the command line prints ``vifit: error: <sentence>`` and exits 2.
"""

import importlib.util
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from inference import fit
from inference.outputs import cli
from vi_models import kinetics
from vi_models.kinetics import (
    ConfigError,
    DataError,
    KineticsJob,
    PriorError,
    parse_prior,
)

DECAY = "time,A\n0,1.0\n1,0.61\n2,0.37\n3,0.22\n"


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "decay.csv").write_text(DECAY)
    return tmp_path


def job(folder, **changes):
    config = {"data": "decay.csv", "mechanism": "A -> B : k", "initial": {"A": 1.0}}
    config.update(changes)
    return KineticsJob.from_config(config, base_dir=folder)


def toml_job(folder, text):
    path = folder / "fit.toml"
    path.write_text('data = "decay.csv"\nmechanism = "A -> B : k"\n' + text)
    return KineticsJob.from_toml(path)


def quoted_priors(message):
    """The prior texts quoted in a message, e.g. 'LogNormal(log(0.5), 1)'."""
    return [m for m in re.findall(r"'([A-Za-z]+\([^']*\))'", message) if m.split("(")[0] in kinetics.DISTRIBUTIONS]


# -- priors whose support does not fit a positive parameter -----------------------------------


@pytest.mark.parametrize(
    "changes, name",
    [
        ({"priors": {"k": "Normal(0.5, 0.1)"}}, "k"),
        ({"priors": {"sigma": "Normal(0, 1)"}}, "sigma"),
        ({"initial": {"A": "Normal(1, 0.1)"}}, "A0"),
        ({"priors": {"k": "Uniform(-1, 1)"}}, "k"),
        ({"priors": {"k": "StudentT(3, 1, 1)"}}, "k"),
    ],
)
def test_a_prior_on_negative_numbers_for_a_positive_parameter_is_refused(folder, changes, name):
    with pytest.raises(PriorError) as info:
        job(folder, **changes)
    message = str(info.value)
    assert f"prior for {name!r}" in message and "positive" in message
    assert "HalfNormal" in message
    suggested = quoted_priors(message.split(";", 1)[1])
    assert suggested and all(parse_prior(text) is not None for text in suggested)  # the examples are valid


def test_positive_priors_stay_accepted_and_python_refuses_the_same(folder):
    job(folder, priors={"k": "TruncatedNormal(0.5, 1, low=0)", "sigma": "HalfCauchy(1)"})
    data = kinetics.Dataset.from_csv(folder / "decay.csv")
    with pytest.raises(PriorError, match="'k' is a positive parameter"):
        kinetics.model("A -> B : k", data, priors={"k": dist.Normal(0.5, 0.1)}, initial={"A": 1.0})
    with pytest.raises(PriorError, match="'sigma_A' is a noise scale"):
        kinetics.model("A -> B : k", data, priors={"sigma_A": "Normal(0, 1)"}, noise={"A": "normal"}, initial={"A": 1.0})
    # An observable's offset may be negative: a Normal prior stays allowed there.
    kinetics.model(
        "A -> B : k", data, observables={"A": "A + base"}, priors={"base": "Normal(0, 0.1)"}, initial={"A": 1.0}
    )


# -- TOML values of the wrong kind, checked when the configuration is read --------------------


@pytest.mark.parametrize(
    "text, words",
    [
        ("[initial]\nA = true\n", ["[initial] A is true", "not a concentration"]),
        ("[initial]\nA = {x = 1}\n", ["[initial] A is a table", '"infer"']),
        ('time_unit = 3\n[initial]\nA = 1.0\n', ["time_unit must be text", 'time_unit = "min"']),
        ('[initial]\nA = 1.0\n[fit]\nmax_steps = "300"\n', ["[fit] max_steps must be a positive integer", "'300'"]),
        ("[initial]\nA = 1.0\n[fit]\nseed = 1.5\n", ["[fit] seed must be an integer", "1.5"]),
        ('[initial]\nA = 1.0\n[fit]\nguide = "nromal"\n', ["unknown guide 'nromal'", "did you mean 'normal'"]),
        ("[initial]\nA = 1.0\n[fit]\nrestarts = 0\n", ["[fit] restarts must be a positive integer"]),
        ('[initial]\nA = 1.0\n[solver]\nrtol = "1e-6"\n', ["[solver] rtol must be a positive number"]),
        ('[initial]\nA = 1.0\n[solver]\ngradient = "expn"\n', ["[solver] gradient", "did you mean 'expm'"]),
        ("[initial]\nA = 1.0\nB0 = 2\n", ["[initial] B0", "no species 'B0'", "did you mean 'B'"]),
        ('[initial]\nA = 1.0\n[priors]\nkk = "LogNormal(0, 1)"\n', ["[priors] kk", "did you mean 'k'"]),
        ('[initial]\nA = 1.0\n[priors]\nk = 0.5\n', ["[priors] k must be prior text", '"LogNormal(log(0.5), 1)"']),
        ('noise = "lognormall"\n[initial]\nA = 1.0\n', ["unknown noise model", "did you mean 'lognormal'"]),
        ('conditions = 5\n[initial]\nA = 1.0\n', ["conditions must be a list of column names"]),
    ],
)
def test_toml_values_are_checked_when_the_configuration_is_read(folder, text, words):
    with pytest.raises((ConfigError, TypeError)) as info:
        toml_job(folder, text)
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)
    assert "Traceback" not in message and "not supported between" not in message


def test_data_that_is_not_one_file_is_refused_by_its_key(folder):
    (folder / "sub").mkdir()
    for value, words in (
        (["decay.csv"], ["data must be the path of one CSV file"]),
        ("sub", ['data = "sub"', "is a folder"]),
        ("nope.csv", ['data = "nope.csv"', "does not exist", str(folder)]),
    ):
        with pytest.raises(ConfigError) as info:
            job(folder, data=value)
        assert all(w in str(info.value) for w in words), str(info.value)


def test_a_binary_or_folder_configuration_names_the_file(folder):
    path = folder / "fit.toml"
    path.write_bytes(b"\xff\xfe\x00data = 1\n")
    with pytest.raises(ConfigError, match=r"fit\.toml: not a text file .* UTF-8"):
        KineticsJob.from_toml(path)
    with pytest.raises(ConfigError, match="is a folder"):
        KineticsJob.from_toml(folder)


def test_the_fit_section_is_checked_before_the_map_stage(folder):
    # Refused when read (no fit runs), with the key and the fix, not "could not fit any guide".
    with pytest.raises(ConfigError, match=r"\[fit\] num_particles must be a positive integer"):
        job(folder, fit={"num_particles": 0})


# -- the command line --------------------------------------------------------------------------


@pytest.mark.parametrize("option, value", [("--prior", "k=LogNormal(0, 1)"), ("--initial", "A=1")])
def test_an_option_given_twice_is_refused(folder, capsys, option, value):
    args = ["fit", str(folder / "decay.csv"), "--mechanism", "A -> B : k", "--out", str(folder / "out")]
    if option == "--prior":
        args += ["--initial", "A=1"]
    name = value.split("=")[0]
    code = cli.main(args + [option, value, option, value.replace("1", "2")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"vifit: error: {option} {name} is given twice" in err and "Traceback" not in err


def test_the_prior_example_in_the_message_is_itself_valid(folder, capsys):
    args = ["fit", str(folder / "decay.csv"), "--mechanism", "A -> B : k", "--initial", "A=1", "--out", str(folder / "o")]
    assert cli.main(args + ["--prior", "k"]) == 2
    err = capsys.readouterr().err
    example = err.split("e.g. ", 1)[1].strip()
    assert example.startswith("--prior ")
    import shlex

    item = shlex.split(example)[1]
    parsed = cli._parse_assignments([item], "prior")
    assert [str(kinetics.as_prior(text, name=n)) for n, text in parsed.items()]  # parses, positive support


def test_report_on_a_damaged_posterior_exits_2(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("_synthetic", Path(__file__).with_name("_synthetic.py"))
    synthetic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(synthetic)
    good = tmp_path / "good.nc"
    synthetic.synthetic_idata(chains=2, draws=20).to_netcdf(str(good))
    original = good.read_bytes()
    folder = tmp_path / "result"
    folder.mkdir()
    (folder / "report.html").write_text("not vifit's")  # a readable file stops with exit 2 before any plot
    codes = []
    for damage in ("flip:101", "flip:1212", "flip:10706", "truncate"):
        data = bytearray(original)
        if damage == "truncate":
            data = data[: len(data) // 2]
        else:
            data[int(damage.split(":")[1])] ^= 0xFF
        (folder / "posterior.nc").write_bytes(bytes(data))
        codes.append(cli.main(["report", str(folder / "posterior.nc")]))
        err = capsys.readouterr().err
        assert err.startswith("vifit: error:") and "Traceback" not in err and "bug in vifit" not in err, err
    assert codes == [2, 2, 2, 2]


# -- Python: fit(), its results, the model builders -------------------------------------------


def line(t, y=None):
    slope = numpyro.sample("slope", dist.Normal(0.0, 10.0))
    numpyro.sample("y", dist.Normal(slope * t, 1.0), obs=y)


T = jnp.arange(1.0, 5.0)
Y = 0.5 * T


@pytest.fixture(scope="module")
def small_fit():
    return fit(line, T, y=Y, guide="multivariate_normal", progress=False, max_steps=200)


def test_a_misspelt_fit_option_is_refused_before_the_model_runs():
    with pytest.raises(TypeError) as info:
        fit(line, T, y=Y, max_step=300, progress=False)
    assert str(info.value) == (
        "fit() got max_step=300, which is neither a fit option nor an argument of line(t, y=None); "
        "did you mean max_steps?"
    )
    with pytest.raises(TypeError, match=r"3 positional arguments for the model, but line\(t, y=None\) takes at most 2"):
        fit(line, T, Y, Y, progress=False)
    with pytest.raises(TypeError, match="no value for a required argument"):
        fit(line, progress=False)
    with pytest.raises(TypeError, match="needs a NumPyro model"):
        fit(None)
    with pytest.raises(ValueError, match="seed must be an integer, got 'abc'"):
        fit(line, T, y=Y, seed="abc", progress=False)
    with pytest.raises(ValueError, match="did you mean 'normal'"):
        fit(line, T, y=Y, guide="nromal", progress=False)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda r: r.sample(-5), ValueError, "num_samples must be a positive integer, got -5"),
        (lambda r: r.sample(0), ValueError, "num_samples must be a positive integer, got 0"),
        (lambda r: r.sample(2.5), ValueError, "got 2.5"),
        (lambda r: r.sample("10"), ValueError, "got '10'"),
        (lambda r: r.sample(10, restart=5), ValueError, "restart=5 is out of range: this fit has 1 restart"),
        (lambda r: r.sample(10, restart="0"), TypeError, "restart must be the index of a restart"),
        (lambda r: r.sample(10, seed=1.5), TypeError, "seed must be an integer"),
        (lambda r: r.to_arviz(num_samples=0), ValueError, "num_samples must be a positive integer, got 0"),
        (lambda r: r.to_arviz(num_samples=2.5), ValueError, "got 2.5"),
        (lambda r: r.summary(num_samples=-1), ValueError, "num_samples must be a positive integer, got -1"),
        (lambda r: r.verdict(num_samples=0), ValueError, "num_samples must be a positive integer, got 0"),
    ],
)
def test_result_methods_refuse_bad_counts(small_fit, call, error, words):
    with pytest.raises(error, match=re.escape(words)):
        call(small_fit)


def test_arviz_export_entry_points_refuse_bad_counts(small_fit):
    from inference.outputs import arviz_export

    with pytest.raises(ValueError, match="num_samples must be a positive integer, got 0"):
        arviz_export.to_arviz(small_fit, num_samples=0)
    with pytest.raises(ValueError, match="hdi_prob is the mass of the interval"):
        arviz_export.summary_table({"a": np.zeros(10)}, hdi_prob=94)


def test_builder_arguments_of_the_wrong_kind(folder):
    data = kinetics.Dataset.from_csv(folder / "decay.csv")
    with pytest.raises(TypeError, match=r"priors must be a mapping of parameter name to prior, e\.g\. priors=\{'k'"):
        kinetics.model("A -> B : k", data, priors=["k"], noise={"A": "normal"}, initial={"A": 1.0})
    with pytest.raises(TypeError, match=r"initial\['A'\] is True, which is not a concentration"):
        kinetics.model("A -> B : k", data, initial={"A": True}, noise={"A": "normal"})
    with pytest.raises(TypeError, match="conditions must be a list of column names"):
        kinetics.model("A -> B : k", data, conditions=5, initial={"A": 1.0})
    with pytest.raises(ValueError, match="T_ref is the reference temperature"):
        kinetics.model("A -> B : k", data, T_ref="abc", noise={"A": "normal"}, initial={"A": 1.0})
    with pytest.raises(ValueError, match=r"noise given for 'a'.*did you mean 'A'"):
        kinetics.model("A -> B : k", data, noise={"a": "normal"}, initial={"A": 1.0})
    with pytest.raises(ValueError, match="negative amount -1"):
        kinetics.model("A -> B : k", data, doses=[{"species": "A", "amount": -1, "time": 0}], initial={"A": 1.0})
    with pytest.raises(TypeError, match="dataset must be a kinetics.Dataset or the path of a CSV file, got ndarray"):
        kinetics.model("A -> B : k", np.zeros(3), initial={"A": 1.0})


@pytest.mark.parametrize(
    "times, values, words",
    [
        (["0", "1", "2"], {"A": [1.0, 0.6, 0.4]}, "times holds text (such as '0')"),
        ([0, 1, 2], {"A": ["1", "x", 3]}, "values['A'] holds text"),
        ([0, 1, 2], {"A": [True, False, True]}, "values['A'] holds True/False values"),
        ([0, 1, 2], {"A": [1j, 2, 3]}, "values['A'] holds complex numbers"),
        (np.zeros((2, 2)), {"A": [1, 2]}, "times has shape (2, 2) but must be 1-D"),
        ([0, 1, 2], {"A": [1, 2]}, "values['A'] has shape (2,) but times has shape (3,)"),
    ],
)
def test_arrays_of_the_wrong_kind_or_shape(times, values, words):
    with pytest.raises(DataError) as info:
        kinetics.Dataset.from_arrays(times, values)
    assert words in str(info.value)


def test_lognormal_noise_names_the_file_line_and_column(folder):
    (folder / "zero.csv").write_text("time,A,B\n0,1.0,0.1\n1,0.6,0.4\n2,0.37,0.0\n")
    with pytest.raises(DataError) as info:
        job(folder, data="zero.csv", mechanism="A -> B : k", noise="lognormal", initial={"A": 1.0, "B": 0.0})
    assert str(info.value).startswith(f"{folder / 'zero.csv'}, line 4, column 'B': the value 0.0 is not positive")
    assert (info.value.line, info.value.column) == (4, "B")
    with pytest.raises(DataError, match=r"zero\.csv, line 4, column 'B'.*noise 'lognormal' for 'B'"):
        kinetics.model(
            "A -> B : k", folder / "zero.csv", noise={"A": "normal", "B": "lognormal"}, initial={"A": 1.0, "B": 0.0}
        )


def test_expressions_and_priors_are_refused_in_words(folder):
    data = kinetics.Dataset.from_csv(folder / "decay.csv")
    with pytest.raises(kinetics.ExpressionError, match=r"observable 'A' names 'bse'.*priors=\{'bse'"):
        kinetics.model("A -> B : k", data, observables={"A": "A + bse"}, initial={"A": 1.0})
    with pytest.raises(kinetics.ExpressionError, match="unexpected character"):
        kinetics.model("A -> B : k", data, observables={"A": "__import__('os')"}, initial={"A": 1.0})
    with pytest.raises(PriorError, match="did you mean 'LogNormal'"):
        kinetics.parse_prior("Lognormal(0, 1)")
    with pytest.raises(PriorError, match="'scale' of HalfNormal must be greater than 0"):
        kinetics.parse_prior("HalfNormal(-1)")


def test_no_user_text_is_evaluated():
    root = Path(__file__).resolve().parents[2]
    for package in ("inference", "vi_models"):
        for path in (root / package).rglob("*.py"):
            text = path.read_text()
            assert not re.search(r"(?<![.\w])(eval|exec)\(", text), path
            assert "pickle.load" not in text, path
