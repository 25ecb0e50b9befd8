"""Exporting a Model 1 ViViT as Hugging Face transformers' own ``VivitForVideoClassification`` folder.

The folder loads with ``transformers.AutoModelForVideoClassification.from_pretrained(folder)`` without remote code:
``config.json`` (a ``VivitConfig``), ``model.safetensors`` under transformers' key names (the converter's key table,
inverted) and processor configs giving vivit's ``[-1, 1]`` input. What transformers' ViViT cannot compute (Models
2-4, frame sampling, pooling other than the CLS token, a ``pre_logits`` layer) is refused before anything is written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from vivit.files import first_line, umask_mode, write_atomic
from vivit.model.vivit import ViViT
from vivit.weights.convert.transformers import to_transformers
from vivit.weights.read import CONFIG_NAME, WEIGHTS_NAME, check_finite
from vivit.weights.transformers_files import processor_configs

_logger = logging.getLogger(__name__)


def export_transformers(model: ViViT, directory: str | Path, *, label_names: Sequence[str] | None = None) -> Path:
    """Write ``model`` (Model 1) as a transformers ``VivitForVideoClassification`` folder.

    Args:
        model: A ``spacetime`` ViViT with a classifier head and CLS-token pooling.
        directory: Folder to write (created if needed; files of the same names are replaced).
        label_names: Class names in logit order (``id2label``); default the model's ``pretrained_cfg`` labels.

    Returns:
        ``directory`` as a ``Path``.

    Raises:
        ValueError: One line saying what transformers' ViViT cannot express, or non-finite weights.
        OSError: The folder cannot be written.
    """
    from safetensors.torch import save_file

    if not isinstance(model, ViViT):
        raise ValueError(f"export_transformers takes a vivit.ViViT, got {type(model).__name__}")
    config, state = to_transformers(model, label_names)
    check_finite(state, "the model to be exported")
    directory = Path(directory)
    texts = {CONFIG_NAME: config, **processor_configs(model.pretrained_cfg, model.img_size, model.num_frames)}
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(directory / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}),
                     mode=umask_mode())
        for name, data in texts.items():
            write_atomic(directory / name, lambda p, d=data: p.write_text(json.dumps(d, indent=2) + "\n"),
                         mode=umask_mode())
    except OSError as err:
        raise OSError(f"cannot export the model to {directory}: {first_line(err)}; choose a folder you can write "
                      "to") from None
    _logger.info("exported a transformers VivitForVideoClassification to %s", directory)
    return directory
