"""An independent transcription of ToMe's reference token merging, run on a vivit model's parameters.

Written from facebookresearch/ToMe (``tome/merge.py``: ``bipartite_soft_matching``, ``merge_wavg``, ``merge_source``;
``tome/patch/timm.py``: ``ToMeBlock``, ``ToMeAttention``; ``tome/utils.py``: ``parse_r``) and nothing in vivit's
merge or block code: plain torch ops over the blocks' weights, timm's ``(B, N, 3, heads, hd)`` qkv layout, ToMe's
``(q @ k^T) * scale`` ordering, closures for merge as in the reference. Only the parameters are read from the model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def parse_r(num_layers, r):
    inflect = 0
    if isinstance(r, list):
        if len(r) < num_layers:
            r = r + [0] * (num_layers - len(r))
        return list(r)
    elif isinstance(r, tuple):
        r, inflect = r
    min_val = int(r * (1.0 - inflect))
    max_val = 2 * r - min_val
    step = (max_val - min_val) / (num_layers - 1)
    return [int(min_val + step * i) for i in range(num_layers)]


def bipartite_soft_matching(metric, r, class_token):
    protected = 1 if class_token else 0
    t = metric.shape[1]
    r = min(r, (t - protected) // 2)
    if r <= 0:
        return lambda x, mode=None: x
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[..., ::2, :], metric[..., 1::2, :]
        scores = a @ b.transpose(-1, -2)
        if class_token:
            scores[..., 0, :] = -math.inf
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx = edge_idx[..., r:, :]
        src_idx = edge_idx[..., :r, :]
        dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)
        if class_token:
            unm_idx = unm_idx.sort(dim=1)[0]

    def merge(x, mode="mean"):
        src, dst = x[..., ::2, :], x[..., 1::2, :]
        n, t1, c = src.shape
        unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
        src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce=mode)
        return torch.cat([unm, dst], dim=1)

    return merge


def merge_wavg(merge, x, size=None):
    if size is None:
        size = torch.ones_like(x[..., 0, None])
    x = merge(x * size, mode="sum")
    size = merge(size, mode="sum")
    return x / size, size


def merge_source(merge, x, source=None):
    if source is None:
        n, t, _ = x.shape
        source = torch.eye(t, device=x.device)[None, ...].expand(n, t, t)
    return merge(source, mode="amax")


def _layer_norm(x, ln):
    return F.layer_norm(x, ln.weight.shape, ln.weight, ln.bias, ln.eps)


def tome_attention(attn, x, size):
    """ToMeAttention.forward: proportional attention, returns the output and k averaged over heads."""
    B, N, C = x.shape
    qkv = F.linear(x, attn.qkv.weight, attn.qkv.bias).reshape(B, N, 3, attn.num_heads, C // attn.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-2, -1)) * attn.scale
    if size is not None:
        scores = scores + size.log()[:, None, None, :, 0]
    x = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, C)
    return F.linear(x, attn.proj.weight, attn.proj.bias), k.mean(1)


def tome_block(block, x, info):
    """ToMeBlock.forward on one of our blocks' parameters (eval mode: no dropout, no drop path)."""
    x_attn, metric = tome_attention(block.attn, _layer_norm(x, block.norm1), info["size"])
    x = x + x_attn
    r = info["r"].pop(0)
    if r > 0:
        merge = bipartite_soft_matching(metric, r, info["class_token"])
        if info["trace_source"]:
            info["source"] = merge_source(merge, x, info["source"])
        x, info["size"] = merge_wavg(merge, x, info["size"])
    mlp = block.mlp
    h = F.linear(_layer_norm(x, block.norm2), mlp.fc1.weight, mlp.fc1.bias)
    h = F.gelu(h, approximate="tanh" if mlp.act.approximate == "tanh" else "none")
    return x + F.linear(h, mlp.fc2.weight, mlp.fc2.bias)


def tome_transformer(encoder, tokens, r, trace_source=False):
    """CLS + pos-embed, the ToMe blocks, final norm over ``tokens`` ``(B, n, d)``; returns tokens and ToMe's info."""
    if encoder.cls_token is not None:
        tokens = torch.cat([encoder.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
    x = tokens + encoder.pos_embed
    info = {"r": parse_r(len(encoder.blocks), r), "size": None, "source": None,
            "class_token": encoder.cls_token is not None, "trace_source": trace_source}
    for block in encoder.blocks:
        x = tome_block(block, x, info)
    return _layer_norm(x, encoder.norm), info


def patch_tokens(model, video):
    """The tubelet convolution, flattened t-major: ``(B, C, T, H, W) -> (B, t*h*w, d)``."""
    conv = model.patch_embed.proj
    return F.conv3d(video, conv.weight, conv.bias, stride=conv.stride).flatten(2).transpose(1, 2)


def head(model, pooled):
    return F.linear(pooled, model.head.weight, model.head.bias)


def model1_logits(model, video, r):
    """Model 1 with CLS pooling under ToMe: the CLS token of the final tokens through the head."""
    x, _ = tome_transformer(model.encoder, patch_tokens(model, video), r)
    return head(model, x[:, 0])


def model2_logits(model, video, r, pool):
    """Model 2: ToMe in the spatial encoder on every frame, frames pooled (``avg``: size-weighted), dense temporal."""
    enc = model.encoder
    b = video.shape[0]
    tokens = patch_tokens(model, video)
    frames = tokens.reshape(b * enc.grid[0], -1, tokens.shape[-1])
    x, info = tome_transformer(enc.spatial, frames, r)
    if pool == "token":
        per_frame = x[:, 0]
    else:
        size = info["size"] if info["size"] is not None else torch.ones_like(x[..., :1])
        per_frame = (x * size).sum(1) / size.sum(1)
    t, _ = tome_transformer(enc.temporal, per_frame.reshape(b, enc.grid[0], -1), [])  # dense
    return head(model, t[:, 0] if pool == "token" else t.mean(1))
