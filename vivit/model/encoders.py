"""The four ViViT encoders. Each maps embedded tokens ``(b, t*h*w, d)`` to normed features.

A variant is chosen once, at construction, through ``ENCODERS[variant]``; the forward passes hold no variant switch.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import torch
import torch.fx
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from vivit.model.embed import resample_pos_embed
from vivit.model.layers import (
    Block,
    FactorizedDotProductAttention,
    FactorizedSelfAttentionBlock,
    fx_tracing,
    pool_tokens,
)
from vivit.model.merge import TokenMerging, parse_r, run_merging

torch.fx.wrap("rearrange")  # see layers.py
Grid = tuple[int, int, int]
_POS_EMBED_CACHE_SIZE = 8  # token grids whose resampled positional embedding each encoder keeps


@dataclass(frozen=True)
class BlockArgs:
    """Block settings shared by every layer of an encoder."""

    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    act_layer: str = "gelu_tanh"
    norm_eps: float = 1e-6
    attn_impl: str = "sdpa"


def drop_path_rates(depth: int, drop_path_rate: float) -> list[float]:
    """scenic ``Encoder``: layer ``l`` of ``L`` drops with ``l / max(L - 1, 1) * rate``."""
    return [i / max(depth - 1, 1) * drop_path_rate for i in range(depth)]


class Transformer(nn.Module):
    """Optional CLS token, learned positional embedding, dropout, blocks, final LayerNorm.

    Tokens sit on axis -2 of ``(b, *groups, n, d)``; subclasses re-group them for their blocks in ``_to_blocks`` /
    ``_from_blocks``. ``grid`` is the token grid ``(t, h, w)`` the positional embedding is built for; a forward on
    another grid (``grid=``) uses the embedding resampled to it, cached per grid while it needs no gradient.
    """

    intermediate_blocks = "blocks"  # submodule whose block outputs forward_intermediates returns
    # Whether the last block can compute token 0 alone (see forward): only when its blocks see the token sequence
    # as it is, not regrouped into frames.
    can_trim_last_block = True

    def __init__(self, grid: Grid, dim: int, blocks: list[nn.Module], use_cls: bool, args: BlockArgs) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.num_prefix_tokens = int(use_cls)
        # Values come from ViViT.init_weights (which also runs after meta-device creation + to_empty).
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim)) if use_cls else None
        self.pos_embed = nn.Parameter(torch.empty(1, grid[0] * grid[1] * grid[2] + self.num_prefix_tokens, dim))
        self._pos_embed_cache: dict[Grid, tuple[tuple, torch.Tensor]] = {}
        self.pos_drop = nn.Dropout(args.drop_rate)
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim, eps=args.norm_eps)
        self.grad_checkpointing = False
        # Token merging (merge.py): the per-block schedule (None: dense), and what the last forward merged.
        self.token_merging: list[int] | None = None
        self.trace_source = False
        self.token_sizes: torch.Tensor | None = None
        self.token_sources: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, head_token_only: bool = False, grid: Grid | None = None) -> torch.Tensor:
        """``(b, *groups, n, d) -> (b, *groups, prefix + n, d)``, after the final norm.

        ``head_token_only`` is for callers that read only token 0 (``token`` / ``first`` pooling): the last block then
        computes that token alone and ``(b, *groups, 1, d)`` is returned, equal to ``[..., :1, :]`` of the full output.
        Encoders that regroup tokens into frames ignore it and return every token. ``grid``: the tokens' grid when it
        is not the built one.
        """
        grid = self.grid if grid is None else grid
        return self.norm(self.forward_blocks(self.embed_tokens(x, grid), head_token_only=head_token_only, grid=grid))

    def embed_tokens(self, x: torch.Tensor, grid: Grid | None = None) -> torch.Tensor:
        """Prepend the CLS token (one per group) and add the positional embedding (resampled to ``grid``)."""
        pos_embed = self.pos_embed_for(self.grid if grid is None else grid)
        if not fx_tracing() and x.shape[-2] + self.num_prefix_tokens != pos_embed.shape[1]:
            raise ValueError(
                f"got {x.shape[-2]} tokens but the positional embedding holds "
                f"{pos_embed.shape[1] - self.num_prefix_tokens}; resample it with resample_pos_embed"
            )
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand_as(x[..., :1, :]), x], dim=-2)
        return self.pos_drop(x + pos_embed)

    def forward_kept(self, x: torch.Tensor, keep: torch.Tensor, head_token_only: bool = False,
                     grid: Grid | None = None) -> torch.Tensor:
        """One clip's tokens ``(1, n, d)`` -> normed ``(1, prefix + k, d)`` of the ``k`` tokens at indices ``keep``.

        Each kept token gets its own positional embedding and the CLS token its own, so this is the encoder run on
        the kept tokens alone (static-token skipping, ``ViViT.set_drop_static``).
        """
        pos_embed = self.pos_embed_for(self.grid if grid is None else grid)
        p = self.num_prefix_tokens
        x = (x + pos_embed[:, p:]).index_select(1, keep)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token + pos_embed[:, :p], x], dim=1)
        return self.norm(self.forward_blocks(self.pos_drop(x), head_token_only=head_token_only))

    def pos_embed_for(self, grid: Grid) -> torch.Tensor:
        """The positional embedding for tokens on ``grid``: the parameter itself on the built grid, else resampled.

        Resampled embeddings are cached per grid unless autograd needs them, and the cache is keyed on the parameter's
        storage and version so in-place updates and ``.to()`` invalidate it. Compiled and exported graphs resample in
        the graph (no Python cache there).
        """
        grid = tuple(grid)
        if torch.compiler.is_exporting():  # no branch on the (symbolic) input size in an exported graph
            return resample_pos_embed(self.pos_embed, self.grid, grid, self.num_prefix_tokens, always=True)
        if grid == self.grid:
            return self.pos_embed
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and self.pos_embed.requires_grad):
            return resample_pos_embed(self.pos_embed, self.grid, grid, self.num_prefix_tokens)
        p = self.pos_embed
        key = (p.device, p.dtype, p.data_ptr(), p._version)
        hit = self._pos_embed_cache.get(grid)
        if hit is None or hit[0] != key:
            with torch.no_grad():
                hit = (key, resample_pos_embed(p, self.grid, grid, self.num_prefix_tokens))
            self._pos_embed_cache.pop(grid, None)
            if len(self._pos_embed_cache) >= _POS_EMBED_CACHE_SIZE:
                self._pos_embed_cache.pop(next(iter(self._pos_embed_cache)))
            self._pos_embed_cache[grid] = hit
        return hit[1]

    def set_grid(self, grid: Grid) -> None:
        """Resample the positional embedding in place to ``grid`` (it stays a parameter, ``requires_grad`` kept)."""
        grid = tuple(grid)
        if grid == self.grid:
            return
        with torch.no_grad():
            new = resample_pos_embed(self.pos_embed, self.grid, grid, self.num_prefix_tokens)
        self.pos_embed = nn.Parameter(new, requires_grad=self.pos_embed.requires_grad)
        self.grid = grid
        self._pos_embed_cache.clear()

    def forward_blocks(
        self, x: torch.Tensor, indices: Collection[int] | None = None, stop_early: bool = False,
        head_token_only: bool = False, grid: Grid | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the blocks; with ``indices``, also return the outputs of those blocks (ungrouped).

        ``stop_early`` skips the blocks after the last one in ``indices``; ``head_token_only``: see ``forward``.
        """
        if self.token_merging is not None:
            return self._forward_merging(x, indices, head_token_only)
        x = self._to_blocks(x, self.grid if grid is None else grid)
        taken = []
        blocks = self.blocks[: max(indices) + 1] if stop_early and indices else self.blocks
        trim_at = len(blocks) - 1 if head_token_only and self.can_trim_last_block and indices is None else None
        for i, block in enumerate(blocks):
            args = (x, 1) if i == trim_at else (x,)
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, *args, use_reentrant=False)
            else:
                x = block(*args)
            if indices is not None and i in indices:
                taken.append(self._from_blocks(x))
        x = self._from_blocks(x)
        return x if indices is None else (x, taken)

    def set_token_merging(self, r: TokenMerging, trace_source: bool = False) -> None:
        """Merge tokens in the blocks (ToMe, see ``merge.parse_r`` for ``r``); ``r=0`` restores the dense blocks.

        ``trace_source`` also records which input tokens each output token stands for (``token_sources``).
        """
        schedule = parse_r(r, len(self.blocks), max_r=math.prod(self.grid) // 2)
        self.token_merging = schedule if any(schedule) else None
        self.trace_source = bool(trace_source) and self.token_merging is not None
        self.token_sizes = self.token_sources = None

    def _forward_merging(
        self, x: torch.Tensor, indices: Collection[int] | None, head_token_only: bool
    ) -> torch.Tensor:
        """``forward_blocks`` with token merging: ``(b, *groups, n, d) -> (b, *groups, n', d)``; keeps the sizes."""
        if indices is not None:
            raise ValueError("forward_intermediates returns every block's tokens on the t x h x w grid, which token "
                             "merging shrinks from block to block; call model.set_token_merging(0) first")
        # Trimming keeps the last block's token 0, which is the output's token 0 only when it is protected (CLS):
        # without one, merging reorders the tokens and "first" pooling takes another token.
        trim = head_token_only and self.can_trim_last_block and self.num_prefix_tokens > 0
        out = run_merging(self.blocks, x, self.token_merging, self.num_prefix_tokens, head_token_only=trim,
                          grad_checkpointing=self.grad_checkpointing and torch.is_grad_enabled(),
                          trace_source=self.trace_source)
        self.token_sizes, self.token_sources = out.sizes, out.sources
        return out.x

    def forward_intermediates(
        self, x: torch.Tensor, indices: Collection[int], *, norm: bool = False, stop_early: bool = False,
        final: bool = True, grid: Grid | None = None,
    ) -> tuple[torch.Tensor | None, list[torch.Tensor], list[torch.Tensor] | None]:
        """Embedded tokens ``(b, *groups, n, d)`` -> final features and the outputs of the blocks in ``indices``.

        Args:
            x: Patch tokens ``(b, *groups, n, d)``, before CLS token and positional embedding.
            indices: Block indices to return, in increasing order.
            norm: Pass the returned block outputs through the final norm.
            stop_early: Skip the blocks after the last one in ``indices``.
            final: Also compute the final features (else ``None`` is returned for them).
            grid: The tokens' grid when it is not the built one.

        Returns:
            The normed final tokens ``(b, *groups, prefix + n, d)`` (or ``None``), and per chosen block its patch
            tokens ``(b, *groups, n, d)`` and its prefix tokens ``(b, *groups, prefix, d)`` (``None`` without any).
        """
        grid = self.grid if grid is None else grid
        x, taken = self.forward_blocks(self.embed_tokens(x, grid), indices, stop_early, grid=grid)
        taken = [self.norm(y) for y in taken] if norm else taken
        p = self.num_prefix_tokens
        prefix = [y[..., :p, :] for y in taken] if p else None
        return self.norm(x) if final else None, [y[..., p:, :] for y in taken], prefix

    def prune(self, num_blocks: int, prune_norm: bool = False, prune_head: bool = True) -> None:
        """Keep the first ``num_blocks`` blocks; ``prune_norm`` replaces the final norm by ``nn.Identity``."""
        del prune_head  # nothing after the final norm here; the model owns the head
        self.blocks = self.blocks[:num_blocks]
        if self.token_merging is not None:
            self.token_merging = self.token_merging[:num_blocks]
        if prune_norm:
            self.norm = nn.Identity()

    def _to_blocks(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        return x

    def _from_blocks(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def pool(self, x: torch.Tensor, global_pool: str, sizes: torch.Tensor | None = None) -> torch.Tensor:
        """``(b, prefix + n, d) -> (b, d)``; merged tokens are weighted by their sizes in ``avg`` and ``sum``:
        ``sizes`` ``(b, prefix + n, 1)``, else those of this encoder's last forward."""
        if self.token_merging is None or global_pool not in ("avg", "sum"):
            return pool_tokens(x, global_pool, self.num_prefix_tokens)
        sizes = self.token_sizes if sizes is None else sizes
        if sizes is None or sizes.shape[:-1] != x.shape[:-1]:
            known = "none" if sizes is None else f"{tuple(sizes.shape[:-1])} tokens"
            raise ValueError(f"with token merging, {global_pool} pooling weighs tokens by their sizes ({known}), but "
                             f"got {tuple(x.shape[:-1])} tokens; pool the features forward_features returned")
        return pool_tokens(x, global_pool, self.num_prefix_tokens, sizes)


class SpacetimeEncoder(Transformer):
    """Model 1: one transformer over all ``t*h*w`` tokens (+ CLS)."""

    def __init__(self, grid: tuple[int, int, int], dim: int, depth: int, num_heads: int, mlp_dim: int, *,
                 use_cls: bool, drop_path_rate: float, args: BlockArgs,
                 attn_cls: type[nn.Module] | None = None) -> None:
        blocks = [
            Block(dim, num_heads, mlp_dim, drop=args.drop_rate, attn_drop=args.attn_drop_rate, drop_path=p,
                  act_layer=args.act_layer, norm_eps=args.norm_eps, attn_impl=args.attn_impl,
                  **({"attn_cls": attn_cls} if attn_cls else {}))
            for p in drop_path_rates(depth, drop_path_rate)
        ]
        super().__init__(grid, dim, blocks, use_cls, args)


class _FrameGrouped:
    """Mixin for blocks that see the token grid as ``(b, t, s, d)``."""

    can_trim_last_block = False

    def _to_blocks(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        return rearrange(x, "b (t s) d -> b t s d", t=grid[0])

    def _from_blocks(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "b t s d -> b (t s) d")

    def set_token_merging(self, r: TokenMerging, trace_source: bool = False) -> None:
        """Refused unless ``r == 0``: factorised attention needs the full t x h x w grid, which merging breaks."""
        if parse_r(r, len(self.blocks)) != [0] * len(self.blocks):
            raise ValueError("token merging needs blocks that attend over one token sequence (Models 1 and 2): "
                             "Models 3 and 4 attend along the time and space axes of the full t x h x w grid, and "
                             "merged tokens no longer sit on it; use variant 'spacetime' or 'factorized_encoder'")


class FactorizedDotProductEncoder(_FrameGrouped, SpacetimeEncoder):
    """Model 4: Model 1's blocks on ``(b, t, s, d)``; half the heads attend over time, half over space."""

    def __init__(self, grid: tuple[int, int, int], dim: int, depth: int, num_heads: int, mlp_dim: int, *,
                 use_cls: bool, drop_path_rate: float, args: BlockArgs) -> None:
        # use_cls is always False here: ViViT refuses CLS pooling for Models 3 and 4 before building an encoder
        super().__init__(grid, dim, depth, num_heads, mlp_dim, use_cls=False, drop_path_rate=drop_path_rate,
                         args=args, attn_cls=FactorizedDotProductAttention)


class FactorizedSelfAttentionEncoder(_FrameGrouped, Transformer):
    """Model 3: each block attends over space (per frame) and over time (per position), then runs its MLP."""

    def __init__(self, grid: tuple[int, int, int], dim: int, depth: int, num_heads: int, mlp_dim: int, *,
                 use_cls: bool, drop_path_rate: float, args: BlockArgs, attention_order: str = "space_time") -> None:
        blocks = [
            FactorizedSelfAttentionBlock(dim, num_heads, mlp_dim, attention_order=attention_order,
                                         drop=args.drop_rate, attn_drop=args.attn_drop_rate, act_layer=args.act_layer,
                                         norm_eps=args.norm_eps, attn_impl=args.attn_impl)
            for _ in range(depth)
        ]
        super().__init__(grid, dim, blocks, False, args)


class FactorizedEncoder(nn.Module):
    """Model 2: a spatial transformer per frame (shared weights and CLS), pooled to frame tokens, then a temporal one.

    With ``spatial_only_baseline`` there is no temporal transformer and the frame tokens are averaged.
    """

    intermediate_blocks = "spatial.blocks"  # per-frame maps; the temporal tokens have no spatial grid

    def __init__(self, grid: tuple[int, int, int], dim: int, depth: int, num_heads: int, mlp_dim: int, *,
                 use_cls: bool, drop_path_rate: float, args: BlockArgs, global_pool: str, temporal_depth: int,
                 temporal_num_heads: int | None = None, temporal_mlp_dim: int | None = None,
                 spatial_only_baseline: bool = False) -> None:
        super().__init__()
        self.grid = grid
        self.spatial_pool = global_pool  # scenic uses one `classifier` for both encoders
        self.spatial = SpacetimeEncoder((1, grid[1], grid[2]), dim, depth, num_heads, mlp_dim, use_cls=use_cls,
                                        drop_path_rate=drop_path_rate, args=args)
        self.temporal = None if spatial_only_baseline else SpacetimeEncoder(
            (grid[0], 1, 1), dim, temporal_depth, temporal_num_heads or num_heads, temporal_mlp_dim or mlp_dim,
            use_cls=use_cls, drop_path_rate=drop_path_rate, args=args)
        self.num_prefix_tokens = 0 if self.temporal is None else self.temporal.num_prefix_tokens

    def forward(self, x: torch.Tensor, head_token_only: bool = False, grid: Grid | None = None) -> torch.Tensor:
        """``(b, t*s, d) -> (b, prefix + t, d)``: temporal features, or frame tokens for the spatial-only baseline.

        ``head_token_only`` (for ``token`` / ``first`` pooling, which both encoders share): each encoder's last block
        computes token 0 alone, and the temporal output is ``(b, 1, d)``. ``grid``: the tokens' grid when it is not
        the built one.
        """
        grid = self.grid if grid is None else grid
        return self.forward_time(self.forward_frames(x, head_token_only, grid), head_token_only, grid)

    def forward_frames(self, x: torch.Tensor, head_token_only: bool = False, grid: Grid | None = None) -> torch.Tensor:
        """The spatial half: ``(b, t*s, d) -> (b, t, d)``, one pooled token per tubelet-time slice.

        Each slice is encoded alone (scenic ``model.py``, ``ViViTFactorizedEncoder``: ``jax.vmap(vit_body, in_axes=1)``
        over time, with the spatial CLS and positional embedding only), so a slice's token does not depend on the
        clip around it: a timeline computes it once and reuses it in every window that holds the slice.
        """
        grid = self.grid if grid is None else grid
        frames = self.spatial(rearrange(x, "b (t s) d -> b t s d", t=grid[0]), head_token_only, (1, *grid[1:]))
        return self.spatial.pool(frames, self.spatial_pool)

    def forward_time(self, x: torch.Tensor, head_token_only: bool = False, grid: Grid | None = None) -> torch.Tensor:
        """The temporal half: slice tokens ``(b, t, d) -> (b, prefix + t, d)`` (the baseline returns them as they are).

        The temporal CLS token and positional embedding depend on each slice's place in the clip, so this half runs
        once per clip.
        """
        if self.temporal is None:
            return x
        return self.temporal(x, head_token_only, None if grid is None else (grid[0], 1, 1))

    def _across_frames(self, x: torch.Tensor, head_token_only: bool = False, grid: Grid | None = None) -> torch.Tensor:
        """Normed spatial features ``(b, t, prefix + s, d) -> (b, prefix + t, d)`` (pool each frame, then time)."""
        return self.forward_time(self.spatial.pool(x, self.spatial_pool), head_token_only, grid)

    def set_token_merging(self, r: TokenMerging, trace_source: bool = False) -> None:
        """Merge tokens within each frame in the spatial encoder; the temporal encoder keeps its frame tokens."""
        self.spatial.set_token_merging(r, trace_source)

    def set_grid(self, grid: Grid) -> None:
        """Resample both positional embeddings in place to the token grid ``(t, h, w)``."""
        self.grid = tuple(grid)
        self.spatial.set_grid((1, *grid[1:]))
        if self.temporal is not None:
            self.temporal.set_grid((grid[0], 1, 1))

    def forward_intermediates(
        self, x: torch.Tensor, indices: Collection[int], *, norm: bool = False, stop_early: bool = False,
        final: bool = True, grid: Grid | None = None,
    ) -> tuple[torch.Tensor | None, list[torch.Tensor], list[torch.Tensor] | None]:
        """Intermediates of the spatial encoder, final features of the temporal one.

        Args:
            x: Patch tokens ``(b, t*s, d)``.
            indices: Spatial block indices to return, in increasing order.
            norm: Pass the returned block outputs through the spatial encoder's final norm.
            stop_early: Skip the spatial blocks after the last one in ``indices`` (the final features then come from
                the truncated spatial encoder).
            final: Also compute the final features (else ``None`` is returned for them).
            grid: The tokens' grid when it is not the built one.

        Returns:
            The temporal encoder's normed tokens ``(b, prefix + t, d)`` (spatial-only baseline: frame tokens
            ``(b, t, d)``) or ``None``; per chosen spatial block its patch tokens ``(b, t*s, d)`` and its per-frame
            prefix tokens ``(b, t, prefix, d)`` (``None`` without a CLS token).
        """
        grid = self.grid if grid is None else grid
        x, patches, prefix = self.spatial.forward_intermediates(
            rearrange(x, "b (t s) d -> b t s d", t=grid[0]), indices, norm=norm, stop_early=stop_early,
            final=final, grid=(1, *grid[1:]))
        patches = [rearrange(y, "b t s d -> b (t s) d") for y in patches]
        return None if x is None else self._across_frames(x, grid=grid), patches, prefix

    def prune(self, num_blocks: int, prune_norm: bool = False, prune_head: bool = True) -> None:
        """Keep ``num_blocks`` spatial blocks; ``prune_head`` also drops the temporal encoder.

        The temporal encoder reads only the pooled frames, never an intermediate, so for feature extraction it is part
        of the head; without it the encoder behaves as the spatial-only baseline (frame tokens, mean pooling).
        """
        self.spatial.prune(num_blocks, prune_norm)
        if prune_head:
            self.temporal = None
            self.num_prefix_tokens = 0

    def pool(self, x: torch.Tensor, global_pool: str) -> torch.Tensor:
        """``(b, prefix + t, d) -> (b, d)``; the spatial-only baseline averages its frames (scenic ``jnp.mean``).

        ``global_pool=""`` returns the tokens unpooled.
        """
        if global_pool == "":
            return x
        return x.mean(dim=1) if self.temporal is None else self.temporal.pool(x, global_pool)


ENCODERS: dict[str, type[nn.Module]] = {
    "spacetime": SpacetimeEncoder,
    "factorized_encoder": FactorizedEncoder,
    "factorized_self_attention": FactorizedSelfAttentionEncoder,
    "factorized_dot_product": FactorizedDotProductEncoder,
}
