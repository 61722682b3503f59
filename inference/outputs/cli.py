"""The ``vifit`` command line.

::

    vifit demo [--out DIR]                      bundled BOD data, writes ./vifit-demo/
    vifit fit CONFIG.toml [--out DIR]           a fit described in TOML
    vifit fit DATA.csv --mechanism "A -> B : k" --initial A=1 [--out DIR]
    vifit report DIR/posterior.nc [--force]     rebuild report.html from a saved result
    vifit mechanisms                            built-in mechanisms and rate laws

``--nuts`` (fit, demo) also runs NUTS and compares the posterior with it; ``--open`` opens the report.

Exit codes: 0 success, 2 a user error (printed as one sentence, no traceback; a folder or file
that cannot be written is one), 1 an internal error, 130 interrupted (Ctrl-C), 143 terminated
(SIGTERM) while writing. The command line reaches the model builders through the
``vifit.models`` entry point ``kinetics`` only.

Outputs of a fit, in one folder written atomically (a crash never leaves a half-written folder
that looks complete): ``report.html`` (one self-contained page: data, mechanism, verdict,
posterior table, plots), ``summary.csv``, ``posterior.nc`` (ArviZ DataTree, netCDF, every
group), ``fit.json`` (settings, versions, seed, timings, stop reason, verdict, diagnostics),
``plots/`` (``fit.png``, ``elbo.png``, ``marginals.png``, ``pair.png``, ``psis.png``) and the
marker ``.vifit-result`` (see :mod:`inference.outputs.result_folder`); with ``--nuts`` also
``reference.nc``, ``comparison.csv`` and ``plots/comparison.png``.

The rules of the output folder (``docs/cli.md``, "The output folder"): ``--out`` is checked before
the fit (never the current folder, a folder holding it or the inputs, a file or a link; an
existing folder only when everything in it is listed in its marker); the posterior is written
first; when anything fails after the fit, what was written is moved to a rescue folder
``<out>.vifit-rescue-<time>`` next to ``--out`` (else in the current or the temporary folder),
named in the message, and no temporary folder is left. ``vifit report`` never writes over its
input or over a file vifit did not write, and replaces its own earlier report only with
``--force``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from . import result_folder
from .result_folder import FolderError

__all__ = ["main", "UserError", "Terminated", "EXIT_INTERRUPTED", "EXIT_TERMINATED"]

#: Exit code after Ctrl-C outside the optimization (128 + SIGINT).
EXIT_INTERRUPTED = 130
#: Exit code after SIGTERM while the results were written (128 + SIGTERM).
EXIT_TERMINATED = 143


class UserError(Exception):
    """An error in what the user asked for; printed as a sentence, exit code 2."""


class Terminated(BaseException):
    """SIGTERM arrived while vifit was writing; raised so that the writing is cleaned up."""


class WriteFailed(Exception):
    """Writing the results of a finished fit failed; ``saved`` says where they were kept.

    Parameters
    ----------
    cause : BaseException
        What went wrong.
    saved : str
        A sentence naming the rescue folder (or why nothing could be saved).
    out : pathlib.Path
        The output folder that was asked for.
    """

    def __init__(self, cause: BaseException, saved: str, out: Path):
        super().__init__(f"{cause}; {saved}")
        self.cause, self.saved, self.out = cause, saved, out


@contextlib.contextmanager
def _sigterm_raises():
    """Turn SIGTERM into :class:`Terminated` (main thread only; the old handler comes back after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _sigterm_deferred():
    """While cleaning up after an error, a further SIGTERM waits until the cleanup is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _plain_text():
    """Draw text as given: ``$...$`` in a unit or a name is not matplotlib mathtext.

    vifit's own labels use no mathtext, so turning it off only protects user text (units, species
    and parameter names) from being parsed, and failing, as math.
    """
    import matplotlib

    with matplotlib.rc_context({"text.parse_math": False}):
        yield


def _kinetics_job_class():
    eps = metadata.entry_points(group="vifit.models", name="kinetics")
    for ep in eps:
        return ep.load()
    raise UserError(
        "the kinetics model builder is not installed (entry point vifit.models:kinetics); "
        "reinstall vifit with 'pip install -e .'"
    )


def _parse_assignments(items, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    example = '--prior "k=LogNormal(log(0.5), 1)"' if what == "prior" else f"--{what} A=1.0"
    given: dict[str, str] = {}
    for item in items or ():
        if "=" not in item:
            raise UserError(f"--{what} expects NAME=VALUE, got {item!r}; e.g. {example}")
        name, value = item.split("=", 1)
        name, value = name.strip(), value.strip()
        if not name or not value:
            missing = "name" if not name else "value"
            raise UserError(f"--{what} {item!r} has no {missing}; write NAME=VALUE, e.g. {example}")
        if name in given:
            raise UserError(
                f"--{what} {name} is given twice ({given[name]!r} and {item!r}); give each name once"
            )
        given[name] = item
        if what == "prior":  # prior text, parsed (never evaluated) by the model builder
            out[name] = value
            continue
        try:
            out[name] = float(value)
        except ValueError:
            out[name] = value
    return out


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("vifit", "jax", "jaxlib", "numpyro", "diffrax", "optax", "arviz", "numpy", "matplotlib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _groups(tree) -> set[str]:
    """Names of the groups of a result (the children of its ``xarray.DataTree``)."""
    return set(tree.children)


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(path.anchor or ".")


def _check_parent(path: Path, where: str) -> None:
    """Check that the folder to hold ``path`` exists or can be made, and can be written."""
    parent = Path(os.path.abspath(path)).parent
    existing = _nearest_existing(parent)
    if not existing.is_dir():
        raise UserError(f"{where} cannot be written: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{where} cannot be written: no permission to write in {str(existing)!r}")


def _check_out(raw: str, inputs) -> Path:
    """Return the output folder of a fit; refuse it with a sentence, before the fit, if unusable."""
    if not raw.strip():
        raise UserError("--out is empty; give the name of a new folder, e.g. --out results")
    out = Path(raw)
    where = f"--out {raw!r}"
    if out.is_symlink():
        raise UserError(
            f"{where} is a symbolic link; give the folder it points to ({os.readlink(out)!r}) or a new name"
        )
    resolved, cwd = out.resolve(), Path.cwd().resolve()
    if resolved == cwd:
        raise UserError(
            f"{where} is the current folder; vifit writes a result into a folder of its own (and may "
            "replace it later), so give a new folder name, e.g. --out results"
        )
    if resolved in cwd.parents:
        raise UserError(f"{where} holds the current folder; give a new folder name, e.g. --out results")
    for path in inputs:
        path = Path(path)
        if resolved == path.resolve():
            raise UserError(f"{where} is the input file {str(path)!r}; give a new folder name, e.g. --out results")
        if resolved in path.resolve().parents:
            raise UserError(
                f"{where} holds the input file {str(path)!r}; give a new folder name, e.g. --out results"
            )
    if out.exists() and not out.is_dir():
        raise UserError(f"{where} is a file; choose a folder name")
    _check_parent(out, where)
    try:
        result_folder.check_replaceable(out)
    except FolderError as err:
        raise UserError(str(err)) from err
    return out


PLOTS = {
    "fit.png": "the data with the posterior median curve and its bands",
    "elbo.png": "the ELBO trace of every restart",
    "marginals.png": "posterior marginals over the priors",
    "pair.png": "pairs of parameters (with NUTS when --nuts is given)",
    "psis.png": "the PSIS diagnostic: k-hat and the importance weights (not for the NUTS draws of auto's exact stage)",
}


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    try:
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def _plot_jobs(tree, *, losses, best: int, comparison=None) -> list[tuple[str, Any]]:
    """``(file name, draw)`` for every plot of a result; ``draw()`` returns the figure.

    A result whose draws are NUTS's (the exact stage of ``guide="auto"``) has no ``psis.png``: the
    ratio p/q at NUTS draws is no importance weight (the report says so).
    """
    from . import plots
    from .arviz_export import exact_stage_source

    jobs = []
    if "predictions" in _groups(tree):
        jobs.append(("fit.png", lambda: plots.plot_fit_from_idata(tree)))
    jobs.append(("elbo.png", lambda: plots.plot_elbo(losses, best=best)))
    jobs.append(("marginals.png", lambda: plots.plot_marginals(tree, chain=best)))
    reference = comparison.reference_idata if comparison is not None else None
    jobs.append(
        ("pair.png", lambda: plots.plot_pair(tree, chain=best, reference=reference, reference_label="NUTS"))
    )
    if not exact_stage_source(tree):  # NUTS draws (the exact stage of guide='auto') have no PSIS diagnostic
        jobs.append(("psis.png", lambda: plots.plot_psis(tree, chain=best)))
    if comparison is not None:
        jobs.append(("comparison.png", comparison.plot))
    return jobs


def _note_no_psis(tree) -> None:
    """Say, on stderr, why a result whose draws are NUTS's has no ``plots/psis.png``."""
    from .arviz_export import exact_stage_source

    if exact_stage_source(tree):
        print(
            "vifit: note: plots/psis.png is left out: the draws are NUTS's through the guide's transport map (the "
            "exact stage of guide='auto'), not importance-weighted guide draws; the verdict gives their R-hat and ESS",
            file=sys.stderr,
        )


