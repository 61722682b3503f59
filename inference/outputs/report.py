"""One self-contained HTML page of a fit: verdict, model, data, posterior table and plots.

:func:`build_report` reads nothing but an ArviZ :class:`xarray.DataTree` in the layout of the
ArviZ hand-off (``docs/arviz.md``), so the same page comes from a fit in memory and from a saved
``posterior.nc``. Images are inline PNG ``data:`` URIs and the style sheet is inline: the page
loads no file, font, script or network resource and can be mailed or archived as it is. Every
section whose group is missing is replaced by a one-line note, so any ArviZ DataTree gives a page.
The posterior table is :func:`arviz_stats.summary`; the figures are those of
:mod:`inference.outputs.plots`.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..checks.diagnostics import khat_text
from . import plots
from .arviz_export import exact_stage_source, has_group, summary_table

__all__ = ["build_report", "write_report"]

#: Resolution of the inline images; about 100 keeps a page at a few hundred kB.
DPI = 100
#: At most this many rows of data in the data table.
MAX_DATA_ROWS = 200

_LEVELS = {"reliable": "reliable", "use with care": "care", "unreliable": "unreliable"}

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }
nav { font-size: 0.9em; color: #555; }
nav a { margin-right: 0.8em; color: #2a5d9f; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; border-radius: 4px; }
table { border-collapse: collapse; font-size: 0.88em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th { background: #f2f2f2; }
table.settings td, table.settings th { text-align: left; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
.note { color: #666; font-style: italic; }
.caption { color: #444; font-size: 0.92em; }
.verdict { border: 2px solid; border-radius: 6px; padding: 0.6em 1.2em; margin: 1em 0; }
.verdict h3 { margin: 0.3em 0; font-size: 1.25em; }
.level-reliable { border-color: #1a9850; background: #eef8ea; }
.level-care { border-color: #e6a100; background: #fff6dc; }
.level-unreliable { border-color: #d73027; background: #fdecea; }
.level-unknown { border-color: #999; background: #f4f4f4; }
.badge { display: inline-block; border-radius: 3px; padding: 0 0.4em; font-size: 0.85em;
         font-weight: bold; border: 1px solid; }
.advice { color: #444; }
"""

_SETTINGS = (
    ("draws_from", "draws from"),
    ("guide", "guide"),
    ("objective", "objective"),
    ("stop_reason", "stop reason"),
    ("num_steps", "steps"),
    ("num_restarts", "restarts"),
    ("best_restart", "best restart"),
    ("elbo", "ELBO (best restart)"),
    ("seed", "seed"),
    ("nonfinite_steps", "non-finite steps skipped"),
    ("noise", "noise model"),
    ("time_unit", "time unit"),
    ("concentration_unit", "concentration unit"),
    ("data_source", "data source"),
    ("init_s", "initialization time (s)"),
    ("compile_s", "compile time (s)"),
    ("run_s", "run time (s)"),
    ("total_s", "total time (s)"),
)


def _e(value) -> str:
    """Escape ``value`` (any object, as text) for HTML."""
    return html.escape(str(value), quote=True)


