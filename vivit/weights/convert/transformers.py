"""Hugging Face transformers ViViT (``VivitForVideoClassification`` / ``VivitModel``) -> ViViT.

transformers' ViViT is Model 1 (``spacetime``, CLS-token pooling). The key table below maps every transformers
state-dict key to one of our keys; a single loop applies it and refuses leftovers on either side. Two key layouts
exist: transformers 4.x (``encoder.layer.{i}.attention.attention.query``, ``intermediate.dense``, ...) and 5.x
(``layers.{i}.attention.q_proj``, ``mlp.fc1``, ...). transformers itself is imported only by the caller: this
module reads modules, state dicts and configs through their plain attributes.

The same table, inverted (``to_transformers``), writes a Model 1 back in transformers' 4.x key names, which every
transformers release since 4.40 loads (5.x renames them on load).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vivit.model.vivit import ViViT
from vivit.weights.config import construct
from vivit.weights.keys import Entry, apply_key_table, same

HF_CLASSES = ("VivitForVideoClassification", "VivitModel")
# Per-layer names in each transformers layout; the layout is detected from the keys (detect_layout).
LAYOUTS: dict[str, dict[str, str]] = {
    "transformers-5": {
        "layer": "layers.{i}", "q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj",
        "out": "attention.o_proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2",
    },
    "transformers-4": {
        "layer": "encoder.layer.{i}", "q": "attention.attention.query", "k": "attention.attention.key",
        "v": "attention.attention.value", "out": "attention.output.dense", "fc1": "intermediate.dense",
        "fc2": "output.dense",
    },
}
# transformers ACT2FN name -> our act_layer. gelu_fast / gelu_new are tanh-GELU written out by hand (same function
# to float rounding); gelu / gelu_python are the exact erf GELU.
ACT_FROM_TRANSFORMERS = {
    "gelu": "gelu",
    "gelu_python": "gelu",
    "gelu_fast": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
}
REQUIRED_CONFIG_KEYS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act", "layer_norm_eps",
    "image_size", "num_frames", "tubelet_size", "num_channels", "qkv_bias",
)


def _cat(*xs: torch.Tensor) -> torch.Tensor:
    # q, k, v rows stacked in that order: our Attention splits qkv as "(qkv heads hd)".
    return torch.cat(xs, dim=0)


def _split3(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t.clone() for t in x.chunk(3, dim=0))  # clone: safetensors refuses views of one storage


# Each forward transform's inverse: our tensor -> the source tensors, in the row's source order.
_INVERSES: dict[Callable[..., Any], Callable[[torch.Tensor], tuple[torch.Tensor, ...]]] = {
    same: lambda x: (x,),
    _cat: _split3,
}


def _zeros(n: int) -> Callable[[], torch.Tensor]:
    def fill() -> torch.Tensor:
        return torch.zeros(n)

    return fill


def _linear(src: str, dst: str) -> Iterator[Entry]:
    yield (f"{src}.weight",), f"{dst}.weight", same
    yield (f"{src}.bias",), f"{dst}.bias", same


def _layer(names: Mapping[str, str], i: int, dim: int, qkv_bias: bool) -> Iterator[Entry]:
    src, dst = names["layer"].format(i=i), f"encoder.blocks.{i}"
    qkv = [f"{src}.{names[n]}" for n in ("q", "k", "v")]
    yield from _linear(f"{src}.layernorm_before", f"{dst}.norm1")
    yield tuple(f"{p}.weight" for p in qkv), f"{dst}.attn.qkv.weight", _cat
    if qkv_bias:
        yield tuple(f"{p}.bias" for p in qkv), f"{dst}.attn.qkv.bias", _cat
    else:  # config.qkv_bias=False: transformers has no q/k/v bias; ours is always there, so it is zero
        yield (), f"{dst}.attn.qkv.bias", _zeros(3 * dim)
    yield from _linear(f"{src}.{names['out']}", f"{dst}.attn.proj")
    yield from _linear(f"{src}.layernorm_after", f"{dst}.norm2")
    yield from _linear(f"{src}.{names['fc1']}", f"{dst}.mlp.fc1")
    yield from _linear(f"{src}.{names['fc2']}", f"{dst}.mlp.fc2")


def transformers_key_table(layout: str, args: Mapping[str, Any], qkv_bias: bool) -> list[Entry]:
    """The full key table for a transformers ViViT of ``layout`` built as ``args`` (our ViViT kwargs)."""
    names = LAYOUTS[layout]
    entries: list[Entry] = [
        *_linear("embeddings.patch_embeddings.projection", "patch_embed.proj"),
        (("embeddings.cls_token",), "encoder.cls_token", same),
        (("embeddings.position_embeddings",), "encoder.pos_embed", same),
    ]
    for i in range(args["depth"]):
        entries += _layer(names, i, args["embed_dim"], qkv_bias)
    entries += _linear("layernorm", "encoder.norm")
    if args["representation_size"]:
        entries += _linear("pooler.dense", "pre_logits.fc")  # VivitPooler: dense + tanh on the CLS token
    if args["num_classes"]:
        entries += _linear("classifier", "head")
    return entries


def detect_layout(keys: set[str]) -> str:
    """Name of the transformers key layout (a ``LAYOUTS`` key) that ``keys`` use."""
    found = [name for name, names in LAYOUTS.items() if f"{names['layer'].format(i=0)}.layernorm_before.weight" in keys]
    if len(found) != 1:
        expected = [f"{names['layer'].format(i=0)}.layernorm_before.weight" for names in LAYOUTS.values()]
        raise ValueError(
            f"not a transformers ViViT state dict: expected exactly one of {expected} (after an optional 'vivit.' "
            f"prefix), found {len(found)}; first keys: {sorted(keys)[:5]}"
        )
    return found[0]


def _strip_prefix(state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], Callable[[str], str]]:
    """Drop ``VivitForVideoClassification``'s ``vivit.`` prefix; return the tensors and a name -> name-as-given map.

    The map also names keys that are absent, in the spelling the caller's state dict would use, for error messages.
    """
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state_dict.items():
        name = key[len("vivit."):] if key.startswith("vivit.") else key
        if name in tensors:
            raise ValueError(f"state dict holds both {origin[name]!r} and {key!r}; pass one model's weights")
        tensors[name] = torch.as_tensor(value).detach().cpu()
        origin[name] = key
    prefix = "vivit." if any(key.startswith("vivit.") for key in state_dict) else ""

    def as_given(name: str) -> str:
        return origin.get(name) or (name if name.startswith("classifier.") else prefix + name)

    return tensors, as_given


def config_dict(config: Any) -> dict[str, Any]:
    """A transformers ``VivitConfig`` (or its dict) as a plain dict; ``ValueError`` when there is none."""
    if config is None:
        raise ValueError(
            "a state dict needs config=: a transformers VivitConfig or its dict (config.json); sizes, activation, "
            "eps and tubelet are read from it"
        )
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise ValueError(f"config must be a VivitConfig or a dict, got {type(config).__name__}")
    if config.get("model_type", "vivit") != "vivit":
        raise ValueError(f"config is for model_type {config['model_type']!r}, expected 'vivit'")
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"transformers ViViT config lacks {missing}; pass the full config (VivitConfig.to_dict())")
    return dict(config)


def _label_names(config: Mapping[str, Any], num_classes: int) -> list[str] | None:
    """Class names from ``id2label``; ``None`` when absent or transformers' placeholders ``LABEL_{i}``."""
    id2label = config.get("id2label")
    if not id2label:
        return None
    by_index = {int(k): str(v) for k, v in id2label.items()}  # JSON turns the integer keys into strings
    if sorted(by_index) != list(range(num_classes)):
        raise ValueError(
            f"config id2label has {len(by_index)} labels (indices {sorted(by_index)[:5]}...) but the classifier has "
            f"{num_classes} outputs; pass the config that belongs to these weights"
        )
    names = [by_index[i] for i in range(num_classes)]
    return None if names == [f"LABEL_{i}" for i in range(num_classes)] else names


