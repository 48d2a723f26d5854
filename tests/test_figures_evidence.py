"""Every committed figure is drawn from run folders committed under analysis/evidence/, and none
of its panels would be empty when `make figures` rebuilds it on a fresh clone."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest

from analysis import figures, runs

REPO = Path(__file__).resolve().parents[1]


def tracked(folder: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", folder], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def test_every_committed_figure_has_committed_evidence():
    pngs = [Path(p).name for p in tracked("analysis/figures") if p.endswith(".png")]
    assert pngs, "no committed figures"
    for name in pngs:
        assert name in figures.COMMITTED, f"analysis/figures/{name}: no builder and evidence folder in figures.COMMITTED"
        for evidence in figures.COMMITTED[name][0]:
            assert tracked(evidence), f"analysis/figures/{name}: its evidence folder {evidence} is not committed"


@pytest.mark.parametrize("name", sorted(figures.COMMITTED))
def test_committed_figure_rebuilds_with_no_empty_panel(name, tmp_path):
    if not (REPO / "analysis/figures" / name).exists():
        pytest.skip(f"{name} is not committed")
    figures.EMPTY_PANELS.clear()
    png = figures.build_committed(name, tmp_path)
    assert png.name == name and png.stat().st_size > 10_000
    assert figures.EMPTY_PANELS == [], f"{name}: panels with nothing to show: {figures.EMPTY_PANELS}"


def test_descends_twice_needs_a_significant_fall_rise_fall():
    steps = lambda *d: pd.DataFrame({"direction": list(d)})  # noqa: E731
    assert runs.descends_twice(steps("fall", "n.s.", "rise", "rise", "n.s.", "fall"))
    assert not runs.descends_twice(steps("fall", "fall", "n.s.", "fall"))        # monotone
    assert not runs.descends_twice(steps("fall", "rise", "n.s."))                 # one descent, then up
    assert not runs.descends_twice(steps("n.s.", "n.s.", "n.s."))
    assert not runs.descends_twice(steps())
