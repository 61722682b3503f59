"""The HTML report: every section and plot, self-contained, escaped, and built from any ArviZ DataTree."""

import base64
import html
import re
import warnings
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from inference.outputs.report import build_report, write_report

PLOT_IDS = [
    "plot-fit",
    "plot-elbo",
    "plot-restarts",
    "plot-marginals",
    "plot-pair",
    "plot-psis",
    "plot-comparison",
]
MECHANISM = "A -> B : k\nB <-> C : kf, kb  # <script>alert(1)</script> & more"


def comparison(reference):
    table = pd.DataFrame(
        {
            "mean": [0.5, 1.0, 2.0, 0.05],
            "sd": [0.05, 0.1, 0.1, 0.01],
            "ref_mean": [0.5, 1.05, 2.0, 0.05],
            "ref_sd": [0.05, 0.1, 0.1, 0.02],
            "smd": [0.0, -0.5, 0.0, 0.0],
            "sd_ratio": [1.0, 1.0, 1.0, 0.5],
        },
        index=["k", "L0[exp0]", "L0[exp1]", "sigma"],
    )
    return SimpleNamespace(
        table=table, reference_name="NUTS", reference_idata=reference, mean_tol=0.1, sd_tol=0.1
    )


@pytest.fixture(scope="module")
def idata(synthetic):
    return synthetic.synthetic_idata(attrs={"mechanism": MECHANISM})


@pytest.fixture(scope="module")
def page(idata, synthetic):
    """Build the full report with a comparison once (about a second)."""
    plt.close("all")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no plot may fail
        text = build_report(idata, comparison=comparison(synthetic.synthetic_idata(seed=7)))
    assert plt.get_fignums() == []  # every figure was closed after encoding
    return text


def images(text):
    return dict(re.findall(r'<img id="([^"]+)" alt="[^"]+" src="data:image/png;base64,([^"]+)">', text))


def test_every_plot_is_an_inline_png(page):
    found = images(page)
    assert sorted(found) == sorted(PLOT_IDS)
    for data in found.values():
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(page) < 3_000_000


def test_verdict_box(page, idata, synthetic):
    box = re.search(r'<div id="verdict" class="verdict level-care">(.*?)</div>', page, re.S)
    assert box, "the verdict box with the amber level class"
    box = box.group(1)
    assert "use with care" in box and "Restarts disagree on k." in box
    for check in synthetic.CHECKS:
        assert html.escape(check["message"]) in box
    assert "Advice: Run more restarts or a richer guide." in box
    assert "<b>0.31</b>" in box


@pytest.mark.parametrize("verdict, level", [("reliable", "reliable"), ("unreliable", "unreliable")])
def test_verdict_level_colours(verdict, level, synthetic):
    attrs = {"verdict": verdict, "verdict_checks": "[]"}
    idata = synthetic.posterior_only()
    idata.posterior.attrs.update(attrs)
    text = build_report(idata)
    assert f'<div id="verdict" class="verdict level-{level}">' in text


def test_sections_in_order(page):
    order = ["section-verdict", "section-model", "section-data", "section-posterior", "section-plots"]
    order += ["section-comparison"]
    positions = [page.index(f'<section id="{s}">') for s in order]
    assert positions == sorted(positions)
    plot_positions = [page.index(f'id="{p}"') for p in PLOT_IDS]
    assert plot_positions == sorted(plot_positions)


def test_self_contained(page):
    assert "<script" not in page.lower()
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", page, re.I)
    assert "http://" not in page and "https://" not in page
    assert "@import" not in page and "url(" not in page
    for src in re.findall(r'src="([^"]*)"', page):
        assert src.startswith("data:image/png;base64,")
    for href in re.findall(r'href="([^"]*)"', page):
        assert href.startswith("#")


