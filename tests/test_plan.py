"""task=plan: every preset plans on this CPU machine without weights; keys, reuse, work and FLOPs
are the ones the stages use, worked out by hand on small cases."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from selectlab.lm.flops import arch_from_config, config_only_dir

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
BACKBONES = sorted(p.stem for p in (REPO / "conf" / "backbone").glob("*.yaml"))

# Parameter counts published for these checkpoints (model cards / safetensors index totals).
PUBLISHED_PARAMS = {"llama3_8b": 8_030_261_248, "llama3_8b_instruct": 8_030_261_248,
                    "qwen2_5_7b": 7_615_616_512, "qwen2_5_7b_instruct": 7_615_616_512,
                    "llama3_2_1b_instruct": 1_235_814_400, "smollm2_135m": 134_515_008}


@pytest.fixture
def data_env(monkeypatch):
    from selectlab.infra.paths import data_dir

    shared = data_dir()  # $SELECTLAB_DATA or ../shared/data, as a run resolves it
    if not shared.is_dir():
        pytest.fail(f"no data folder at {shared}: put the shared data beside the repository or set SELECTLAB_DATA")
    monkeypatch.setenv("SELECTLAB_DATA", str(shared))


@pytest.mark.slow
def test_every_experiment_and_backbone_plans_without_weights(compose, data_env):
    """A typo or missing key in any preset fails here, on CPU, with no weights anywhere."""
    from selectlab.plan import build_plan

    for name in EXPERIMENTS:
        cfg = compose(f"experiment={name}", "task=plan", "logger=none")
        plan = build_plan(cfg)
        assert plan["stages"], name
        assert all(s["status"] for s in plan["stages"]), name
        assert plan["models"][0]["arch"] is not None, name
    for name in BACKBONES:
        plan = build_plan(compose(f"backbone={name}", "scorer=adg", "task=plan", "logger=none"))
        assert plan["models"][0]["arch"]["params"] == PUBLISHED_PARAMS[name], name
        samples = plan["stages"][0]
        assert samples["stage"] == "samples" and samples["flops"] > 0


def test_paper_preset_prints_gpu_hours_for_the_52k_selection(compose, data_env, capsys, tmp_path):
    from selectlab.plan import plan_run

    plan = plan_run(compose("experiment=adg_paper_llama3", "task=plan", "backbone.path=/x", "logger=none"))
    out = capsys.readouterr().out
    assert "backbone.path=/x is not a Hugging Face model folder" in out
    assert "conf/backbone/configs/llama3_8b/config.json (config only, no weights)" in out
    samples = plan["stages"][0]
    assert samples["work"]["generated_tokens_max"] == 52002 * 5 * 256
    assert plan["totals"]["h100"]["selection_hours"] > 0
    assert "GPU-hours" in out and "the ADG paper reports 1.78 h on 4 GPUs" in out
    assert "assumed" in out and "measured" in out
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["stages"][0]["stage"] == "samples"


def test_arch_counts_and_flops_by_hand(tiny_model_dir):
    """The tests' tiny llama: hidden 64, MLP 128, 4 heads of 16 (2 KV heads), 4 layers, tied head."""
    arch = arch_from_config(str(tiny_model_dir))
    per_layer = (64 * 64 + 64 * 32 + 64 * 32 + 64 * 64) + 3 * 64 * 128 + 2 * 64  # q k v o, gate up down, 2 norms
    assert arch.layer_params == per_layer == 36992
    assert arch.head_params == arch.vocab * 64
    assert arch.params == arch.vocab * 64 + 4 * per_layer + 64  # tied: the embedding once, + the final norm
    # 2 FLOPs per weight of the first 2 layers, no head, + attention 4 x context 10 x width 64 per layer
    assert arch.forward_flops_per_token(10, depth=2, head=False) == 2 * 2 * 36992 + 4 * 2 * 10 * 64
    full = arch.forward_flops_per_token(10)
    assert arch.train_flops_per_token(10, "full", checkpointing=True) == 4 * full
    assert arch.train_flops_per_token(10, "lora") == 2 * full


