"""vivit: ViViT (Video Vision Transformer) models for PyTorch, faithful to the reference implementation.

The package is laid out by role: ``model/`` (the network), ``weights/`` (name -> build -> fetch -> read ->
convert | inflate -> load), ``data/`` (video -> frames -> transforms -> datasets) and ``tasks/`` (what users run,
built on both paths). ``zoo`` holds the architectures and released checkpoints as data.
"""

import os as _os
import sys as _sys
from typing import TYPE_CHECKING as _TYPE_CHECKING

from vivit._version import __version__

if _TYPE_CHECKING:  # what _load() binds, spelled out for type checkers and the API docs (griffe reads imports)
    from vivit.data import transforms, video
    from vivit.model import ViViT
    from vivit.tasks import predict as evaluate
    from vivit.tasks.optimize import optimize
    from vivit.tasks.timeline import timeline
    from vivit.weights import convert
    from vivit.weights.build import create_model
    from vivit.weights.export import export_transformers
    from vivit.weights.inflate import inflate
    from vivit.weights.load import load_pretrained
    from vivit.zoo import list_models


def _load() -> None:
    """Import the public names, register the public namespaces and the timm architectures."""
    from vivit.data import transforms, video
    from vivit.model import ViViT
    from vivit.tasks import predict as evaluate
    from vivit.tasks.optimize import optimize
    from vivit.tasks.timeline import timeline
    from vivit.weights import convert
    from vivit.weights.build import create_model
    from vivit.weights.export import export_transformers
    from vivit.weights.inflate import inflate
    from vivit.weights.load import load_pretrained
    from vivit.weights.timm_bridge import register_timm_models
    from vivit.weights.transformers_bridge import register_transformers_auto
    from vivit.zoo import list_models

    # The public namespaces one dot deep (SPEC: vivit.convert.from_scenic; README: vivit.video.read_video, ...) live
    # in their role's folder; registering them lets `import vivit.convert` and `from vivit.video import ...` work.
    namespaces = {"convert": convert, "video": video, "transforms": transforms, "evaluate": evaluate}
    for name, module in namespaces.items():
        _sys.modules[f"{__name__}.{name}"] = module
    globals().update(namespaces, ViViT=ViViT, create_model=create_model, inflate=inflate,
                     load_pretrained=load_pretrained, list_models=list_models, timeline=timeline,
                     optimize=optimize, export_transformers=export_transformers)
    register_timm_models()  # after `import vivit`, timm.create_model("vivit_b_16x2_fe") works
    register_transformers_auto()  # ... and transformers' Auto classes load vivit folders (once transformers loads)


def _light_command() -> bool:
    """Whether this process is the ``vivit`` command running ``--version`` or ``list``, which need neither torch nor
    timm (importing them takes seconds): the names above are then loaded on first use instead (``__getattr__``)."""
    argv = _sys.argv or [""]
    # "-m": `python -m vivit ...` imports this package while it locates vivit.__main__ (sys.argv[0] is "-m" only then)
    if argv[0] != "-m" and _os.path.basename(argv[0]).removesuffix(".exe") != "vivit":
        return False
    first = next((a for a in argv[1:] if a not in ("-v", "--verbose")), "")
    return first in ("--version", "list")


if _light_command():
    def __getattr__(name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        _load()
        if name not in globals():
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return globals()[name]
else:
    _load()

__all__ = ["ViViT", "create_model", "list_models", "load_pretrained", "inflate", "convert", "video", "transforms",
           "evaluate", "optimize", "timeline", "export_transformers", "__version__"]