def test_text_is_escaped(page, synthetic):
    assert html.escape(MECHANISM) in page
    assert "<script>alert" not in page
    text = build_report(synthetic.posterior_only(), title="k < 1 & <b>bold</b>")
    assert "<title>k &lt; 1 &amp; &lt;b&gt;bold&lt;/b&gt;</title>" in text
    assert "<b>bold</b>" not in text


def test_data_and_posterior_tables(page, idata):
    data = page[page.index('<section id="section-data">') : page.index('<section id="section-posterior">')]
    assert "<th>time (h)</th>" in data and "<th>A</th>" in data and "<th>B</th>" in data
    assert data.count("<td>exp0</td>") == 5 and data.count("<td>exp1</td>") == 5
    post = page[page.index('<section id="section-posterior">') : page.index('<section id="section-plots">')]
    assert "best restart (chain 1)" in post
    for label in ["k", "L0[exp0]", "L0[exp1]", "sigma"]:
        assert f"<th>{label}</th>" in post
    assert "hdi_3%" in post and "hdi_97%" in post
    mean_k = idata.posterior["k"].isel(chain=1).mean().item()
    assert f"<td>{mean_k:.4g}</td>" in post


def test_settings_and_comparison(page):
    for text in ["multivariate_normal", "plateau", "<th>seed</th>", "compile time (s)"]:
        assert text in page
    comp = page[page.index('<section id="section-comparison">') :]
    assert "Comparison with NUTS" in comp and "<th>mean_ok</th>" in comp and "<th>sd_ok</th>" in comp
    rows = re.findall(r"<tr>\s*<td>([^<]+)</td>.*?<td>(yes|no)</td>\s*<td>(yes|no)</td>\s*</tr>", comp, re.S)
    assert rows == [
        ("k", "yes", "yes"),
        ("L0[exp0]", "no", "yes"),
        ("L0[exp1]", "yes", "yes"),
        ("sigma", "yes", "no"),
    ]


def test_posterior_only_omits_sections_cleanly(synthetic):
    plt.close("all")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        text = build_report(synthetic.posterior_only())
    assert plt.get_fignums() == []
    assert sorted(images(text)) == ["plot-marginals", "plot-pair"]
    assert 'id="verdict"' not in text and "section-comparison" not in text
    for note in [
        "no verdict attribute",
        "no observed_data group",
        "no predictions group",
        "no optimization group",
        "no sample_stats log_p and log_q",
    ]:
        assert note in text
    assert "all chains pooled" in text  # not a vifit result: no best restart
    assert "<h1>vifit report</h1>" in text


def test_a_failing_plot_becomes_a_note(idata):
    broken = idata.copy()
    del broken["predictions_constant_data"]
    with pytest.warns(RuntimeWarning, match="fit to the data"):
        text = build_report(broken)
    assert "The fit to the data plot could not be drawn" in text
    assert 'id="plot-fit"' not in text and 'id="plot-psis"' in text
    assert plt.get_fignums() == []


def test_write_report_round_trip(tmp_path, idata, synthetic):
    path = write_report(tmp_path / "out" / "report.html", idata, title="Kinetik – Ω")
    assert path == tmp_path / "out" / "report.html"
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temporary file left
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "<title>Kinetik – Ω</title>" in text
    assert sorted(images(text)) == sorted(p for p in PLOT_IDS if p != "plot-comparison")
    # Replacing an existing page works the same way.
    write_report(path, synthetic.posterior_only())
    assert "plot-fit" not in path.read_text(encoding="utf-8")
    assert plt.get_fignums() == []


def test_report_from_netcdf(tmp_path, idata):
    idata.to_netcdf(tmp_path / "posterior.nc")
    loaded = xr.open_datatree(tmp_path / "posterior.nc")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        text = build_report(loaded)
    assert '<div id="verdict" class="verdict level-care">' in text
    assert sorted(images(text)) == sorted(p for p in PLOT_IDS if p != "plot-comparison")
    assert np.isfinite(loaded.posterior.attrs["khat"])
