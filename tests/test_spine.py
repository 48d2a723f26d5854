"""The code's spine: a scorer's selector comes through Hydra, the package graph points one way,
no code reads conf/ itself, and modules and functions stay short enough to read."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from selectlab.config import plain

SRC = Path(__file__).resolve().parents[1] / "src" / "selectlab"


def test_scorer_chooses_its_selector_and_the_command_line_wins(compose):
    assert plain(compose("scorer=adg").selector)["name"] == "binwise"
    assert compose("scorer=adg", "selector.n_bins=500").selector.n_bins == 500  # knobs of the scorer's selector
    assert plain(compose("scorer=adg", "selector=topk").selector) == {"name": "topk"}  # explicit choice wins
    assert compose("scorer=adg", "selector=diverse_topk").selector.name == "diverse_topk"
    assert compose("scorer=ifd").selector.name == "topk"  # a scorer that names none keeps the default
    offline = compose("scorer=mig_offline").selector  # mig_clusters extends mig.yaml
    assert (offline.name, offline.labels, offline.phi_b) == ("mig", "clusters", 0.8)
    assert compose("scorer=superfiltering_d").selector.name == "fla"
    # the random baseline's scorer and selector are composed by Hydra, whatever the run's scorer
    cfg = compose("scorer=adg")
    assert plain(cfg.compare.random_scorer)["name"] == "random" and cfg.compare.random_selector.name == "topk"


@pytest.mark.parametrize("preset", ["adg_paper_llama3", "sweep_ablation_lambda", "smoke_e2e"])
def test_an_adg_preset_leaves_the_selector_to_the_scorer(compose, preset):
    """An ADG preset gets binwise from scorer=adg; another scorer on its command line brings its own
    selector (the presets used to pin selector=binwise, so scorer=mig_offline selected bin-wise)."""
    assert compose(f"experiment={preset}").selector.name == "binwise"
    assert compose(f"experiment={preset}", "scorer=mig_offline").selector.labels == "clusters"
    assert compose(f"experiment={preset}", "scorer=ifd").selector.name == "topk"


def _imports(path: Path) -> set[str]:
    """Absolute names of the selectlab modules ``path`` imports (at top level or in functions)."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
    if path.name == "__init__.py":
        package += ".__init__"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: -node.level]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            out |= {name} | {f"{name}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {n for n in out if n.startswith("selectlab")}


# Every package and top-level module of selectlab, lowest first; each may import only what is below
# it (a lower index): errors and the plumbing at the bottom, the run's entry points at the top.
LAYERS = ["selectlab.errors", "selectlab.infra", "selectlab.schema", "selectlab.pools", "selectlab.config",
          "selectlab.context", "selectlab.texts", "selectlab.lm_eval_tasks", "selectlab.lm", "selectlab.instructmining",
          "selectlab.scorers", "selectlab.selectors", "selectlab.outputs", "selectlab.stages", "selectlab.validate",
          "selectlab.plan", "selectlab.pipeline"]


def test_the_layers_cover_every_package_and_module():
    tops = {f"selectlab.{p.stem}" for p in SRC.iterdir()
            if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    assert tops == set(LAYERS), (sorted(tops - set(LAYERS)), sorted(set(LAYERS) - tops))


@pytest.mark.parametrize("layer", LAYERS[:-1])
def test_no_upward_imports(layer):
    above = LAYERS[LAYERS.index(layer) + 1:]
    folder = SRC / layer.split(".")[1]
    files = sorted(folder.rglob("*.py")) if folder.is_dir() else [folder.with_suffix(".py")]
    wrong = {f"{f.relative_to(SRC)} imports {name}" for f in files for name in _imports(f)
             if any(name == up or name.startswith(up + ".") for up in above)}
    assert not wrong, sorted(wrong)


def _module_graph() -> dict[str, set[str]]:
    """selectlab module -> the selectlab modules it imports, top level or inside functions."""
    names = {".".join(f.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__"): f
             for f in SRC.rglob("*.py")}
    graph = {}
    for name, path in names.items():
        targets = set()
        for imported in _imports(path):
            while imported and imported not in names:  # `from .x import f` names f; keep the module x
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def test_no_import_cycle_even_through_imports_inside_functions():
    """No module reaches itself through its imports: an import moved into a function to dodge a
    cycle at load time counts here as at the top (a package may import its own submodules)."""
    graph = _module_graph()

    def reaches(start: str) -> str | None:
        seen, stack = set(), [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start and not start.startswith(node + ".") and not node.startswith(start + "."):
                    return " -> ".join([*path, nxt])
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = {c for c in map(reaches, graph) if c and not any(
        a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c.split(" -> "), c.split(" -> ")[1:]))}
    assert not cycles, sorted(cycles)


def test_no_code_reads_the_config_tree():
    """Configs reach code through Hydra only (``config.preset`` composes one section with Hydra for
    code outside a run); the one file under conf/ that code reads is data (the architecture configs
    the planner counts FLOPs with, conf/backbone/configs)."""
    readers = {f.relative_to(SRC).as_posix() for f in SRC.rglob("*.py")
               if "OmegaConf.load" in f.read_text() or '/ "conf"' in f.read_text()}
    assert readers == {"lm/flops.py", "config.py"}
    assert "OmegaConf.load" not in (SRC / "config.py").read_text()


# Over the house limits (modules ~300 lines, functions ~60), each with the reason it is kept whole.
LONG_MODULES = {
    "plan.py": "the dry-run planner: one Planner walks every stage of every task with its cost model",
    "infra/store.py": "the artifact store: build, batched builds, locks and integrity checks share one protocol",
    "lm_eval_tasks/sandbox.py": "the code sandbox: namespaces and rlimits set-up must be read in one place",
    "lm/embedding.py": "the batched hidden-state pass; its helpers share the same padding and prefix-reuse invariants",
    "lm/sampling.py": "vLLM and HF samplers side by side so their settings visibly match",
    "lm/train.py": "fine-tune plus the response-only loss used by eval and the size search (one masking rule)",
    "lm/judge.py": "the OpenAI and local judges behind one interface",
}


def test_modules_and_functions_stay_short():
    long_modules = {f.relative_to(SRC).as_posix() for f in SRC.rglob("*.py")
                    if len(f.read_text().splitlines()) > 320}
    assert long_modules <= set(LONG_MODULES), sorted(long_modules - set(LONG_MODULES))
    long_functions = [f"{f.relative_to(SRC)}:{n.name} ({n.end_lineno - n.lineno + 1} lines)"
                      for f in SRC.rglob("*.py") for n in ast.walk(ast.parse(f.read_text()))
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno >= 65]
    assert not long_functions, long_functions


def test_a_small_model_selects_and_another_is_trained(smol_tokenizer_dir, tiny_model_dir, compose, tmp_path):
    """select.backbone scores the pool (IFD's answer losses), the backbone is fine-tuned and
    evaluated: the scores' keys follow the scoring model, the checkpoint's base is the backbone."""
    from conftest import build_tiny_llama

    from selectlab.pipeline import run
    from selectlab.infra.store import ArtifactStore

    scorer_model = build_tiny_llama(smol_tokenizer_dir, tmp_path / "scorer_llama", num_attention_heads=2,
                                    num_key_value_heads=1)
    common = ("scorer=ifd", f"backbone.path={tiny_model_dir}", "pool=self_instruct_seed", "pool.limit=10",
              "selection.budget=3", "train=cpu_small", "train.max_steps=1", "eval=heldout_loss", "heldout.limit=3",
              "logger=none")
    manifest = run(compose(*common, "backbone@select.backbone=smollm2_135m", f"select.backbone.path={scorer_model}"))
    same = run(compose(*common, f"run_dir={tmp_path / 'same'}"))
    assert manifest["scoring_backbone"] == "smollm2_135m"
    assert manifest["artifacts"]["scores"] != same["artifacts"]["scores"]  # keyed on the scoring model
    store = ArtifactStore(tmp_path / "cache")
    losses = [e for e in manifest["stages"] if e["stage"] == "answer_losses"]
    assert losses and str(scorer_model) in json.dumps(store.meta("answer_losses", losses[0]["key"]))
    (row,) = [r for r in json.loads((Path(manifest["run_dir"]) / "results.json").read_text())["rows"]
              if r["label"] == "selected"]
    assert store.meta("checkpoints", Path(row["model"]).name)["base_model"] == str(tiny_model_dir)


@pytest.mark.parametrize("choice, name", [("deita_judge", "deita"), ("mig_offline", "mig"), ("ifd", "ifd")])
def test_results_rows_name_the_scorer_option_the_run_chose(choice, name):
    """A substitute shares its release's scorer.name; the results rows and tables say which ran."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from selectlab.config import scorer_label

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(SRC.parents[1] / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"scorer={choice}"], return_hydra_config=True)
    assert cfg.scorer.name == name and scorer_label(cfg) == name  # no Hydra run: the name
    HydraConfig.instance().set_config(cfg)
    try:
        assert scorer_label(cfg) == choice
    finally:
        HydraConfig.instance().cfg = None


def test_a_sweep_over_adg_sampling_or_embedding_keeps_every_other_scorers_keys(compose):
    """The scores key hashes only the sections a scorer declares it reads: sampler.k or
    embedding.layers change ADG's scores, not the random baseline's (so its subsets and fine-tunes
    are reused across an ablation sweep) nor IFD's; a backbone change reaches every scorer that reads it."""
    from selectlab.stages.scoring import scores_key

    def key(*overrides):
        return scores_key(compose(*overrides), "pool")

    for scorer, moves in (("adg", True), ("random", False), ("ifd", False)):
        base = key(f"scorer={scorer}")
        assert (key(f"scorer={scorer}", "sampler.k=7") != base) is moves, scorer
        assert (key(f"scorer={scorer}", "embedding.layers=[1,2,3,4]") != base) is moves, scorer
    assert key("scorer=ifd", "backbone.dtype=bfloat16") != key("scorer=ifd")
    assert key("scorer=random", "backbone.dtype=bfloat16") == key("scorer=random")
