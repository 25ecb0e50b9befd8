"""vivit: ViViT (Video Vision Transformer) models for PyTorch, faithful to the reference implementation.

The package is laid out by role: ``model/`` (the network), ``weights/`` (name -> build -> fetch -> read ->
convert | inflate -> load), ``data/`` (video -> frames -> transforms -> datasets) and ``tasks/`` (what users run,
built on both paths). ``zoo`` holds the architectures and released checkpoints as data.

Importing vivit costs little more than importing torch: timm (with torchvision, ~3 s) is not imported here. The
architectures join timm's registry when timm itself is imported (at once if it already is), so
``import vivit; import timm; timm.create_model("vivit_b_16x2_fe")`` works, and a broken torchvision cannot break
``import vivit``. The ``vivit`` command imports no torch at all until a command runs (``--help`` answers at once).
"""

import os as _os
import sys as _sys
from typing import TYPE_CHECKING as _TYPE_CHECKING

from vivit._version import __version__
from vivit.after_import import when_imported as _when_imported
from vivit.weights.transformers_bridge import register_transformers_auto as _register_transformers_auto

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
    """Import the public names and register the public namespaces."""
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

    # The public namespaces one dot deep (SPEC: vivit.convert.from_scenic; README: vivit.video.read_video, ...) live
    # in their role's folder; registering them lets `import vivit.convert` and `from vivit.video import ...` work.
    namespaces = {"convert": convert, "video": video, "transforms": transforms, "evaluate": evaluate}
    for name, module in namespaces.items():
        _sys.modules[f"{__name__}.{name}"] = module
    globals().update(namespaces, ViViT=ViViT, create_model=create_model, inflate=inflate,
                     load_pretrained=load_pretrained, list_models=list_models, timeline=timeline,
                     optimize=optimize, export_transformers=export_transformers)


def _register_in_timm() -> None:
    from vivit.weights.timm_bridge import register_timm_models

    register_timm_models()


def _vivit_command() -> bool:
    """Whether this process is the ``vivit`` command, whose parser needs neither torch nor timm (importing them takes
    seconds): the names above are then loaded on first use instead (``__getattr__``), once a command runs."""
    argv = _sys.argv or [""]
    # "-m": `python -m vivit ...` imports this package while it locates vivit.__main__ (sys.argv[0] is "-m" only then)
    return argv[0] == "-m" or _os.path.basename(argv[0]).removesuffix(".exe") == "vivit"


if _vivit_command():
    def __getattr__(name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        _load()
        if name not in globals():
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return globals()[name]
else:
    _load()
# after `import vivit`, timm.create_model("vivit_b_16x2_fe") works, and transformers' Auto classes load vivit folders
_when_imported("timm", _register_in_timm, "register its architectures in timm")
_register_transformers_auto()

__all__ = ["ViViT", "create_model", "list_models", "load_pretrained", "inflate", "convert", "video", "transforms",
           "evaluate", "optimize", "timeline", "export_transformers", "__version__"]
