"""The vifit command line: the demo, fits from CSV and TOML, and user errors as sentences."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inference.outputs import cli
from vi_models import kinetics


def bod_nonlinear_least_squares():
    """k and its standard error for y = A (1 - exp(-k t)) by Gauss-Newton (the classical fit)."""
    data = kinetics.Dataset.from_csv(kinetics.bundled_path("bod.csv"))
    t, y = data.times[0], data.values[0, :, 0]
    theta = np.array([20.0, 0.5])
    for _ in range(100):
        A, k = theta
        r = y - A * (1 - np.exp(-k * t))
        J = np.stack([1 - np.exp(-k * t), A * t * np.exp(-k * t)], axis=1)
        theta = theta + np.linalg.lstsq(J, r, rcond=None)[0]
    A, k = theta
    r = y - A * (1 - np.exp(-k * t))
    J = np.stack([1 - np.exp(-k * t), A * t * np.exp(-k * t)], axis=1)
    s2 = r @ r / (len(y) - 2)
    cov = s2 * np.linalg.inv(J.T @ J)
    return k, np.sqrt(cov[1, 1])


#: The prior of k in every fit of problem a here: the same model, so the fits share compiled programs.
DECAY_PRIOR = ["--prior", "k=LogNormal(log(0.5), 1)"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "vifit-demo"
    code = cli.main(["demo", "--out", str(out), "--no-progress", "--samples", "500"])
    return code, out


def test_demo_writes_every_output(demo_run):
    code, out = demo_run
    assert code == 0
    for name in ("report.html", "summary.csv", "posterior.nc", "fit.json"):
        assert (out / name).is_file(), name
    record = json.loads((out / "fit.json").read_text())
    exact = record["fit"].get("draws_from", "").startswith("NUTS")
    for name in cli.PLOTS:
        # NUTS draws (the exact stage of guide="auto") have no PSIS diagnostic: psis.png is left out.
        assert (out / "plots" / name).is_file() is not (exact and name == "psis.png"), name
    assert record["stop_reason"] == "converged"
    assert record["seed"] == 0
    assert set(record["timings"]) >= {"init_s", "compile_s", "run_s", "total_s"}
    assert record["versions"]["numpyro"]
    assert record["job"]["model"]["mechanism"] == "L -> Y : k"
    assert record["diagnostics"]["ode_failed_draws"] == 0
    assert record["verdict"]["level"] in ("reliable", "use with care", "unreliable")
    assert record["verdict"]["reason"]
    # guide="auto" (the default) adds the MAP stage's check of separate optima.
    checks = {c["check"] for c in record["verdict"]["checks"]}
    if record["fit"].get("draws_from", "").startswith("NUTS"):
        # The exact stage's draws: its verdict rests on the chains, and on the MAP stage's modes.
        assert checks == {"exact stage", "modes"}
    else:
        assert checks == {"stopping", "density", "psis", "curvature", "restarts", "modes"}
    assert record["fit"]["guide"] == "auto" and record["fit"]["attempts"][0]["guide"] == "laplace"


def test_demo_report_has_every_plot_and_the_verdict(demo_run):
    _, out = demo_run
    html = (out / "report.html").read_text(encoding="utf-8")
    record = json.loads((out / "fit.json").read_text())
    exact = record["fit"].get("draws_from", "").startswith("NUTS")
    for plot_id in ("plot-fit", "plot-elbo", "plot-marginals", "plot-pair", "plot-psis"):
        assert (f'id="{plot_id}"' in html) is not (exact and plot_id == "plot-psis"), plot_id
    if exact:
        assert "No PSIS diagnostic: the draws are NUTS" in html and "k-hat <b>nan" not in html
    assert 'id="verdict"' in html
    assert record["verdict"]["level"] in html
    assert "L -&gt; Y : k" in html  # the mechanism, escaped
    assert "http://" not in html and "https://" not in html and "<script" not in html


def test_report_command_rebuilds_the_report_from_posterior_nc(demo_run, tmp_path, capsys):
    _, out = demo_run
    target = tmp_path / "again.html"
    assert cli.main(["report", str(out / "posterior.nc"), "--out", str(target)]) == 0
    html = target.read_text(encoding="utf-8")
    exact = json.loads((out / "fit.json").read_text())["fit"].get("draws_from", "").startswith("NUTS")
    for plot_id in ("plot-fit", "plot-elbo", "plot-marginals", "plot-pair", "plot-psis"):
        assert (f'id="{plot_id}"' in html) is not (exact and plot_id == "plot-psis"), plot_id
    assert (tmp_path / "plots" / "psis.png").is_file() is not exact
    verdict = json.loads((out / "fit.json").read_text())["verdict"]["level"]
    assert verdict in html and verdict in capsys.readouterr().out


@pytest.mark.parametrize("make", ["missing", "not_netcdf"])
def test_report_command_user_errors_exit_2(tmp_path, capsys, make):
    path = tmp_path / "posterior.nc"
    if make == "not_netcdf":
        path.write_text("not a netCDF file")
    assert cli.main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert "vifit: error:" in err and "Traceback" not in err


def test_demo_k_agrees_with_nonlinear_least_squares(demo_run):
    import arviz as az

    _, out = demo_run
    k_nls, se = bod_nonlinear_least_squares()
    assert k_nls == pytest.approx(0.5305, abs=2e-3)  # the published estimate, exp(-0.6335)
    idata = az.from_netcdf(str(out / "posterior.nc"))
    k = float(idata.posterior["k"].mean())
    assert abs(k - k_nls) < 2 * se


def test_demo_replaces_only_its_own_results(demo_run, tmp_path):
    code, out = demo_run
    assert (out / "fit.json").exists()
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    assert cli.main(["demo", "--out", str(foreign), "--no-progress"]) == 2
    assert (foreign / "mine.txt").read_text() == "keep me"


def test_fit_from_csv_and_from_toml(tmp_path, bench_data):
    out = tmp_path / "csv"
    args = ["fit", str(bench_data / "a_decay.csv"), "--mechanism", "A -> B : k", "--initial", "A=1"]
    args += [*DECAY_PRIOR, "--out", str(out), "--no-progress", "--samples", "200"]
    args += ["--guide", "multivariate_normal"]
    assert cli.main(args) == 0
    k_csv = json.loads((out / "fit.json").read_text())["posterior"]["k"]["mean"]
    config = tmp_path / "decay.toml"
    config.write_text(
        f'data = "{bench_data / "a_decay.csv"}"\nmechanism = "first_order"\n'
        '[initial]\nA = 1.0\n[priors]\nk = "LogNormal(log(0.5), 1)"\n[fit]\nseed = 0\nguide = "multivariate_normal"\n'
    )
    out2 = tmp_path / "toml"
    assert cli.main(["fit", str(config), "--out", str(out2), "--no-progress", "--samples", "200"]) == 0
    k_toml = json.loads((out2 / "fit.json").read_text())["posterior"]["k"]["mean"]
    assert k_csv == pytest.approx(k_toml, rel=1e-9)
    assert k_csv == pytest.approx(0.36, abs=0.02)


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "missing.csv", "--mechanism", "A -> B : k"], "missing.csv"),
        (["fit", "{data}", "--mechanism", "A -> : k", "--initial", "A=1"], "line 1, column"),
        (["fit", "{data}"], "needs a mechanism"),
        (["fit", "{data}", "--mechanism", "A -> B : k"], "initial concentration of the observed species 'A'"),
        (["fit", "{data}", "--mechanism", "A -> B : k", "--initial", "A"], "NAME=VALUE"),
        (["fit", "{data}", "--mechanism", "A -> B : k", "--initial", "A=1", "--prior", "k=Foo(1)"], "Foo"),
        (["fit", "{toml}"], "unknown key 'mechansim'"),
    ],
)
def test_user_errors_exit_2_with_a_sentence(args, message, bench_data, tmp_path, capsys):
    toml = tmp_path / "bad.toml"
    toml.write_text('data = "x.csv"\nmechansim = "A -> B : k"\n')
    args = [a.format(data=bench_data / "a_decay.csv", toml=toml) for a in args]
    code = cli.main(args + ["--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "error, code, message",
    [(RuntimeError("disk on fire"), 1, "internal error"), (PermissionError(13, "Permission denied"), 2, "vifit: error:")],
)
def test_a_failure_while_writing_leaves_no_folder_and_keeps_the_posterior(
    tmp_path, bench_data, monkeypatch, capsys, error, code, message
):
    from inference.outputs import plots

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(plots, "plot_elbo", broken)
    out = tmp_path / "results"
    args = ["fit", str(bench_data / "a_decay.csv"), "--mechanism", "A -> B : k", "--initial", "A=1", *DECAY_PRIOR]
    args += ["--out", str(out), "--no-progress", "--samples", "100", "--max-steps", "300"]
    assert cli.main(args + ["--guide", "multivariate_normal"]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()
    assert not any(p.name.startswith(".results.") for p in tmp_path.iterdir())
    (rescue,) = [p for p in tmp_path.iterdir() if p.name.startswith("results.vifit-rescue-")]
    assert repr(str(rescue)) in err
    assert (rescue / "posterior.nc").is_file()


def test_mechanisms_lists_builtins(capsys):
    assert cli.main(["mechanisms"]) == 0
    text = capsys.readouterr().out
    assert "michaelis_menten" in text and "mm(Vmax, Km)" in text


def test_console_script_exit_code(tmp_path):
    exe = Path(sys.executable).parent / "vifit"
    proc = subprocess.run(
        [str(exe), "fit", str(tmp_path / "nope.csv"), "--mechanism", "A -> B : k"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("vifit: error:")


def test_nuts_check_writes_the_comparison(tmp_path, bench_data):
    out = tmp_path / "checked"
    code = cli.main(
        [
            "fit",
            str(bench_data / "a_decay.csv"),
            "--mechanism",
            "A -> B : k",
            "--initial",
            "A=1",
            *DECAY_PRIOR,
            "--nuts",
            "--guide",
            "multivariate_normal",
            "--no-progress",
            "--samples",
            "300",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    for name in ("comparison.csv", "reference.nc", "plots/comparison.png"):
        assert (out / name).is_file(), name
    record = json.loads((out / "fit.json").read_text())
    table = record["nuts_check"]["table"]
    assert set(table) == {"k", "sigma"}
    # The full-rank guide's mean of k is within 0.1 NUTS sd of NUTS's (Monte Carlo error about 0.03).
    assert abs(table["k"]["smd"]) < 0.1
    html = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="plot-comparison"' in html


def test_report_with_a_reference_of_other_parameters_exits_2(demo_run, tmp_path, capsys):
    import arviz as az

    _, out = demo_run
    ref = tmp_path / "other.nc"
    az.from_dict({"posterior": {"zzz": np.zeros((1, 10))}}).to_netcdf(str(ref))
    code = cli.main(["report", str(out / "posterior.nc"), "--out", str(tmp_path / "r.html"), "--reference", str(ref)])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot be compared" in err and "Traceback" not in err


def test_report_refusal_names_a_plot_as_a_plot(tmp_path):
    # A result folder: its report and a plot, both listed in vifit's marker.
    from inference.outputs import result_folder

    (tmp_path / "plots").mkdir()
    (tmp_path / "report.html").write_text("<html></html>")
    (tmp_path / "plots" / "fit.png").write_bytes(b"png")
    result_folder.write_marker(tmp_path, command="fit")
    with pytest.raises(cli.UserError) as err:
        cli._check_report_targets(tmp_path / "r2.html", ["fit.png"], [], force=False)
    text = str(err.value)
    assert "fit.png' holds a plot of an earlier report; add --force" in text, text
    with pytest.raises(cli.UserError, match="report.html' holds an earlier report; add --force"):
        cli._check_report_targets(tmp_path / "report.html", [], [], force=False, given=False)
    cli._check_report_targets(tmp_path / "r2.html", ["fit.png"], [], force=True)  # --force replaces them