def _fmt(value) -> str:
    """Format a number or string attribute for a table cell."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return str(value)


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _has(idata, group: str) -> bool:
    return has_group(idata, group)


def _section(section_id: str, heading: str, body: str) -> str:
    return f'<section id="section-{section_id}">\n<h2>{_e(heading)}</h2>\n{body}\n</section>'


def _figure_html(fig, plot_id: str, alt: str) -> str:
    """Encode ``fig`` as an inline PNG ``<img>`` and close it."""
    plt = plots._pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img id="{_e(plot_id)}" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _plot(plot_id: str, alt: str, draw: Callable, caption: str = "") -> str:
    """Draw a plot into an ``<img>``; a note (and a warning) instead when drawing fails."""
    plt = plots._pyplot()
    before = set(plt.get_fignums())
    try:
        fig = draw()
    except Exception as err:  # a report is still useful without one plot
        for number in set(plt.get_fignums()) - before:
            plt.close(number)
        warnings.warn(f"report: the {alt} plot could not be drawn: {err}", RuntimeWarning, stacklevel=3)
        return _note(f"The {alt} plot could not be drawn: {err}")
    img = _figure_html(fig, plot_id, alt)
    return img + (f'\n<p class="caption">{_e(caption)}</p>' if caption else "")


# -- sections -----------------------------------------------------------------------------------


def _verdict(attrs: dict) -> str:
    exact = str(attrs.get("draws_from", ""))
    exact = exact if exact.startswith("NUTS") else ""
    verdict = attrs.get("verdict")
    if verdict is None:
        return _section("verdict", "Verdict", _note("No verdict: this result carries no verdict attribute."))
    level = _LEVELS.get(str(verdict), "unknown")
    parts = [f'<div id="verdict" class="verdict level-{level}">', f"<h3>{_e(verdict)}</h3>"]
    if attrs.get("verdict_reason"):
        parts.append(f"<p>{_e(attrs['verdict_reason'])}</p>")
    if attrs.get("verdict_advice"):
        parts.append(f'<p class="advice">Advice: {_e(attrs["verdict_advice"])}</p>')
    if exact:
        # The exact stage of guide="auto": no PSIS k-hat applies to NUTS draws.
        parts.append(
            f"<p>The draws are <b>NUTS's</b>, not the guide's: {_e(exact)} (the exact stage of guide='auto'). "
            "The verdict rests on the chains' R-hat and effective sample sizes; PSIS k-hat applies only to "
            "importance-weighted guide draws, so none is shown.</p>"
        )
    elif "khat" in attrs:
        draws = f" (from {_fmt(attrs['khat_draws'])} draws)" if "khat_draws" in attrs else ""
        try:
            khat = khat_text(float(attrs["khat"]))
        except (TypeError, ValueError):
            khat = str(attrs["khat"])
        parts.append(
            f"<p>PSIS k-hat of the guide against the model, best restart: <b>{_e(khat)}</b>"
            f"{_e(draws)}; below 0.5 good, 0.5 to 0.7 usable, above 0.7 the guide misses posterior mass in "
            "the tails (the verdict weighs it with how far reweighting moves the means and sds).</p>"
        )
    raw = attrs.get("verdict_checks")
    if raw is not None:
        try:
            checks = json.loads(raw) if isinstance(raw, (str, bytes)) else list(raw)
        except (TypeError, ValueError):
            checks = None
        if not isinstance(checks, list):
            parts.append(_note("The verdict_checks attribute is not a JSON list of checks."))
        elif checks:
            items = []
            for check in checks:
                check = check if isinstance(check, dict) else {"message": check}
                lvl = str(check.get("level", ""))
                item = f'<li><span class="badge level-{_LEVELS.get(lvl, "unknown")}">{_e(lvl or "?")}</span> '
                item += f"<b>{_e(check.get('check', ''))}</b>: {_e(check.get('message', ''))}"
                if check.get("advice"):
                    item += f'<br><span class="advice">Advice: {_e(check["advice"])}</span>'
                items.append(item + "</li>")
            parts.append('<ul class="checks">\n' + "\n".join(items) + "\n</ul>")
    parts.append("</div>")
    return _section("verdict", "Verdict", "\n".join(parts))


def _faults(attrs: dict) -> str:
    """The section on numerical faults, from the verdict's ``numerical faults`` check; empty without one."""
    raw = attrs.get("verdict_checks")
    try:
        checks = json.loads(raw) if isinstance(raw, (str, bytes)) else list(raw or [])
    except (TypeError, ValueError):
        return ""
    found = [c for c in checks if isinstance(c, dict) and c.get("check") == "numerical faults"]
    if not found:
        return ""
    check = found[0]
    lvl = str(check.get("level", ""))
    body = [
        f'<div id="faults" class="verdict level-{_LEVELS.get(lvl, "unknown")}">',
        f"<h3>{_e(lvl or '?')}</h3>",
        f"<p>{_e(check.get('message', ''))}</p>",
    ]
    if check.get("advice"):
        body.append(f'<p class="advice">Advice: {_e(check["advice"])}</p>')
    body.append(
        '<p class="note">What the fit met that is not statistics: optimization steps skipped for a non-finite loss, '
        "draws where the model has zero density (a failed ODE solve, the solver's step limit, values beyond double "
        "precision, another site named), a switch to the stiff ODE solver, a guide scale that collapsed. Draws of zero "
        "density are left out of the posterior's draws.</p></div>"
    )
    return _section("faults", "Numerical faults", "\n".join(body))


