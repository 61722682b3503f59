"""Outputs of a fit whose draws come from the exact stage of guide="auto" (NUTS through the guide's transport map).

Such a result keeps its guide's name, parameters and ELBO, but its draws are NUTS's: every label,
plot and method must say so, and none may treat the draws as importance-weighted guide draws.
One fit of the bundled BOD data (about 15 s) is shared by the module.
"""

import collections

import matplotlib.pyplot as plt
import numpy as np
import pytest

import inference
from inference.outputs import cli, plots
from inference.outputs.report import build_report
from vi_models import kinetics


@pytest.fixture(scope="module")
def exact():
    data = kinetics.Dataset.from_csv(kinetics.bundled_path("bod.csv"))
    model = kinetics.model("L -> Y : k", data, initial={"L": "infer", "Y": 0.0})
    result = inference.fit(model, seed=0, progress=False)
    source = str(result.settings.get("draws_from", ""))
    assert source.startswith("NUTS"), f"the BOD fit did not end in the exact stage: {source!r}"
    return result


@pytest.fixture(scope="module")
def tree(exact):
    return exact.to_arviz(num_samples=500)


def nuts_draws(result) -> np.ndarray:
    """Every NUTS draw of the exact stage, constrained: rows ``(k, L0, sigma, ...)`` in latent-site order."""
    u = result.posterior.importance[1]
    latent = result.posterior.target.constrain(u)
    return np.column_stack([np.asarray(latent[name]).reshape(len(u), -1) for name in result.latent_sites])


def rows(draws: dict, names) -> np.ndarray:
    n = len(next(iter(draws.values())))
    return np.column_stack([np.asarray(draws[name]).reshape(n, -1) for name in names])


def counts(x: np.ndarray) -> collections.Counter:
    return collections.Counter(map(tuple, np.round(x, 12)))


# -- 1. labels ------------------------------------------------------------------------------------


def test_summary_header_names_the_nuts_draws_not_the_guide(exact):
    guide = exact.guide_name  # kept: it names the guide whose map NUTS ran through
    text = str(exact.summary(num_samples=500))
    first, second = text.splitlines()[:2]
    assert first.startswith(f"draws: NUTS through the {guide} guide's transport map (exact stage of auto) | 4 chains x ")
    assert "R-hat" in first and "ESS" in first
    assert second.startswith(f"transport map: the {guide} guide | objective: elbo | stopped: ")
    assert not text.startswith("guide:") and f"guide: {guide} (auto)" not in text


def test_comparison_label_names_the_exact_stage(exact, tree):
    comparison = inference.compare(exact, tree, num_samples=500)
    assert comparison.result_name == (
        f"vifit fit (exact stage of auto: NUTS through the {exact.guide_name} guide's transport map, 500 draws)"
    )
    assert comparison.result_name in str(comparison)


# -- 2. the attempts ------------------------------------------------------------------------------


def test_attempts_say_the_exact_stage_was_chosen(exact):
    *ladder, last = exact.attempts
    assert last.guide.startswith("exact (") and last.outcome.startswith("chosen:")
    for attempt in ladder:
        assert not attempt.outcome.startswith("chosen"), attempt
        assert "the best verdict, then ELBO" not in attempt.outcome, attempt
    # The last guide of the ladder was not chosen: the exact stage was.
    assert ladder[-1].outcome.startswith("not chosen: the exact stage was"), ladder[-1]
    recorded = [a["outcome"] for a in exact.settings["attempts"]]
    assert recorded == [a.outcome for a in exact.attempts]


# -- 3. PSIS plot and report ----------------------------------------------------------------------


def test_psis_plot_refuses_nuts_draws_and_the_command_line_leaves_it_out(exact, tree):
    assert tree["posterior"].attrs["draws_from"] == exact.settings["draws_from"]
    with pytest.raises(ValueError, match="the draws are NUTS's, not importance-weighted guide draws"):
        plots.plot_psis(tree)
    assert plt.get_fignums() == []
    jobs = cli._plot_jobs(tree, losses=exact.losses, best=exact.best_restart)
    names = [name for name, _ in jobs]
    assert "psis.png" not in names and {"elbo.png", "marginals.png", "pair.png"} <= set(names)


def test_report_gives_the_chains_not_a_khat(tree):
    html = build_report(tree)
    assert "k-hat nan" not in html.lower() and "k-hat <b>nan" not in html.lower()
    assert 'id="plot-psis"' not in html
    assert "No PSIS diagnostic: the draws are NUTS&#x27;s" in html
    assert "The draws are <b>NUTS's</b>, not the guide's" in html
    assert "largest R-hat" in html and "bulk / tail ESS" in html
    assert "<th>draws from</th>" in html


# -- 4. sample_psis -------------------------------------------------------------------------------


def test_sample_psis_says_the_draws_are_already_exact(exact):
    with pytest.raises(ValueError) as err:
        exact.sample_psis(100)
    text = str(err.value)
    assert "already exact" in text and "NUTS" in text and "result.sample(100)" in text
    assert "k-hat" not in text and "misses posterior mass" not in text
    assert exact.exact_stage_draws and exact.guide_name == exact.settings["chosen_guide"]


# -- 7. sample: distinct NUTS draws up to their number --------------------------------------------


def test_sample_gives_every_nuts_draw_once_and_a_subset_without_replacement(exact):
    chains = nuts_draws(exact)
    total = len(chains)
    every = rows(exact.sample(total, seed=3), exact.latent_sites)
    assert counts(every) == counts(chains)  # each NUTS draw exactly once
    some = rows(exact.sample(total // 3, seed=4), exact.latent_sites)
    have = counts(chains)
    assert len(some) == total // 3
    assert all(n <= have[row] for row, n in counts(some).items())  # no draw more often than in the chains


def test_sample_beyond_the_nuts_draws_repeats_each_evenly(exact):
    chains = nuts_draws(exact)
    total = len(chains)
    more = rows(exact.sample(2 * total + 7, seed=5), exact.latent_sites)
    have, got = counts(chains), counts(more)
    assert set(got) == set(have)
    assert all(2 * have[row] <= n <= 3 * have[row] for row, n in got.items())
