"""Bad input: one clear error (config key or file:line) before any model loads or pool is scored;
user errors print one line and exit 2 from the CLI; config names never leave their folder."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selectlab.errors import USER_ERROR_EXIT_CODE, SelectlabError
from selectlab.pools import PoolError

REPO = Path(__file__).resolve().parents[1]


def _run(compose, *overrides: str) -> dict:
    from selectlab.pipeline import run

    return run(compose("logger=none", *overrides))


def _artifacts(tmp_path: Path) -> list[Path]:
    """Every published artifact (or batch folder) in the test's cache: ``<stage>/<key>``."""
    cache = tmp_path / "cache"
    return sorted(cache.glob("*/*")) if cache.exists() else []


# ---------------------------------------------------------------- config values, before any work
# (a value of the wrong type, e.g. selection.budget=abc, fails earlier, at compose: tests/test_schema.py)
@pytest.mark.parametrize("overrides, message", [
    (["selection.budget=2.5"], r"selection.budget=2.5: give a count >= 1"),
    (["pool.limit=0"], r"pool.limit=0: must be >= 1"),
    (["selector=binwise"], r"selector=binwise needs per-example features, which scorer=random does not give"),
    (["pool=json"], r"pool.path has no value \(\?\?\?\)"),
    (["pool=json", "pool.path=/nonexistent/pool.jsonl"], r"pool.path=/nonexistent/pool.jsonl does not exist"),
    (["backbone.path=/nonexistent/model"], r"backbone.path=/nonexistent/model is not a Hugging Face model folder"),
    (["selector=size_grid"], r"selector=size_grid fine-tunes on subsets; choose a train config"),
    (["task=fit_rule", "train=cpu_small"], r"task=fit_rule fits InstructMining's rule .* not scorer=random"),
    (["task=fit_rule", "scorer=instructmining", "train=cpu_small", "fit.subsets=3"],
     r"fit.subsets=3 cannot fit 3 coefficients"),
    (["shard.index=2", "shard.count=2"], r"shard.index=2 must be in 0..1"),
    (["compare.baselines=[untrained,best]"], r"compare.baselines: unknown \['best'\]"),
    (["selector=zip"], r"selector=zip needs scorer=zip .* not scorer=random"),
    (["scorer.name=nonexistent"], r"scorer.name='nonexistent' is not registered; known: adg, .*zip"),
])
def test_bad_config_value_fails_with_its_key_before_any_work(compose, tmp_path, overrides, message):
    with pytest.raises(SelectlabError, match=message):
        _run(compose, "scorer=random", "pool.limit=20", *overrides)
    assert _artifacts(tmp_path) == [], "nothing is scored or published before the check"


