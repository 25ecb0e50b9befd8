"""Reading weight files: detect the format of a file or folder and read it into tensors (no conversion).

Formats: safetensors, torch state dicts (``weights_only=True``, never unpickling code), ``.npz`` archives of flax
params, reference flax checkpoints (named here; read by ``vivit.convert``), folders written by ``save_pretrained`` and
transformers ViViT folders. Imports nothing else of vivit.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

WEIGHTS_NAME = "model.safetensors"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"
FORMATS = ("safetensors", "torch", "scenic", "npz", "vivit-folder", "transformers-folder")
_MSGPACK_MAP_STARTS = {*range(0x81, 0x90), 0xDE, 0xDF}


# ------------------------------------------------------------------------------------------------ detection
def detect_format(path: str | Path) -> str:
    """Name the weight format of a local file or folder (one of ``FORMATS``); ``ValueError`` if it is none."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.is_dir():
        config = path / "config.json"
        if config.is_file():
            cfg = read_json(config)
            if isinstance(cfg.get("model_args"), dict):
                return "vivit-folder"
            if cfg.get("model_type") == "vivit":
                return "transformers-folder"
        if any(p.name.startswith("checkpoint") for p in path.iterdir()):
            return "scenic"
        raise ValueError(f"{path} is a folder but not a saved ViViT (config.json with model_args), a transformers "
                         "ViViT folder, or a folder of reference checkpoint_<step> files")
    with path.open("rb") as f:
        head = f.read(16)
    size = path.stat().st_size
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < size:
        return "safetensors"
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile:
            raise ValueError(f"{path} starts like a zip archive (torch or .npz) but is corrupt or truncated") from None
        return "npz" if names and all(n.endswith(".npy") for n in names) else "torch"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "torch"  # legacy (non-zip) torch.save pickle
    if head[:1] and head[0] in _MSGPACK_MAP_STARTS:
        return "scenic"
    raise ValueError(
        f"{path} is not a weights file vivit reads (size {size} bytes, starts {head[:8]!r}); expected safetensors, a "
        "torch state dict (.pt/.pth/.bin), a reference flax checkpoint (checkpoint_<step>) or an .npz of flax params"
    )


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, expected an object")
    return data


# -------------------------------------------------------------------------------------------------- reading
def read_torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A torch state dict file (``weights_only=True``; training checkpoints' ``state_dict``/``model`` unwrapped)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)  # never executes pickled code
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path} is not a plain torch state dict: the safe loader refused it ({str(err)[:200]}). "
                         "Only tensors and containers are accepted; re-save with torch.save(model.state_dict())"
                         ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a readable torch file ({str(err)[:200]}); it may be truncated") from None
    for key in ("state_dict", "model", "model_state_dict", "module"):  # training checkpoints wrap the weights
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors (found {type(obj).__name__})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file; ``ValueError`` naming it when corrupt or truncated."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a valid safetensors file ({err}); it may be corrupt or truncated") from None


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """An ``.npz`` of flax params: ``'/'``-joined paths -> arrays (only the ``params/`` entries when there are any)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files if k.startswith("params/")} or dict(data)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A flat state dict file: safetensors or a torch pickle (read safely)."""
    return read_safetensors(path) if detect_format(path) == "safetensors" else read_torch_state_dict(path)


# ------------------------------------------------------------------------------------------------- folders
def folder_weights_file(folder: Path) -> Path:
    """``model.safetensors``, else the older ``pytorch_model.bin``, of a model folder."""
    found = next((folder / n for n in (WEIGHTS_NAME, LEGACY_WEIGHTS_NAME) if (folder / n).is_file()), None)
    if found is None:
        raise FileNotFoundError(f"{folder} has a config.json but no weights ({WEIGHTS_NAME} or {LEGACY_WEIGHTS_NAME})")
    return found


def load_saved(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a folder written by ``ViViT.save_pretrained``: ``(config dict, state dict)``.

    Falls back to ``pytorch_model.bin`` (loaded with ``weights_only=True``) when there is no ``model.safetensors``.

    Raises:
        FileNotFoundError: The folder, its ``config.json`` or its weights file is missing.
        ValueError: A file is corrupt or truncated, or the config was not written by vivit; the message names it.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"saved-model folder {directory} does not exist (expected {CONFIG_NAME} and "
                                f"{WEIGHTS_NAME} inside)")
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: {directory} is not a folder written by "
                                "vivit.save_pretrained")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is not valid JSON ({err}); re-save or re-download it") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_args"), dict):
        hint = (" It looks like a transformers ViViT config: use vivit.convert.from_transformers."
                if isinstance(config, dict) and config.get("model_type") == "vivit" else "")
        found = sorted(config) if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{config_path} has no 'model_args' object (found {found}): not written by "
                         f"vivit.save_pretrained.{hint}")
    return config, _load_weights(directory)


def _load_weights(directory: Path) -> dict[str, torch.Tensor]:
    path = directory / WEIGHTS_NAME
    if path.is_file():
        return read_safetensors(path)
    legacy = directory / LEGACY_WEIGHTS_NAME
    if legacy.is_file():
        return read_torch_state_dict(legacy)
    raise FileNotFoundError(f"{path} is missing: {directory} has no weights ({WEIGHTS_NAME} or {LEGACY_WEIGHTS_NAME})")
