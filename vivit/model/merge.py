"""Token merging (ToMe: Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023) inside a block stack.

Each block merges ``r`` pairs of similar tokens between its attention and its MLP, so the later blocks see fewer
tokens. The algorithm is the reference's (facebookresearch/ToMe ``tome/merge.py``, ``tome/patch/timm.py``):

- bipartite soft matching on the attention keys averaged over heads: tokens alternate into sets A (even positions) and
  B (odd); each A token's best cosine match in B is its edge, and the ``r`` best edges merge their A token into B;
- a CLS token (position 0, in A) is never merged and stays first;
- merged tokens are size-weighted averages and sizes are carried from block to block;
- proportional attention: once tokens have merged, ``log(size)`` of each key is added to the attention logits;
- at most half of the unprotected tokens merge in one block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.weak import WeakIdKeyDictionary

from vivit.model.layers import Block, fx_tracing

# ToMe's three forms of r: tokens per block, (r, inflection) with inflection in [-1, 1], or one r per block.
TokenMerging = int | tuple[int, float] | list[int]
# The sizes of the merged tokens that each eager forward_features call returned, keyed by the returned tensor itself
# (weakly: an entry goes with its features), so that forward_head pools features with their own sizes, not those of
# a later call. Outside the modules: a module holding weak references could no longer be pickled or deep-copied.
_SIZES_OF_FEATURES = WeakIdKeyDictionary()


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def parse_r(r: TokenMerging, depth: int, max_r: int | None = None) -> list[int]:
    """Tokens to merge in each of ``depth`` blocks, read as ToMe's ``parse_r`` reads ``r``.

    Args:
        r: An int (the same ``r`` in every block), an ``(r, inflection)`` pair (``inflection`` in ``[-1, 1]``: -1
            merges ``2r`` tokens in the first block down to 0 in the last, +1 the reverse, 0 is constant), or a list
            with one int per block (shorter lists are padded with zeros).
        depth: Blocks in the stack.
        max_r: The most tokens the first block can merge (half its unprotected tokens); larger values are refused.

    Returns:
        ``depth`` non-negative ints.
    """
    expected = ("token_merging must be an int >= 0 (tokens merged per block), an (r, inflection) tuple with "
                "inflection in [-1, 1], or a list of ints >= 0 with at most one per block")
    if isinstance(r, list):  # ToMe: a list is per block, a tuple is (r, inflection)
        if not all(_is_int(v) and v >= 0 for v in r):
            raise ValueError(f"{expected}; got {r!r}")
        if len(r) > depth:
            raise ValueError(f"token_merging lists one r per block: got {len(r)} values for {depth} blocks")
        return _check_max([int(v) for v in r] + [0] * (depth - len(r)), r, max_r)
    if isinstance(r, tuple):
        number = (int, float, np.integer, np.floating)
        if not (len(r) == 2 and _is_int(r[0]) and r[0] >= 0 and isinstance(r[1], number)
                and not isinstance(r[1], bool) and -1 <= r[1] <= 1):
            raise ValueError(f"{expected}; got {r!r}")
        base, inflection = int(r[0]), float(r[1])
    elif _is_int(r) and r >= 0:
        base, inflection = int(r), 0.0
    else:
        hint = " (r counts tokens: pass an int)" if isinstance(r, float | np.floating) else ""
        raise ValueError(f"{expected}; got {r!r}{hint}")
    # ToMe parse_r: a line from r * (1 - inflection) to 2r minus that, truncated to ints. (ToMe divides by
    # depth - 1; one block gets the line's start.)
    low = int(base * (1.0 - inflection))
    step = (2 * base - 2 * low) / (depth - 1) if depth > 1 else 0.0
    return _check_max([int(low + step * i) for i in range(depth)], r, max_r)


def _check_max(schedule: list[int], r: TokenMerging, max_r: int | None) -> list[int]:
    if max_r is not None and max(schedule, default=0) > max_r:
        raise ValueError(f"token_merging={r!r} merges up to {max(schedule)} tokens in a block, but a block can merge "
                         f"at most {max_r} (half of its tokens, CLS excepted); pass a smaller r")
    return schedule


@dataclass(frozen=True)
class Matching:
    """Which tokens of set A stay (``keep``), which merge (``src``) and into which token of set B (``dst``).

    Each is an index tensor ``(b, k, 1)``; positions count within A (even tokens) or B (odd tokens).
    """

    keep: torch.Tensor
    src: torch.Tensor
    dst: torch.Tensor


@torch.no_grad()
def bipartite_matching(metric: torch.Tensor, r: int, protected: int = 0) -> Matching | None:
    """ToMe's bipartite soft matching on ``metric`` ``(b, n, c)``; ``None`` when nothing merges.

    ``r`` is capped at half the unprotected tokens; ``protected`` (0 or 1) keeps token 0 unmerged and first.
    """
    r = min(r, (metric.shape[-2] - protected) // 2)
    if r <= 0:
        return None
    unit = metric / metric.norm(dim=-1, keepdim=True)
    similarity = unit[..., ::2, :] @ unit[..., 1::2, :].transpose(-1, -2)  # (b, |A|, |B|)
    if protected:
        similarity[..., 0, :] = -math.inf  # the CLS token's edge ranks last: never merged
    best, best_dst = similarity.max(dim=-1)
    ranked = best.argsort(dim=-1, descending=True)[..., None]
    keep, src = ranked[..., r:, :], ranked[..., :r, :]
    if protected:  # ToMe sorts the kept A tokens back into place only then, which puts the CLS token first
        keep = keep.sort(dim=-2).values
    return Matching(keep=keep, src=src, dst=best_dst[..., None].gather(dim=-2, index=src))


def merge_tokens(x: torch.Tensor, m: Matching, reduce: str = "sum") -> torch.Tensor:
    """``(b, n, c) -> (b, n - r, c)``: kept A tokens, then every B token with its merged A tokens reduced in."""
    a, b = x[..., ::2, :], x[..., 1::2, :]
    c = x.shape[-1]
    kept = a.gather(dim=-2, index=m.keep.expand(-1, -1, c))
    moving = a.gather(dim=-2, index=m.src.expand(-1, -1, c))
    return torch.cat([kept, b.scatter_reduce(-2, m.dst.expand(-1, -1, c), moving, reduce=reduce)], dim=-2)


def merge_weighted(x: torch.Tensor, size: torch.Tensor | None, m: Matching) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average merge of ``x`` ``(b, n, c)``; returns the merged tokens and their sizes ``(b, n', 1)``."""
    size = torch.ones_like(x[..., :1]) if size is None else size
    merged = merge_tokens(torch.cat([x * size, size], dim=-1), m)  # one gather/scatter pass for tokens and sizes
    total = merged[..., -1:]
    return merged[..., :-1] / total, total