def test_adg_with_one_answer_fails_before_the_backbone_loads(compose, tmp_path):
    """sampler.k=1 made every ADG score 0 (selection in pool order); now it names sampler.k. The
    backbone folder here has a config.json but no weights: any attempt to load it would fail
    differently, so the error proves nothing was loaded."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(SelectlabError, match=r"sampler.k=1: ADG needs at least 2 answers"):
        _run(compose, "scorer=adg", "sampler=hf", "sampler.k=1", f"backbone.path={model}", "pool.limit=8")
    assert _artifacts(tmp_path) == []


def test_sampler_value_that_is_not_a_number_names_its_key(compose, tmp_path):
    from hydra.errors import ConfigCompositionException

    # the schema's float type refuses it at compose (before: validate's check, at the run's start)
    with pytest.raises(ConfigCompositionException, match=r"Error merging override sampler.top_p=high"):
        _run(compose, "scorer=adg", "sampler=hf", "sampler.top_p=high", "pool.limit=8")


def test_budget_above_the_pool_warns_and_selects_the_whole_pool(compose, caplog):
    with caplog.at_level(logging.WARNING, logger="selectlab"):
        manifest = _run(compose, "scorer=random", "pool.limit=20", "selection.budget=50")
    assert manifest["n_selected"] == 20
    assert "selection.budget=50 is more than the 20 examples of pool alpaca; all 20 are selected" in caplog.text


# ---------------------------------------------------------------- pool files: file and line
def _pool(compose, path: Path):
    from selectlab.config import plain
    from selectlab.pools import load_pool

    return load_pool(plain(compose("pool=json", f"pool.path={path}").pool), seed=0)


def test_non_utf8_byte_names_file_line_and_byte(compose, tmp_path):
    bad = tmp_path / "latin1.jsonl"
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]
    text = "".join(json.dumps(r) + "\n" for r in rows).encode() + '{"instruction": "caf\xe9", "output": "e"}\n'.encode(
        "latin-1")
    bad.write_bytes(text)
    # line 3, column 21: '{"instruction": "caf' is 20 bytes, then the latin-1 byte 0xe9
    with pytest.raises(PoolError, match=rf"{bad}:3: not UTF-8 \(byte 0xe9 at column 21\)"):
        _pool(compose, bad)


def test_pretty_printed_json_object_is_the_wrong_shape_not_malformed(compose, tmp_path):
    bad = tmp_path / "pool.json"
    bad.write_text(json.dumps({"data": [{"instruction": "a", "output": "b"}]}, indent=2))
    with pytest.raises(PoolError, match=rf"{bad}:1: the file is one JSON document \(an object with keys \['data'\]\) "
                                        r"spread over several lines; a pool is a JSON array of records"):
        _pool(compose, bad)


def test_one_record_jsonl_file_is_still_a_pool(compose, tmp_path):
    one = tmp_path / "one.jsonl"
    one.write_text('{"instruction": "a", "output": "b"}\n')
    assert [r["instruction"] for r in _pool(compose, one).records] == ["a"]


def test_array_element_that_is_not_an_object_names_its_line(compose, tmp_path):
    bad = tmp_path / "pool.json"
    bad.write_text('[\n  {"instruction": "a", "output": "b"},\n  "just text",\n'
                   '  {"instruction": "c", "output": "d"}\n]\n')
    with pytest.raises(PoolError, match=rf"{bad}:3: expected a JSON object \(one record\), got str"):
        _pool(compose, bad)


def test_duplicate_user_id_names_both_lines(compose, tmp_path):
    bad = tmp_path / "pool.jsonl"
    rows = [{"id": "x1", "instruction": "a", "output": "b"}, {"id": "x2", "instruction": "c", "output": "d"},
            {"id": "x1", "instruction": "e", "output": "f"}]
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PoolError, match=rf"{bad}:3: id 'x1' is already used at line 1"):
        _pool(compose, bad)


@pytest.mark.parametrize("content, message", [
    ("", ":1: the file is empty"),
    ("\n  \n", ":1: the file is empty"),
    ("[]\n", "holds no records"),
])
def test_empty_pool_is_one_clear_error_and_publishes_nothing(compose, tmp_path, content, message):
    empty = tmp_path / "empty.jsonl"
    empty.write_text(content)
    with pytest.raises(PoolError, match=message):
        _run(compose, "scorer=random", "pool=json", f"pool.path={empty}")
    assert _artifacts(tmp_path) == []


def test_pool_whose_every_instruction_is_empty_is_an_error(compose, tmp_path):
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"instruction": " ", "output": "b"}\n{"instruction": "", "output": "d"}\n')
    with pytest.raises(PoolError, match="every record of .*blank.jsonl has an empty instruction"):
        _run(compose, "scorer=random", "pool=json", f"pool.path={blank}")
    assert _artifacts(tmp_path) == []


# ---------------------------------------------------------------- the CLI: one line, exit 2
def _cli(args: list[str], tmp_path: Path, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "SELECTLAB_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, str(REPO / "src/run.py"), *args, "logger=none"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=600)


@pytest.mark.parametrize("full_error", ["0", "1"])
def test_cli_user_error_is_one_line_without_traceback_and_exit_2(tmp_path, full_error):
    proc = _cli(["selection.budget=2.5", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, HYDRA_FULL_ERROR=full_error)
    assert proc.returncode == USER_ERROR_EXIT_CODE == 2
    assert proc.stderr.splitlines() == [
        "error: selection.budget=2.5: give a count >= 1 or a fraction in (0, 1)"], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert _artifacts(tmp_path) == []


def test_cli_value_of_the_wrong_type_fails_at_compose_naming_the_key(tmp_path):
    """A type error is Hydra's composition error (exit 1, before run.py's main): a few lines that
    name the override and the key, no traceback unless HYDRA_FULL_ERROR=1."""
    proc = _cli(["selection.budget=abc", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, HYDRA_FULL_ERROR="0")
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[:3] == ["Error merging override selection.budget=abc",
                                            "Value 'abc' of type 'str' is incompatible with type hint 'Union[int, float]'",
                                            "    full_key: selection.budget"], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert _artifacts(tmp_path) == []


def test_cli_empty_pool_file_is_one_line(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    proc = _cli(["pool=json", f"pool.path={empty}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {empty}:1: the file is empty; a pool needs at least one record"]
    assert _artifacts(tmp_path) == []


def test_cli_unexpected_exception_keeps_its_traceback(tmp_path):
    """Not a user error (the cache root is a file, so the store cannot create its folders): exit 1
    with the traceback, as before."""
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    proc = _cli([f"hydra.run.dir={tmp_path / 'run'}", "pool.limit=20"], tmp_path, HYDRA_FULL_ERROR="1")
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "error: " not in proc.stderr


# ---------------------------------------------------------------- names from config as path components
def test_safe_component_by_hand():
    from selectlab.infra.paths import safe_component

    assert safe_component("alpaca") == "alpaca"
    assert safe_component("../../x") == "_.._x"      # '/' -> '_', then the leading dots go
    assert safe_component("..") == "_"
    assert safe_component(".hidden") == "hidden"
    assert safe_component("a b/c\\d") == "a_b_c_d"
    assert safe_component("backbone.path=/m,seed=1") == "backbone.path=_m,seed=1"
    long = safe_component("x" * 300)
    assert len(long) == 120 and long.startswith("x" * 109 + "-") and long != safe_component("x" * 301)


def test_cli_pool_name_cannot_leave_outputs(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    proc = _cli(["pool.name=../../../../escaped", "pool.limit=20"], work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (manifest,) = list((work / "outputs").rglob("manifest.json"))
    assert manifest.parent.name.endswith("_random__.._.._.._escaped")
    assert not list(tmp_path.rglob("escaped")), "nothing is written outside outputs/"


@pytest.mark.slow
def test_cli_sweep_subdir_is_one_folder_per_job(tmp_path):
    """Hydra's override_dirname carries override values verbatim; a value with '/' made nested
    folders (and '../' ones outside the sweep folder)."""
    proc = _cli(["-m", "pool.name=../../../../../escaped,ok", "pool.limit=20", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = sorted(p.parent.name for p in (tmp_path / "sweep").rglob("manifest.json"))
    assert jobs == ["0_logger=none,pool.limit=20,pool.name=.._.._.._.._.._escaped",
                    "1_logger=none,pool.limit=20,pool.name=ok"]
    assert all(p.parent.parent == tmp_path / "sweep" for p in (tmp_path / "sweep").rglob("manifest.json"))
    assert not [p for p in tmp_path.rglob("escaped*") if "sweep" not in p.parts]


@pytest.mark.slow
def test_fitted_rule_goes_to_the_run_folder_only(compose, tiny_model_dir, tmp_path):
    """task=fit_rule on the tiny model (3 one-step fine-tunes): the rule lands in the run folder
    under a sanitised fit.name; conf/ is never written."""
    import yaml

    from selectlab.pipeline import run

    rules_before = sorted((REPO / "conf").rglob("*"))
    cfg = compose("task=fit_rule", "scorer=instructmining", f"backbone.path={tiny_model_dir}", "pool.limit=12",
                  "fit.name=../../evil", "fit.subsets=3", "fit.subset_size=4", "fit.indicators=[output_length]",
                  "train=cpu_small", "train.max_steps=1", "train.grad_accum=1", "train.save_steps=100",
                  "heldout.limit=4", "logger=none")
    manifest = run(cfg)
    rule_path = tmp_path / "run" / "fitted__.._evil.yaml"
    assert manifest["fit"]["rule_config"] == str(rule_path)
    rule = yaml.safe_load(rule_path.read_text())
    assert rule["name"] == "fitted__.._evil" and list(rule["coefficients"]) == ["output_length"]
    assert "Copy this file into conf/scorer/rule/" in rule_path.read_text()
    assert sorted((REPO / "conf").rglob("*")) == rules_before
    assert not list(tmp_path.rglob("evil.yaml"))


def test_adg_score_and_bin_keys_are_checked_before_any_work(compose):
    from selectlab.errors import SelectlabError
    from selectlab.validate import validate

    for override, message in (("scorer.metric_1=cov", "scorer.metric_1='cov': choose one of Sc.cov_trace"),
                              ("scorer.lam=1.5", "scorer.lam=1.5: must be >= 0 and <= 1"),
                              ("scorer.bins.source=kmeans", "scorer.bins.source='kmeans'"),
                              ("embedding.pool=tokens", "embedding.pool='tokens'"),
                              ("embedding.empty_answer=skip", "embedding.empty_answer='skip'")):
        with pytest.raises(SelectlabError, match=message):
            validate(compose("scorer=adg", override))
