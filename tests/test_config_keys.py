"""Every preset's artifact keys stay what they were: a change to how config is typed, defaulted or
read must not re-key (and so silently recompute, or stop reusing) anyone's stored artifacts.

For each experiment and each option of each config group, the config sections that artifact keys
hash are turned into the keys' config parts (the pool, subset and model parts are fixed stand-ins:
they come from data, not config) and compared with ``tests/golden/artifact_keys.json``. A change
that is meant to re-key updates the file with ``SELECTLAB_UPDATE_GOLDEN=1`` and says why in its
commit (the stage's VERSION constant is the other way to say it).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
GOLDEN = REPO / "tests" / "golden" / "artifact_keys.json"
GROUPS = ("backbone", "scorer", "selector", "sampler", "embedding", "train", "eval")
# A group option is composed over a base that reaches every key (a scorer that samples and embeds, a
# fine-tune, an evaluation with lm-eval tasks); an experiment, alone.
BASE = {"scorer": "adg", "train": "cpu_small", "eval": "smoke"}
PRESETS = ([(f"experiment={p.stem}",) for p in sorted((CONF / "experiment").glob("*.yaml"))]
           + [tuple(f"{g}={o}" for g, o in {**BASE, group: p.stem}.items())
              for group in GROUPS for p in sorted((CONF / group).glob("*.yaml"))])


def key_parts(cfg) -> dict[str, str]:
    """The config-derived part of each artifact key a run of ``cfg`` would use."""
    from selectlab.infra.store import content_hash
    from selectlab.lm.sampling import ANSWER_KNOBS
    from selectlab.schema import typed
    from selectlab.stages.evaluation import task_keys
    from selectlab.stages.scoring import scores_key
    from selectlab.stages.selection import subsets_key

    class Store:  # task_keys asks the store only to name the model and to hash
        key = staticmethod(__import__("selectlab.infra.store", fromlist=["ArtifactStore"]).ArtifactStore.key)

        @staticmethod
        def identity(path):
            return path

    parts = {"scores": scores_key(cfg, "POOL"), "subsets": subsets_key(cfg, "SCORES", 1000)[0],
             "samples": content_hash({k: cfg.sampler.get(k) for k in ANSWER_KNOBS})}
    if cfg.train.name != "none":
        parts["train"] = content_hash(typed(cfg.train).key_fields())
    if cfg.eval.name != "none":
        from selectlab.config import plain

        parts.update({f"eval/{name}": key for name, key in task_keys(Store, "MODEL", plain(cfg.eval)).items()})
    return parts


def test_every_presets_artifact_keys_are_unchanged(compose_once):
    got = {" ".join(preset): key_parts(compose_once(*preset)) for preset in PRESETS}
    if os.environ.get("SELECTLAB_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(GOLDEN.read_text())
    changed = {p: sorted(k for k in set(got[p]) | set(want.get(p, {})) if got[p].get(k) != want.get(p, {}).get(k))
               for p in got}
    assert not {p: c for p, c in changed.items() if c}, "artifact keys changed (preset: parts)"
    assert set(want) == set(got), "presets added or removed: update the golden file"


@pytest.mark.parametrize("override, part", [("train.lr=3e-5", "train"), ("embedding.layers=[-3,-2,-1]", "scores"),
                                            ("scorer.lam=0.5", "scores"), ("sampler.k=7", "samples")])
def test_the_key_parts_follow_a_value_that_decides_the_result(compose, override, part):
    """The check above can fail: a changed learning rate, layer window, λ or K changes its key part."""
    base = key_parts(compose("scorer=adg", "train=cpu_small", "logger=none"))
    moved = key_parts(compose("scorer=adg", "train=cpu_small", "logger=none", override))
    assert base[part] != moved[part]


def test_the_keys_do_not_depend_on_where_the_data_folder_is(compose, tmp_path, monkeypatch):
    """A machine that keeps the data elsewhere (CI's checkout, a cluster's /scratch) computes the same keys: the held-out
    set's path, which a size search's subsets key reads, enters it relative to the data folder."""
    from selectlab.infra.paths import data_dir

    preset = ("experiment=double_descent", "logger=none")
    here = key_parts(compose(*preset))
    (tmp_path / "elsewhere").symlink_to(data_dir().resolve(), target_is_directory=True)
    monkeypatch.setenv("SELECTLAB_DATA", str(tmp_path / "elsewhere"))
    moved = compose(*preset)
    assert moved.heldout.path.startswith(str(tmp_path / "elsewhere"))
    assert key_parts(moved) == here
