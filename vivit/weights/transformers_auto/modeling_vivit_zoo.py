"""transformers model of a vivit folder: ``AutoModelForVideoClassification`` over a ``vivit.ViViT`` (any variant).

Shipped in every vivit ``save_pretrained`` folder (``auto_map``), and registered by ``import vivit``. The wrapper
holds the ViViT's modules as its own, so its state-dict keys are vivit's and ``model.safetensors`` loads unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

from vivit.model import ViViT

from .configuration_vivit_zoo import VivitZooConfig


class VivitZooForVideoClassification(PreTrainedModel):
    """A ``vivit.ViViT`` with transformers' interface: ``pixel_values`` ``B x T x C x H x W`` -> ``.logits``."""

    config_class = VivitZooConfig
    base_model_prefix = ""
    main_input_name = "pixel_values"

    def __init__(self, config: VivitZooConfig) -> None:
        super().__init__(config)
        model = ViViT(**config.model_args)
        for name, child in model.named_children():  # the same modules, so the keys are vivit's own
            self.add_module(name, child)
        self.__dict__["vivit_model"] = model  # kept outside nn.Module's registry: its children are ours already
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """ViViT initialises itself (the reference's initialisers); transformers' generic init would replace it."""

    @torch.no_grad()
    def _set_buffers(self) -> None:
        """Recompute the non-persistent frame-sampling indices: transformers builds the model on the meta device
        and loads only the file's tensors, so buffers absent from the file would hold garbage."""
        embed = self.vivit_model.patch_embed
        if hasattr(embed, "frame_index_list"):
            embed.frame_indices = torch.tensor(embed.frame_index_list, device=embed.proj.weight.device)
        self.__dict__["buffers_set"] = True

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any
                ) -> ImageClassifierOutput:
        """``pixel_values`` ``B x T x C x H x W`` (transformers' video layout) -> ``logits`` ``B x num_classes``."""
        if not self.__dict__.get("buffers_set"):
            self._set_buffers()
        logits = self.vivit_model(pixel_values.permute(0, 2, 1, 3, 4))  # -> vivit's B x C x T x H x W
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits, labels)
        return ImageClassifierOutput(loss=loss, logits=logits)
