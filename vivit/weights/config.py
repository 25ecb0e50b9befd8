"""A model's configuration: a saved ``config.json`` checked before anything is built from it, and :func:`construct`,
the one place the weights path calls ``ViViT(...)`` and assembles the model's ``pretrained_cfg``.

A folder or Hub repo is data from anywhere: its ``model_args`` become a ``ViViT(**args)`` call and its
``label_names`` reach printed output and model cards. Every field is checked for its type and a sane bound first, so
a hostile file (``depth = 10**6``, ``num_classes = 10**9``, an unknown key, a label with a newline) is one error
naming the file and the field instead of an allocation that grows for seconds or a raw ``TypeError``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

from vivit.model.grid import checked_sides, grid_of_args, is_int
from vivit.model.vivit import ViViT

# Upper bounds far above every real ViViT (ViViT-H: width 1280, 32 blocks, 5120 MLP; Kinetics-700: 700 classes).
SIZE_LIMITS = {
    "embed_dim": 16384, "depth": 256, "num_heads": 1024, "mlp_dim": 65536, "temporal_depth": 256,
    "temporal_num_heads": 1024, "temporal_mlp_dim": 65536, "num_classes": 100_000, "representation_size": 65536,
    "in_chans": 64, "n_sampled_frames": 4096,
}
SIDES = {"num_frames": 1, "img_size": 2, "tubelet_size": 3}  # checked by the model's one size check (grid.MAX_SIDE)
MAX_PARAMETERS = 2**31  # ~8 GiB of float32: ViViT-H has ~0.65e9
MAX_LABEL_CHARS = 200
_DEFAULTS = {name: p.default for name, p in inspect.signature(ViViT.__init__).parameters.items() if name != "self"}
VIVIT_ARGS = frozenset(_DEFAULTS)  # the keywords ViViT takes


def with_defaults(args: Mapping[str, Any]) -> dict[str, Any]:
    """``args`` completed with ``ViViT``'s defaults: every argument the model built from them would have."""
    return {**_DEFAULTS, **args}


def pretrained_cfg(model: ViViT, base: Mapping[str, Any], label_names: list[str] | None = None,
                   overlay: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The one assembly of ``model.pretrained_cfg``.

    ``base`` (a release's fields, a saved folder's cfg, where the weights came from), then the model's input fields
    (``ViViT.input_cfg``), ``num_classes`` (a release's own count when ``base`` states one, else the model's head),
    ``label_names`` when they name every class of the head, and last timm's ``pretrained_cfg_overlay``.
    """
    cfg = {**base, **model.input_cfg()}
    cfg.setdefault("num_classes", model.num_classes)
    if label_names and len(label_names) == model.num_classes:
        cfg["label_names"] = list(label_names)
    return {**cfg, **(overlay or {})}


def construct(args: Mapping[str, Any], base: Mapping[str, Any] | None = None, label_names: list[str] | None = None,
              overlay: Mapping[str, Any] | None = None) -> ViViT:
    """``ViViT(**args)`` with its ``pretrained_cfg`` (see :func:`pretrained_cfg`): the one constructor of the weights
    path (builder and converters alike)."""
    model = ViViT(**args)
    model.pretrained_cfg = pretrained_cfg(model, base or {}, label_names, overlay)
    return model


def _check_sizes(args: Mapping[str, Any], where: str) -> None:
    for name, limit in SIZE_LIMITS.items():
        value = args.get(name)
        if value is None and name not in ("embed_dim", "depth", "num_heads", "mlp_dim", "in_chans"):
            continue
        if not is_int(value) or not 0 <= value <= limit:
            raise ValueError(f"{where}: model_args.{name} is {value!r}; expected an int in [0, {limit}]")
    for name, length in SIDES.items():
        try:
            checked_sides(name, args.get(name), length)
        except (TypeError, ValueError) as err:  # a file's content: always a ValueError naming the file
            raise ValueError(f"{where}: model_args.{err}") from None


def estimate_parameters(args: Mapping[str, Any]) -> int:
    """An upper bound on the parameter count of ``ViViT(**args)``, from arithmetic alone (nothing is built)."""
    d = args["embed_dim"]
    mlp = max(args["mlp_dim"], args.get("temporal_mlp_dim") or 0)
    blocks = args["depth"] + (args.get("temporal_depth") or 0)
    per_block = 8 * d * d + 2 * d * mlp + 16 * d  # Model 3 blocks hold two attentions: the larger case
    try:
        grid = grid_of_args(args)
    except (TypeError, ValueError):  # e.g. frame sampling without n_sampled_frames: ViViT's own check says so
        grid = (1, 1, 1)
    tokens = math.prod(max(1, n) for n in grid) + 2
    patch = args["in_chans"] * math.prod(args["tubelet_size"]) * d
    head = (args.get("representation_size") or d) * (args["num_classes"] + d)
    return blocks * per_block + tokens * d + patch + head


def checked_model_args(config: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``config["model_args"]`` after checking names, types and sizes (see the module docstring).

    Args:
        config: A ``save_pretrained`` config dict.
        where: The file, for messages (``"/path/config.json"``, ``"hf-hub:org/repo config.json"``).

    Raises:
        ValueError: One line naming ``where`` and the field.
    """
    args = config.get("model_args")
    if not isinstance(args, dict):
        raise ValueError(f"{where}: model_args is {type(args).__name__}, expected an object of ViViT arguments")
    unknown = sorted(str(k) for k in args if k not in _DEFAULTS)
    if unknown:
        raise ValueError(f"{where}: model_args has unknown key(s) {unknown[:5]}; ViViT takes {sorted(_DEFAULTS)}")
    full = {**_DEFAULTS, **args}
    _check_sizes(full, where)
    params = estimate_parameters(full)
    if params > MAX_PARAMETERS:
        raise ValueError(f"{where}: model_args describe a model of about {params:.3g} parameters (limit "
                         f"{MAX_PARAMETERS:.3g}); refused before anything is built")
    check_label_names(config.get("label_names"), config.get("num_classes", full["num_classes"]), where)
    return dict(args)


def check_label_names(labels: Any, num_classes: Any, where: str) -> list[str] | None:
    """``label_names`` of a config: ``None``, or one single-line string per class.

    Raises:
        ValueError: Not a list of strings, a name with a line break or over ``MAX_LABEL_CHARS``, or a count that is
            not the config's ``num_classes``; the message names ``where``.
    """
    if labels is None:
        return None
    if not isinstance(labels, list) or not all(isinstance(name, str) for name in labels):
        raise ValueError(f"{where}: label_names must be a list of strings, got {str(labels)[:80]}")
    bad = next((i for i, name in enumerate(labels) if len(name) > MAX_LABEL_CHARS or
                any(c in name for c in "\r\n\x00")), None)
    if bad is not None:
        raise ValueError(f"{where}: label_names[{bad}] = {labels[bad][:80]!r} is not a one-line name of at most "
                         f"{MAX_LABEL_CHARS} characters")
    if len(labels) != num_classes:
        raise ValueError(f"{where}: label_names has {len(labels)} names but num_classes is {num_classes!r}")
    return labels