def _model(attrs: dict) -> str:
    body = []
    if attrs.get("mechanism"):
        body.append(f'<h3>Mechanism</h3>\n<pre id="mechanism">{_e(attrs["mechanism"])}</pre>')
    rows = [
        f"<tr><th>{_e(label)}</th><td>{_e(_fmt(attrs[key]))}</td></tr>"
        for key, label in _SETTINGS
        if key in attrs
    ]
    if rows:
        body.append('<h3>Settings</h3>\n<table class="settings">\n' + "\n".join(rows) + "\n</table>")
    if not body:
        body.append(_note("No model settings: this result carries no mechanism or fit attributes."))
    return _section("model", "Model and settings", "\n".join(body))


def _table(df, **kwargs) -> str:
    return df.to_html(escape=True, na_rep="", float_format=lambda v: f"{v:.4g}", border=0, **kwargs)


def _capped(df) -> str:
    table = _table(df.head(MAX_DATA_ROWS), index=False)
    if len(df) > MAX_DATA_ROWS:
        table += _note(f"The first {MAX_DATA_ROWS} of {len(df)} rows are shown.")
    return table


def _kinetics_data(idata, obs, time_unit=None):
    """Rows (experiment, time, one column per species) of a kinetics model's data, or None."""
    import pandas as pd

    if not {"experiment", "species"} <= set(obs.dims) or obs.ndim != 3:
        return None
    time_dim = next(d for d in obs.dims if d not in ("experiment", "species"))
    obs = obs.transpose("experiment", time_dim, "species")
    times = None
    if _has(idata, "constant_data") and "times" in idata.constant_data:
        t = idata.constant_data["times"]
        if set(t.dims) == {"experiment", time_dim}:
            times = np.asarray(t.transpose("experiment", time_dim).values, dtype=float)
    species = [str(s) for s in obs["species"].values]
    rows = []
    for e, experiment in enumerate(obs["experiment"].values):
        for i in range(obs.sizes[time_dim]):
            values = obs.values[e, i]
            t = times[e, i] if times is not None else i
            if times is not None and not np.isfinite(t):
                continue
            rows.append([str(experiment), t, *values])
    time_col = (f"time ({time_unit})" if time_unit else "time") if times is not None else time_dim
    return pd.DataFrame(rows, columns=["experiment", time_col, *species])


def _data(idata) -> str:
    if not _has(idata, "observed_data") or not idata.observed_data.data_vars:
        return _section("data", "Data", _note("No data table: this result has no observed_data group."))
    attrs = idata.posterior.attrs if _has(idata, "posterior") else {}
    body = []
    for name, obs in idata.observed_data.data_vars.items():
        df = _kinetics_data(idata, obs, attrs.get("time_unit"))
        if df is not None:
            unit = attrs.get("concentration_unit")
            unit_note = f" in {unit}" if unit else ""
            body.append(
                f'<p class="caption">Observed <code>{_e(name)}</code>{_e(unit_note)} per experiment and '
                "measurement time; blank where a species was not measured.</p>"
            )
        elif obs.ndim == 0:
            df = obs.expand_dims("point").to_dataframe(name=str(name)).reset_index(drop=True)
        else:
            df = obs.to_dataframe(name=str(name)).reset_index()
            body.append(f'<p class="caption">Observed <code>{_e(name)}</code>.</p>')
        body.append(_capped(df))
    return _section("data", "Data", "\n".join(body))


