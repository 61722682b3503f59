"""The ``vifit`` command line.

::

    vifit demo [--out DIR]                      bundled BOD data, writes ./vifit-demo/
    vifit fit CONFIG.toml [--out DIR]           a fit described in TOML
    vifit fit DATA.csv --mechanism "A -> B : k" --initial A=1 [--out DIR]
    vifit report DIR/posterior.nc               rebuild report.html from a saved result
    vifit mechanisms                            built-in mechanisms and rate laws

``--nuts`` (fit, demo) also runs NUTS and compares the posterior with it; ``--open`` opens the report.

Exit codes: 0 success, 2 a user error (printed as one sentence, no traceback), 1 an internal
error. The command line reaches the model builders through the ``vifit.models`` entry point
``kinetics`` only.

Outputs of a fit, in one folder written atomically (a crash never leaves a half-written folder
that looks complete): ``report.html`` (one self-contained page: data, mechanism, verdict,
posterior table, plots), ``summary.csv``, ``posterior.nc`` (ArviZ InferenceData, netCDF, every
group), ``fit.json`` (settings, versions, seed, timings, stop reason, verdict, diagnostics) and
``plots/`` (``fit.png``, ``elbo.png``, ``marginals.png``, ``pair.png``, ``psis.png``); with
``--nuts`` also ``reference.nc``, ``comparison.csv`` and ``plots/comparison.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["main", "UserError"]


class UserError(Exception):
    """An error in what the user asked for; printed as a sentence, exit code 2."""


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
    for item in items or ():
        if "=" not in item:
            raise UserError(f"--{what} expects NAME=VALUE, got {item!r}; e.g. --{what} A=1.0")
        name, value = item.split("=", 1)
        name, value = name.strip(), value.strip()
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


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file; choose a folder name")
    if out.is_dir() and any(out.iterdir()) and not (out / "fit.json").exists():
        raise UserError(
            f"--out {str(out)!r} exists, is not empty and does not hold a vifit result; choose "
            "another folder (vifit replaces only its own earlier results)"
        )


PLOTS = {
    "fit.png": "the data with the posterior median curve and its bands",
    "elbo.png": "the ELBO trace of every restart",
    "marginals.png": "posterior marginals over the priors",
    "pair.png": "pairs of parameters (with NUTS when --nuts is given)",
    "psis.png": "the PSIS diagnostic: k-hat and the importance weights",
}


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_plots(idata, folder: Path, *, losses, best: int, comparison=None) -> None:
    """Every plot of a result into ``folder`` (PNG)."""
    from . import plots

    folder.mkdir(exist_ok=True)
    if "predictions" in idata.groups():
        _save(plots.plot_fit_from_idata(idata), folder / "fit.png")
    _save(plots.plot_elbo(losses, best=best), folder / "elbo.png")
    _save(plots.plot_marginals(idata, chain=best), folder / "marginals.png")
    reference = comparison.reference_idata if comparison is not None else None
    _save(plots.plot_pair(idata, chain=best, reference=reference, reference_label="NUTS"), folder / "pair.png")
    _save(plots.plot_psis(idata, chain=best), folder / "psis.png")
    if comparison is not None:
        _save(comparison.plot(), folder / "comparison.png")


def _write_results(job, result, out: Path, *, num_samples: int, started: float, reference=None) -> dict:
    """Write every output into a temporary sibling folder, then move it into place."""
    import numpy as np

    from ..checks.compare import compare
    from .report import write_report

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        idata = result.to_arviz(num_samples=num_samples)
        idata.posterior.attrs["title"] = job.title
        summary = result.summary(num_samples=num_samples)
        verdict = result.verdict()
        summary.to_csv(tmp / "summary.csv")
        idata.to_netcdf(str(tmp / "posterior.nc"))
        comparison = None
        if reference is not None:
            comparison = compare(result, reference)
            comparison.table.to_csv(tmp / "comparison.csv", index_label="parameter")
            comparison.reference_idata.to_netcdf(str(tmp / "reference.nc"))
        _write_plots(idata, tmp / "plots", losses=result.losses, best=result.best_restart, comparison=comparison)
        write_report(tmp / "report.html", idata, comparison=comparison, title=job.title)
        curve = idata.predictions["curve"].values if "predictions" in idata.groups() else np.zeros((1, 1, 0))
        failed = int(np.isnan(curve).reshape(curve.shape[0] * curve.shape[1], -1).any(axis=1).sum())
        record = {
            "title": job.title,
            "job": job.describe(),
            "fit": result.settings,
            "seed": result.seed,
            "stop_reason": str(result.stop_reason),
            "num_steps": result.num_steps,
            "elbo": result.elbo,
            "timings": dict(result.timings._asdict(), command_s=time.perf_counter() - started),
            "verdict": verdict.to_dict(),
            "diagnostics": {
                "nonfinite_steps": int(result.nonfinite_steps.sum()),
                "nonfinite_reason": result.nonfinite_reason,
                "ode_failed_draws": failed,
                "ode_draws": int(curve.shape[0] * curve.shape[1]),
                "notes": list(summary.notes),
            },
            "posterior": {
                name: {"mean": float(row["mean"]), "sd": float(row["sd"])} for name, row in summary.table.iterrows()
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
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
) -> int:
    from ..engine.fit import fit

    _prepare_out(out)
    options = dict(job.fit_options)
    if seed is not None:
        options["seed"] = seed
    print(f"vifit: {job.title}", flush=True)
    try:
        result = fit(job.model, progress=progress, **options)
    except (ValueError, TypeError) as err:
        raise UserError(f"the fit settings are not valid: {err}") from err
    reference = None
    if nuts_check:
        from ..checks.nuts import nuts

        print("vifit: running NUTS for the reference check (4 chains x 1000 + 1000)", flush=True)
        reference = nuts(job.model, seed=options.get("seed", 0), progress=progress)
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
    return 0


def _report(source: Path, out: Path | None, reference: Path | None) -> int:
    """``vifit report posterior.nc``: rebuild report.html (and the plots) from a saved result."""
    from .arviz_export import import_arviz
    from ..checks.compare import compare
    from .report import write_report

    az = import_arviz()
    if not source.is_file():
        raise UserError(f"{str(source)!r} is not a file; give the posterior.nc written by 'vifit fit'")

    def load(path: Path, what: str):
        try:
            return az.from_netcdf(str(path))
        except (OSError, ValueError) as err:
            raise UserError(f"{str(path)!r} is not an ArviZ netCDF file ({what}): {err}") from err

    idata = load(source, "the result")
    if "posterior" not in idata.groups():
        raise UserError(f"{str(source)!r} has no posterior group; give the posterior.nc written by 'vifit fit'")
    reference = reference if reference is not None else source.with_name("reference.nc")
    comparison = None
    if reference.is_file():
        try:
            comparison = compare(idata, load(reference, "the reference"))
        except ValueError as err:
            raise UserError(f"{str(reference)!r} cannot be compared with {str(source)!r}: {err}") from err
    out = out or source.with_name("report.html")
    if "optimization" in idata.groups():
        best = int(idata.posterior.attrs.get("best_restart", 0))
        _write_plots(
            idata, out.parent / "plots", losses=idata.optimization["loss"].values, best=best, comparison=comparison
        )
    path = write_report(out, idata, comparison=comparison)
    verdict = idata.posterior.attrs.get("verdict")
    print(f"report: {path.resolve()}" + (f" (verdict: {verdict})" if verdict else ""))
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vifit", description="Variational inference for reaction kinetics and NumPyro models."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p):
        p.add_argument("--out", type=Path, help="output folder")
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
    common(fitp)
    checks(fitp)

    report = sub.add_parser("report", help="rebuild report.html from a saved posterior.nc")
    report.add_argument("source", type=Path, help="posterior.nc written by 'vifit fit' or 'vifit demo'")
    report.add_argument("--out", type=Path, help="HTML file to write (default: report.html next to SOURCE)")
    report.add_argument(
        "--reference", type=Path, help="a reference posterior (netCDF) to compare with (default: reference.nc next to SOURCE)"
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
            return _report(args.source, args.out, args.reference)
        if args.command == "demo":
            job = job_class.demo()
            out = args.out or Path("vifit-demo")
        else:
            try:
                job = _job_from_args(args, job_class)
            except (ValueError, TypeError, OSError) as err:
                raise UserError(str(err)) from err
            out = args.out or Path("vifit-results")
        if args.samples < 10:
            raise UserError(f"--samples must be at least 10, got {args.samples}")
        return _run(
            job,
            out,
            progress=not args.no_progress,
            num_samples=args.samples,
            seed=args.seed,
            started=started,
            nuts_check=args.nuts,
            open_report=args.open,
        )
    except UserError as err:
        print(f"vifit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vifit: interrupted", file=sys.stderr)
        return 130
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
