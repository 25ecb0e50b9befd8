"""transformers bridge: registers vivit folders' config and model classes with transformers' Auto classes.

After ``import vivit``, ``AutoModelForVideoClassification.from_pretrained(folder)`` and ``pipeline(
"video-classification", model=folder)`` load a ``save_pretrained`` folder without ``trust_remote_code``. ``import
vivit`` must not import transformers (seconds of import time), so registration waits for transformers: it happens
at once when transformers' Auto modules are already loaded, else right after Python finishes loading them (an
import hook on ``sys.meta_path`` that watches those two module names and nothing else).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
from collections.abc import Callable
from types import ModuleType

_logger = logging.getLogger(__name__)
_CONFIG_MODULE = "transformers.models.auto.configuration_auto"
_MODEL_MODULE = "transformers.models.auto.modeling_auto"


def _register_config() -> None:
    from transformers import AutoConfig

    from vivit.weights.transformers_auto.configuration_vivit_zoo import VivitZooConfig

    AutoConfig.register(VivitZooConfig.model_type, VivitZooConfig, exist_ok=True)


def _register_model() -> None:
    from transformers import AutoModelForVideoClassification

    from vivit.weights.transformers_auto.configuration_vivit_zoo import VivitZooConfig
    from vivit.weights.transformers_auto.modeling_vivit_zoo import VivitZooForVideoClassification

    AutoModelForVideoClassification.register(VivitZooConfig, VivitZooForVideoClassification, exist_ok=True)


_ACTIONS: dict[str, Callable[[], None]] = {_CONFIG_MODULE: _register_config, _MODEL_MODULE: _register_model}
_pending: dict[str, Callable[[], None]] = {}


def _run(name: str) -> None:
    action = _pending.pop(name, None)
    if action is None:
        return
    try:
        action()
    except Exception as err:  # noqa: BLE001 - a failed registration must never break the user's transformers import
        _logger.warning("vivit could not register its models with transformers' Auto classes (%s: %s); load "
                        "vivit folders with trust_remote_code=True", type(err).__name__, err)


class _ThenRegister(importlib.abc.Loader):
    """Runs the real loader, then the registration waiting for that module."""

    def __init__(self, loader: importlib.abc.Loader, name: str) -> None:
        self.loader, self.name = loader, name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        _run(self.name)

    def __getattr__(self, attr: str) -> object:  # get_source, get_filename, ... for inspect and tracebacks
        return getattr(self.loader, attr)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a watched module, wraps the spec the other finders return."""

    def find_spec(self, fullname: str, path: object, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _ThenRegister(spec.loader, fullname)
                return spec
        return None


_FINDER = _AfterImport()


def register_transformers_auto() -> None:
    """Register vivit's Auto classes now for the transformers modules already loaded, on load for the others."""
    for name, action in _ACTIONS.items():
        _pending.setdefault(name, action)
    for name in list(_pending):
        if name in sys.modules:
            _run(name)
    if _pending and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
