"""vivit: ViViT (Video Vision Transformer) models for PyTorch, faithful to the reference implementation."""

from . import convert, evaluate, transforms, video
from ._version import __version__
from .factory import create_model
from .inflate import inflate
from .load import load_pretrained
from .model import ViViT
from .timm_bridge import register_timm_models as _register_timm_models
from .zoo import list_models

_register_timm_models()  # after `import vivit`, timm.create_model("vivit_b_16x2_fe") works

__all__ = ["ViViT", "create_model", "list_models", "load_pretrained", "inflate", "convert", "video", "transforms",
           "evaluate", "__version__"]
