"""Reference (scenic / flax) parameters -> ViViT.

The key table below maps every flax leaf (``'/'``-joined path of the params tree) to one of our state-dict keys; a
single loop applies it and refuses leftovers on either side (scenic layouts: ``scenic/projects/vivit/model.py``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from vivit.model.grid import infer_plane, pair, token_grid
from vivit.weights.keys import Entry, apply_key_table, same

Array = np.ndarray

# scenic attention_config.type -> our variant
VARIANT_FROM_SCENIC = {
    "spacetime": "spacetime",
    "factorized_encoder": "factorized_encoder",
    "factorized_self_attention_block": "factorized_self_attention",
    "factorized_dot_product_attention": "factorized_dot_product",
}
POOL_FROM_SCENIC = {"token": "token", "gap": "avg", "gmp": "max", "gsp": "sum", "0": "first"}


def _dense(k: Array) -> Array:
    return k.T


def _qkv_kernel(q: Array, k: Array, v: Array) -> Array:
    # (d, heads, hd) each -> (3 * heads * hd, d); head i owns rows i*hd:(i+1)*hd of each third.
    return np.concatenate([w.reshape(w.shape[0], -1).T for w in (q, k, v)], axis=0)


def _qkv_bias(q: Array, k: Array, v: Array) -> Array:
    return np.concatenate([b.reshape(-1) for b in (q, k, v)])


def _out_kernel(k: Array) -> Array:
    return k.reshape(-1, k.shape[-1]).T  # (heads, hd, d) -> (d, heads * hd)


def _conv_kernel(k: Array) -> Array:
    # flax (t, h, w, c, d) -> torch (d, c, t, h, w); 2D: (h, w, c, d) -> (d, c, h, w)
    return k.transpose(4, 3, 0, 1, 2) if k.ndim == 5 else k.transpose(3, 2, 0, 1)


def _ln(src: str, dst: str) -> Iterator[Entry]:
    yield (f"{src}/scale",), f"{dst}.weight", same
    yield (f"{src}/bias",), f"{dst}.bias", same


def _linear(src: str, dst: str) -> Iterator[Entry]:
    yield (f"{src}/kernel",), f"{dst}.weight", _dense
    yield (f"{src}/bias",), f"{dst}.bias", same


def _attention(src: str, dst: str) -> Iterator[Entry]:
    yield tuple(f"{src}/{n}/kernel" for n in ("query", "key", "value")), f"{dst}.qkv.weight", _qkv_kernel
    yield tuple(f"{src}/{n}/bias" for n in ("query", "key", "value")), f"{dst}.qkv.bias", _qkv_bias
    yield (f"{src}/out/kernel",), f"{dst}.proj.weight", _out_kernel
    yield (f"{src}/out/bias",), f"{dst}.proj.bias", same


def _block(src: str, dst: str, factorized_self_attention: bool) -> Iterator[Entry]:
    if factorized_self_attention:  # scenic EncoderFactorizedSelfAttentionBlock
        for axis in ("space", "time"):
            yield from _ln(f"{src}/LayerNorm_{axis}", f"{dst}.norm_{axis}")
            yield from _attention(f"{src}/MultiHeadDotProductAttention_{axis}", f"{dst}.attn_{axis}")
        yield from _ln(f"{src}/LayerNorm_mlp", f"{dst}.norm_mlp")
        mlp = f"{src}/MlpBlock"
    else:  # scenic EncoderBlock
        yield from _ln(f"{src}/LayerNorm_0", f"{dst}.norm1")
        yield from _attention(f"{src}/MultiHeadDotProductAttention_0", f"{dst}.attn")
        yield from _ln(f"{src}/LayerNorm_1", f"{dst}.norm2")
        mlp = f"{src}/MlpBlock_0"
    yield from _linear(f"{mlp}/Dense_0", f"{dst}.mlp.fc1")
    yield from _linear(f"{mlp}/Dense_1", f"{dst}.mlp.fc2")


def _transformer(src: str, dst: str, depth: int, cls_path: str | None, fsa: bool = False) -> Iterator[Entry]:
    if cls_path is not None:
        yield (cls_path,), f"{dst}.cls_token", same
    yield (f"{src}/posembed_input/pos_embedding",), f"{dst}.pos_embed", same
    for i in range(depth):
        yield from _block(f"{src}/encoderblock_{i}", f"{dst}.blocks.{i}", fsa)
    yield from _ln(f"{src}/encoder_norm", f"{dst}.norm")


def scenic_key_table(params: Mapping[str, Array], variant: str) -> list[Entry]:
    """The full key table for the parameters present in ``params`` (layer counts read from the keys)."""
    entries: list[Entry] = [
        (("embedding/kernel",), "patch_embed.proj.weight", _conv_kernel),
        (("embedding/bias",), "patch_embed.proj.bias", same),
    ]
    if variant == "factorized_encoder":
        entries += _transformer("SpatialTransformer", "encoder.spatial", count_layers(params, "SpatialTransformer"),
                                "cls_SpatialTransformer" if "cls_SpatialTransformer" in params else None)
        if "TemporalTransformer/encoder_norm/scale" in params:
            entries += _transformer("TemporalTransformer", "encoder.temporal",
                                    count_layers(params, "TemporalTransformer"),
                                    "cls_TemporalTransformer" if "cls_TemporalTransformer" in params else None)
    else:
        entries += _transformer("Transformer", "encoder", count_layers(params, "Transformer"),
                                "cls" if "cls" in params else None, fsa=variant == "factorized_self_attention")
    if "pre_logits/kernel" in params:
        entries += _linear("pre_logits", "pre_logits.fc")
    if "output_projection/kernel" in params:
        entries += _linear("output_projection", "head")
    return entries


def count_layers(params: Mapping[str, Any], prefix: str) -> int:
    """Number of ``{prefix}/encoderblock_{i}`` blocks present."""
    ids = {int(k.split("/")[1].rsplit("_", 1)[1]) for k in params if k.startswith(f"{prefix}/encoderblock_")}
    if ids != set(range(len(ids))):
        raise ValueError(f"{prefix} blocks are not numbered 0..n-1: found {sorted(ids)}")
    return len(ids)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Array]:
    """Nested flax params (or an already flat ``'/'``-joined dict) -> flat ``{path: ndarray}``.

    A leading ``params/`` (as in the golden ``.npz`` files) is stripped.
    """
    flat: dict[str, Array] = {}
    for key, value in params.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{path}/"))
        else:
            flat[path] = np.asarray(value)
    if not prefix and flat and all(k.startswith("params/") for k in flat):
        flat = {k[len("params/"):]: v for k, v in flat.items()}
    return flat


def model_args_from_scenic(params: Mapping[str, Array], config: Mapping[str, Any], *, img_size: int | tuple[int, int],
                           num_frames: int | None = None, source: str = "the scenic parameters") -> dict[str, Any]:
    """ViViT kwargs from a scenic config (variant, options) and its weights (depths, heads, widths, classes).

    Leaves of the wrong rank or width are refused first (``check_scenic_shapes``), naming ``source``.
    """
    check_scenic_shapes(params, source)
    model_cfg = config.get("model")
    if not isinstance(model_cfg, Mapping):
        raise ValueError("config must be the scenic ConfigDict as a plain dict, with a 'model' section")
    attention = model_cfg.get("attention_config") or {}
    scenic_type = attention.get("type", "spacetime")
    if scenic_type not in VARIANT_FROM_SCENIC:
        raise ValueError(f"unsupported scenic attention_config.type {scenic_type!r}; "
                         f"supported: {sorted(VARIANT_FROM_SCENIC)}")
    variant = VARIANT_FROM_SCENIC[scenic_type]
    classifier = str(model_cfg.get("classifier", "gap"))
    if classifier not in POOL_FROM_SCENIC:
        raise ValueError(f"unsupported scenic classifier {classifier!r}; supported: {sorted(POOL_FROM_SCENIC)}")
    if num_frames is None:
        num_frames = (config.get("dataset_configs") or {}).get("num_frames")
        if num_frames is None:
            raise ValueError("pass num_frames=: the config has no dataset_configs.num_frames")
    encoding = model_cfg.get("temporal_encoding_config") or {"method": "3d_conv"}
    patches = list(model_cfg["patches"]["size"])
    kernel = params["embedding/kernel"]
    rank = 4 if encoding.get("method") == "temporal_sampling" else 5
    if kernel.ndim != rank:
        raise ValueError(f"{source}: embedding/kernel has shape {tuple(kernel.shape)}, but the config's "
                         f"{encoding.get('method', '3d_conv')} embedding needs a {rank}-D kernel "
                         f"({'(h, w, c, d)' if rank == 4 else '(t, h, w, c, d)'}); the weights and config disagree")
    args: dict[str, Any] = dict(
        variant=variant, img_size=img_size, num_frames=int(num_frames), in_chans=int(kernel.shape[-2]),
        embed_dim=int(kernel.shape[-1]), global_pool=POOL_FROM_SCENIC[classifier],
        representation_size=int(params["pre_logits/kernel"].shape[1]) if "pre_logits/kernel" in params else None,
        num_classes=int(params["output_projection/kernel"].shape[1]) if "output_projection/kernel" in params else 0,
        drop_rate=float(model_cfg.get("dropout_rate", 0.1)),
        attn_drop_rate=float(model_cfg.get("attention_dropout_rate", 0.1)),
        drop_path_rate=float(model_cfg.get("stochastic_droplayer_rate", 0.0)),
        act_layer="gelu_tanh", norm_eps=1e-6,
    )
    if encoding.get("method") == "temporal_sampling":
        args.update(embedding="frame_sampling", tubelet_size=(1, patches[0], patches[1]),
                    n_sampled_frames=int(encoding["n_sampled_frames"]))
    elif encoding.get("method", "3d_conv") == "3d_conv":
        args.update(tubelet_size=(patches[2], patches[0], patches[1]))  # scenic order is (h, w, t)
    else:
        raise ValueError(f"unsupported temporal_encoding_config.method {encoding.get('method')!r}")

    if variant == "factorized_encoder":
        spatial, temporal = "SpatialTransformer", "TemporalTransformer"
        args.update(_encoder_sizes(params, spatial))
        args["spatial_only_baseline"] = bool(attention.get("spatial_only_baseline", False))
        if not args["spatial_only_baseline"]:
            t_sizes = _encoder_sizes(params, temporal)
            args.update(temporal_depth=t_sizes["depth"], temporal_num_heads=t_sizes["num_heads"],
                        temporal_mlp_dim=t_sizes["mlp_dim"])
    else:
        args.update(_encoder_sizes(params, "Transformer", fsa=variant == "factorized_self_attention"))
    if variant == "factorized_self_attention":
        if "attention_order" not in attention:
            raise ValueError("factorized_self_attention_block config lacks attention_config.attention_order; "
                             "the order changes the outputs, so it is never assumed")
        args["attention_order"] = attention["attention_order"]
    return args


def _encoder_sizes(params: Mapping[str, Array], prefix: str, fsa: bool = False) -> dict[str, int]:
    depth = count_layers(params, prefix)
    if depth == 0:
        raise ValueError(f"no {prefix}/encoderblock_0 in the parameters")
    block = f"{prefix}/encoderblock_0"
    attn = f"{block}/MultiHeadDotProductAttention_{'space' if fsa else '0'}/query/kernel"
    mlp = f"{block}/{'MlpBlock' if fsa else 'MlpBlock_0'}/Dense_0/kernel"
    return dict(depth=depth, num_heads=int(params[attn].shape[1]), mlp_dim=int(params[mlp].shape[1]))


# Leaf name pattern -> dims by name: one width `d` for the whole tree, the other names bound per module (an attention
# module's q/k/v/out agree on heads and head width, an MLP's two Dense layers on its width). An int is a fixed size.
_LEAF_SHAPES: tuple[tuple[re.Pattern[str], tuple[str | int, ...]], ...] = tuple((re.compile(p), dims) for p, dims in (
    (r"(^|/)(query|key|value)/kernel$", ("d", "heads", "hd")),
    (r"(^|/)(query|key|value)/bias$", ("heads", "hd")),
    (r"(^|/)out/kernel$", ("heads", "hd", "d")),
    (r"(^|/)Dense_0/kernel$", ("d", "mlp")),
    (r"(^|/)Dense_0/bias$", ("mlp",)),
    (r"(^|/)Dense_1/kernel$", ("mlp", "d")),
    (r"(^|/)(out|Dense_1)/bias$", ("d",)),
    (r"(^|/)(LayerNorm_\w+|encoder_norm)/(scale|bias)$", ("d",)),
    (r"(^|/)posembed_input/pos_embedding$", (1, "tokens", "d")),
    (r"^cls(_\w+)?$", (1, 1, "d")),
    (r"^pre_logits/kernel$", ("d", "rep")),
    (r"^pre_logits/bias$", ("rep",)),
    (r"^output_projection/kernel$", ("features", "classes")),
    (r"^output_projection/bias$", ("classes",)),
))


def check_scenic_shapes(params: Mapping[str, Array], source: str = "the scenic parameters") -> None:
    """Refuse leaves of the wrong rank or width before anything is built from them, naming ``source``.

    Reshapes alone would let a ``(d, d)`` query kernel through as ``d`` heads of width 1, or load a narrower MLP
    into a model built from it; every kernel's rank and every width must agree with the patch embedding's.

    Raises:
        ValueError: ``source``, the leaf, its shape and the expected one.
    """
    kernel = params.get("embedding/kernel")
    if kernel is None or kernel.ndim not in (4, 5):
        found = "no embedding/kernel" if kernel is None else f"embedding/kernel of shape {tuple(kernel.shape)}"
        raise ValueError(f"{source}: expected a patch kernel embedding/kernel of shape (t, h, w, c, d) or "
                         f"(h, w, c, d), found {found}")
    bound: dict[tuple[str, str], int] = {("", "d"): int(kernel.shape[-1])}
    if "pre_logits/kernel" in params:
        bound[("", "features")] = int(np.shape(params["pre_logits/kernel"])[-1])
    else:
        bound[("", "features")] = bound[("", "d")]
    checks = [("embedding/bias", ("d",))]
    checks += [(path, dims) for path in params for pattern, dims in _LEAF_SHAPES if pattern.search(path)]
    for path, dims in checks:
        if path not in params:
            continue
        shape = tuple(np.shape(params[path]))
        scope = path.rsplit("/", 2)[0] if path.count("/") >= 2 else ""
        keys = [("", d) if isinstance(d, int) or d in ("d", "features", "rep", "classes") else (scope, d) for d in dims]
        ok = len(shape) == len(dims)
        for size, dim, key in zip(shape, dims, keys, strict=False):
            if not ok:
                break
            ok = size == dim if isinstance(dim, int) else bound.setdefault(key, size) == size
        if not ok:
            want = ", ".join(str(d) if isinstance(d, int) else f"{d}={bound[k]}" if k in bound else d
                             for d, k in zip(dims, keys, strict=True))
            raise ValueError(f"{source}: flax leaf {path} has shape {shape}, expected ({want}) for a ViViT whose "
                             f"embedding width is d={bound[('', 'd')]}; the file is damaged or not a ViViT checkpoint")


def convert_scenic_params(params: Mapping[str, Array], variant: str,
                          source: str = "the scenic parameters") -> dict[str, torch.Tensor]:
    """Apply the key table: every source leaf used exactly once, else ``ValueError`` naming ``source`` and leftovers."""
    check_scenic_shapes(params, source)
    state = apply_key_table(params, scenic_key_table(params, variant), what=f"{source}: scenic parameters",
                            into=f"a {variant} model")
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}


def weights_grid(params: Mapping[str, Array], config: Mapping[str, Any], args: Mapping[str, Any],
                 model_grid: tuple[int, int, int]) -> tuple[int, int, int]:
    """The token grid the weights were trained on: time from the config's frame count, space from the posemb length.

    The grid is built the way the model builds its own, for the model's frame size and then
    ``dataset_configs.crop_size``; the first whose token count equals the positional embedding's is the trained grid
    (``model_grid`` first when the clip length is the config's). Sampled frames go through ``frame_sampling_grid``:
    their patch rows may straddle frames (scenic ``model.py`` ``temporal_encode`` L158-168 stacks the sampled frames
    into one tall image before the 2D patch conv). Otherwise the trained frame grid is square, as the reference
    assumes when it resizes.
    """
    dataset = config.get("dataset_configs") or {}
    trained_frames = int(dataset.get("num_frames", args["num_frames"]))
    sampled = args["n_sampled_frames"] if args.get("embedding") == "frame_sampling" else None

    def grid_for(size: int | Sequence[int]) -> tuple[int, int, int]:
        return token_grid(trained_frames, pair(size), args["tubelet_size"], sampled)

    num_prefix = int(args["global_pool"] == "token")
    fe = args["variant"] == "factorized_encoder"
    key = "SpatialTransformer" if fe else "Transformer"
    tokens = params[f"{key}/posembed_input/pos_embedding"].shape[1] - num_prefix

    def count(grid: tuple[int, int, int]) -> int:  # FE: the spatial posemb covers one frame
        return grid[1] * grid[2] if fe else math.prod(grid)

    candidates = [grid_for(args["img_size"])]
    if trained_frames == int(args["num_frames"]):
        candidates.insert(0, tuple(model_grid))
    if dataset.get("crop_size"):
        candidates.append(grid_for(dataset["crop_size"]))
    for grid in candidates:
        if count(grid) == tokens:
            return grid
    t = candidates[-1][0]
    spatial_tokens = tokens if fe else tokens // max(t, 1)
    plane = infer_plane(spatial_tokens) if fe or spatial_tokens * t == tokens else None
    if plane is None:
        raise ValueError(
            f"cannot infer the trained token grid from the positional embedding's {tokens} tokens: it fits neither "
            f"the model's grid {tuple(model_grid)}, nor {t} frame(s) of a square grid; build the model at the trained "
            "frame size (img_size=) or pass a config with dataset_configs.crop_size")
    return (t, *plane)
