"""docs/arviz.md: every Python block of the page runs, in order, as a user would run it."""

import re
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "arviz.md"


def python_blocks(text: str) -> list[str]:
    """Return the fenced ``python`` code blocks of a Markdown page, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_the_page_has_the_next_steps():
    code = "\n".join(python_blocks(PAGE.read_text(encoding="utf-8")))
    for call in ("az.summary(", "az.plot_dist(", "az.loo(", "az.loo_approximate_posterior(", "az.compare("):
        assert call in code, call


# One of the 25 points has a Pareto k above 0.7 in LOO; the page says what that warning means.
@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto distribution:UserWarning")
def test_every_python_block_of_the_page_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_arviz"}
    try:
        for i, block in enumerate(python_blocks(PAGE.read_text(encoding="utf-8"))):
            exec(compile(block, f"docs/arviz.md, python block {i + 1}", "exec"), namespace)
    finally:
        plt.close("all")
    tree = namespace["tree"]
    assert set(tree.children) >= {"posterior", "sample_stats", "log_likelihood", "optimization"}
    assert namespace["khat"].dims == ("chain",)
    assert namespace["table"].index[0] in {"normal noise", "proportional noise"}
    for name in ("posterior.nc", "dist.png", "forest.png", "ppc.png", "prior_posterior.png", "trace.png", "compare.png"):
        assert (tmp_path / name).stat().st_size > 0, name
