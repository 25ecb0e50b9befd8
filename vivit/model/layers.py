"""Transformer building blocks shared by every ViViT variant.

Blocks take tokens shaped ``(b, *groups, n, d)``: attention runs over the ``n`` axis independently for every leading
index, so one block serves whole clips (Model 1), frames (Model 2, spatial) and the axes of Models 3 and 4.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.fx
import torch.nn.functional as F
from einops import rearrange
from torch import nn

# torch.fx (timm feature_cls="fx", torchvision create_feature_extractor) records these as opaque calls: einops cannot
# read a Proxy's shape, and the helpers below branch on runtime values.
torch.fx.wrap("rearrange")


def fx_tracing() -> bool:
    """Whether ``torch.fx.symbolic_trace`` is tracing (shapes are proxies: no Python checks on them then).

    Not true under ``torch.export`` / ``torch.compile``, whose symbolic shapes do support the checks.
    """
    symbolic = getattr(torch.fx._symbolic_trace, "is_fx_symbolic_tracing", None)  # torch >= 2.8
    return symbolic() if symbolic is not None else torch.fx._symbolic_trace.is_fx_tracing()

ATTN_IMPLS = ("sdpa", "eager")
ACT_LAYERS: dict[str, Callable[[], nn.Module]] = {
    # scenic: flax.linen.gelu defaults to approximate=True.
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "gelu": lambda: nn.GELU(),
}
POOL_TYPES = ("token", "avg", "max", "sum", "first")
# global_pool="" (timm): no pooling, the head sees every token.
HEAD_POOL_TYPES = (*POOL_TYPES, "")


def _cpu_contiguous(z: torch.Tensor) -> torch.Tensor:
    # The CPU flash kernel is ~10% faster on packed (b, heads, n, hd) inputs than on the strided views of the fused qkv
    # output, copies included (ViViT-B, 3137 tokens: 134 -> 121 ms per layer, 2-core Xeon). CUDA kernels take the
    # strided views as they are.
    return z.contiguous() if z.device.type == "cpu" else z


torch.fx.wrap("_cpu_contiguous")


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    impl: str = "sdpa",
    dropout_p: float = 0.0,
    return_weights: bool = False,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention over the second-to-last axis.

    Args:
        q: Queries ``(..., heads, n, hd)``; any number of leading dims.
        k: Keys ``(..., heads, m, hd)``; ``m`` may differ from ``n``.
        v: Values, same shape as ``k``.
        impl: ``"sdpa"`` (fused kernels where available) or ``"eager"`` (explicit softmax).
        dropout_p: Attention-weight dropout probability (pass 0 in eval mode).
        return_weights: Also return the softmax weights ``(..., heads, n, n)``; eager only.
        scale: The eager path's query scale; default ``1 / sqrt(hd)`` (sdpa always uses that default).
        bias: Added to the attention logits before the softmax, ``(..., 1 | heads, 1 | n, m)`` with ``q``'s leading
            dims (token merging's log token sizes).

    Returns:
        The attended values ``(..., heads, n, hd)`` and the weights (or ``None``).
    """
    if impl == "sdpa":
        if return_weights:
            raise ValueError("attention maps need attn_impl='eager'; the fused sdpa kernels never form them")
        # Fused kernels want 4-D inputs; fold every leading axis into the batch (flatten(0, -4) keeps fx tracing
        # free of Python arithmetic on shapes).
        mask = None if bias is None else bias.to(q.dtype).flatten(0, -4)
        out = F.scaled_dot_product_attention(
            *(_cpu_contiguous(z.flatten(0, -4)) for z in (q, k, v)), attn_mask=mask, dropout_p=dropout_p)
        return out.reshape(q.shape), None
    # scenic (flax dot_product_attention): the query is scaled before the product.
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = (q * scale) @ k.transpose(-2, -1)
    weights = torch.softmax(logits if bias is None else logits + bias, dim=-1)
    attn = F.dropout(weights, dropout_p) if dropout_p > 0 else weights
    return attn @ v, (weights if return_weights else None)


