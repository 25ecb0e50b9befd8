"""transformers config of a vivit folder: timm's ``config.json`` schema read as a ``PretrainedConfig``.

Shipped in every vivit ``save_pretrained`` folder (``auto_map``), and registered by ``import vivit``. The timm keys
(``architecture``, ``model_args``, ``pretrained_cfg``, ``label_names``) stay as they are, so vivit, timm and
transformers read one ``config.json``.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class VivitZooConfig(PretrainedConfig):
    """A vivit ``config.json``: ``model_args`` (``vivit.ViViT`` kwargs) plus transformers' label maps.

    Args:
        model_args: ``vivit.ViViT`` keyword arguments.
        label_names: Class names in logit order (become ``id2label``).
        num_classes: Head size; default ``model_args["num_classes"]``.
        **kwargs: Other timm / transformers config keys, kept as attributes.
    """

    model_type = "vivit_zoo"

    def __init__(self, model_args: dict[str, Any] | None = None, label_names: list[str] | None = None,
                 num_classes: int | None = None, **kwargs: Any) -> None:
        model_args = dict(model_args or {})
        # vivit's record of the weights file it saved; a folder transformers re-saves has other bytes.
        kwargs.pop("weights_file", None)
        n = int(num_classes if num_classes is not None else model_args.get("num_classes", 0))
        if "id2label" not in kwargs and "num_labels" not in kwargs and n:
            names = label_names if label_names and len(label_names) == n else [f"LABEL_{i}" for i in range(n)]
            kwargs["id2label"] = dict(enumerate(names))
        super().__init__(**kwargs)
        self.model_args = model_args
        self.label_names = label_names
        self.num_classes = n
        # What transformers' video pipeline and processors read.
        self.num_frames = model_args.get("num_frames")
        self.image_size = model_args.get("img_size")