def model_args_from_transformers(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """ViViT kwargs from a transformers config dict; head and pooler presence come from the (unprefixed) weights."""
    act = config["hidden_act"]
    if act not in ACT_FROM_TRANSFORMERS:
        raise ValueError(
            f"unsupported hidden_act {act!r}: ViViT supports {sorted(ACT_FROM_TRANSFORMERS)} (transformers names)"
        )
    dim, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    head_dim = config.get("head_dim")
    if head_dim is not None and int(head_dim) * heads != dim:
        raise ValueError(f"head_dim {head_dim} x {heads} heads != hidden_size {dim}: ViViT needs heads * hd == d")
    tubelet = tuple(int(v) for v in config["tubelet_size"])
    if len(tubelet) != 3:
        raise ValueError(f"tubelet_size must be [t, h, w], got {config['tubelet_size']}")
    image = config["image_size"]
    img_size = (int(image), int(image)) if isinstance(image, int) else tuple(int(v) for v in image)

    num_classes, representation_size = 0, None
    if "classifier.weight" in tensors:
        # transformers' classifier reads the CLS token directly: any pooler keys are left over and refused.
        # A stated label count that disagrees with the weights fails the table's shape check; a config.json saved
        # with transformers' use_diff may omit the labels, and then the classifier's rows say how many there are.
        stated = config.get("num_labels") or len(config.get("id2label") or {})
        num_classes = int(stated or tensors["classifier.weight"].shape[0])
    elif "pooler.dense.weight" in tensors:
        if config.get("pooler_act", "tanh") != "tanh":  # 4.x has no pooler_act: its pooler is always tanh
            raise ValueError(f"unsupported pooler_act {config['pooler_act']!r}: pre_logits is Linear + tanh")
        representation_size = int(config.get("pooler_output_size") or dim)  # 4.x: hidden_size -> hidden_size
    return dict(
        variant="spacetime", global_pool="token", img_size=img_size, num_frames=int(config["num_frames"]),
        in_chans=int(config["num_channels"]), tubelet_size=tubelet, embed_dim=dim,
        depth=int(config["num_hidden_layers"]), num_heads=heads, mlp_dim=int(config["intermediate_size"]),
        num_classes=num_classes, representation_size=representation_size, act_layer=ACT_FROM_TRANSFORMERS[act],
        norm_eps=float(config["layer_norm_eps"]),
        # Training-time only; eval outputs do not depend on them.
        drop_rate=float(config.get("hidden_dropout_prob", 0.0)),
        attn_drop_rate=float(config.get("attention_probs_dropout_prob", 0.0)),
    )


def convert_transformers_state_dict(
    tensors: Mapping[str, torch.Tensor],
    table: list[Entry],
    target_shapes: Mapping[str, Sequence[int]],
    as_given: Callable[[str], str] = str,
) -> dict[str, torch.Tensor]:
    """Apply the key table: every source key used, every target key filled with its shape, else ``ValueError``.

    Args:
        tensors: transformers state dict without the ``vivit.`` prefix.
        table: From ``transformers_key_table``.
        target_shapes: Our model's key -> shape (names and shapes to fill).
        as_given: Unprefixed name -> name as the caller spelled it, for error messages.
    """
    return apply_key_table(tensors, table, what="transformers ViViT weights", into="this ViViT",
                           target_shapes=target_shapes, spell=as_given,
                           hint="; does the config belong to these weights?")


@dataclass
class Converted:
    """transformers weights in our layout, with the ``ViViT`` kwargs they fit and their class names."""

    args: dict[str, Any]
    state: dict[str, torch.Tensor]
    label_names: list[str] | None


def convert_transformers(state_dict: Mapping[str, Any], config: Any) -> Converted:
    """A transformers ViViT state dict and its config -> our kwargs, state dict and labels; builds no model.

    The target shapes come from a ``ViViT`` on the meta device (no memory, no weights).
    """
    cfg = config_dict(config)
    tensors, as_given = _strip_prefix(state_dict)
    layout = detect_layout(set(tensors))
    args = model_args_from_transformers(cfg, tensors)
    labels = _label_names(cfg, args["num_classes"]) if args["num_classes"] else None
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the model built from these args says it once; this one is never seen
        shapes = {k: tuple(v.shape) for k, v in construct(args).state_dict().items()}
    table = transformers_key_table(layout, args, qkv_bias=bool(cfg["qkv_bias"]))
    return Converted(args, convert_transformers_state_dict(tensors, table, shapes, as_given), labels)


def from_transformers(model_or_state_dict: Any, config: Any = None, **model_kwargs: Any) -> ViViT:
    """Build a ViViT from a Hugging Face transformers ViViT.

    Args:
        model_or_state_dict: A ``VivitForVideoClassification`` or ``VivitModel`` module, or a state dict of either
            (transformers 4.x or 5.x key names, with or without the ``vivit.`` prefix).
        config: A ``VivitConfig`` or its dict; required with a state dict, defaults to the module's ``config``.
        **model_kwargs: Overrides of runtime options (``attn_impl``, ``drop_path_rate``, ...).

    Returns:
        A ``ViViT`` in eval mode. From a classifier: ``num_classes = num_labels`` and the same logits (our input is
        ``B x C x T x H x W``, transformers' ``B x T x C x H x W``), label names in ``pretrained_cfg["label_names"]``.
        From a ``VivitModel``: ``num_classes = 0``; its pooler becomes ``pre_logits``, so ``pre_logits`` features
        equal ``pooler_output`` (without a pooler, the normed CLS token).
    """
    if isinstance(model_or_state_dict, torch.nn.Module):
        names = {cls.__name__ for cls in type(model_or_state_dict).__mro__}
        if not names & set(HF_CLASSES):
            raise ValueError(f"expected a transformers {' or '.join(HF_CLASSES)}, got {type(model_or_state_dict)}")
        config = model_or_state_dict.config if config is None else config
        state_dict = model_or_state_dict.state_dict()
    elif isinstance(model_or_state_dict, Mapping):
        state_dict = model_or_state_dict
    else:
        raise ValueError(f"expected a transformers ViViT module or a state dict, got {type(model_or_state_dict)}")
    converted = convert_transformers(state_dict, config)
    model = construct({**converted.args, **model_kwargs}, label_names=converted.label_names)
    model.load_state_dict(converted.state, strict=True)
    return model.eval()


# What transformers' VivitConfig cannot express, as (test on our kwargs, reason); checked before anything is written.
_UNEXPRESSIBLE: tuple[tuple[Callable[[Mapping[str, Any]], bool], str], ...] = (
    (lambda a: a["variant"] != "spacetime",
     "transformers' VivitForVideoClassification is Model 1 (spacetime) only; load this variant through the "
     "Auto classes instead (a save_pretrained folder, trust_remote_code or `import vivit`)"),
    (lambda a: a.get("embedding", "tubelet") != "tubelet",
     "transformers' ViViT has only the tubelet embedding, not uniform frame sampling"),
    (lambda a: a.get("global_pool") not in (None, "token"),
     "transformers' classifier reads the CLS token; this model pools with global_pool={global_pool!r}"),
)
ACT_TO_TRANSFORMERS = {"gelu_tanh": "gelu_fast", "gelu": "gelu"}


def transformers_config(model: ViViT, label_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``VivitConfig`` dict (``config.json``) of a Model 1 ``ViViT``; ``ValueError`` naming what it cannot hold.

    The model must have the frame count its weights were trained for: transformers' ViViT has no positional-embedding
    resampling, so a clip of another length needs a model created with that ``num_frames`` first.
    """
    args = {**model.model_args, "global_pool": model.global_pool, "img_size": model.img_size,
            "tubelet_size": model.tubelet_size, "num_frames": model.num_frames}
    for refused, why in _UNEXPRESSIBLE:
        if refused(args):
            raise ValueError(f"cannot export to transformers: {why.format(**args)}")
    if args.get("act_layer", "gelu_tanh") not in ACT_TO_TRANSFORMERS:
        raise ValueError(f"cannot export to transformers: act_layer={args['act_layer']!r} has no transformers name")
    if model.num_classes == 0:
        raise ValueError("cannot export to transformers: the model has no classifier head (num_classes=0); "
                         "VivitForVideoClassification needs one (reset_classifier(n))")
    if args.get("representation_size"):
        raise ValueError("cannot export to transformers: VivitForVideoClassification's classifier reads the CLS "
                         "token directly, it has no pre_logits layer (representation_size)")
    names = list(label_names) if label_names is not None else model.pretrained_cfg.get("label_names")
    if not names or len(names) != model.num_classes:
        names = [f"LABEL_{i}" for i in range(model.num_classes)]
    id2label = {str(i): str(name) for i, name in enumerate(names)}
    h, w = args["img_size"]
    return {
        "model_type": "vivit", "architectures": ["VivitForVideoClassification"],
        # transformers < 5 reads one side only: square frames keep that form
        "image_size": h if h == w else [h, w], "num_frames": args["num_frames"],
        "tubelet_size": list(args["tubelet_size"]),
        "num_channels": args["in_chans"], "hidden_size": args["embed_dim"], "num_hidden_layers": args["depth"],
        "num_attention_heads": args["num_heads"], "intermediate_size": args["mlp_dim"],
        "hidden_act": ACT_TO_TRANSFORMERS[args.get("act_layer", "gelu_tanh")],
        "layer_norm_eps": float(args.get("norm_eps", 1e-6)), "qkv_bias": True,
        "hidden_dropout_prob": float(args.get("drop_rate", 0.0)),
        "attention_probs_dropout_prob": float(args.get("attn_drop_rate", 0.0)), "initializer_range": 0.02,
        "id2label": id2label, "label2id": {name: int(i) for i, name in id2label.items()},
        "torch_dtype": "float32",
    }


def to_transformers(model: ViViT, label_names: Sequence[str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Model 1 ``ViViT`` -> ``(VivitConfig dict, VivitForVideoClassification state dict)`` in 4.x key names.

    The inverse of :func:`convert_transformers`: the same key table read backwards, every key checked both ways.
    """
    config = transformers_config(model, label_names)
    args = {"depth": config["num_hidden_layers"], "embed_dim": config["hidden_size"], "representation_size": None,
            "num_classes": model.num_classes}
    ours = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    table = transformers_key_table("transformers-4", args, qkv_bias=True)
    out: dict[str, Any] = {}
    for sources, key, fn in table:
        if key not in ours:
            raise ValueError(f"cannot export to transformers: the model has no {key}")
        values = _INVERSES[fn](ours.pop(key))
        out.update((("" if src.startswith("classifier.") else "vivit.") + src, v.contiguous())
                   for src, v in zip(sources, values, strict=True))
    if ours:
        raise ValueError(f"cannot export to transformers: no transformers key for {sorted(ours)[:10]}")
    return config, out