class Attention(nn.Module):
    """Multi-head self-attention over the token axis of ``(b, *groups, n, d)``."""

    def __init__(
        self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0, attn_impl: str = "sdpa"
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} must be divisible by num_heads {num_heads}")
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
        self.num_heads = num_heads
        self.scale = 1.0 / math.sqrt(dim // num_heads)
        self.attn_impl = attn_impl
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.record_attn = False  # set by ViViT.forward_attention_maps
        self.attn_map: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, num_queries: int | None = None) -> torch.Tensor:
        """``(b, *groups, n, d) -> (b, *groups, n, d)``; with ``num_queries``, only the first ones attend.

        ``num_queries=m`` returns ``(b, *groups, m, d)``: tokens ``0..m-1`` attend over all ``n`` keys and values.
        """
        return self._project(x, num_queries)[0]

    def forward_with_keys(
        self, x: torch.Tensor, num_queries: int | None = None, bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` with an optional logit ``bias`` (see ``attend``), also returning the keys averaged over heads.

        The mean key ``(b, *groups, n, hd)`` is token merging's similarity metric (ToMe).
        """
        out, k = self._project(x, num_queries, bias)
        return out, k.mean(dim=-3)

    def _project(
        self, x: torch.Tensor, num_queries: int | None = None, bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention output and the keys ``(b, *groups, heads, n, hd)``."""
        q, k, v = rearrange(self.qkv(x), "... n (qkv heads hd) -> qkv ... heads n hd", qkv=3, heads=self.num_heads)
        if num_queries is not None:
            q = q[..., :num_queries, :]
        out = self._attend_heads(q, k, v, bias)
        return self.proj_drop(self.proj(rearrange(out, "... heads n hd -> ... n (heads hd)"))), k

    def _attend_heads(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        out, weights = attend(q, k, v, self.attn_impl, self.attn_drop if self.training else 0.0,
                              return_weights=self.record_attn, scale=self.scale, bias=bias)
        if self.record_attn:
            self.attn_map = weights
        return out


class FactorizedDotProductAttention(Attention):
    """Model 4 attention on ``(b, t, s, d)``: heads ``0..h/2-1`` attend over time, the rest over space.

    scenic: ``model_utils.factorized_dot_product_attention`` splits the heads with ``jnp.split`` along the head axis
    and uses the first half for axis 1 (time) and the second for axis 2 (space).
    """

    def __init__(self, dim: int, num_heads: int, **kwargs) -> None:
        if num_heads % 2:
            raise ValueError(f"factorized_dot_product needs an even num_heads (half time, half space), got {num_heads}")
        super().__init__(dim, num_heads, **kwargs)

    def forward(self, x: torch.Tensor, num_queries: int | None = None) -> torch.Tensor:
        """``(b, t, s, d) -> (b, t, s, d)``."""
        if num_queries is not None:
            raise ValueError("factorized dot-product attention mixes time and space: it has no subset of queries")
        return super().forward(x)

    def _attend_heads(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        # q, k, v: (b, t, heads, s, hd)
        assert bias is None, "Models 3 and 4 refuse token merging, the only source of a bias"
        half = self.num_heads // 2
        drop = self.attn_drop if self.training else 0.0
        to_time = "b t heads s hd -> b s heads t hd"
        qt, kt, vt = (rearrange(z[:, :, :half], to_time) for z in (q, k, v))
        out_time, w_time = attend(qt, kt, vt, self.attn_impl, drop, return_weights=self.record_attn, scale=self.scale)
        out_space, w_space = attend(q[:, :, half:], k[:, :, half:], v[:, :, half:], self.attn_impl, drop,
                                    return_weights=self.record_attn, scale=self.scale)
        if self.record_attn:
            self.attn_map = {"time": w_time, "space": w_space}
        return torch.cat([rearrange(out_time, "b s heads t hd -> b t heads s hd"), out_space], dim=2)


class Mlp(nn.Module):
    """Linear -> activation -> dropout -> Linear -> dropout (scenic ``MlpBlock``)."""

    def __init__(self, dim: int, hidden_dim: int, act_layer: str = "gelu_tanh", drop: float = 0.0) -> None:
        super().__init__()
        if act_layer not in ACT_LAYERS:
            raise ValueError(f"act_layer must be one of {sorted(ACT_LAYERS)}, got {act_layer!r}")
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = ACT_LAYERS[act_layer]()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d) -> (..., d)``."""
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth with the reference's semantics: one Bernoulli per example, kept branches are not rescaled.

    scenic: ``EncoderBlock.get_drop_pattern`` returns ``bernoulli(p, (b, 1, ...))`` and the block computes
    ``x * (1 - drop) + residual`` (no ``1/(1-p)``). Inputs with group axes ``(b, t, ...)`` share one draw per example,
    as the reference's ``jax.vmap`` over frames does.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, ...) -> (b, ...)``."""
        if not self.training or self.drop_prob == 0.0:
            return x
        return _drop_paths(x, self.drop_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def _drop_paths(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    keep = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device) >= drop_prob
    return x * keep.to(x.dtype)


torch.fx.wrap("_drop_paths")


class Block(nn.Module):
    """Pre-LN transformer block: ``x + MHA(LN(x))`` then ``x + MLP(LN(x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        *,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: str = "gelu_tanh",
        norm_eps: float = 1e-6,
        attn_impl: str = "sdpa",
        attn_cls: type[Attention] = Attention,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = attn_cls(dim, num_heads, attn_drop=attn_drop, proj_drop=drop, attn_impl=attn_impl)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_dim, act_layer, drop)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, num_outputs: int | None = None) -> torch.Tensor:
        """``(b, *groups, n, d) -> (b, *groups, n, d)``, or only the first ``num_outputs`` tokens.

        Each token's output depends on the others only through attention, so computing the first ``m`` outputs needs
        all ``n`` keys and values but only ``m`` queries, projections and MLP rows: the same numbers for a fraction of
        the work, which is what a classifier that reads one token needs from its last block.
        """
        if num_outputs is None:
            x = x + self.drop_path1(self.attn(self.norm1(x)))
        else:
            x = x[..., :num_outputs, :] + self.drop_path1(self.attn(self.norm1(x), num_queries=num_outputs))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class FactorizedSelfAttentionBlock(nn.Module):
    """Model 3 block on ``(b, t, s, d)``: space and time attention (each with its own LN and residual), then MLP.

    scenic: ``EncoderFactorizedSelfAttentionBlock`` has no stochastic depth, so neither does this block.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        *,
        attention_order: str = "space_time",
        drop: float = 0.0,
        attn_drop: float = 0.0,
        act_layer: str = "gelu_tanh",
        norm_eps: float = 1e-6,
        attn_impl: str = "sdpa",
    ) -> None:
        super().__init__()
        if attention_order not in ("space_time", "time_space"):
            raise ValueError(f"attention_order must be 'space_time' or 'time_space', got {attention_order!r}")
        self.attention_order = attention_order
        self.norm_space = nn.LayerNorm(dim, eps=norm_eps)
        self.attn_space = Attention(dim, num_heads, attn_drop=attn_drop, proj_drop=drop, attn_impl=attn_impl)
        self.norm_time = nn.LayerNorm(dim, eps=norm_eps)
        self.attn_time = Attention(dim, num_heads, attn_drop=attn_drop, proj_drop=drop, attn_impl=attn_impl)
        self.norm_mlp = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_dim, act_layer, drop)

    def _space(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn_space(self.norm_space(x))

    def _time(self, x: torch.Tensor) -> torch.Tensor:
        xt = rearrange(x, "b t s d -> b s t d")
        return rearrange(xt + self.attn_time(self.norm_time(xt)), "b s t d -> b t s d")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, t, s, d) -> (b, t, s, d)``."""
        first, second = (self._space, self._time) if self.attention_order == "space_time" else (self._time, self._space)
        x = second(first(x))
        return x + self.mlp(self.norm_mlp(x))


def pool_tokens(
    x: torch.Tensor, pool: str, num_prefix_tokens: int = 0, sizes: torch.Tensor | None = None
) -> torch.Tensor:
    """Pool ``(..., n, d)`` tokens to ``(..., d)``.

    ``token`` and ``first`` take token 0 (the CLS token, or the first patch token when there is none); ``avg`` /
    ``max`` / ``sum`` reduce over the patch tokens (scenic ``gap`` / ``gmp`` / ``gsp``), skipping prefix tokens;
    ``""`` returns the tokens unpooled (timm). ``sizes`` ``(..., n, 1)``: how many tokens each merged token stands
    for (token merging); ``avg`` and ``sum`` then count every token as that many.
    """
    if pool == "":
        return x
    if pool in ("token", "first"):
        return x[..., 0, :]
    patches = x[..., num_prefix_tokens:, :]
    if sizes is not None and pool in ("avg", "sum"):
        sizes = sizes[..., num_prefix_tokens:, :]
        total = (patches * sizes).sum(dim=-2)
        return total / sizes.sum(dim=-2) if pool == "avg" else total
    if pool == "avg":
        return patches.mean(dim=-2)
    if pool == "max":
        return patches.amax(dim=-2)
    if pool == "sum":
        return patches.sum(dim=-2)
    raise ValueError(f"global_pool must be one of {HEAD_POOL_TYPES}, got {pool!r}")
