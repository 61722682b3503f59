"""Start-up time of the command line: what it imports before the fit starts, and how long that takes.

Three measurements, each in fresh interpreters (the best of ``--repeat`` runs):

1. ``python -X importtime -c "import inference.outputs.cli"``: the total import time and the
   top-level packages that take most of it.
2. ``python -m inference.outputs.cli --help``: wall-clock seconds.
3. ``vifit demo`` up to the start of the fit (the fit function is replaced by one that stops the
   run): wall-clock seconds and which of ArviZ, xarray, pandas and matplotlib were imported by then.
   The outputs (ArviZ export, report, plots) need those packages; the start-up path should not.

For comparison it also times importing each output package alone.

Run ``python benchmarks/startup.py`` from the repository root; ``--path DIR`` measures another
checkout of the package (e.g. an older commit unpacked with ``git archive``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

HEAVY = ("arviz", "arviz_base", "arviz_stats", "arviz_plots", "xarray", "pandas", "matplotlib")
OUTPUT_PACKAGES = ("xarray", "pandas", "matplotlib.pyplot", "arviz_base", "arviz_stats", "arviz_plots")

UP_TO_FIT = r"""
import contextlib, importlib, io, sys, tempfile, time
t0 = time.perf_counter()
import inference
from inference.outputs import cli

class Stop(Exception):
    pass

def stop(*args, **kwargs):
    raise Stop

inference.fit = stop
for name in ("inference.engine.fit",):
    with contextlib.suppress(Exception):
        importlib.import_module(name).fit = stop
out = tempfile.mkdtemp() + "/demo"
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    with contextlib.suppress(Stop):
        cli.main(["demo", "--out", out, "--no-progress"])
seconds = time.perf_counter() - t0
loaded = [m for m in HEAVY if m in sys.modules]
print(f"{seconds:.4f} {','.join(loaded) or '-'}")
"""


def _env(path: str | None) -> dict:
    env = dict(os.environ)
    if path:
        env["PYTHONPATH"] = path + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def importtime(python: str, statement: str, env: dict) -> tuple[float, list[tuple[str, float]]]:
    """Total import seconds of ``statement`` and the seconds of each distribution's own modules.

    The total is the sum of the cumulative times of the modules the statement imports itself; the
    per-package figures add up the self times of every module of a top-level package (``jax``
    with ``jax._src...``), so they split the total by who spends it.
    """
    proc = subprocess.run(
        [python, "-X", "importtime", "-c", statement], env=env, capture_output=True, text=True, check=True
    )
    total, per_package = 0.0, {}
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|( +)(\S+)", line)
        if not m:
            continue
        if len(m.group(3)) == 1:  # one space: imported by the statement itself
            total += int(m.group(2)) / 1e6
        package = m.group(4).split(".")[0]
        per_package[package] = per_package.get(package, 0.0) + int(m.group(1)) / 1e6
    return total, sorted(per_package.items(), key=lambda t: -t[1])


def wall(cmd: list[str], env: dict) -> float:
    """Wall-clock seconds of one run of ``cmd``."""
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, capture_output=True, check=True)
    return time.perf_counter() - t0


def main(argv=None) -> None:
    """Run the three measurements and print them as Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", help="directory to put first on PYTHONPATH (another checkout)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each measurement; the best is kept")
    parser.add_argument("--top", type=int, default=10, help="packages to list")
    args = parser.parse_args(argv)
    python, env = sys.executable, _env(args.path)
    where = subprocess.run(
        [python, "-c", "import inference; print(inference.__file__)"], env=env, capture_output=True, text=True
    ).stdout.strip()
    print(f"package: {where}")

    runs = [importtime(python, "import inference.outputs.cli", env) for _ in range(args.repeat)]
    total, top = min(runs, key=lambda r: r[0])
    print(f"\nimport inference.outputs.cli: {total:.2f} s (python -X importtime, best of {args.repeat})")
    print("| package (its own modules) | s |\n|---|---|")
    for name, seconds in top[: args.top]:
        print(f"| {name} | {seconds:.3f} |")

    help_s = min(wall([python, "-m", "inference.outputs.cli", "--help"], env) for _ in range(args.repeat))
    print(f"\npython -m inference.outputs.cli --help: {help_s:.2f} s wall (best of {args.repeat})")

    code = f"HEAVY = {HEAVY!r}\n" + UP_TO_FIT
    best = None
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            out = subprocess.run([python, "-c", code], env=env, cwd=tmp, capture_output=True, text=True, check=True)
            seconds, loaded = out.stdout.split()
            if best is None or float(seconds) < best[0]:
                best = (float(seconds), loaded)
    print(f"vifit demo up to the start of the fit: {best[0]:.2f} s in the process; output packages loaded: {best[1]}")

    print("\n| output package alone | import s |\n|---|---|")
    for name in OUTPUT_PACKAGES:
        seconds = min(importtime(python, f"import {name}", env)[0] for _ in range(max(1, args.repeat // 2)))
        print(f"| {name} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