def merging_block(
    block: Block, x: torch.Tensor, size: torch.Tensor | None, r: int, protected: int, num_outputs: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, Matching | None]:
    """One ``Block`` with ToMe between attention and MLP, on ``(b, n, d)`` tokens of sizes ``(b, n, 1)`` (or None).

    ``num_outputs``: only the first tokens are computed (see ``Block.forward``; the caller passes it only with a
    protected first token, which merging never moves), but the matching still runs on every token's key, so the
    sizes returned are those of the full output (``model.token_sizes`` after ``model(x)`` is that of
    ``forward_features``). Returns the tokens, their sizes and the matching (``None``: no merge).
    """
    bias = None if size is None else size.log()[..., None, None, :, 0]  # proportional attention, (b, 1, 1, n)
    out, metric = block.attn.forward_with_keys(block.norm1(x), num_outputs, bias)
    m = bipartite_matching(metric, r, protected)
    if num_outputs is not None:
        x = x[..., :num_outputs, :] + block.drop_path1(out)
        if m is not None:
            size = merge_tokens(torch.ones_like(metric[..., :1]) if size is None else size, m)
    else:
        x = x + block.drop_path1(out)
        if m is not None:
            x, size = merge_weighted(x, size, m)
    return x + block.drop_path2(block.mlp(block.norm2(x))), size, m


@dataclass
class MergeResult:
    """Tokens after the stack ``(*lead, n', d)``, their sizes ``(*lead, n', 1)`` and, when traced, the sources
    ``(*lead, n', n)``: ``sources[..., i, j]`` is 1 when input token ``j`` was merged into output token ``i``."""

    x: torch.Tensor
    sizes: torch.Tensor
    sources: torch.Tensor | None = None


