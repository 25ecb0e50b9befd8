"""vivit: ViViT (Video Vision Transformer) models for PyTorch, faithful to the reference implementation.

The package is laid out by role: ``model/`` (the network), ``weights/`` (name -> build -> fetch -> read ->
convert | inflate -> load), ``data/`` (video -> frames -> transforms -> datasets) and ``tasks/`` (what users run,
built on both paths). ``zoo`` holds the architectures and released checkpoints as data.
"""

import sys as _sys

from vivit._version import __version__
from vivit.data import transforms, video
from vivit.model import ViViT
from vivit.tasks import predict as evaluate
from vivit.tasks.optimize import optimize
from vivit.weights import convert
from vivit.weights.build import create_model
from vivit.weights.inflate import inflate
from vivit.weights.load import load_pretrained
from vivit.weights.timm_bridge import register_timm_models as _register_timm_models
from vivit.zoo import list_models

# The public namespaces one dot deep (SPEC: vivit.convert.from_scenic; README: vivit.video.read_video, ...) live in
# their role's folder; registering them lets `import vivit.convert` and `from vivit.video import ...` keep working.
for _name, _module in {"convert": convert, "video": video, "transforms": transforms, "evaluate": evaluate}.items():
    _sys.modules[f"{__name__}.{_name}"] = _module

_register_timm_models()  # after `import vivit`, timm.create_model("vivit_b_16x2_fe") works

__all__ = ["ViViT", "create_model", "list_models", "load_pretrained", "inflate", "convert", "video", "transforms",
           "evaluate", "optimize", "__version__"]
