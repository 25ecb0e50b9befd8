"""vivit: ViViT (Video Vision Transformer) models for PyTorch, faithful to the reference implementation.

The package is laid out by role: ``model/`` (the network), ``weights/`` (name -> build -> fetch -> read ->
convert | inflate -> load), ``data/`` (video -> frames -> transforms -> datasets) and ``tasks/`` (what users run,
built on both paths). ``zoo`` holds the architectures and released checkpoints as data.

Importing vivit costs little more than importing torch: timm (with torchvision, ~3 s) is not imported here. The
architectures join timm's registry when timm itself is imported (at once if it already is), so
``import vivit; import timm; timm.create_model("vivit_b_16x2_fe")`` works, and a broken torchvision cannot break
``import vivit``. The ``vivit`` command imports no torch at all until a command runs (``--help`` answers at once).
"""

import importlib.abc as _abc
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
                     optimize=optimize)


def _register_in_timm() -> None:
    from vivit.weights.timm_bridge import register_timm_models

    register_timm_models()


class _WhenTimmIsImported(_abc.MetaPathFinder):
    """Registers vivit's architectures into timm's registry right after the ``timm`` package has been executed.

    It finds nothing itself: for ``timm`` it asks the finders after it and wraps the loader they return, so timm loads
    exactly as it would without vivit. It leaves ``sys.meta_path`` once timm has loaded.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm":
            return None
        others = [finder for finder in _sys.meta_path if finder is not self]
        for finder in others:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _ThenRegister(spec.loader)
                return spec
            if spec is not None:
                return spec
        return None


class _ThenRegister(_abc.Loader):
    """timm's own loader, then the registration (and timm's loader put back, so the module looks untouched)."""

    def __init__(self, loader: _abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__spec__.loader = module.__loader__ = self.loader
        self.loader.exec_module(module)  # a failing timm import raises here, and nothing is registered
        _stop_waiting_for_timm()
        _register_in_timm()

    def __getattr__(self, name: str):  # get_resource_reader, is_package, ...: timm's loader answers
        return getattr(self.loader, name)


def _stop_waiting_for_timm() -> None:
    _sys.meta_path[:] = [finder for finder in _sys.meta_path if not isinstance(finder, _WhenTimmIsImported)]


def _register_when_timm_is_imported() -> None:
    if "timm" in _sys.modules:
        _register_in_timm()
    elif not any(isinstance(finder, _WhenTimmIsImported) for finder in _sys.meta_path):
        _sys.meta_path.insert(0, _WhenTimmIsImported())


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
_register_when_timm_is_imported()  # after `import vivit`, timm.create_model("vivit_b_16x2_fe") works

__all__ = ["ViViT", "create_model", "list_models", "load_pretrained", "inflate", "convert", "video", "transforms",
           "evaluate", "optimize", "timeline", "__version__"]
