"""The ``vifit`` command line.

::

    vifit demo [--out DIR]                      bundled BOD data, writes ./vifit-demo/
    vifit fit CONFIG.toml [--out DIR]           a fit described in TOML
    vifit fit DATA.csv --mechanism "A -> B : k" --initial A=1 [--out DIR]
    vifit mechanisms                            built-in mechanisms and rate laws

Exit codes: 0 success, 2 a user error (printed as one sentence, no traceback), 1 an internal
error. The command line reaches the model builders through the ``vifit.models`` entry point
``kinetics`` only.

Outputs of a fit, in one folder written atomically (a crash never leaves a half-written folder
that looks complete): ``summary.csv``, ``posterior.nc`` (ArviZ InferenceData, netCDF),
``fit.json`` (settings, versions, seed, timings, stop reason, diagnostics), ``plots/fit.png``
(data with posterior bands) and ``plots/elbo.png``.
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


def _write_results(job, result, out: Path, *, num_samples: int, started: float) -> dict:
    """Write every output into a temporary sibling folder, then move it into place."""
    import matplotlib.pyplot as plt

    from . import plots
    import numpy as np

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "plots").mkdir()
        summary = result.summary(num_samples=num_samples)
        idata = result.to_arviz(num_samples=num_samples)
        summary.to_csv(tmp / "summary.csv")
        idata.to_netcdf(str(tmp / "posterior.nc"))
        samples = result.sample(num_samples)
        curves = job.curves(samples, seed=result.seed)
        data = job.model.dataset
        fig = plots.plot_fit_band(
            curves.times,
            curves.observed,
            data.times,
            data.values,
            species=data.species,
            experiments=data.experiments,
            predictive=curves.predictive,
            data_mask=data.mask,
            time_label=f"time ({data.time_unit})" if data.time_unit else "time",
            value_label=f"concentration ({data.concentration_unit})" if data.concentration_unit else "concentration",
        )
        fig.savefig(tmp / "plots" / "fit.png", dpi=120)
        plt.close(fig)
        fig = plots.plot_elbo(result.losses)
        fig.savefig(tmp / "plots" / "elbo.png", dpi=120)
        plt.close(fig)
        failed = int(np.asarray(curves.failed).any(axis=1).sum())
        record = {
            "title": job.title,
            "job": job.describe(),
            "fit": result.settings,
            "seed": result.seed,
            "stop_reason": str(result.stop_reason),
            "num_steps": result.num_steps,
            "elbo": result.elbo,
            "timings": dict(result.timings._asdict(), command_s=time.perf_counter() - started),
            "diagnostics": {
                "nonfinite_steps": int(result.nonfinite_steps.sum()),
                "nonfinite_reason": result.nonfinite_reason,
                "ode_failed_draws": failed,
                "ode_draws": int(curves.failed.shape[0]),
                "notes": list(summary.notes),
            },
            "posterior": {
                name: {"mean": float(row["mean"]), "sd": float(row["sd"])} for name, row in summary.table.iterrows()
            },
            "versions": _versions(),
        }
        (tmp / "fit.json").write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"summary": summary, "record": record}


def _run(job, out: Path, *, progress: bool, num_samples: int, seed: int | None, started: float) -> int:
    from .fit import fit

    _prepare_out(out)
    options = dict(job.fit_options)
    if seed is not None:
        options["seed"] = seed
    print(f"vifit: {job.title}", flush=True)
    try:
        result = fit(job.model, progress=progress, **options)
    except (ValueError, TypeError) as err:
        raise UserError(f"the fit settings are not valid: {err}") from err
    written = _write_results(job, result, out, num_samples=num_samples, started=started)
    print(written["summary"])
    failed = written["record"]["diagnostics"]["ode_failed_draws"]
    if failed:
        print(f"note: the ODE solve failed for {failed} of {num_samples} posterior draws")
    t = result.timings
    print(
        f"\ntime: init {t.init_s:.2f}s, compile {t.compile_s:.2f}s, run {t.run_s:.2f}s; "
        f"results in {out}/ (summary.csv, posterior.nc, fit.json, plots/)"
    )
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

    demo = sub.add_parser("demo", help="fit the bundled BOD data and write ./vifit-demo/")
    common(demo)

    fitp = sub.add_parser("fit", help="fit a CSV data set or a TOML configuration")
    fitp.add_argument("source", help="a CSV file (with --mechanism) or a TOML configuration")
    fitp.add_argument("--mechanism", help='mechanism text, e.g. "A -> B : k", or a built-in name')
    fitp.add_argument("--initial", action="append", metavar="S=VALUE", help="initial concentration (repeat)")
    fitp.add_argument("--prior", action="append", metavar="NAME=PRIOR", help='prior, e.g. k="LogNormal(0, 1)"')
    fitp.add_argument("--noise", choices=("normal", "lognormal", "proportional"), help="noise model")
    fitp.add_argument("--guide", help="guide: multivariate_normal (default) or normal")
    fitp.add_argument("--stiff", action="store_true", help="use a stiff ODE solver")
    fitp.add_argument("--max-steps", type=int, help="largest number of optimization steps")
    common(fitp)

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
    if args.max_steps:
        extra["max_steps"] = args.max_steps
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
            job, out, progress=not args.no_progress, num_samples=args.samples, seed=args.seed, started=started
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
