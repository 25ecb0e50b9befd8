"""transformers bridge: registers vivit folders' config and model classes with transformers' Auto classes.

After ``import vivit``, ``AutoModelForVideoClassification.from_pretrained(folder)`` and ``pipeline(
"video-classification", model=folder)`` load a ``save_pretrained`` folder without ``trust_remote_code``. ``import
vivit`` must not import transformers (seconds of import time), so registration waits for transformers: it happens
at once when transformers' Auto modules are already loaded, else right after Python finishes loading them (an
import hook on ``sys.meta_path`` that watches those two module names and nothing else).
"""

from __future__ import annotations

from collections.abc import Callable

from vivit.after_import import when_imported

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


def register_transformers_auto() -> None:
    """Register vivit's Auto classes now for the transformers modules already loaded, on load for the others."""
    for name, action in _ACTIONS.items():
        when_imported(name, action, "register its models with transformers' Auto classes; load vivit folders with "
                                    "trust_remote_code=True")