def _which(chain: int | None) -> str:
    return "all chains pooled" if chain is None else f"best restart (chain {chain})"


def _posterior_table(idata, chain: int | None) -> str:
    if not _has(idata, "posterior"):
        return _section(
            "posterior", "Posterior", _note("No posterior table: this result has no posterior group.")
        )
    post = idata["posterior"].to_dataset()
    if chain is not None:
        post = post.isel(chain=[chain])
    try:
        summary = summary_table(post, kind="stats", hdi_prob=0.94)
    except Exception as err:  # e.g. a variable ArviZ cannot summarize
        return _section("posterior", "Posterior", _note(f"The posterior table could not be computed: {err}"))
    draws = post.sizes.get("chain", 1) * post.sizes.get("draw", 0)
    caption = f"Posterior, {_which(chain)}: mean, sd and 94% highest-density interval, from {draws} draws."
    return _section("posterior", "Posterior", f'<p class="caption">{_e(caption)}</p>\n{_table(summary)}')


def _plots(idata, chain: int | None, comparison) -> str:
    body = []
    if _has(idata, "predictions"):
        body.append("<h3>Fit to the data</h3>")
        body.append(
            _plot(
                "plot-fit",
                "fit to the data",
                lambda: plots.plot_fit_from_idata(idata),
                "Median curve with its 94% band (dark) and the 94% band of new measurements (light), "
                "best restart.",
            )
        )
    else:
        body.append(_note("No fit plot: this result has no predictions group (kinetics models have one)."))

    if _has(idata, "optimization") and "loss" in idata.optimization:
        loss = np.atleast_2d(np.asarray(idata.optimization["loss"].values, dtype=float))
        best = chain if chain is not None and chain < loss.shape[0] else None
        body.append("<h3>ELBO trace</h3>")
        body.append(
            _plot(
                "plot-elbo",
                "ELBO trace",
                lambda: plots.plot_elbo(loss, best=best),
                "ELBO per optimization step, one line per restart; a flat end means the optimization "
                "converged.",
            )
        )
    else:
        body.append(_note("No ELBO trace: this result has no optimization group."))

    if not _has(idata, "posterior"):
        body.append(_note("No posterior plots: this result has no posterior group."))
    else:
        restarts = idata["posterior"].sizes.get("chain", 1)
        if chain is not None and restarts > 1:
            body.append("<h3>Restarts</h3>")
            body.append(
                _plot(
                    "plot-restarts",
                    "restarts",
                    lambda: plots.plot_restarts(idata),
                    f"Marginal posterior of each of the {restarts} restarts, one colour each (arviz-plots "
                    "plot_dist); curves on top of each other mean the restarts found the same optimum.",
                )
            )
        prior = " over the prior (grey)" if _has(idata, "prior") else " (this result has no prior group)"
        body.append("<h3>Marginal posteriors</h3>")
        body.append(
            _plot(
                "plot-marginals",
                "marginal posteriors",
                lambda: plots.plot_marginals(idata, chain=chain),
                f"Posterior density of each parameter{prior}, {_which(chain)}; the x range is the "
                "posterior's.",
            )
        )
        reference = getattr(comparison, "reference_idata", None) if comparison is not None else None
        ref_name = str(getattr(comparison, "reference_name", "reference")) if comparison is not None else ""
        over = f", over the {ref_name} posterior" if reference is not None else ""
        body.append("<h3>Pair plot</h3>")
        body.append(
            _plot(
                "plot-pair",
                "pair plot",
                lambda: plots.plot_pair(idata, chain=chain, reference=reference, reference_label=ref_name),
                f"Draws of each pair of parameters, {_which(chain)}{over}.",
            )
        )

    if exact_stage_source(idata):
        body.append("<h3>PSIS diagnostic</h3>")
        body.append(
            _note(
                "No PSIS diagnostic: the draws are NUTS's through the guide's transport map (the exact stage of "
                "guide='auto'), not importance-weighted guide draws, so p/q weights at them say nothing; the "
                "verdict above gives the chains' R-hat and effective sample sizes."
            )
        )
    elif _has(idata, "sample_stats") and {"log_p", "log_q"} <= set(idata.sample_stats.data_vars):
        attrs = idata.posterior.attrs if _has(idata, "posterior") else {}
        n_draws = idata.sample_stats.sizes.get("draw", 0)
        differ = ""
        if "khat_draws" in attrs and int(attrs["khat_draws"]) != n_draws:
            differ = (
                f" This k-hat comes from the {n_draws} draws stored in the result, the verdict's from "
                f"{_fmt(attrs['khat_draws'])} draws, so the two can differ."
            )
        body.append("<h3>PSIS diagnostic</h3>")
        body.append(
            _plot(
                "plot-psis",
                "PSIS diagnostic",
                lambda: plots.plot_psis(idata, chain=chain),
                "Importance weights p/q of the best restart's draws and the Pareto k-hat of their tail "
                "(Yao et al. 2018): below 0.5 the guide is a good fit, 0.5 to 0.7 usable, above 0.7 the "
                "guide misses posterior mass in the tails." + differ,
            )
        )
    else:
        body.append(_note("No PSIS diagnostic: this result has no sample_stats log_p and log_q."))
    return _section("plots", "Plots", "\n".join(body))


