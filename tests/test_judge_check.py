"""The complexity judge measured before it is plotted (analysis/judge_check.py): accuracy and the
majority baseline worked out by hand, the check set built from shipped data, and the whole
analysis run on the tiny model into an evidence folder the figure is drawn from."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis import complexity, figures, judge_check
from selectlab.infra.paths import data_dir

from test_analysis import _adg_run_with_pool

CATS = ["A", "B", "C"]


def test_accuracy_majority_and_confusion_by_hand():
    s = judge_check.scored(["A", "A", "A", "B"], ["A", "A", "B", "B"], CATS, 500, 0,
                           {"first two": np.array([True, True, False, False])}, alts=[None, None, "B", None])
    assert s["accuracy"] == 0.75 and s["majority_class"] == "A" and s["majority_accuracy"] == 0.75
    assert s["minus_majority"] == 0.0 and not s["beats_majority"]
    assert s["lenient_accuracy"] == 1.0  # the third item's runner-up label is B
    assert s["confusion"] == [[2, 1, 0], [0, 1, 0], [0, 0, 0]] and s["by_part"] == {"first two": 1.0}
    assert s["ci"][0] <= 0.75 <= s["ci"][1]


def test_check_set_sources_and_contrasts_come_from_shipped_data():
    items = judge_check.benchmark_items(data_dir(), 5, 0)
    assert [r["label"] for r in items] == ["Math"] * 5 + ["Coding"] * 5 + ["Reasoning"] * 5 + ["Knowledge"] * 5
    assert len({r["id"] for r in items}) == 20 and all(r["instruction"].strip() for r in items)
    assert items == judge_check.benchmark_items(data_dir(), 5, 0)  # seeded
    pairs = judge_check.contrast_pairs(data_dir(), 6, 0)
    assert set(pairs) == {"cognitive_complexity", "instruction_precision", "educational_value"}
    high, low = pairs["instruction_precision"]
    assert len(high) == len(low) == 6 and all(len(lo["instruction"]) < len(hi["instruction"]) for hi, lo in zip(high, low))
    high, low = pairs["educational_value"]
    assert [h["instruction"] for h in high] == [lo["instruction"] for lo in low]  # same question, other answers
    assert all("The answer is" in h["output"] and h["output"] != lo["output"] for h, lo in zip(high, low))


@pytest.mark.slow
def test_analysis_writes_evidence_and_the_figure_reads_it(tmp_path, tiny_model_dir, monkeypatch):
    """python -m analysis.complexity on the tiny judge: four category judges scored on a small
    check set, three rating contrasts, the subsets judged; the figure is drawn from the folder alone."""
    _adg_run_with_pool(tmp_path)
    monkeypatch.setenv("SELECTLAB_CACHE", str(tmp_path / "cache"))
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    labels = [(14, "Discrete_Decision"), (166, "Writing"), (336, "Knowledge"), (1, "Knowledge"),
              (2, "Writing"), (3, "Discrete_Decision")]
    (evidence / "pool_labels.jsonl").write_text("".join(json.dumps({"alpaca_row": r, "label": lab, "alt": None})
                                                        + "\n" for r, lab in labels))
    cfg = complexity.load_config([f"judge.model.path={tiny_model_dir}", "judge.model.name=tiny", f"evidence={evidence}",
                                  f"runs=[{tmp_path / 'outputs'}]", "check.per_source=2", "check.contrast_n=3",
                                  "check.folds=2", "bootstrap.samples=200"])
    folder = complexity.run_analysis(cfg)
    check = json.loads((folder / "judge_check.json").read_text())
    assert list(check["category_judges"]) == ["lm_release", "lm_calibrated", "minilm_prototypes", "minilm_logreg"]
    for c in check["category_judges"].values():
        assert c["n"] == 14 and 0 <= c["accuracy"] <= 1 and np.sum(c["confusion"]) == 14
    assert check["chosen"] == max(check["category_judges"], key=lambda k: check["category_judges"][k]["accuracy"])
    assert set(check["rating_contrasts"]) == set(cfg["ratings"])
    rows = [json.loads(line) for line in (folder / "check_set.jsonl").read_text().splitlines()]
    assert len(rows) == 14 and set(rows[0]["predicted"]) == set(check["category_judges"])
    judged = pd.read_csv(folder / "judged.csv")
    assert len(judged) == 9 and set(judged["category"]) <= set(cfg["classification"]["categories"])
    figures.EMPTY_PANELS.clear()
    png = figures.complexity_figure(folder, tmp_path / "cc.png", cfg)
    assert png.stat().st_size > 10_000 and figures.EMPTY_PANELS == []


def test_unknown_category_judge_is_one_clear_error():
    cfg = complexity.load_config(["check.category_judge=gpt9"])
    with pytest.raises(complexity.JudgeError, match="check.category_judge='gpt9'"):
        complexity.chosen_judge(cfg, {"lm_release": {"accuracy": 0.1}})
