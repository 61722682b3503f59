"""The output folder: vifit never deletes, overwrites or rounds away what the user has.

The command line's behaviour is tested as the user meets it: its exit code, what it prints and
what it leaves on disk. Most runs call :func:`inference.outputs.cli.main` in this process (in the
given folder, under the given umask, with stdout and stderr captured), so the fits share one
compiled program; a refusal runs through ``python -m inference.outputs.cli`` and the SIGTERM test
in a subprocess of its own, where the signal really ends a process. The rules of
:mod:`inference.outputs.result_folder` are also tested directly. Fits are small (10 rows, the
full-rank guide, 300 steps, 100 draws) and shared by module-scoped fixtures.
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from inference.outputs import result_folder

ROOT = Path(__file__).resolve().parents[2]
K_TRUE = 1.2e-4  # per second: a rate that rounding to 3 decimals turns into 0
FAST = ["--guide", "multivariate_normal", "--max-steps", "300", "--samples", "100", "--no-progress"]
DECAY = ["--mechanism", "A -> B : k", "--initial", "A=1", "--prior", "k=LogNormal(log(1e-4), 1)"]

# Runs the command line with cli._save patched to do ACTION once, at the first plot: the fit is
# done and posterior.nc written, the rest not yet.
PATCHED = """
import os, signal, sys, time
from pathlib import Path
from inference.outputs import cli

save, calls = cli._save, []

def patched(fig, path):
    calls.append(path)
    if len(calls) == 1:
        {action}
    return save(fig, path)

cli._save = patched
sys.exit(cli.main(sys.argv[1:]))
"""


def vifit_process(*args, cwd, umask=0o022, action=None, timeout=600):
    """Run ``vifit ARGS`` in a subprocess; ``action`` runs at the first plot (see PATCHED)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env["MPLBACKEND"] = "Agg"
    if action is None:
        cmd = [sys.executable, "-m", "inference.outputs.cli", *map(str, args)]
    else:
        cmd = [sys.executable, "-c", PATCHED.format(action=action), *map(str, args)]
    mask = os.umask(umask)  # the child inherits it
    try:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    finally:
        os.umask(mask)


def vifit(*args, cwd, umask=0o022, action=None):
    """Run ``vifit ARGS`` in this process, in ``cwd`` under ``umask``: exit code, stdout and stderr.

    ``action(path)``, if given, runs at the first plot, as in PATCHED: the fit is done and
    posterior.nc written, the rest not yet.
    """
    from inference.outputs import cli

    save, calls = cli._save, []

    def patched(fig, path):
        calls.append(path)
        if len(calls) == 1:
            action(path)
        return save(fig, path)

    stdout, stderr = io.StringIO(), io.StringIO()
    here, mask = os.getcwd(), os.umask(umask)
    try:
        os.chdir(cwd)
        if action is not None:
            cli._save = patched
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = cli.main([str(a) for a in args])
    finally:
        cli._save = save
        os.umask(mask)
        os.chdir(here)
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


def write_decay(path: Path) -> Path:
    """Ten measurements of A -> B with k = 1.2e-4 per second over 20000 s (A(0) = 1, sd 0.01)."""
    rng = np.random.default_rng(1)
    t = np.linspace(0.0, 20000.0, 10)
    a = np.exp(-K_TRUE * t) + rng.normal(0.0, 0.01, t.size)
    path.write_text("t,A\n" + "".join(f"{float(ti)!r},{float(ai)!r}\n" for ti, ai in zip(t, a)), encoding="utf-8")
    return path


def snapshot(folder: Path) -> dict:
    """Every entry under ``folder``: its kind and, for a file, the SHA-256 of its content."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir",)
        else:
            out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary or set-aside folders vifit may have left in ``folder``."""
    names = (p.name for p in folder.iterdir() if p.name.startswith("."))
    return sorted(n for n in names if ".tmp-" in n or ".old-" in n)