@pytest.mark.slow
def test_plan_keys_match_the_run_and_see_its_artifacts(compose, data_env, tiny_model_dir):
    """Plan, run the stages for real (random scorer, cheap), plan again: the same keys, now reused;
    and the sampling work of an ADG plan is prompts x K x max_new_tokens."""
    from selectlab.pipeline import run
    from selectlab.plan import build_plan

    args = ["scorer=random", "pool.limit=12", "selection.budget=4", f"backbone.path={tiny_model_dir}", "logger=none"]
    before = build_plan(compose(*args, "task=plan"))
    by_stage = {s["stage"]: s for s in before["stages"]}
    assert by_stage["scores"]["status"] == by_stage["subsets"]["status"] == "to compute"
    manifest = run(compose(*args))
    assert manifest["artifacts"] == {"scores": by_stage["scores"]["key"], "subset": by_stage["subsets"]["key"]}
    after = {s["stage"]: s for s in build_plan(compose(*args, "task=plan"))["stages"]}
    assert after["scores"]["status"] == after["subsets"]["status"] == "stored: reused"

    adg = build_plan(compose("scorer=adg", "pool.limit=8", "sampler.k=3", "sampler.max_new_tokens=16",
                             f"backbone.path={tiny_model_dir}", "task=plan", "logger=none"))
    samples = adg["stages"][0]
    assert samples["work"]["generated_tokens_max"] == 8 * 3 * 16
    assert samples["key"] is not None and samples["status"] == "to compute"
    assert adg["token_counts"].startswith("tokenizer of")


def test_shipped_configs_cover_every_hub_preset():
    for name in BACKBONES:
        assert config_only_dir(name) is not None, f"conf/backbone/configs/{name}/config.json is missing"


def test_plan_checks_the_config_as_a_run_does_but_not_this_machines_files(compose, data_env):
    """task=plan validates every value first (the same checks, the same one-line errors); what is
    missing on this machine (a hub pool, the release's embedder) it reports instead of failing."""
    from selectlab.errors import SelectlabError
    from selectlab.pipeline import run

    with pytest.raises(SelectlabError, match=r"selection.budget=2.5: give a count >= 1"):
        run(compose("task=plan", "selection.budget=2.5", "logger=none"))
    with pytest.raises(SelectlabError, match=r"selector=zip needs scorer=zip"):
        run(compose("task=plan", "selector=zip", "logger=none"))
    plan = run(compose("task=plan", "scorer=deita", "logger=none"))  # Mistral-7B is not here: planned anyway
    assert plan["stages"]


def test_plan_lists_the_rows_the_run_trains_each_seed_included(compose, data_env, tiny_model_dir):
    """task=plan and the run read the same row list (stages.compare.planned_rows): every comparison
    seed is a fine-tune and an evaluation in the plan, as it is in the run (tests/test_evidence.py)."""
    from selectlab.plan import build_plan

    plan = build_plan(compose("scorer=length", f"backbone.path={tiny_model_dir}", "pool=self_instruct_seed",
                              "pool.limit=16", "selection.budget=4", "train=cpu_small", "eval=heldout_loss",
                              "heldout.limit=6", "compare.baselines=[untrained,random]", "compare.seeds=[1,2]",
                              "task=plan", "logger=none"))
    rows = [s["row"] for s in plan["stages"] if s["stage"] == "evals"]
    assert rows == ["untrained", "random seed 1", "random seed 2", "selected seed 1", "selected seed 2"]
    assert [s["row"] for s in plan["stages"] if s["stage"] == "checkpoints"] == rows[1:]
    random_keys = [s["key"] for s in plan["stages"] if s["stage"] == "subsets" and s["row"].startswith("random")]
    assert len(set(random_keys)) == 2  # each seed draws its own subset


def test_a_row_stage_described_once_is_run_and_planned(compose, data_env, tiny_model_dir):
    """A stage added to stages.compare.ROW_STAGES, and nowhere else, runs in the run and shows in
    the plan (unpriced until selectlab.plan.ROW_PLANNERS gives it a cost model)."""
    from selectlab.pipeline import run
    from selectlab.plan import build_plan
    from selectlab.stages import compare

    seen = []
    audit = compare.RowStage("audit", lambda row: True, lambda ctx, row, state: seen.append(row.label) or state)
    args = ["scorer=random", f"backbone.path={tiny_model_dir}", "pool=self_instruct_seed", "pool.limit=8",
            "selection.budget=2", "train=none", "eval=heldout_loss", "heldout.limit=2", "logger=none"]
    compare.ROW_STAGES.insert(0, audit)
    try:
        planned = [s for s in build_plan(compose(*args, "task=plan"))["stages"] if s["stage"] == "audit"]
        run(compose(*args))
    finally:
        compare.ROW_STAGES.remove(audit)
    assert [(s["row"], s["status"].split(":")[0]) for s in planned] == [("untrained", "not planned")]
    assert seen == ["untrained"]