def _comparison(comparison) -> str:
    table = getattr(comparison, "table", None)
    name = str(getattr(comparison, "reference_name", "reference"))
    mean_tol = float(getattr(comparison, "mean_tol", 0.1))
    sd_tol = float(getattr(comparison, "sd_tol", 0.1))
    heading = f"Comparison with {name}"
    if table is None or len(table) == 0:
        return _section("comparison", heading, _note("The comparison has no table of parameters."))
    shown = table.copy()
    if "smd" in shown.columns and "mean_ok" not in shown.columns:
        shown["mean_ok"] = np.abs(np.asarray(shown["smd"], dtype=float)) <= mean_tol
    if "sd_ratio" in shown.columns and "sd_ok" not in shown.columns:
        shown["sd_ok"] = np.abs(np.asarray(shown["sd_ratio"], dtype=float) - 1.0) <= sd_tol
    for column in ("mean_ok", "sd_ok"):
        if column in shown.columns:
            shown[column] = np.where(np.asarray(shown[column], dtype=bool), "yes", "no")
    shown = shown.reset_index(names=shown.index.name or "parameter")
    caption = (
        f"smd = (mean - ref_mean) / ref_sd, mean_ok when |smd| <= {mean_tol:g}; "
        f"sd_ratio = sd / ref_sd, sd_ok when |sd_ratio - 1| <= {sd_tol:g}. The reference is {name}."
    )
    body = [f'<p class="caption">{_e(caption)}</p>', _table(shown, index=False)]
    body.append(
        _plot(
            "plot-comparison",
            "comparison with the reference",
            lambda: plots.plot_comparison(table, mean_tol=mean_tol, sd_tol=sd_tol, reference_name=name),
        )
    )
    return _section("comparison", heading, "\n".join(body))


# -- the page -----------------------------------------------------------------------------------