def rescues(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if ".vifit-rescue-" in p.name)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One fit of the tiny rate, written to ``R`` under umask 022."""
    base = tmp_path_factory.mktemp("fitted")
    write_decay(base / "decay.csv")
    proc = vifit("fit", "decay.csv", *DECAY, *FAST, "--out", "R", cwd=base)
    assert proc.returncode == 0, proc.stderr
    return base, base / "R", proc


@pytest.fixture(scope="module")
def replaced(fitted, tmp_path_factory):
    """Replace a copy of ``R`` by a fit whose time unit has ``$...$``, under umask 027."""
    base = tmp_path_factory.mktemp("replaced")
    shutil.copytree(fitted[1], base / "R2")
    before = snapshot(base / "R2")
    write_decay(base / "decay.csv")
    (base / "decay.toml").write_text(
        'title = "replaced"\ndata = "decay.csv"\nmechanism = "A -> B : k"\ntime_unit = "s $\\\\notacommand$"\n'
        'concentration_unit = "$mM"\n[initial]\nA = 1.0\n[priors]\nk = "LogNormal(log(1e-4), 1)"\n'
        '[fit]\nguide = "multivariate_normal"\n',
        encoding="utf-8",
    )
    args = ["--max-steps", "300", "--samples", "100", "--no-progress"]
    proc = vifit("fit", "decay.toml", *args, "--out", "R2", cwd=base, umask=0o027)
    return base, base / "R2", proc, before


def copy_of(fitted, tmp_path: Path, name: str = "R") -> Path:
    shutil.copytree(fitted[1], tmp_path / name)
    return tmp_path / name


# -- 1. never delete user files ------------------------------------------------------------------


def test_a_folder_with_fit_json_and_user_files_is_refused_before_the_fit(tmp_path):
    write_decay(tmp_path / "decay.csv")
    x = tmp_path / "x"
    (x / "src").mkdir(parents=True)
    (x / "fit.json").write_text("{}")
    (x / "analysis.py").write_text("keep\n")
    (x / "src" / "model.py").write_text("keep too\n")
    before = snapshot(x)
    proc = vifit_process("fit", "decay.csv", *DECAY, *FAST, "--out", "x", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("vifit: error: --out 'x'") and "Traceback" not in proc.stderr
    assert "'analysis.py'" in proc.stderr and "'src/'" in proc.stderr
    assert "vifit: A -> B" not in proc.stdout  # refused before the fit
    assert snapshot(x) == before


def test_out_dot_inside_a_result_folder_with_notes_is_refused(fitted, tmp_path):
    folder = copy_of(fitted, tmp_path)
    (folder / "notes.md").write_text("my notes\n")
    write_decay(folder / "decay.csv")
    before = snapshot(folder)
    proc = vifit("fit", "decay.csv", *DECAY, *FAST, "--out", ".", cwd=folder)
    assert proc.returncode == 2, proc.stderr
    assert "is the current folder" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(folder) == before


@pytest.mark.parametrize("what", ["parent of the data", "folder of the config", "the data file", "parent of cwd"])
def test_out_holding_an_input_or_the_current_folder_is_refused(tmp_path, what):
    proj = tmp_path / "proj"
    proj.mkdir()
    write_decay(proj / "decay.csv")
    (proj / "decay.toml").write_text('data = "decay.csv"\nmechanism = "A -> B : k"\n[initial]\nA = 1.0\n')
    cwd, source, out, message = tmp_path, "proj/decay.csv", "proj", "holds the input file"
    if what == "folder of the config":
        source = "proj/decay.toml"
    elif what == "the data file":
        out, message = "proj/decay.csv", "is the input file"
    elif what == "parent of cwd":
        (proj / "work").mkdir()
        cwd, source, out, message = proj / "work", "../decay.csv", "..", "holds the current folder"
    before = snapshot(proj)
    extra = [] if source.endswith(".toml") else DECAY
    proc = vifit("fit", source, *extra, *FAST, "--out", out, cwd=cwd)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(proj) == before


@pytest.mark.parametrize("change", ["added file", "added folder", "edited file", "link", "no marker"])
def test_an_earlier_result_vifit_did_not_wholly_write_is_refused(fitted, tmp_path, change):
    out = copy_of(fitted, tmp_path)
    if change == "added file":
        (out / "plots" / "mine.png").write_bytes(b"mine")
        named = "'plots/mine.png'"
    elif change == "added folder":
        (out / "analysis").mkdir()
        (out / "analysis" / "a.py").write_text("x = 1\n")
        named = "'analysis/'"
    elif change == "edited file":
        with open(out / "summary.csv", "a") as f:
            f.write("# my note\n")
        named = "'summary.csv' (changed since vifit wrote it)"
    elif change == "link":
        (tmp_path / "elsewhere").mkdir()
        (out / "data").symlink_to(tmp_path / "elsewhere")
        named = "'data'"
    else:
        (out / result_folder.MARKER).unlink()
        named = "no .vifit-result marker"
    before = snapshot(out)
    write_decay(tmp_path / "decay.csv")
    proc = vifit("fit", "decay.csv", *DECAY, *FAST, "--out", "R", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(out) == before


def test_an_earlier_vifit_result_is_replaced_safely(replaced):
    base, out, proc, before = replaced
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "fit.json").read_text())["title"] == "replaced"
    assert snapshot(out) != before
    assert leftovers(base) == [] and rescues(base) == []
    result_folder.check_replaceable(out)  # wholly vifit's again


def test_the_marker_lists_every_entry_vifit_wrote(fitted):
    _, out, _ = fitted
    marker = json.loads((out / result_folder.MARKER).read_text())
    assert marker["format"] == "vifit-result" and marker["version"] == 1 and marker["complete"] is True
    on_disk = {rel for rel in snapshot(out) if rel != result_folder.MARKER}
    assert set(marker["entries"]) == on_disk
    assert {"posterior.nc", "summary.csv", "fit.json", "report.html", "plots", "plots/elbo.png"} <= on_disk
    assert marker["entries"]["report.html"]["role"] == "report"
    assert marker["entries"]["plots/elbo.png"]["role"] == "plot"
    assert result_folder.foreign_entries(out)[0] == []


def test_replace_rules_on_folders_built_by_hand(tmp_path):
    new = tmp_path / "new"
    (new / "plots").mkdir(parents=True)
    (new / "summary.csv").write_text("a\n")
    (new / "plots" / "elbo.png").write_bytes(b"png")
    result_folder.write_marker(new, command="fit")
    old = tmp_path / "old"
    shutil.copytree(new, old)
    result_folder.check_replaceable(old)
    empty = tmp_path / "empty"
    empty.mkdir()
    result_folder.check_replaceable(empty)
    # A marker from a newer vifit, or a marker that is not vifit's, makes the folder the user's.
    newer = tmp_path / "newer"
    shutil.copytree(new, newer)
    marker = json.loads((newer / result_folder.MARKER).read_text())
    (newer / result_folder.MARKER).write_text(json.dumps(dict(marker, version=2)))
    with pytest.raises(result_folder.FolderError, match="newer vifit"):
        result_folder.check_replaceable(newer)
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / result_folder.MARKER).write_text("{}")
    with pytest.raises(result_folder.FolderError, match="not a marker vifit wrote"):
        result_folder.check_replaceable(fake)
    # replace() moves the old folder aside, the new one in, and deletes the old one.
    result_folder.replace(new, old)
    assert not new.exists() and (old / "summary.csv").read_text() == "a\n"
    assert leftovers(tmp_path) == []


# -- 2. vifit report never overwrites its input or files it did not write -------------------------


def test_report_never_writes_over_its_input(fitted, tmp_path):
    out = copy_of(fitted, tmp_path)
    before = snapshot(out)
    proc = vifit("report", "R/posterior.nc", "--out", "R/posterior.nc", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "never writes over its input" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(out) == before
    assert leftovers(out) == []


def test_report_never_writes_over_plots_vifit_did_not_write(fitted, tmp_path):
    copy_of(fitted, tmp_path)
    other = tmp_path / "other"
    (other / "plots").mkdir(parents=True)
    (other / "plots" / "fit.png").write_bytes(b"my own figure")
    proc = vifit("report", "R/posterior.nc", "--out", "other/r.html", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "was not written by vifit" in proc.stderr and "Traceback" not in proc.stderr
    assert (other / "plots" / "fit.png").read_bytes() == b"my own figure"
    assert sorted(p.name for p in other.iterdir()) == ["plots"]


def test_report_replaces_its_own_earlier_report_only_with_force(fitted, tmp_path):
    out = copy_of(fitted, tmp_path)
    before = snapshot(out)
    proc = vifit("report", "R/posterior.nc", cwd=tmp_path)
    assert proc.returncode == 2 and "add --force" in proc.stderr, proc.stderr
    assert snapshot(out) == before
    proc = vifit("report", "R/posterior.nc", "--out", "R/fit.json", "--force", cwd=tmp_path)
    assert proc.returncode == 2 and "not a report" in proc.stderr, proc.stderr
    assert snapshot(out) == before
    proc = vifit("report", "R/posterior.nc", "--force", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("report: ")
    assert 'id="plot-elbo"' in (out / "report.html").read_text(encoding="utf-8")
    result_folder.check_replaceable(out)  # the marker lists the new report: still wholly vifit's
    assert leftovers(out) == []


def test_report_out_a_folder_is_refused_and_a_missing_parent_is_made(fitted, tmp_path):
    copy_of(fitted, tmp_path)
    (tmp_path / "somewhere").mkdir()
    proc = vifit("report", "R/posterior.nc", "--out", "somewhere", cwd=tmp_path)
    assert proc.returncode == 2 and "is a folder" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert list((tmp_path / "somewhere").iterdir()) == []
    proc = vifit("report", "R/posterior.nc", "--out", "new/deeper/r.html", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    made = tmp_path / "new" / "deeper"
    assert (made / "r.html").is_file() and (made / "plots" / "elbo.png").is_file()
    result_folder.check_replaceable(made)  # what it wrote is listed in a marker there
    assert leftovers(made) == []


# -- 3. numbers are not rounded away ---------------------------------------------------------------


def test_summary_prints_significant_figures_and_writes_full_precision():
    from inference import Summary

    table = pd.DataFrame(
        {"mean": [1.2345678901234567e-4, 20.15], "sd": [0.005123456789, 3.6443]}, index=["k", "L0"]
    )
    summary = Summary(table=table, guide="g", objective="elbo", stop_reason="converged", num_steps=1, elbo=-1.0)
    text = str(summary)
    assert "0.0001235" in text and "0.005123" in text and "20.15" in text
    buf = io.StringIO()
    summary.to_csv(buf)
    back = pd.read_csv(io.StringIO(buf.getvalue()), index_col="parameter")
    assert back.loc["k", "mean"] == table.loc["k", "mean"]  # exactly, every bit
    assert back.loc["k", "sd"] == table.loc["k", "sd"]


def test_a_tiny_rate_survives_in_summary_csv_fit_json_and_the_printed_table(fitted):
    _, out, proc = fitted
    table = pd.read_csv(out / "summary.csv", index_col="parameter")
    mean, sd = float(table.loc["k", "mean"]), float(table.loc["k", "sd"])
    assert K_TRUE / 2 < mean < K_TRUE * 2 and 0 < sd < mean
    for value in (mean, sd):
        assert float(f"{value:.6g}") != value  # not rounded, to decimals or to figures
    record = json.loads((out / "fit.json").read_text())
    assert record["posterior"]["k"] == {"mean": mean, "sd": sd}
    row = next(line for line in proc.stdout.splitlines() if line.split()[:1] == ["k"])
    assert row.split()[1:3] == [f"{mean:.4g}", f"{sd:.4g}"]


# -- 4. a finished fit is never lost ---------------------------------------------------------------


def test_empty_out_is_refused(tmp_path):
    write_decay(tmp_path / "decay.csv")
    before = snapshot(tmp_path)
    proc = vifit("fit", "decay.csv", *DECAY, *FAST, "--out", "", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "--out is empty" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(tmp_path) == before


def test_out_a_symbolic_link_is_refused(tmp_path):
    write_decay(tmp_path / "decay.csv")
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    proc = vifit("fit", "decay.csv", *DECAY, *FAST, "--out", "link", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "symbolic link" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "link").is_symlink() and list((tmp_path / "target").iterdir()) == []


def test_dollar_signs_in_units_are_drawn_as_text(replaced):
    _, out, proc, _ = replaced
    assert proc.returncode == 0, proc.stderr
    for name in ("fit.png", "elbo.png", "marginals.png", "pair.png", "psis.png"):
        assert (out / "plots" / name).is_file(), name


def test_sigterm_while_writing_keeps_the_old_result_and_saves_the_new_posterior(fitted, tmp_path):
    out = copy_of(fitted, tmp_path)
    before = snapshot(out)
    write_decay(tmp_path / "decay.csv")
    action = "os.kill(os.getpid(), signal.SIGTERM); time.sleep(30); print('SIGTERM was not raised')"
    proc = vifit_process("fit", "decay.csv", *DECAY, *FAST, "--out", "R", cwd=tmp_path, action=action)
    assert proc.returncode == 143, proc.stderr
    assert "terminated (SIGTERM) while writing" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []
    (rescue,) = rescues(tmp_path)
    assert rescue.name.startswith("R.vifit-rescue-") and repr(str(rescue)) in proc.stderr
    assert (rescue / "posterior.nc").stat().st_size > 0
    assert json.loads((rescue / result_folder.MARKER).read_text())["complete"] is False


def test_a_file_added_during_the_fit_is_kept_and_the_result_rescued(fitted, tmp_path):
    out = copy_of(fitted, tmp_path)
    write_decay(tmp_path / "decay.csv")

    def action(path):
        Path("R", "notes.txt").write_text("written while vifit ran")

    proc = vifit("fit", "decay.csv", *DECAY, *FAST, "--out", "R", cwd=tmp_path, action=action)
    assert proc.returncode == 2, proc.stderr
    assert "'notes.txt'" in proc.stderr and "was not replaced" in proc.stderr and "Traceback" not in proc.stderr
    assert (out / "notes.txt").read_text() == "written while vifit ran"
    assert (out / "fit.json").read_bytes() == (fitted[1] / "fit.json").read_bytes()
    assert leftovers(tmp_path) == []
    (rescue,) = rescues(tmp_path)
    assert repr(str(rescue)) in proc.stderr
    for name in ("posterior.nc", "summary.csv", "fit.json", "report.html", "plots/elbo.png"):
        assert (rescue / name).is_file(), name


# -- 5. folders follow the umask --------------------------------------------------------------------


def test_result_folders_follow_the_umask(fitted, replaced):
    assert stat.S_IMODE(fitted[1].stat().st_mode) == 0o755
    assert stat.S_IMODE((fitted[1] / "plots").stat().st_mode) == 0o755
    assert replaced[2].returncode == 0, replaced[2].stderr
    assert stat.S_IMODE(replaced[1].stat().st_mode) == 0o750


def test_a_full_disk_while_writing_gives_a_sentence_and_loses_nothing(fitted, tmp_path):
    out = copy_of(fitted, tmp_path)
    before = snapshot(out)
    write_decay(tmp_path / "decay.csv")

    def action(path):
        raise OSError(28, "No space left on device", str(path))

    proc = vifit("fit", "decay.csv", *DECAY, *FAST, "--out", "R", cwd=tmp_path, action=action)
    assert proc.returncode == 2, proc.stderr
    assert "No space left on device" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(out) == before  # the earlier result is untouched
    (rescue,) = rescues(tmp_path)
    assert repr(str(rescue)) in proc.stderr and (rescue / "posterior.nc").stat().st_size > 0
    assert leftovers(tmp_path) == []


def test_the_same_inputs_and_seed_give_the_same_numbers(fitted, tmp_path):
    write_decay(tmp_path / "decay.csv")
    proc = vifit("fit", "decay.csv", *DECAY, *FAST, "--out", "again", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "again" / "summary.csv").read_bytes() == (fitted[1] / "summary.csv").read_bytes()
    first, second = (json.loads((folder / "fit.json").read_text()) for folder in (fitted[1], tmp_path / "again"))
    assert first["posterior"] == second["posterior"] and first["elbo"] == second["elbo"]
    assert first["inputs"][0]["sha256"] == second["inputs"][0]["sha256"]
    assert {"versions", "seed", "fit", "timings"} <= set(first)