#: Plots that some results cannot have: left out, with a note, when their data do not allow them.
_OPTIONAL_PLOTS = ("psis.png",)


def _write_plots(jobs, folder: Path) -> None:
    """Every plot of ``jobs`` into ``folder`` (PNG), user text drawn as plain text.

    The PSIS plot needs at least two draws with a finite model density; without them it is left
    out with a note (the verdict says why), and the other outputs are written.
    """
    folder.mkdir(exist_ok=True)
    with _plain_text():
        for name, draw in jobs:
            try:
                figure = draw()
            except ValueError as err:
                if name not in _OPTIONAL_PLOTS:
                    raise
                print(f"vifit: note: plots/{name} is left out: {err}", file=sys.stderr)
                continue
            _save(figure, folder / name)


def _write_netcdf(tree, path: Path) -> None:
    """``tree.to_netcdf`` through a hidden partial file, so ``path`` only ever holds a whole file."""
    part = path.with_name(f".{path.name}.part")
    try:
        tree.to_netcdf(str(part))
        os.replace(part, path)
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise


def _new_folder(parent: Path, name: str) -> Path:
    """Make a hidden temporary folder in ``parent``, with the mode the user's umask gives."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent))
    os.chmod(tmp, result_folder.folder_mode())
    return tmp


def _rescue_bases(out: Path) -> list[Path]:
    bases = []
    for base in (Path(os.path.abspath(out)).parent, Path.cwd(), Path(tempfile.gettempdir())):
        if base not in bases:
            bases.append(base)
    return bases


def _rescue(state: dict, out: Path, result, num_samples: int) -> str:
    """Keep what a failed write produced: the posterior first. Returns a sentence saying where.

    The temporary folder (or a new one, when it could not be made) gets ``posterior.nc`` if it has
    none yet (or ``posterior-draws.npz``, the guide's draws, when the ArviZ export itself failed),
    then a marker, and is moved to ``<out>.vifit-rescue-<time>`` next to ``out``, else in the
    current folder, else in the temporary folder of the system.
    """
    import numpy as np

    name = out.name or "vifit"
    folder = state.get("tmp")
    if folder is None or not folder.is_dir():
        folder = None
        for base in _rescue_bases(out):
            with contextlib.suppress(OSError):
                folder = _new_folder(base, name)
                break
        if folder is None:
            return "the posterior could not be saved: no folder could be written"
    saved, problem = None, ""
    if (folder / "posterior.nc").is_file():
        saved = "posterior.nc"
    elif state.get("tree") is not None:
        try:
            _write_netcdf(state["tree"], folder / "posterior.nc")
            saved = "posterior.nc"
        except Exception as err:  # noqa: BLE001 - fall back to the raw draws below
            problem = f"{type(err).__name__}: {err}"
    if saved is None:
        try:
            draws = result.sample(num_samples)
            np.savez(folder / "posterior-draws.npz", **{k: np.asarray(v) for k, v in draws.items()})
            saved = "posterior-draws.npz"
        except Exception as err:  # noqa: BLE001 - say so below
            problem = problem or f"{type(err).__name__}: {err}"
    for part in folder.glob(".*.part"):
        with contextlib.suppress(OSError):
            part.unlink()
    if not any(folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)
        return "the posterior could not be saved" + (f" ({problem})" if problem else "")
    complete = (folder / result_folder.MARKER).is_file()  # the marker is the last file written
    if not complete:
        with contextlib.suppress(OSError):
            result_folder.write_marker(folder, command=state.get("command", "fit"), complete=False)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for base in _rescue_bases(out):
        target = base / f"{name}.vifit-rescue-{stamp}"
        n = 1
        while target.exists() or target.is_symlink():
            n += 1
            target = base / f"{name}.vifit-rescue-{stamp}-{n}"
        try:
            shutil.move(str(folder), str(target))
        except OSError:
            if target.exists() and folder.exists():
                shutil.rmtree(target, ignore_errors=True)
            continue
        break
    else:
        target = folder
    if complete:
        return f"the fit's results are saved in {str(target)!r}"
    if saved == "posterior.nc":
        what = "with posterior.nc"
    elif saved:
        why = f": {problem}" if problem else ""
        what = f"with the posterior draws in posterior-draws.npz (posterior.nc could not be written{why})"
    else:
        what = f"without the posterior, which could not be saved ({problem})"
    return f"the fit's results so far are saved in {str(target)!r}, {what}"


def _input_hashes(job) -> list[dict]:
    """Each file the fit read (data, configuration) with its size and SHA-256, for ``fit.json``."""
    import hashlib

    config = job.config or {}
    paths = [config.get("data"), config.get("config_file")]
    out = []
    for raw in paths:
        if not raw or not Path(raw).is_file():
            continue
        digest = hashlib.sha256(Path(raw).read_bytes()).hexdigest()
        out.append({"path": str(Path(raw).resolve()), "bytes": Path(raw).stat().st_size, "sha256": digest})
    return out


def _write_results(job, result, out: Path, *, num_samples: int, started: float, reference=None) -> dict:
    """Write every output into a temporary sibling folder, then move it into place.

    ``reference`` is a callable that runs NUTS (or None); it runs after ``posterior.nc`` is on
    disk. When anything fails, :func:`_rescue` keeps what was written and :class:`WriteFailed`
    is raised.
    """
    state: dict[str, Any] = {"tmp": None, "tree": None, "done": False, "command": "fit"}
    with _sigterm_raises():
        try:
            return _write_into_place(
                job, result, out, state, num_samples=num_samples, started=started, reference=reference
            )
        except BaseException as err:
            if state["done"]:
                raise
            with _sigterm_deferred():
                try:
                    saved = _rescue(state, out, result, num_samples)
                except Exception as rescue_err:  # noqa: BLE001 - the first error is the one to report
                    saved = f"the results could not be saved ({type(rescue_err).__name__}: {rescue_err})"
            raise WriteFailed(err, saved, out) from err


def _write_into_place(job, result, out: Path, state: dict, *, num_samples: int, started: float, reference) -> dict:
    import numpy as np

    from .. import compare
    from .report import write_report

    Path(os.path.abspath(out)).parent.mkdir(parents=True, exist_ok=True)
    tmp = state["tmp"] = _new_folder(Path(os.path.abspath(out)).parent, out.name)
    tree = result.to_arviz(num_samples=num_samples)
    tree["posterior"].attrs["title"] = job.title
    state["tree"] = tree
    _write_netcdf(tree, tmp / "posterior.nc")  # first: the one file a failure must not lose
    comparison = None
    if reference is not None:
        comparison = compare(result, reference())
        comparison.table.to_csv(tmp / "comparison.csv", index_label="parameter")
        _write_netcdf(comparison.reference_idata, tmp / "reference.nc")
    summary = result.summary(num_samples=num_samples)
    verdict = result.verdict()
    summary.to_csv(tmp / "summary.csv")
    _write_plots(_plot_jobs(tree, losses=result.losses, best=result.best_restart, comparison=comparison), tmp / "plots")
    _note_no_psis(tree)
    with _plain_text():
        write_report(tmp / "report.html", tree, comparison=comparison, title=job.title)
    groups = _groups(tree)
    curve = tree["predictions"]["curve"].values if "predictions" in groups else np.zeros((1, 1, 0))
    failed = int(np.isnan(curve).reshape(curve.shape[0] * curve.shape[1], -1).any(axis=1).sum())
    record = {
        "title": job.title,
        "job": job.describe(),
        "fit": result.settings,
        "seed": result.seed,
        "inputs": _input_hashes(job),
        "interrupted": result.settings.get("interrupted"),
        "stop_reason": str(result.stop_reason),
        "num_steps": result.num_steps,
        "elbo": result.elbo,
        "timings": dict(result.timings._asdict(), command_s=time.perf_counter() - started),
        "verdict": verdict.to_dict(),
        "diagnostics": {
            "nonfinite_steps": int(result.nonfinite_steps.sum()),
            "nonfinite_reason": result.nonfinite_reason,
            "faults": result.diagnose().faults.as_dict() if result.diagnose().faults is not None else None,
            "ode_failed_draws": failed,
            "ode_draws": int(curve.shape[0] * curve.shape[1]),
            "notes": list(summary.notes),
        },
        "posterior": {
            str(name): {"mean": float(row["mean"]), "sd": float(row["sd"])} for name, row in summary.table.iterrows()
        },
        "versions": _versions(),
    }
    if comparison is not None:
        record["nuts_check"] = {
            "reference": comparison.reference_name,
            "all_ok": comparison.all_ok,
            "table": comparison.table.to_dict(orient="index"),
        }
    (tmp / "fit.json").write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    result_folder.write_marker(tmp, command="fit")
    result_folder.replace(tmp, out)
    state["done"] = True
    return {"summary": summary, "record": record, "comparison": comparison}


def _run(
    job,
    out: Path,
    *,
    progress: bool,
    num_samples: int,
    seed: int | None,
    started: float,
    nuts_check: bool = False,
    open_report: bool = False,
    checkpoint: Path | None = None,
    resume: bool = False,
) -> int:
    from .. import fit
    from ..engine.checkpoint import CheckpointError

    options = dict(job.fit_options)
    if seed is not None:
        options["seed"] = seed
    if checkpoint is not None:
        options.update(checkpoint=str(checkpoint), resume=resume)
    print(f"vifit: {job.title}", flush=True)
    try:
        result = fit(job.model, progress=progress, **options)
    except CheckpointError as err:
        raise UserError(str(err)) from err
    except (ValueError, TypeError) as err:
        raise UserError(f"the fit settings are not valid: {err}") from err
    interrupted = result.settings.get("interrupted")
    reference = None
    if interrupted and nuts_check:
        print("vifit: the fit was interrupted, so the NUTS reference check is left out", flush=True)
        nuts_check = False
    if nuts_check:

        def reference():
            from .. import nuts

            print("vifit: running NUTS for the reference check (4 chains x 1000 + 1000)", flush=True)
            return nuts(job.model, seed=options.get("seed", 0), progress=progress)

    written = _write_results(job, result, out, num_samples=num_samples, started=started, reference=reference)
    print(written["summary"])
    if written["comparison"] is not None:
        print("\n" + str(written["comparison"]))
    failed = written["record"]["diagnostics"]["ode_failed_draws"]
    if failed:
        print(f"note: the ODE solve failed for {failed} of {written['record']['diagnostics']['ode_draws']} plotted draws")
    t = result.timings
    print(
        f"\ntime: init {t.init_s:.2f}s, compile {t.compile_s:.2f}s, run {t.run_s:.2f}s; "
        f"results in {out}/ (report.html, summary.csv, posterior.nc, fit.json, plots/)"
    )
    report = (out / "report.html").resolve()
    print(f"report: {report}")
    if open_report:
        import webbrowser

        webbrowser.open(report.as_uri())
    if interrupted:
        again = (
            f"continue it with the same command and --checkpoint {checkpoint} --resume"
            if checkpoint is not None
            else "run it again to the end (add --checkpoint FILE to be able to resume an interrupted fit)"
        )
        print(
            f"vifit: the fit was stopped by {interrupted} before it finished; the results so far are in {out}/, "
            f"marked interrupted (verdict: unreliable); {again}",
            file=sys.stderr,
        )
        return EXIT_TERMINATED if interrupted == "SIGTERM" else EXIT_INTERRUPTED
    return 0


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_report_targets(out: Path, plot_names, inputs, *, force: bool, given: bool = True) -> None:
    """Refuse, with a sentence, any file ``vifit report`` must not write over."""
    folder = out.parent
    marker, _ = result_folder.read_marker(folder) if folder.is_dir() else (None, "")
    where = f"--out {str(out)!r}" if given else repr(str(out))
    if out.name == result_folder.MARKER or (out.name == "plots" and plot_names):
        raise UserError(f"{where} is a name vifit uses in a result folder; give another file name, e.g. report.html")
    plots = folder / "plots"
    if plot_names and (plots.is_symlink() or (plots.exists() and not plots.is_dir())):
        raise UserError(f"{str(plots)!r} is not a folder, so the plots cannot be written there; choose another --out")
    targets = [(out, out.name, "report")] + [(plots / n, f"plots/{n}", "plot") for n in plot_names]
    for path, rel, role in targets:
        if not (path.exists() or path.is_symlink()):
            continue
        name = where if path == out else repr(str(path))
        for source in inputs:
            if _same_file(path, source):
                raise UserError(
                    f"{name} is the input {str(source)!r}; vifit report never writes over its input, "
                    "so give another file, e.g. --out report.html"
                )
        if path.is_symlink():
            raise UserError(f"{name} is a symbolic link; vifit report does not write through links")
        if path.is_dir():
            raise UserError(
                f"{name} is a folder; give the HTML file to write, e.g. --out {str(path / 'report.html')!r}"
                if path == out
                else f"{name} is a folder; choose another --out"
            )
        if not result_folder.is_vifits(folder, rel, marker):
            raise UserError(
                f"{name} exists and was not written by vifit; vifit report writes only new files or over "
                "its own earlier report (with --force), so choose another --out"
            )
        if not result_folder.is_vifits(folder, rel, marker, role=role):
            raise UserError(f"{name} is a file of a vifit result, not a report; choose another --out")
        if not force:
            what = "an earlier report" if role == "report" else "a plot of an earlier report"
            raise UserError(
                f"{name} holds {what}; add --force to replace it (and its plots), or choose another --out"
            )


def _report(source: Path, out_raw: str | None, reference: Path | None, *, force: bool = False) -> int:
    """``vifit report posterior.nc``: rebuild report.html (and the plots) from a saved result."""
    import arviz as az

    from .. import compare
    from .report import write_report

    if not source.is_file():
        raise UserError(f"{str(source)!r} is not a file; give the posterior.nc written by 'vifit fit'")
    if out_raw is not None and not out_raw.strip():
        raise UserError("--out is empty; give the HTML file to write, e.g. --out report.html")
    out = Path(out_raw) if out_raw is not None else source.with_name("report.html")
    if reference is not None and not reference.is_file():
        raise UserError(f"--reference {str(reference)!r} is not a file; give a netCDF file such as reference.nc")

    def load(path: Path, what: str):
        import gc

        # A damaged file leaves half-opened readers behind whose clean-up fails when they are
        # collected, printing "Exception ignored ... Traceback": the error is kept as a sentence
        # only, the readers are collected here, and that noise is dropped.
        hook, sys.unraisablehook = sys.unraisablehook, lambda unraisable: None
        message = None
        try:
            tree = az.from_netcdf(str(path))
            tree.load()
        except (OSError, ValueError) as err:
            detail = _first_line(err)
            if "IO backends" in detail:  # xarray's word for a file in no format it knows
                detail = "its contents are not in the netCDF (HDF5) format; give the posterior.nc written by 'vifit fit'"
            message = f"{str(path)!r} is not an ArviZ netCDF file ({what}): {detail}"
        except Exception as err:  # noqa: BLE001 - a damaged file fails inside the HDF5/netCDF readers in many ways
            message = (
                f"{str(path)!r} cannot be read ({what}): the file is damaged or truncated "
                f"({type(err).__name__}: {_first_line(err)}); write it again with 'vifit fit', or restore a copy"
            )
        finally:
            gc.collect()
            sys.unraisablehook = hook
        if message is not None:
            raise UserError(message)
        return tree

    def _first_line(err: BaseException) -> str:
        text = str(err).strip().splitlines()
        return text[0] if text else type(err).__name__

    tree = load(source, "the result")
    if "posterior" not in _groups(tree):
        raise UserError(f"{str(source)!r} has no posterior group; give the posterior.nc written by 'vifit fit'")
    reference = reference if reference is not None else source.with_name("reference.nc")
    inputs = [source]
    comparison = None
    if reference.is_file():
        inputs.append(reference)
        try:
            comparison = compare(tree, load(reference, "the reference"))
        except ValueError as err:
            raise UserError(f"{str(reference)!r} cannot be compared with {str(source)!r}: {err}") from err
    jobs = []
    if "optimization" in _groups(tree):
        best = int(tree["posterior"].attrs.get("best_restart", 0))
        jobs = _plot_jobs(tree, losses=tree["optimization"]["loss"].values, best=best, comparison=comparison)
    plot_names = [name for name, _ in jobs]
    given = out_raw is not None
    _check_report_targets(out, plot_names, inputs, force=force, given=given)
    _check_parent(out, f"--out {str(out)!r}")
    folder = Path(os.path.abspath(out)).parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = None
    with _sigterm_raises():
        try:
            tmp = _new_folder(folder, out.name)
            if jobs:
                _write_plots(jobs, tmp / "plots")
                _note_no_psis(tree)
            with _plain_text():
                write_report(tmp / "report.html", tree, comparison=comparison)
            _check_report_targets(out, plot_names, inputs, force=force, given=given)  # again: time has passed
            written = {}
            if plot_names:
                (folder / "plots").mkdir(exist_ok=True)
                for name in plot_names:
                    if not (tmp / "plots" / name).is_file():
                        continue  # an optional plot left out (with a note) by _write_plots
                    os.replace(tmp / "plots" / name, folder / "plots" / name)
                    written[f"plots/{name}"] = "plot"
            os.replace(tmp / "report.html", folder / out.name)
            written[out.name] = "report"
            result_folder.record(folder, written, command="report")
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
    verdict = tree["posterior"].attrs.get("verdict")
    print(f"report: {out.resolve()}" + (f" (verdict: {verdict})" if verdict else ""))
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vifit", description="Variational inference for reaction kinetics and NumPyro models."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p):
        p.add_argument("--out", help="output folder: a new one, or an earlier vifit result to replace")
        p.add_argument("--seed", type=int, help="random seed (default: the config's, else 0)")
        p.add_argument("--samples", type=int, default=1000, help="posterior draws written (default 1000)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")

    def checks(p):
        p.add_argument("--nuts", action="store_true", help="also run NUTS and compare the posterior with it")
        p.add_argument("--open", action="store_true", help="open report.html in the web browser")

    demo = sub.add_parser("demo", help="fit the bundled BOD data and write ./vifit-demo/")
    common(demo)
    checks(demo)

    fitp = sub.add_parser("fit", help="fit a CSV data set or a TOML configuration")
    fitp.add_argument("source", help="a CSV file (with --mechanism) or a TOML configuration")
    fitp.add_argument("--mechanism", help='mechanism text, e.g. "A -> B : k", or a built-in name')
    fitp.add_argument("--initial", action="append", metavar="S=VALUE", help="initial concentration (repeat)")
    fitp.add_argument("--prior", action="append", metavar="NAME=PRIOR", help='prior, e.g. k="LogNormal(0, 1)"')
    fitp.add_argument("--noise", choices=("normal", "lognormal", "proportional"), help="noise model")
    fitp.add_argument(
        "--guide", help="guide: auto (default), multivariate_normal, normal, low_rank, iaf, bnaf, laplace or delta"
    )
    fitp.add_argument("--stiff", action="store_true", help="use a stiff ODE solver")
    fitp.add_argument("--max-steps", type=int, help="largest number of optimization steps")
    fitp.add_argument("--restarts", type=int, help="independent restarts, compared by the verdict")
    fitp.add_argument(
        "--checkpoint", type=Path, metavar="FILE", help="save the fit's state to FILE (periodically and when interrupted)"
    )
    fitp.add_argument("--resume", action="store_true", help="continue the fit saved in --checkpoint FILE")
    common(fitp)
    checks(fitp)

    report = sub.add_parser("report", help="rebuild report.html from a saved posterior.nc")
    report.add_argument("source", type=Path, help="posterior.nc written by 'vifit fit' or 'vifit demo'")
    report.add_argument("--out", help="HTML file to write (default: report.html next to SOURCE)")
    report.add_argument(
        "--reference", type=Path, help="a reference posterior (netCDF) to compare with (default: reference.nc next to SOURCE)"
    )
    report.add_argument(
        "--force", action="store_true", help="replace an earlier report (and its plots) that vifit wrote"
    )
    report.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")

    sub.add_parser("mechanisms", help="list built-in mechanisms and rate laws")
    return parser


def _job_from_args(args, job_class):
    source = Path(args.source)
    if source.suffix.lower() == ".toml":
        if args.mechanism or args.initial or args.prior or args.noise:
            raise UserError(
                "give --mechanism, --initial, --prior and --noise in the TOML file, not on the command line"
            )
        job = job_class.from_toml(source)
    else:
        if not args.mechanism:
            raise UserError(
                f"fitting {args.source!r} needs a mechanism: add --mechanism \"A -> B : k\" (or pass a "
                "TOML configuration)"
            )
        config: dict[str, Any] = {
            "data": str(source),
            "mechanism": args.mechanism,
            "initial": _parse_assignments(args.initial, "initial"),
            "priors": _parse_assignments(args.prior, "prior"),
        }
        if args.noise:
            config["noise"] = args.noise
        job = job_class.from_config(config)
    extra = {}
    if args.guide:
        extra["guide"] = args.guide
    if args.max_steps is not None:
        extra["max_steps"] = args.max_steps
    if args.restarts is not None:
        extra["restarts"] = args.restarts
    if args.stiff:
        config = dict(job.config)
        config["solver"] = dict(config.get("solver") or {}, stiff=True)
        job = job_class.from_config(config)
    if extra:
        job = type(job)(job.model, dict(job.fit_options, **extra), job.title, job.config)
    return job


def _check_checkpoint(args, out: Path, inputs) -> Path | None:
    """The ``--checkpoint`` file: outside the output folder, not an input, and needed by ``--resume``."""
    path = getattr(args, "checkpoint", None)
    if path is None:
        if getattr(args, "resume", False):
            raise UserError("--resume continues a saved fit: give its file with --checkpoint FILE")
        return None
    path = Path(os.path.abspath(path))
    if path.is_dir():
        raise UserError(f"--checkpoint {str(path)!r} is a folder; give a file name, e.g. {str(path / 'fit.ckpt.npz')!r}")
    if out.resolve() in path.parents or path == out.resolve():
        raise UserError(
            f"--checkpoint {str(path)!r} is inside the output folder {str(out)!r}, which is replaced when the results "
            "are written; put the checkpoint elsewhere"
        )
    for item in inputs:
        if item.exists() and path.exists() and _same_file(item, path):
            raise UserError(f"--checkpoint {str(path)!r} is an input file of this fit; give another file name")
    if not path.parent.is_dir():
        raise UserError(f"the folder of --checkpoint {str(path)!r} does not exist; create it first")
    if path.exists() and not getattr(args, "resume", False):
        raise UserError(
            f"--checkpoint {str(path)!r} already exists; add --resume to continue that fit, or give a new file name "
            "(vifit does not overwrite it)"
        )
    return path


def _inputs(args, job) -> list[Path]:
    """Return the files a fit reads (data, configuration); ``--out`` must not hold them."""
    inputs = []
    data = (job.config or {}).get("data")
    if data:
        inputs.append(Path(data))
    source = getattr(args, "source", None)
    if source and str(source).lower().endswith(".toml"):
        inputs.append(Path(source))
    return inputs


def _write_failed(err: WriteFailed, debug: bool) -> int:
    cause = err.cause
    if isinstance(cause, Terminated):
        print(f"vifit: terminated (SIGTERM) while writing the results; {err.saved}", file=sys.stderr)
        return EXIT_TERMINATED
    if isinstance(cause, KeyboardInterrupt):
        print(f"vifit: interrupted while writing the results; {err.saved}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(cause, (UserError, FolderError)):
        print(f"vifit: error: {cause}; {err.saved}", file=sys.stderr)
        return 2
    if isinstance(cause, OSError):
        where = f" ({cause.filename})" if cause.filename else ""
        print(
            f"vifit: error: the results could not be written to {str(err.out)!r}: "
            f"{cause.strerror or cause}{where}; {err.saved}",
            file=sys.stderr,
        )
        return 2
    if debug:
        print(f"vifit: {err.saved}", file=sys.stderr)
        raise cause
    print(
        f"vifit: internal error: {type(cause).__name__}: {cause}\n"
        "This is a bug in vifit, not in your input; run again with --debug for the traceback.\n"
        f"vifit: {err.saved}",
        file=sys.stderr,
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    started = time.perf_counter()
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    debug = getattr(args, "debug", False)
    try:
        job_class = _kinetics_job_class()
        if args.command == "mechanisms":
            print(job_class.catalogue())
            return 0
        if args.command == "report":
            return _report(args.source, args.out, args.reference, force=args.force)
        if args.command == "demo":
            job = job_class.demo()
            out_raw = args.out if args.out is not None else "vifit-demo"
        else:
            try:
                job = _job_from_args(args, job_class)
            except (ValueError, TypeError, OSError) as err:
                raise UserError(str(err)) from err
            out_raw = args.out if args.out is not None else "vifit-results"
        if args.samples < 10:
            raise UserError(f"--samples must be at least 10, got {args.samples}")
        out = _check_out(out_raw, _inputs(args, job))
        checkpoint = _check_checkpoint(args, out, _inputs(args, job))
        return _run(
            job,
            out,
            progress=not args.no_progress,
            num_samples=args.samples,
            seed=args.seed,
            started=started,
            nuts_check=args.nuts,
            open_report=args.open,
            checkpoint=checkpoint,
            resume=getattr(args, "resume", False),
        )
    except WriteFailed as err:
        return _write_failed(err, debug)
    except UserError as err:
        print(f"vifit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vifit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("vifit: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
    except OSError as err:
        if debug:
            raise
        where = f" ({err.filename})" if err.filename else ""
        print(f"vifit: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the last line of defence of a command-line tool
        if debug:
            raise
        print(
            f"vifit: internal error: {type(err).__name__}: {err}\n"
            "This is a bug in vifit, not in your input; run again with --debug for the traceback.",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