def build_report(idata, *, comparison=None, title: str | None = None) -> str:
    """Build one self-contained HTML page of a fit.

    In order: the title; the verdict box (``verdict``, ``verdict_reason``, each check of
    ``verdict_checks`` with its level, message and advice, and ``khat``, or, for NUTS draws of the
    exact stage of ``guide="auto"`` (``draws_from``), where they come from with their R-hat and
    ESS, and no k-hat nor PSIS plot); where the verdict has a
    ``numerical faults`` check, a section of its own (id ``faults``); the mechanism and the
    fit settings; the data table; the posterior table (:func:`arviz_stats.summary`, ``kind="stats"``,
    94% HDI) of the best restart (``posterior.attrs["best_restart"]``; all chains pooled when the
    DataTree has no such attribute); the plots (fit to the data, ELBO trace, the marginals of each
    restart from arviz-plots when a vifit result has more than one, marginals over priors, pair
    plot, PSIS diagnostic); and, with ``comparison``, its table and plot. A section whose
    group or attribute is missing becomes a one-line note; a plot that fails to draw becomes a note
    and a :class:`RuntimeWarning`.

    Images are PNG ``data:`` URIs with ids ``plot-fit``, ``plot-elbo``, ``plot-restarts``,
    ``plot-marginals``, ``plot-pair``, ``plot-psis`` and ``plot-comparison``; the verdict box has id ``verdict``.
    Every text from the DataTree is HTML-escaped.

    Parameters
    ----------
    idata : xarray.DataTree
        A vifit result (``FitResult.to_arviz()`` or ``arviz.from_netcdf("posterior.nc")``), or any
        ArviZ DataTree.
    comparison : object, optional
        A comparison with a reference posterior, with attributes ``table`` (a DataFrame indexed by
        parameter with columns ``mean, sd, ref_mean, ref_sd, smd, sd_ratio``), ``reference_name``,
        ``reference_idata`` (a DataTree whose posterior is overlaid on the pair plot, or
        None), ``mean_tol`` and ``sd_tol``, e.g. ``inference.checks.compare.Comparison``.
    title : str, optional
        Page title; ``posterior.attrs["title"]`` or ``"vifit report"`` by default.

    Returns
    -------
    str
        The HTML page.
    """
    attrs = dict(idata.posterior.attrs) if _has(idata, "posterior") else {}
    title = title or attrs.get("title") or "vifit report"
    # A vifit result shows its best restart; any other DataTree (e.g. MCMC chains) all chains.
    chain = None
    if "best_restart" in attrs:
        chain = min(plots._best_restart(idata), idata.posterior.sizes.get("chain", 1) - 1)
    faults = _faults(attrs)
    sections = [
        _verdict(attrs),
        *([faults] if faults else []),
        _model(attrs),
        _data(idata),
        _posterior_table(idata, chain),
        _plots(idata, chain, comparison),
    ]
    nav = [
        ("verdict", "Verdict"),
        *([("faults", "Numerical faults")] if faults else []),
        ("model", "Model"),
        ("data", "Data"),
        ("posterior", "Posterior"),
        ("plots", "Plots"),
    ]
    if comparison is not None:
        sections.append(_comparison(comparison))
        nav.append(("comparison", "Comparison"))
    links = " ".join(f'<a href="#section-{key}">{label}</a>' for key, label in nav)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title>",
            f"<style>{_CSS}</style>",
            "</head>",
            "<body>",
            f"<h1>{_e(title)}</h1>",
            f"<nav>{links}</nav>",
            *sections,
            '<footer><p class="note">Made by vifit from an ArviZ DataTree.</p></footer>',
            "</body>",
            "</html>",
            "",
        ]
    )


def write_report(path, idata, *, comparison=None, title: str | None = None) -> Path:
    """Write :func:`build_report`'s page to ``path`` (UTF-8), atomically.

    The page goes to a temporary file in the same folder, then replaces ``path`` in one step, so a
    reader never sees half a page. Missing parent folders are created.

    Parameters
    ----------
    path : str or os.PathLike
        The HTML file, e.g. ``"results/report.html"``.
    idata, comparison, title
        As for :func:`build_report`.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    page = build_report(idata, comparison=comparison, title=title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path
