"""What a folder needs for Hugging Face transformers: processor configs that give vivit's input, and the Auto
classes' config keys and code files (``vivit.weights.transformers_auto``). Imports no transformers.

The processors reproduce the model's evaluation preprocessing: resize the short side to ``floor(crop / crop_pct)``,
centre-crop, scale. The reference's ``x * 2 / 255 - 1`` is written as ViViT's offset rescale (``x / 127.5 - 1``) with
normalisation off: the transformers ViViT processors subtract the offset themselves, and adding mean = std = 0.5 on
top (as the Hub's ``google/vivit-b-16x2-kinetics400`` processor does) would normalise twice, to ``[-3, 1]``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from importlib import resources
from typing import Any

from vivit.zoo import PretrainedCfg

_logger = logging.getLogger(__name__)
MODEL_TYPE = "vivit_zoo"  # configuration_vivit_zoo.VivitZooConfig.model_type
CODE_FILES = ("configuration_vivit_zoo.py", "modeling_vivit_zoo.py")
AUTO_MAP = {
    "AutoConfig": "configuration_vivit_zoo.VivitZooConfig",
    "AutoModelForVideoClassification": "modeling_vivit_zoo.VivitZooForVideoClassification",
}
IMAGE_PROCESSOR_NAME = "preprocessor_config.json"
VIDEO_PROCESSOR_NAME = "video_preprocessor_config.json"
_RESAMPLE = {"bilinear": 2, "bicubic": 3, "nearest": 0}  # PIL's numbers, which transformers' processors take
_DEFAULTS = PretrainedCfg("vivit")


def auto_config_fields() -> dict[str, Any]:
    """The ``config.json`` keys that point transformers' Auto classes at the folder's code files."""
    return {"model_type": MODEL_TYPE, "auto_map": dict(AUTO_MAP)}


def code_files() -> dict[str, str]:
    """File name -> source of the Auto classes' code, as shipped in the package."""
    folder = resources.files("vivit.weights.transformers_auto")
    return {name: folder.joinpath(name).read_text(encoding="utf-8") for name in CODE_FILES}


def folder_files(pretrained_cfg: Mapping[str, Any]) -> dict[str, str]:
    """File name -> text of the files a ``save_pretrained`` folder adds for transformers: the Auto classes' code and,
    where transformers' processors can express the cfg's preprocessing, the processor configs."""
    files = code_files()
    _, t, h, w = pretrained_cfg["input_size"]
    try:
        processors = processor_configs(pretrained_cfg, (h, w), t)
    except ValueError as err:  # the model still loads; pipeline users then pass their own processor
        _logger.info("no transformers processor config: %s", err)
        processors = {}
    files.update((name, json.dumps(config, indent=2) + "\n") for name, config in processors.items())
    return files


def processor_configs(pretrained_cfg: Mapping[str, Any], img_size: tuple[int, int],
                      num_frames: int) -> dict[str, dict[str, Any]]:
    """``preprocessor_config.json`` (``VivitImageProcessor``) and ``video_preprocessor_config.json``
    (``VivitVideoProcessor``) giving the model's evaluation input, by file name."""
    def get(key: str) -> Any:
        value = pretrained_cfg.get(key)
        return getattr(_DEFAULTS, key) if value is None else value

    mean, std = [float(v) for v in get("mean")], [float(v) for v in get("std")]
    h, w = img_size
    if get("crop_mode") != "center":
        raise ValueError(f"crop_mode {get('crop_mode')!r}: transformers' processors take centre crops only")
    if get("interpolation") not in _RESAMPLE:
        raise ValueError(f"interpolation {get('interpolation')!r} has no transformers equivalent")
    # (x/255 - mean) / std, written as the ViViT processors' (x * factor - 1 - mean') / std.
    if all(m == 0.5 for m in mean) and all(s == 0.5 for s in std):
        scale = {"rescale_factor": 1 / 127.5, "do_normalize": False}
    else:
        scale = {"rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [m - 1 for m in mean],
                 "image_std": std}
    common = {
        "do_resize": True, "size": {"shortest_edge": math.floor(min(h, w) / float(get("crop_pct")) + 1e-6)},
        "resample": _RESAMPLE[get("interpolation")], "do_center_crop": True, "crop_size": {"height": h, "width": w},
        "do_rescale": True, **scale, "do_convert_rgb": True,
    }
    return {
        IMAGE_PROCESSOR_NAME: {"image_processor_type": "VivitImageProcessor", "offset": True, **common},
        VIDEO_PROCESSOR_NAME: {"video_processor_type": "VivitVideoProcessor", "do_sample_frames": True,
                               "num_frames": num_frames, **common},
    }
