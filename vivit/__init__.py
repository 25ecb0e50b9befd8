"""vivit: ViViT (Video Vision Transformer) models for PyTorch, faithful to the reference implementation."""

from importlib.metadata import PackageNotFoundError, version

from . import convert
from .model import ViViT
from .registry import create_model, list_models

try:
    __version__ = version("vivit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["ViViT", "create_model", "list_models", "convert", "__version__"]
