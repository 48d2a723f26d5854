"""SuperFiltering.D: submodlib's kernel formula, the facility-location first picks worked out
by hand, the IFD pre-filter, and a pipeline run on the tiny model."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from selectlab.selectors.facility_location import euclidean_similarity, facility_location, ifd_prefilter, release_text

POINTS = np.array([[0.0], [0.2], [0.3], [5.0], [5.1], [10.0]])  # 1-D, so s_ij = exp(-|x_i - x_j|)


def test_kernel_is_submodlibs_euclidean_similarity():
    import submodlib_cpp

    x = np.random.default_rng(0).normal(size=(7, 5))
    theirs = np.array(submodlib_cpp.create_square_kernel_dense(x.tolist(), "euclidean"))
    assert euclidean_similarity(x) == pytest.approx(theirs, abs=1e-6)  # they compute in float32
    assert euclidean_similarity(POINTS)[0, 1] == pytest.approx(math.exp(-0.2))


def test_facility_location_first_picks_worked_by_hand():
    """f(S) = sum_i max_{j in S} s_ij. Points 0, 0.2, 0.3 | 5, 5.1 | 10.
    Pick 1: the largest column sum: x=0.2 (1 + e^-0.2 + e^-0.1 + e^-4.8 + e^-4.9 + e^-9.8 = 2.7392).
    Pick 2: the group {5, 5.1} gains 1 + e^-0.1 minus what 0.2 already covers there; 5 and 5.1
      gain the same inside the group, but 5.1 is nearer to 10 (e^-4.9 > e^-5): 5.1.
    Pick 3: 10 gains 1 - e^-4.9 = 0.9926, more than any point of the covered groups
      (0 gains 1 - e^-0.2 = 0.1813 at best): 10.
    Pick 4: 0 (0.1813 + its small extra over 0.3's cover) before 0.3 and 5."""
    picks, gains = facility_location(euclidean_similarity(POINTS), 4)
    assert picks == [1, 4, 5, 0]
    e = math.exp
    assert gains[0] == pytest.approx(1 + e(-0.2) + e(-0.1) + e(-4.8) + e(-4.9) + e(-9.8), rel=1e-6)
    assert gains[2] == pytest.approx(1 - e(-4.9), rel=1e-6)
    assert facility_location(euclidean_similarity(POINTS), 6)[0] == list(range(6))  # budget >= n: all


def test_ifd_prefilter_keeps_the_highest_valid_scores():
    score = np.array([0.5, np.nan, 0.9, 0.7, 0.9, 0.1])
    assert ifd_prefilter(score, 3).tolist() == [2, 4, 3]
    assert ifd_prefilter(score, 10).tolist() == [2, 4, 3, 0, 5]


def test_release_text_is_instruction_input_output():
    assert release_text({"instruction": "Do.", "input": "", "output": "Done."}) == "Do.\n\nDone."


def test_superfiltering_d_runs_through_the_pipeline(compose, tiny_model_dir, tmp_path):
    from selectlab.pipeline import run

    cfg = compose("scorer=superfiltering_d", f"scorer.model.path={tiny_model_dir}", "pool.limit=24",
                  "selection.budget=3", "logger=none")
    manifest = run(cfg)
    assert manifest["selector"]["name"] == "fla" and manifest["n_selected"] == 3
    meta = json.loads(next((tmp_path / "cache" / "subsets").glob("*/meta.json")).read_text())["selection_meta"]
    scores = [json.loads(l) for l in next((tmp_path / "cache" / "scores").glob("*/scores.jsonl")).read_text().splitlines()]
    valid = sum(r["score"] is not None for r in scores)
    assert meta["ifd_num"] == meta["n_filtered"] == min(max(round(0.2 * valid), 3), valid)  # 20% of the scored pool
    subset = [json.loads(l) for l in (tmp_path / "run" / "subset.jsonl").read_text().splitlines()]
    assert all(r["ifd"] < 1 for r in subset)


def test_prefilter_is_the_release_fraction_of_the_pool_and_the_kernel_must_fit():
    """do_fla.py keeps 10,400 of Alpaca's 52,002 (20%) whatever the budget; ifd_num overrides it;
    never fewer than the budget; a kernel larger than free memory is one clear error, before any work."""
    from selectlab.errors import SelectlabError
    from selectlab.selectors.facility_location import check_kernel_fits, kernel_gib, prefilter_size

    release = {"ifd_num": None, "ifd_fraction": 0.2}
    assert prefilter_size(52_002, 1_040, release) == 10_400
    assert prefilter_size(52_002, 10_000, release) == 10_400   # the paper's budget: the same pre-filter
    assert prefilter_size(64, 16, release) == 16                # 20% of 64 is below the budget
    assert prefilter_size(52_002, 1_040, {**release, "ifd_num": 2_000}) == 2_000
    assert round(kernel_gib(10_400), 2) == 1.61
    check_kernel_fits(10_400, available_bytes=2 * 2**30)
    with pytest.raises(SelectlabError, match=r"52,002 pre-filtered examples needs 40.3 GiB, 24.0 GiB are free; "
                                             r"lower selector.ifd_num or selector.ifd_fraction"):
        check_kernel_fits(52_002, available_bytes=24 * 2**30)
