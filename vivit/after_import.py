"""Run an action right after Python finishes importing a module, or at once when it is already loaded.

How vivit joins libraries it must not import itself (each costs seconds): its architectures join timm's registry
when ``timm`` loads, and its config and model classes join transformers' Auto classes when their modules load. One
finder on ``sys.meta_path`` watches the pending names and nothing else; it finds nothing itself, it wraps the loader
the other finders return, puts that loader back on the module (so the module looks untouched), and leaves
``sys.meta_path`` once nothing is pending. A failed action is a warning, never a failed import of the user's library.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
from collections.abc import Callable
from types import ModuleType

_logger = logging.getLogger(__name__)
_pending: dict[str, list[tuple[Callable[[], None], str]]] = {}


def when_imported(name: str, action: Callable[[], None], what: str) -> None:
    """Call ``action`` once module ``name`` is loaded (now if it is); ``what`` names it in the warning if it fails."""
    if name in sys.modules:
        _call(action, what)
        return
    _pending.setdefault(name, []).append((action, what))
    if not any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())


def _call(action: Callable[[], None], what: str) -> None:
    try:
        action()
    except Exception as err:  # noqa: BLE001 - a failed registration must never break the user's import
        _logger.warning("vivit could not %s (%s: %s)", what, type(err).__name__, err)


def _run(name: str) -> None:
    for action, what in _pending.pop(name, []):
        _call(action, what)
    if not _pending:
        sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _AfterImport)]


class _ThenRun(importlib.abc.Loader):
    """The module's own loader, then the actions waiting for it (a failing import raises first: nothing runs)."""

    def __init__(self, loader: importlib.abc.Loader, name: str) -> None:
        self.loader, self.name = loader, name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        module.__loader__ = self.loader
        self.loader.exec_module(module)
        _run(self.name)

    def __getattr__(self, attr: str) -> object:  # get_source, get_resource_reader, is_package ...: its loader answers
        return getattr(self.loader, attr)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a pending module, wraps the spec the other finders return."""

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
                    spec.loader = _ThenRun(spec.loader, fullname)
                return spec
        return None
