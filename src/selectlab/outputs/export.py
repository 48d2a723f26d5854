"""The selected subsets in the formats fine-tuning tools read (config section ``export``).

``subset.jsonl`` (and ``subset_<name>.jsonl`` for a selector's extra subsets, e.g. ADG's middle
and bottom) are always written; ``export.formats`` adds, under ``<run_dir>/export/``:

- ``hf``: a Hugging Face ``datasets`` folder per subset (``datasets.load_from_disk``; TRL, open-instruct);
- ``parquet``: one parquet file per subset (axolotl, ``datasets.load_dataset("parquet", ...)``);
- ``llamafactory``: an Alpaca-format JSON per subset plus the ``dataset_info.json`` entries that
  LLaMA-Factory reads (copy both into its ``data/`` folder, or point ``dataset_dir`` here).

``export.push_to_hub=<user/repo>`` uploads the subsets as one dataset (split ``train`` = the selection,
the extra subsets as splits of their own); it needs a machine online, and offline it fails before any work.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..errors import SelectlabError
from ..infra.store import atomic_write_text, read_jsonl
from ..schema.run import ExportConfig

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "hf", "parquet", "llamafactory")
ALPACA_COLUMNS = ("instruction", "input", "output")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"


def check_export(cfg: ExportConfig) -> None:
    """Known formats; ``push_to_hub`` only online (checked when a run starts, before any work)."""
    unknown = sorted(set(cfg.formats) - set(FORMATS))
    if unknown:
        raise SelectlabError(f"export.formats: unknown {unknown}; choose from {list(FORMATS)}")
    repo = cfg.push_to_hub
    if repo and _offline():
        raise SelectlabError(f"export.push_to_hub={repo} uploads to the Hugging Face Hub, and this run is offline "
                             f"(HF_HUB_OFFLINE=1, the default); run with HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 "
                             f"and a token (huggingface-cli login), or drop export.push_to_hub")


def export_subsets(cfg: ExportConfig, subset_paths: dict[str, Path], run_dir: Path) -> dict[str, str]:
    """Write each subset (``{"main": subset.jsonl, "middle": ..., ...}``) in every configured format;
    returns {what: path} of everything written (also logged)."""
    formats = [f for f in cfg.formats if f != "jsonl"]  # jsonl: subset*.jsonl, always there
    if not formats and not cfg.push_to_hub:
        return {}
    check_export(cfg)
    out = Path(run_dir) / "export"
    rows = {name: read_jsonl(path) for name, path in subset_paths.items()}
    stems = {name: Path(path).stem for name, path in subset_paths.items()}  # subset, subset_middle, ...
    written: dict[str, str] = {}
    if "hf" in formats or "parquet" in formats or cfg.push_to_hub:
        datasets = {name: _dataset(r) for name, r in rows.items()}
        for name, ds in datasets.items():
            if "hf" in formats:
                ds.save_to_disk(str(out / "hf" / stems[name]))
                written[f"hf/{stems[name]}"] = str(out / "hf" / stems[name])
            if "parquet" in formats:
                (out / "parquet").mkdir(parents=True, exist_ok=True)
                ds.to_parquet(str(out / "parquet" / f"{stems[name]}.parquet"))
                written[f"parquet/{stems[name]}"] = str(out / "parquet" / f"{stems[name]}.parquet")
        if cfg.push_to_hub:
            written["hub"] = push_to_hub(datasets, str(cfg.push_to_hub))
    if "llamafactory" in formats:
        written["llamafactory"] = str(llamafactory_export(rows, stems, out / "llamafactory", cfg.name))
    log.info("exported %s -> %s", ", ".join(sorted(written)), out)
    return written


def _dataset(rows: list[dict]):
    """The rows as one Arrow table; a field with different types across records (a user's ``source`` a
    string here and a list there) cannot be one column: said with the fix, subset.jsonl is already written."""
    import datasets
    import pyarrow as pa

    try:
        return datasets.Dataset.from_list(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise SelectlabError(f"export.formats: the subset's records do not fit one table ({err}); give each field "
                             f"one type in every record of the pool, or export jsonl/llamafactory only "
                             f"(subset.jsonl is written)") from None


def llamafactory_export(rows: dict[str, list[dict]], stems: dict[str, str], folder: Path, name: str | None) -> Path:
    """Alpaca-format JSON files and their ``dataset_info.json`` entries (``<name>_<subset>``)."""
    prefix = name or "selectlab"
    info = {}
    for subset, records in rows.items():
        file_name = f"{stems[subset]}.json"
        alpaca = [{c: r.get(c, "") for c in ALPACA_COLUMNS} for r in records]
        atomic_write_text(folder / file_name, json.dumps(alpaca, ensure_ascii=False, indent=2))
        info[f"{prefix}_{stems[subset]}"] = {
            "file_name": file_name, "formatting": "alpaca",
            "columns": {"prompt": "instruction", "query": "input", "response": "output"},
        }
    atomic_write_text(folder / "dataset_info.json", json.dumps(info, indent=2))
    return folder


def push_to_hub(datasets_by_name: dict, repo: str) -> str:
    """One hub dataset: split ``train`` is the selection, each extra subset a split of its name."""
    import datasets

    splits = datasets.DatasetDict({("train" if n == "main" else n): ds for n, ds in datasets_by_name.items()})
    splits.push_to_hub(repo)
    return f"https://huggingface.co/datasets/{repo}"
