"""Cherry LLM v1's pre-experience for IFD: the release's per-cluster sample, and IFD scored by the
backbone fine-tuned on it."""
from __future__ import annotations

import numpy as np
import pytest

from selectlab.scorers import get_scorer
from selectlab.scorers.ifd import middle_confidence_picks

from test_baselines import _context


def release_sample(cluster_labels, confidences, n, low_th=25, up_th=75):
    """cherry_seletion/data_by_cluster.py's sample_middle_confidence_data, line by line."""
    num_clusters = len(np.unique(cluster_labels))
    cluster_indices = {i: np.where(cluster_labels == i)[0] for i in range(num_clusters)}
    middle_confidence_samples = {}
    for i in range(num_clusters):
        sorted_indices = cluster_indices[i]
        if len(sorted_indices) < n:
            middle_confidence_samples[i] = sorted_indices
            continue
        cluster_confidences = confidences[sorted_indices]
        lower_threshold = np.percentile(cluster_confidences, low_th)
        upper_threshold = np.percentile(cluster_confidences, up_th)
        middle_indices = sorted_indices[(cluster_confidences >= lower_threshold) & (cluster_confidences <= upper_threshold)]
        if len(middle_indices) < n:
            middle_confidence_samples[i] = middle_indices
        else:
            step_size = len(middle_indices) // n
            middle_confidence_samples[i] = middle_indices[::step_size][:n]
    return [j for k in middle_confidence_samples for j in middle_confidence_samples[k].tolist()]


@pytest.mark.parametrize("seed", range(5))
def test_per_cluster_sample_equals_the_release(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 30, 3000)  # clusters of ~100, a few small ones below
    labels[:7] = 30
    ppl = rng.lognormal(2, 0.5, 3000)
    ppl[100:110] = ppl[100]  # ties at the percentiles
    assert middle_confidence_picks(labels, ppl, 10, 25, 75) == release_sample(labels, ppl, 10, 25, 75)


@pytest.mark.slow
def test_ifd_under_a_pre_experienced_model(compose, tiny_model_dir):
    overrides = ("scorer=ifd", f"backbone.path={tiny_model_dir}", "pool.limit=12", "train=cpu_small",
                 "train.max_steps=3", "train.lr=5e-3", "train.max_length=128", "scorer.pre_experience.clusters=3",
                 "scorer.pre_experience.per_cluster=2", "scorer.pre_experience.max_length=128")
    ctx = _context(compose, *overrides, "scorer.pre_experience.enabled=true")
    scores = get_scorer("ifd")(ctx)
    model = scores.meta["pre_experienced_model"]
    assert ctx.store.identity(model) and model != str(tiny_model_dir)
    picks = ctx.store.meta("checkpoints", model.rsplit("/", 1)[-1])["key_inputs"]["ifd_pre_experience"]["picks"]
    assert 3 <= len(picks) <= 6 and set(picks) <= {r["id"] for r in ctx.pool.records}
    base = get_scorer("ifd")(_context(compose, *overrides))
    finite = np.isfinite(scores.columns["ifd"]) & np.isfinite(base.columns["ifd"])
    assert finite.sum() >= 8 and not np.allclose(scores.columns["ifd"][finite], base.columns["ifd"][finite])
    again = get_scorer("ifd")(ctx)  # features, fine-tune and losses all stored
    assert np.array_equal(again.columns["ifd"], scores.columns["ifd"], equal_nan=True)


def test_pre_experience_without_a_fine_tune_is_one_clear_error(compose, tiny_model_dir):
    from selectlab.errors import SelectlabError

    ctx = _context(compose, "scorer=ifd", f"backbone.path={tiny_model_dir}", "pool.limit=4",
                   "scorer.pre_experience.enabled=true")
    with pytest.raises(SelectlabError, match=r"scorer.pre_experience.enabled=true fine-tunes the backbone first"):
        get_scorer("ifd")(ctx)
