"""vivit: ViViT (Video Vision Transformer) models for PyTorch, faithful to the reference implementation."""

from importlib.metadata import PackageNotFoundError, version

from . import convert, transforms, video
from .inflate import inflate
from .model import ViViT
from .pretrained import load_pretrained
from .registry import create_model, list_models, register_timm_models

try:
    __version__ = version("vivit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

register_timm_models()  # after `import vivit`, timm.create_model("vivit_b_16x2_fe") works

__all__ = ["ViViT", "create_model", "list_models", "load_pretrained", "inflate", "convert", "video", "transforms",
           "__version__"]
