"""An independent float64 NumPy re-implementation of the reference forward pass, on flax parameter names.

Written from scenic ``projects/vivit/model.py`` / ``model_utils.py`` (commit 4a38d47) and nothing in ``vivit``, so the
tests can check configurations the golden files do not cover (other tubelets, non-square frames, head counts,
``time_space``, representation layers, frame sampling with n+1 frames). Layout NTHWC as in scenic.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EPS = 1e-6


def layer_norm(x, p):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + EPS) * p["scale"] + p["bias"]


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def dense(x, p):
    return x @ p["kernel"] + p["bias"]


def project_qkv(x, p):
    return [np.einsum("...d,dhk->...hk", x, p[n]["kernel"]) + p[n]["bias"] for n in ("query", "key", "value")]


def dot_product_attention(q, k, v):
    """q, k, v: (..., n, heads, hd) -> (..., n, heads, hd); attention over n (flax dot_product_attention)."""
    q = q / np.sqrt(q.shape[-1])
    w = softmax(np.einsum("...qhd,...khd->...hqk", q, k))
    return np.einsum("...hqk,...khd->...qhd", w, v)


def mha(x, p, fn=dot_product_attention):
    out = fn(*project_qkv(x, p))
    return np.einsum("...hk,hkd->...d", out, p["out"]["kernel"]) + p["out"]["bias"]


def factorized_dot_product_attention(q, k, v):
    """(b, t, s, heads, hd): first half of the heads over time (axis 1), second half over space (axis 2)."""
    half = q.shape[-2] // 2
    out_t = dot_product_attention(*(np.swapaxes(z[..., :half, :], 1, 2) for z in (q, k, v)))
    out_s = dot_product_attention(*(z[..., half:, :] for z in (q, k, v)))
    return np.concatenate([np.swapaxes(out_t, 1, 2), out_s], axis=-2)


def mlp(x, p):
    return dense(gelu_tanh(dense(x, p["Dense_0"])), p["Dense_1"])


def encoder_block(x, p, attention_fn=dot_product_attention):
    x = x + mha(layer_norm(x, p["LayerNorm_0"]), p["MultiHeadDotProductAttention_0"], attention_fn)
    return x + mlp(layer_norm(x, p["LayerNorm_1"]), p["MlpBlock_0"])


def fsa_block(x, p, order):
    """x: (b, t, s, d)."""
    for axis in ("space", "time") if order == "space_time" else ("time", "space"):
        y = x if axis == "space" else np.swapaxes(x, 1, 2)
        y = y + mha(layer_norm(y, p[f"LayerNorm_{axis}"]), p[f"MultiHeadDotProductAttention_{axis}"])
        x = y if axis == "space" else np.swapaxes(y, 1, 2)
    return x + mlp(layer_norm(x, p["LayerNorm_mlp"]), p["MlpBlock"])


def transformer(x, p, variant, t, order=None):
    """x: (b, n, d) with posemb already sized; returns normed (b, n, d)."""
    x = x + p["posembed_input"]["pos_embedding"]
    blocks = sorted((k for k in p if k.startswith("encoderblock_")), key=lambda k: int(k.split("_")[1]))
    if variant in ("factorized_self_attention_block", "factorized_dot_product_attention"):
        b, n, d = x.shape
        x = x.reshape(b, t, n // t, d)
    for name in blocks:
        if variant == "factorized_self_attention_block":
            x = fsa_block(x, p[name], order)
        elif variant == "factorized_dot_product_attention":
            x = encoder_block(x, p[name], factorized_dot_product_attention)
        else:
            x = encoder_block(x, p[name])
    return layer_norm(x.reshape(x.shape[0], -1, x.shape[-1]), p["encoder_norm"])


def pool(x, classifier):
    if classifier in ("token", "0"):
        return x[:, 0]
    return {"gap": np.mean, "gmp": np.max, "gsp": np.sum}[classifier](x, axis=1)


def sample_frames(num_frames, n):
    # video_utils.sample_frames_uniformly: jnp.arange in float32 (x64 off), round half to even, clip.
    start, step = (num_frames / (n + 1),) * 2 if n < num_frames else (0, 1)
    idx = np.round(np.arange(start, num_frames, step, dtype=np.float32)).astype(int)
    return np.minimum(idx, num_frames - 1)


def embed(x, p, model_cfg):
    """NTHWC video -> (n, t', h'*w', d) tokens and t'."""
    enc = model_cfg.get("temporal_encoding_config", {"method": "3d_conv"})
    kernel, bias = p["embedding"]["kernel"], p["embedding"]["bias"]
    n = x.shape[0]
    if enc["method"] == "temporal_sampling":
        x = x[:, sample_frames(x.shape[1], enc["n_sampled_frames"])]
        t = x.shape[1]
        x = x.reshape(n, 1, t * x.shape[2], x.shape[3], x.shape[4])  # frames stacked along height
        kernel = kernel[None]
        pt, ph, pw = 1, *model_cfg["patches"]["size"]
    else:
        ph, pw, pt = model_cfg["patches"]["size"]
    gt, gh, gw = x.shape[1] // pt, x.shape[2] // ph, x.shape[3] // pw
    x = x[:, : gt * pt, : gh * ph, : gw * pw]
    x = x.reshape(n, gt, pt, gh, ph, gw, pw, x.shape[-1])
    tokens = np.einsum("nTaHbWcC,abcCd->nTHWd", x, kernel) + bias
    if enc["method"] == "temporal_sampling":
        tokens = tokens.reshape(n, t, -1, tokens.shape[-1])
        return tokens, t
    return tokens.reshape(n, gt, gh * gw, -1), gt


def forward(params: dict[str, Any], config: dict[str, Any], video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, pre_logits) of the reference model for nested flax ``params`` and a scenic config dict."""
    cfg = config["model"]
    variant = cfg.get("attention_config", {}).get("type", "spacetime")
    classifier = cfg["classifier"]
    x, t = embed(video.astype(np.float64), params, cfg)
    b, _, s, d = x.shape
    if variant == "factorized_encoder":
        def body(z, name):
            if classifier == "token":
                z = np.concatenate([np.broadcast_to(params[f"cls_{name}"], (z.shape[0], 1, d)), z], axis=1)
            return pool(transformer(z, params[name], variant, None), classifier)

        frames = np.stack([body(x[:, i], "SpatialTransformer") for i in range(t)], axis=1)
        if cfg["attention_config"].get("spatial_only_baseline", False):
            x = frames.mean(axis=1)
        else:
            x = body(frames, "TemporalTransformer")
    else:
        x = x.reshape(b, t * s, d)
        if classifier == "token":
            x = np.concatenate([np.broadcast_to(params["cls"], (b, 1, d)), x], axis=1)
        order = cfg.get("attention_config", {}).get("attention_order")
        x = pool(transformer(x, params["Transformer"], variant, t, order), classifier)
    if cfg.get("representation_size") is not None:
        x = np.tanh(dense(x, params["pre_logits"]))
    return dense(x, params["output_projection"]), x
