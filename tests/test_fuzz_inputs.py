"""Property-based checks of every input: accepted, or refused in words; never a traceback, never a hang.

Hypothesis generates malformed CSV files (random bytes, missing columns, non-numeric cells,
NaN/inf, duplicate and unsorted times, empty files, huge and tiny values, a byte-order mark,
other delimiters), mechanisms (token strings from the mechanism grammar's alphabet), priors
(family names and arguments) and configurations (keys and values of every kind in every
section, and raw TOML text). Each input is either accepted (the data set, mechanism, prior or
job is built; no fit runs) or refused with a ValueError / TypeError whose message is a
sentence; and a refused input given to the command line (``inference.outputs.cli.main``, in
this process) returns 2 and prints ``vifit: error: ...`` without a traceback.

The examples are derandomized (the same on every run) and bounded so that the file runs in well
under a minute on one core; ``pytest -s`` prints how many inputs were tried.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference.outputs import cli
from vi_models import kinetics
from vi_models.kinetics import Dataset, KineticsJob, Mechanism
from vi_models.kinetics.job import FIT_KEYS, SOLVER_KEYS, TOP_KEYS

TRIED: Counter = Counter()
RESULTS: Counter = Counter()
CLI_RUNS: Counter = Counter()
SLOWEST = {"seconds": 0.0, "what": ""}
CLI_LIMIT = 40  # command-line runs per test (each ~25 ms), to keep the file fast

FUZZ = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)

#: Python's own words, which a refusal must never show instead of a sentence.
INTERNAL = (
    "Traceback",
    "object has no attribute",
    "not supported between instances",
    "could not convert string to float",
    "codec can't decode",
    "index out of range",
    "is not subscriptable",
    "object is not iterable",
    "unhashable type",
    "invalid literal for int",
    "NoneType",
    "dictionary update sequence",
    "expected str, bytes or os.PathLike",
    "argument must be a string or a real number",
    "__init__()",
)

VALID_CSV = "time,A\n0,1.0\n1,0.61\n2,0.37\n3,0.22\n"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "valid.csv").write_text(VALID_CSV)
    return folder


def assert_sentence(err: BaseException, what: str) -> None:
    assert isinstance(err, (ValueError, TypeError)), f"{what}: {type(err).__name__}: {err}"
    message = str(err)
    assert len(message.strip()) >= 15, f"{what}: {message!r}"
    for phrase in INTERNAL:
        assert phrase not in message, f"{what}: Python's words {phrase!r} in {message!r}"


def outcome(what: str, build) -> str:
    """Run ``build``; 'accepted', or 'refused' after checking that the refusal is a sentence."""
    TRIED[what] += 1
    start = time.perf_counter()
    try:
        build()
        result = "accepted"
    except (ValueError, TypeError) as err:
        assert_sentence(err, what)
        result = "refused"
    finally:
        seconds = time.perf_counter() - start
        if seconds > SLOWEST["seconds"]:
            SLOWEST.update(seconds=seconds, what=what)
    RESULTS[result] += 1
    return result


def assert_cli_refuses(what: str, argv: list[str]) -> None:
    """``vifit ARGV`` returns 2 and prints one error sentence, no traceback (before any fit)."""
    if CLI_RUNS[what] >= CLI_LIMIT:
        return
    CLI_RUNS[what] += 1
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = cli.main(argv)
    text = err.getvalue()
    assert code == 2, f"{what}: exit {code} for {argv!r}: {text}{out.getvalue()}"
    assert text.startswith("vifit: error: ") and "Traceback" not in text, text
    for phrase in INTERNAL:
        assert phrase not in text, f"{what}: Python's words {phrase!r} in {text!r}"


# -- CSV files ---------------------------------------------------------------------------------

NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-5, 1000).map(str),
    st.sampled_from(["1e-300", "1e308", "1e400", "-0", "0", "-1", "2.5", ".5", "5.", "1e-5"]),
)
CELLS = st.one_of(
    NUMBERS,
    st.sampled_from(["", "NA", "n/a", "nan", "null", "abc", "1,5", " 2 ", "0x10", "1e", "--1", "1.0.0", '"3"', "∞"]),
    st.text(max_size=5),
)
NAMES = st.sampled_from(["time", "t", " Time ", "A", "B", "a", "exp", "experiment", "run", "species", "value", "", "x y"])


@st.composite
def csv_texts(draw) -> bytes:
    kind = draw(st.sampled_from(["bytes", "table", "series", "long", "decay", "decay"]))
    if kind == "bytes":
        return draw(st.binary(max_size=120))
    prefix = draw(st.sampled_from(["", "\ufeff", "# measured in 2024\n", "\n\n"]))
    delim = draw(st.sampled_from([",", ",", ",", ";", "\t", "|"]))
    if kind == "table":
        header = draw(st.lists(NAMES, max_size=4))
        rows = draw(st.lists(st.lists(CELLS, max_size=5), max_size=6))
    elif kind == "decay":  # plausible numbers, now and then an extreme one, a repeat or a swap
        n = draw(st.integers(1, 6))
        times = sorted(draw(st.lists(st.floats(0, 100), min_size=n, max_size=n)))
        if n > 1 and draw(st.booleans()):
            i = draw(st.integers(1, n - 1))
            times[i - 1], times[i] = times[i], times[i - 1]  # unsorted (or a duplicate time)
        values = draw(st.lists(st.floats(1e-300, 1e6) | st.sampled_from([0.0, -1.0, 1e-300, 1e300]), min_size=n, max_size=n))
        header, rows = ["time", "A"], [[repr(t), repr(v)] for t, v in zip(times, values)]
    elif kind == "series":  # a well-formed wide file whose numbers may be anything
        header = ["time", "A"] + draw(st.lists(st.sampled_from(["B", "exp"]), max_size=1, unique=True))
        rows = [[draw(NUMBERS) for _ in header] for _ in range(draw(st.integers(0, 6)))]
    else:
        header = ["t", "species", "value"]
        rows = [[draw(NUMBERS), draw(st.sampled_from(["A", "B", "", "A "])), draw(NUMBERS)] for _ in range(draw(st.integers(0, 6)))]
    lines = [delim.join(header)] + [delim.join(row) for row in rows]
    return (prefix + "\n".join(lines) + draw(st.sampled_from(["", "\n"]))).encode("utf-8")


@FUZZ
@given(content=csv_texts(), noise=st.sampled_from(["normal", "lognormal", "proportional"]))
def test_csv_files_are_read_or_refused_in_words(workdir, content, noise):
    path = workdir / "data.csv"
    path.write_bytes(content)

    def build():
        data = Dataset.from_csv(path)
        mechanism = "; ".join(f"{s} -> 0 : k{i}" for i, s in enumerate(data.species))
        kinetics.model(mechanism, data, initial={s: 1.0 for s in data.species}, noise=noise)

    outcome("csv", build)
    config = {"data": str(path), "mechanism": "A -> B : k", "initial": {"A": 1.0}, "noise": noise}
    if outcome("csv job", lambda: KineticsJob.from_config(config)) == "refused":
        argv = ["fit", str(path), "--mechanism", "A -> B : k", "--initial", "A=1", "--noise", noise]
        assert_cli_refuses("csv", argv + ["--out", str(workdir / "out")])


# -- mechanisms --------------------------------------------------------------------------------

TOKENS = [
    "A", "B", "C", "S", "P", "2", "2 A", "0", "1.5", "->", "<=>", "<-", "=>", "+", ":", ",", ";", "#",
    "k", "k2", "kf", "Vmax", "Km", "mm(", "hill(", "arrhenius(", "eyring(", "(", ")", "\n", " ", "*", "=",
    "first_order", "é", "_", "1e3",
]


@st.composite
def reactions(draw) -> str:
    """Mechanism text from the grammar (species, coefficients, arrows, rate laws), now and then corrupted."""
    species = st.sampled_from(["A", "B", "C", "S", "P", "0"])
    side = st.lists(st.tuples(st.sampled_from(["", "2 ", "2", "1.5 "]), species), min_size=1, max_size=2).map(
        lambda terms: " + ".join(c + s for c, s in terms)
    )
    law = st.sampled_from(["k", "k1", "kf, kb", "mm(Vmax, Km)", "hill(Vmax, K, n)", "arrhenius(k, Ea)", "eyring(dH, dS)", "k2"])
    lines = [
        f"{draw(side)} {draw(st.sampled_from(['->', '->', '<=>']))} {draw(side)} : {draw(law)}"
        for _ in range(draw(st.integers(1, 3)))
    ]
    text = draw(st.sampled_from(["\n", "; "])).join(lines)
    if draw(st.booleans()):
        tokens = text.split(" ")
        i = draw(st.integers(0, len(tokens)))
        tokens.insert(i, draw(st.sampled_from(TOKENS))) if draw(st.booleans()) else tokens.pop(min(i, len(tokens) - 1))
        text = " ".join(tokens)
    return text


@FUZZ
@given(
    text=st.one_of(
        reactions(),
        st.tuples(st.lists(st.sampled_from(TOKENS), max_size=14), st.booleans()).map(
            lambda x: (" " if x[1] else "").join(x[0])
        ),
    )
)
def test_mechanisms_are_parsed_or_refused_in_words(workdir, text):
    outcome("mechanism", lambda: Mechanism.from_text_or_name(text))
    config = {"data": str(workdir / "valid.csv"), "mechanism": text, "initial": {"A": 1.0}}
    if outcome("mechanism job", lambda: KineticsJob.from_config(config)) == "refused":
        argv = ["fit", str(workdir / "valid.csv"), f"--mechanism={text}", "--initial", "A=1"]
        assert_cli_refuses("mechanism", argv + ["--out", str(workdir / "out")])


# -- priors ------------------------------------------------------------------------------------

FAMILIES = st.one_of(
    st.sampled_from(sorted(kinetics.DISTRIBUTIONS)),
    st.sampled_from(["normal", "Lognormal", "LogNormall", "Foo", "exp", "log", "", "__import__", "os.system", "Normal.loc"]),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
)
ARGUMENTS = st.one_of(
    NUMBERS,
    st.sampled_from([
        "log(0.5)", "log(-1)", "exp(1000)", "sqrt(2)", "x", "pi", "e", "1/0", "2**2000", "(-8)**(1/3)", "'a'",
        "None", "True", "loc=1", "scale=-1", "scale=0", "low=0", "high=1", "low=2", "[1]", "lambda: 1", "*a",
        "**k", "Normal(0, 1)", "validate_args=False", "log10(100)", "--1", "1e-300",
    ]),
)


@st.composite
def prior_texts(draw) -> str:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=20))
    if draw(st.booleans()):  # a plausible call: a known family, numbers in a usual range
        family = draw(st.sampled_from(sorted(kinetics.DISTRIBUTIONS)))
        args = draw(st.lists(st.floats(-3, 10, allow_nan=False).map(lambda x: f"{x:.3g}"), min_size=1, max_size=3))
        return f"{family}({', '.join(args)})"
    family = draw(FAMILIES)
    args = draw(st.lists(ARGUMENTS, max_size=4))
    text = f"{family}({', '.join(args)})"
    cut = draw(st.sampled_from([None, None, None, -1, 1, 5]))
    return text[:cut] if cut is not None else text


@FUZZ
@given(text=prior_texts())
def test_priors_are_parsed_or_refused_in_words(workdir, text):
    outcome("prior (any support)", lambda: kinetics.as_prior(text, name="base", positive=False))
    if outcome("prior", lambda: kinetics.as_prior(text, name="k")) == "refused":
        argv = ["fit", str(workdir / "valid.csv"), "--mechanism", "A -> B : k", "--initial", "A=1", f"--prior=k={text}"]
        assert_cli_refuses("prior", argv + ["--out", str(workdir / "out")])


# -- configurations ----------------------------------------------------------------------------

SCALARS = st.one_of(
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.sampled_from([
        "auto", "normal", "nromal", "multivariate_normal", "LogNormal(0, 1)", "Normal(0, 1)", "HalfNormal(1)",
        "infer", "A -> B : k", "kvaerno5", "tsit5", "expm", "T", "valid.csv", "nope.csv", ".", "lognormal",
        "proportional", "A + base", "subject", "experiment", "1e-6", "300", "renyi",
    ]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["x", "group", "species", "amount", "time", "A"]), inner, max_size=2),
    max_leaves=4,
)
SECTION_KEYS = {
    "initial": ["A", "B", "a", "A0", "C"],
    "priors": ["k", "sigma", "A0", "B0", "kk", "K", "base"],
    "solver": list(SOLVER_KEYS) + ["stif", "tol"],
    "fit": list(FIT_KEYS) + ["max_step", "guides", "progress"],
    "noise": ["A", "B", "a"],
    "observables": ["A", "B", "X"],
    "hierarchy": ["k", "sigma"],
}


POSITIVE = st.floats(1e-6, 1e3)
PLAUSIBLE = {
    "initial": st.one_of(st.floats(0, 10), st.sampled_from(["infer", "LogNormal(0, 1)", "1.5"]), st.lists(st.floats(0, 5), min_size=1, max_size=2)),
    "priors": st.sampled_from(["LogNormal(0, 1)", "HalfNormal(1)", "Gamma(2, 1)", "Normal(0, 1)", "LogNormal(log(0.5), 1)", "Exponential(2)"]),
    "noise": st.sampled_from(["normal", "lognormal", "proportional"]),
    "observables": st.sampled_from(["A", "2 * A", "A + base", "A + B"]),
    "hierarchy": st.sampled_from(["experiment", "subject"]),
    "stiff": st.booleans(), "rtol": POSITIVE, "atol": POSITIVE, "max_steps": st.integers(1, 10000),
    "solver": st.sampled_from(["tsit5", "kvaerno5", "dopri5"]), "gradient": st.sampled_from(["auto", "expm", "forward", "reverse"]),
    "guide": st.sampled_from(["auto", "normal", "multivariate_normal", "low_rank", "iaf", "laplace", "delta", "map"]),
    "objective": st.sampled_from(["elbo", "renyi", "iwae", "meanfield_elbo"]), "num_particles": st.integers(1, 64),
    "lr": POSITIVE, "clip_norm": POSITIVE, "seed": st.integers(0, 2**31), "restarts": st.integers(1, 4),
    "restart_spread": st.floats(0, 2), "min_steps": st.integers(1, 5000), "chunk_size": st.integers(1, 500),
    "init_scale": POSITIVE, "nonfinite_limit": st.floats(0, 1),
    "time_unit": st.sampled_from(["min", "h", "s"]), "concentration_unit": st.sampled_from(["mM", "uM"]),
    "title": st.text(max_size=10), "T_ref": st.floats(250, 400), "temperature": st.just("T"),
}


@st.composite
def configs(draw) -> dict:
    """A valid configuration with one to three entries changed: mostly plausible values, sometimes anything."""
    config = {"data": "valid.csv", "mechanism": "A -> B : k", "initial": {"A": 1.0}}
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(list(TOP_KEYS) + ["mechansim", "Noise", "x"] + list(SECTION_KEYS) * 2))
        if where in SECTION_KEYS and draw(st.integers(0, 5)) > 0:
            section = config.get(where)
            section = dict(section) if isinstance(section, dict) else {}
            key = draw(st.sampled_from(SECTION_KEYS[where]))
            likely = PLAUSIBLE.get(key, PLAUSIBLE.get(where))
            section[key] = draw(likely if likely is not None and draw(st.integers(0, 2)) else VALUES)
            config[where] = section
        elif where in PLAUSIBLE and draw(st.integers(0, 2)):
            config[where] = draw(PLAUSIBLE[where])
        elif where == "doses":
            config[where] = draw(st.lists(st.dictionaries(st.sampled_from(["species", "amount", "time", "dose"]), SCALARS, max_size=3), max_size=2))
        else:
            config[where] = draw(VALUES)
    return config


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_text(config: dict) -> str:
    return "".join(f"{json.dumps(key)} = {toml_value(value)}\n" for key, value in config.items())


def check_accepted_job(job, config) -> None:
    """What an accepted configuration must have been: settings a fit takes, text where text is due, positive priors."""
    from inference import FitSettings
    from vi_models.kinetics.priors import check_positive

    FitSettings.from_keywords(**job.fit_options)  # the [fit] section was checked when read
    for key in ("title", "time_unit", "concentration_unit", "temperature"):
        assert key not in config or isinstance(config[key], str), (key, config[key])
    for species, value in (config.get("initial") or {}).items():
        assert not isinstance(value, (bool, dict)), (species, value)
    model = job.model
    positive = set(model.mechanism.parameters) | {f"{sp}0" for sp in model.mechanism.species}
    for site, prior in model.priors.items():
        if site in positive or site == "sigma" or site.startswith("sigma_"):
            check_positive(prior, name=site)  # raises when the support reaches zero or below


@settings(FUZZ, max_examples=400)
@given(config=configs())
def test_configurations_are_built_or_refused_in_words(workdir, config):
    path = workdir / "fit.toml"
    path.write_text(toml_text(config), encoding="utf-8")  # what the command line reads
    built = []
    if outcome("config", lambda: built.append(KineticsJob.from_config(config, base_dir=workdir))) == "accepted":
        check_accepted_job(built[0], config)
    elif outcome("config file", lambda: KineticsJob.from_toml(path)) == "refused":
        assert_cli_refuses("config", ["fit", str(path), "--out", str(workdir / "out")])


@settings(FUZZ, max_examples=100)
@given(content=st.one_of(st.binary(max_size=80), st.text(max_size=80).map(lambda s: s.encode("utf-8"))))
def test_raw_configuration_files_are_refused_in_words(workdir, content):
    path = workdir / "raw.toml"
    path.write_bytes(content)
    if outcome("raw config file", lambda: KineticsJob.from_toml(path)) == "refused":
        assert_cli_refuses("raw config", ["fit", str(path), "--out", str(workdir / "out")])


def test_inputs_tried():
    """Runs last: the count of generated inputs, and the slowest one (printed with ``pytest -s``; not asserted)."""
    total = sum(TRIED.values())
    print(f"\nfuzz inputs tried: {total} ({dict(TRIED)}); {dict(RESULTS)}; command-line runs: {sum(CLI_RUNS.values())}; "
          f"slowest input {SLOWEST['seconds']:.2f} s ({SLOWEST['what']})")
    if total:  # this test alone (-k) has nothing to count
        assert total >= 1000