def run_merging(
    blocks: Sequence[nn.Module], x: torch.Tensor, schedule: Sequence[int], protected: int, *,
    head_token_only: bool = False, grad_checkpointing: bool = False, trace_source: bool = False,
) -> MergeResult:
    """Run ``blocks`` on ``(*lead, n, d)`` tokens with ToMe, ``schedule[i]`` tokens merged by block ``i``.

    Every leading index (a clip, or one frame of a clip) merges on its own. ``head_token_only`` (only with a
    ``protected`` first token): the last block computes token 0 alone; the sizes and sources are still the full
    output's.
    """
    lead, n = x.shape[:-2], x.shape[-2]
    x = x.reshape(-1, n, x.shape[-1])
    size: torch.Tensor | None = None
    sources = torch.eye(n, device=x.device, dtype=x.dtype).expand(x.shape[0], n, n) if trace_source else None
    for i, (block, r) in enumerate(zip(blocks, schedule, strict=True)):
        num_outputs = 1 if head_token_only and i == len(blocks) - 1 else None
        if grad_checkpointing:
            x, size, m = checkpoint(merging_block, block, x, size, r, protected, num_outputs, use_reentrant=False)
        else:
            x, size, m = merging_block(block, x, size, r, protected, num_outputs)
        if sources is not None and m is not None:
            sources = merge_tokens(sources, m, reduce="amax")
    size = x.new_ones(x.shape[0], n, 1) if size is None else size  # nothing merged at all
    x, size = x.reshape(*lead, *x.shape[1:]), size.reshape(*lead, *size.shape[1:])
    return MergeResult(x, size, None if sources is None else sources.reshape(*lead, *sources.shape[1:]))


class TokenMergingMixin:
    """The model-level token-merging surface of ``ViViT``: the setting, and the sizes and sources of the last forward.

    Expects ``self.encoder`` with ``set_token_merging`` (Model 2: ``encoder.spatial`` merges).
    """

    encoder: nn.Module
    token_merging: TokenMerging
    global_pool: str

    def set_token_merging(self, r: TokenMerging, trace_source: bool = False) -> None:
        """Token merging (ToMe, Bolya et al. ICLR 2023): merge ``r`` similar tokens in each block, no training needed.

        Model 1 merges over the whole clip, Model 2 within each frame of its spatial encoder (the temporal encoder
        keeps its frame tokens); Models 3 and 4 refuse. ``forward_features`` then returns the merged tokens and
        ``token_sizes`` says how many input tokens each stands for.

        Args:
            r: An int (tokens merged per block), an ``(r, inflection)`` tuple (``inflection`` in ``[-1, 1]``: -1
                merges most in the first block, +1 in the last) or a list with one ``r`` per block, as ToMe's
                ``parse_r`` reads them. 0 restores the dense model.
            trace_source: Also record which input tokens each output token merged (``token_sources``).
        """
        self.encoder.set_token_merging(r, trace_source)
        self.token_merging = list(r) if isinstance(r, list) else r  # a copy: the caller's list may change later

    @property
    def token_sizes(self) -> torch.Tensor | None:
        """Sizes of the tokens the last forward returned with token merging: ``(B, prefix + N', 1)`` (Model 2: its
        spatial tokens, ``(B, T', prefix + S', 1)``); ``None`` without merging."""
        return self._merging_encoder().token_sizes

    @property
    def token_sources(self) -> torch.Tensor | None:
        """With ``set_token_merging(r, trace_source=True)``: ``(B, prefix + N', prefix + N)`` (Model 2:
        ``(B, T', prefix + S', prefix + S)``), 1 where an input token went into an output token."""
        return self._merging_encoder().token_sources

    def _merging_encoder(self) -> nn.Module:
        return getattr(self.encoder, "spatial", self.encoder)

    def _merges_before_the_head(self) -> bool:
        """Whether the head pools merged tokens (Model 1 merging; Model 2 pools each frame inside the encoder)."""
        return self._merging_encoder() is self.encoder and self.encoder.token_merging is not None

    def _remember_sizes(self, features: torch.Tensor) -> torch.Tensor:
        """``forward_features``' output, its token sizes recorded for ``forward_head``."""
        if self._merges_before_the_head() and not _tracing():
            _SIZES_OF_FEATURES[features] = self.encoder.token_sizes
        return features

    def _sizes_of(self, features: torch.Tensor) -> torch.Tensor | None:
        """The token sizes ``forward_head`` pools ``features`` with: those ``forward_features`` returned them with.

        ``None`` where pooling needs none (no merging, ``token`` / ``first`` / ``max`` pooling, Model 2) and while
        tracing (a compiled or exported graph pools with the sizes of its own forward).
        """
        if not self._merges_before_the_head() or self.global_pool not in ("avg", "sum") or _tracing():
            return None
        sizes = _SIZES_OF_FEATURES.get(features)
        if sizes is None:
            raise ValueError(
                f"forward_head got features that no forward_features call returned: with token merging, "
                f"{self.global_pool!r} pooling weighs each token by the number of input tokens it merged, sizes that "
                "come with forward_features' output. Pass that output itself (.detach(), .clone() and .to() make new "
                "tensors), or call model(x)")
        return sizes


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or fx_tracing()
