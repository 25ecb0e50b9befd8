"""ViViT: embed -> encoder variant -> pool -> pre_logits -> head, with timm's backbone surface."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx
from einops import rearrange
from torch import nn

from vivit.model.args import (
    ATTENTION_ORDERS,
    VARIANTS,
    check_args,
    check_grid,
    check_pool_switch,
    check_video,
    default_pool,
    static_refusal,
)
from vivit.model.embed import FrameSamplingEmbed, TubeletEmbed
from vivit.model.encoders import ENCODERS, BlockArgs, Transformer
from vivit.model.grid import checked_input_size, pair
from vivit.model.layers import Attention, Mlp, fx_tracing
from vivit.model.merge import TokenMerging, TokenMergingMixin
from vivit.model.static import parse_drop_static, static_keep

torch.fx.wrap("rearrange")  # see layers.py

_logger = logging.getLogger(__name__)
__all__ = ["ATTENTION_ORDERS", "VARIANTS", "PreLogits", "ViViT", "take_indices"]


def take_indices(num_blocks: int, indices: int | Sequence[int] | None = None) -> list[int]:
    """Absolute block indices, with the meaning timm's ``feature_take_indices`` gives them.

    Args:
        num_blocks: How many blocks there are to choose from.
        indices: ``None``: every block; an int ``n``: the last ``n`` blocks; a sequence: those blocks (negative
            indices count from the end).

    Returns:
        The chosen indices, each in ``[0, num_blocks)``.
    """
    if indices is None:
        return list(range(num_blocks))
    if isinstance(indices, int):
        if not 0 < indices <= num_blocks:
            raise ValueError(f"indices={indices} asks for the last {indices} blocks; the model has {num_blocks}")
        return list(range(num_blocks - indices, num_blocks))
    taken = [i + num_blocks if i < 0 else i for i in indices]
    if not taken or any(not 0 <= i < num_blocks for i in taken):
        raise ValueError(f"block indices {list(indices)} must be a non-empty list of values in "
                         f"[-{num_blocks}, {num_blocks}): the model has {num_blocks} blocks")
    return taken


class PreLogits(nn.Module):
    """scenic ``pre_logits``: Dense + tanh."""

    def __init__(self, dim: int, representation_size: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, representation_size)
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, d) -> (b, representation_size)``."""
        return self.act(self.fc(x))


class ViViT(TokenMergingMixin, nn.Module):
    """Video Vision Transformer (Arnab et al., ICCV 2021), all four model variants.

    Input is a float video ``B x C x T x H x W`` scaled like the reference (``x * 2 / 255 - 1``); output logits
    ``B x num_classes``. ``docs/architecture.md`` explains the variants and token layouts.

    Args:
        variant: ``"spacetime"`` (Model 1), ``"factorized_encoder"`` (2), ``"factorized_self_attention"`` (3) or
            ``"factorized_dot_product"`` (4).
        img_size: Frame size ``H`` or ``(H, W)``.
        num_frames: Clip length ``T``.
        in_chans: Input channels.
        tubelet_size: ``(t, h, w)`` of the tubelet embedding (``(1, h, w)`` for frame sampling).
        embedding: ``"tubelet"`` or ``"frame_sampling"`` (uniformly sampled frames, 2D patches).
        n_sampled_frames: Frames to sample with ``embedding="frame_sampling"``.
        exact_frame_count: Frame sampling gives exactly ``n_sampled_frames`` frames (the reference can give one more).
        embed_dim: Token width.
        depth: Blocks (Model 2: spatial blocks).
        num_heads: Attention heads (Model 4: even, half over time, half over space).
        mlp_dim: MLP hidden width.
        temporal_depth: Model 2's temporal blocks.
        temporal_num_heads: Model 2's temporal heads (default ``num_heads``).
        temporal_mlp_dim: Model 2's temporal MLP width (default ``mlp_dim``).
        num_classes: Head size; 0 returns the pooled features.
        global_pool: ``"token"`` (CLS, default for Models 1-2), ``"avg"`` (default for Models 3-4), ``"max"``,
            ``"sum"`` or ``"first"``.
        representation_size: Width of the reference's optional Dense + tanh ``pre_logits`` layer.
        attention_order: Model 3: ``"space_time"`` or ``"time_space"``.
        spatial_only_baseline: Model 2 without its temporal encoder (frame tokens are averaged).
        drop_rate: Dropout after the embedding, in the MLPs and after attention projections.
        attn_drop_rate: Dropout on attention weights.
        drop_path_rate: Stochastic depth of the last block (linear from 0; per example, no rescaling, as the
            reference).
        act_layer: ``"gelu_tanh"`` (the reference's flax default) or ``"gelu"``.
        norm_eps: LayerNorm epsilon.
        attn_impl: ``"sdpa"`` (fused kernels) or ``"eager"`` (needed for attention maps).
        dynamic_input_size: ``forward`` takes any ``T x H x W`` that is a multiple of the tubelet, with the positional
            embeddings resampled to its token grid (cached per grid); the built size uses them as they are.
        token_merging: ToMe's ``r`` for Models 1 and 2 (see ``set_token_merging``); 0 (default) merges nothing.
        drop_static: Model 1: skip tubelets that barely change (see ``set_drop_static``); 0 (default) keeps all.
    """

    def __init__(
        self,
        *,
        variant: str = "spacetime",
        img_size: int | tuple[int, int] = 224,
        num_frames: int = 32,
        in_chans: int = 3,
        tubelet_size: tuple[int, int, int] = (2, 16, 16),
        embedding: str = "tubelet",
        n_sampled_frames: int | None = None,
        exact_frame_count: bool = False,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        temporal_depth: int = 4,
        temporal_num_heads: int | None = None,
        temporal_mlp_dim: int | None = None,
        num_classes: int = 400,
        global_pool: str | None = None,
        representation_size: int | None = None,
        attention_order: str = "space_time",
        spatial_only_baseline: bool = False,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        act_layer: str = "gelu_tanh",
        norm_eps: float = 1e-6,
        attn_impl: str = "sdpa",
        dynamic_input_size: bool = False,
        token_merging: TokenMerging = 0,
        drop_static: float | bool = 0.0,
    ) -> None:
        super().__init__()
        # token_merging and drop_static are run-time settings, not architecture: saved configs leave them out.
        self.model_args: dict[str, Any] = {k: v for k, v in locals().items()
                                           if k not in ("self", "__class__", "token_merging", "drop_static")}
        check_args(self.model_args)
        self.variant = variant
        self.img_size = pair(img_size)
        self.num_frames = num_frames
        self.in_chans = in_chans
        self.tubelet_size = tuple(int(v) for v in tubelet_size)
        # "" (timm: unpooled tokens) builds the variant's default pooling, then drops it
        self.global_pool = default_pool(variant, global_pool)
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.num_features = self.head_hidden_size = representation_size or embed_dim
        self.pretrained_cfg: dict[str, Any] = {}
        self.patch_embed = _make_embed(self.model_args, self.img_size, self.tubelet_size)
        self.dynamic_input_size = dynamic_input_size
        check_grid(self.patch_embed.grid_size, num_frames, self.img_size, self.tubelet_size)
        self.encoder = _make_encoder(self.model_args, self.patch_embed.grid_size, self.global_pool)
        self.pre_logits = PreLogits(embed_dim, representation_size) if representation_size else nn.Identity()
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if global_pool == "":
            self.global_pool = ""
        self.init_weights()
        self.token_merging: TokenMerging = 0
        self.drop_static = 0.0
        # The encoders are built dense: only another setting needs parsing (the int 0 is the default, and valid).
        if type(token_merging) is not int or token_merging != 0:
            self.set_token_merging(token_merging)
        if drop_static is not False and drop_static != 0:
            self.set_drop_static(drop_static)

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self) -> None:
        """The reference's initialisers (scenic ``vivit/model.py`` and flax defaults), for every tensor.

        Also what to call after ``with torch.device("meta")`` creation and ``to_empty()``: positional embeddings, CLS
        tokens, LayerNorms and the frame-sampling indices are set too.
        """
        _init_reference(self)

    # --------------------------------------------------------------- forward
    def check_input(self, x: torch.Tensor) -> None:
        """Raise unless ``x`` is a float ``B x C x T x H x W`` tensor of the model's size and dtype.

        ``TypeError`` for something that is no tensor (a numpy array: ``torch.from_numpy(x)``) or a float dtype other
        than the model's (outside autocast, which casts for itself); ``ValueError`` for a wrong shape (a
        ``B x T x C x H x W`` clip, the transformers layout, names the ``permute`` that fixes it) or integer frames.
        Nothing is converted: a silent cast would hide a float64 pipeline or copy a clip to another dtype per call.
        Skipped while ``torch.fx`` traces (shapes are proxies then).
        """
        check_video(self, x)

    def _input_grid(self, x: torch.Tensor) -> tuple[int, int, int] | None:
        """The token grid of ``x`` for a dynamic-size model (``None``: the built grid)."""
        if not self.dynamic_input_size or fx_tracing():
            return None
        return self.patch_embed.grid_for(*x.shape[2:])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W) -> (B, prefix + N, D)`` normed encoder tokens.

        Models 1, 3, 4: all ``t*h*w`` tokens (+ CLS). Model 2: the temporal encoder's ``[1+]t`` tokens; its
        spatial-only baseline: the ``t`` per-frame pooled tokens.
        """
        self.check_input(x)
        if self.drop_static:
            features = self._forward_static(x, head_token_only=False, pool=False)
            if len({f.shape[1] for f in features}) > 1:
                raise ValueError(f"with drop_static the clips of this batch keep {[f.shape[1] for f in features]} "
                                 "tokens, which do not stack; call forward_features one clip at a time, or forward "
                                 "(which pools each clip)")
            return torch.cat(features)  # sizes differ per clip: not remembered, so forward_head refuses to guess
        return self._remember_sizes(self.encoder(self.patch_embed(x), grid=self._input_grid(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, prefix + N, D) -> (B, num_classes)``, or the pooled ``(B, num_features)`` with ``pre_logits``.

        With token merging (Model 1) ``avg`` / ``sum`` pooling weighs the tokens by the sizes ``forward_features``
        returned ``x`` with, so ``x`` must be that output itself (another tensor is refused with a ``ValueError``).
        """
        return self._head(x, pre_logits, self._sizes_of(x))

    def _head(self, x: torch.Tensor, pre_logits: bool = False, sizes: torch.Tensor | None = None) -> torch.Tensor:
        """``forward_head`` with the merged tokens' ``sizes`` given (``None``: the encoder's last forward's)."""
        x = self.pre_logits(self.encoder.pool(x, self.global_pool, sizes) if sizes is not None
                            else self.encoder.pool(x, self.global_pool))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W) -> (B, num_classes)`` logits (``(B, num_features)`` when ``num_classes == 0``).

        Equal to ``forward_head(forward_features(x))``. With ``token`` / ``first`` pooling only token 0 reaches the
        head, so the last block of each encoder computes that token alone (ViViT-B: 7.0 % fewer MACs for Model 1,
        6.2 % for Model 2); hooks on those blocks' projection and MLP then see one token.
        """
        self.check_input(x)
        head_token_only = self.global_pool in ("token", "first")
        if self.drop_static:
            return torch.cat(self._forward_static(x, head_token_only, pool=True))
        return self._head(self.encoder(self.patch_embed(x), head_token_only=head_token_only, grid=self._input_grid(x)))

    def forward_slices(self, x: torch.Tensor) -> torch.Tensor:
        """Model 2's spatial half: ``(B, C, T, H, W) -> (B, T / t, D)``, one token per tubelet-time slice.

        ``T`` is any positive multiple of the tubelet length ``t`` (one slice: ``T = t``); ``H x W`` is the model's.
        A slice's token depends on its own frames only, so slices shared by overlapping clips can be encoded once:
        ``forward_from_slices`` of the clip's slice tokens equals ``forward`` of the clip.
        """
        self._check_slices_supported()
        check_slices(self, x)
        t, h, w = self.grid_size
        grid = (x.shape[2] // self.tubelet_size[0], h, w)
        return self.encoder.forward_frames(self.patch_embed(x), self.global_pool in ("token", "first"), grid)

    def forward_from_slices(self, x: torch.Tensor) -> torch.Tensor:
        """Model 2's temporal half and head: slice tokens ``(B, T', D)`` of whole clips -> ``(B, num_classes)``."""
        self._check_slices_supported()
        if x.ndim != 3 or x.shape[1:] != (self.grid_size[0], self.embed_dim):
            raise ValueError(f"expected slice tokens B x {self.grid_size[0]} x {self.embed_dim} (forward_slices of "
                             f"whole clips), got shape {tuple(x.shape)}")
        return self.forward_head(self.encoder.forward_time(x, self.global_pool in ("token", "first")))

    def _check_slices_supported(self) -> None:
        if self.variant != "factorized_encoder" or not isinstance(self.patch_embed, TubeletEmbed):
            raise ValueError(f"slice tokens need Model 2 (variant 'factorized_encoder') with tubelet embedding, whose "
                             f"spatial encoder sees each tubelet-time slice alone; this model is {self.variant!r} "
                             f"with {type(self.patch_embed).__name__}: call the model on whole clips instead")

    def set_drop_static(self, tau: float | bool) -> None:
        """Skip static tubelets before the encoder (Run-Length Tokenization's rule; Model 1 only), no training needed.

        A tubelet is kept when the mean absolute difference between its last frame and the first frame of the
        tubelet before it (same patch), averaged over the patch and the channels, exceeds ``tau``; each patch's first
        tubelet is always kept. Kept tokens keep their own positional embeddings: the output is the dense model's on
        the kept tokens alone, each clip of a batch with its own count (clips run one at a time). Composes with token
        merging. Models 2-4 refuse: Model 2's spatial encoder, and Models 3 and 4's factorised attention, need every
        tubelet of the ``t x h x w`` grid.

        Args:
            tau: Threshold in the model's ``[-1, 1]`` input units; ``True`` is ``vivit.model.static.
                DROP_STATIC_DEFAULT`` (0.045: RLT's 0.1 in ImageNet units, converted); 0 turns skipping off.
        """
        tau = parse_drop_static(tau)
        refusal = static_refusal(self.variant, self.model_args.get("embedding", "tubelet"))
        if tau and refusal:
            raise ValueError(refusal)
        self.drop_static = tau

    def _forward_static(self, x: torch.Tensor, head_token_only: bool, pool: bool) -> list[torch.Tensor]:
        """Each clip on its kept tokens: pooled head outputs ``(1, K)``, or normed features ``(1, prefix + k, d)``."""
        grid = self._input_grid(x)
        keep = static_keep(x, self.tubelet_size, self.drop_static)
        tokens = self.patch_embed(x)
        out = []
        for clip, kept in zip(tokens, keep, strict=True):
            features = self.encoder.forward_kept(clip[None], kept.nonzero()[:, 0], head_token_only, grid)
            out.append(self._head(features) if pool else features)  # pool now: the encoder's sizes are this clip's
        return out

    @torch.no_grad()
    def forward_attention_maps(self, x: torch.Tensor) -> dict[str, Any]:
        """Softmax attention weights of every attention layer, keyed by module name (needs ``attn_impl="eager"``).

        Each value is ``(B, *groups, heads, n, n)`` for the tokens that layer attends over; Model 4 layers give a dict
        ``{"time": ..., "space": ...}``.
        """
        return _attention_maps(self, x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCTHW",
        intermediates_only: bool = False,
    ) -> list[Any] | tuple[torch.Tensor, list[Any]]:
        """Per-block feature maps, as timm's ``forward_intermediates`` (the video version of its ``NCHW`` maps).

        Models 1, 3 and 4 return their encoder blocks. Model 2 returns its *spatial* blocks, which see each frame
        group on its own: its maps are per-frame features stacked along ``T'``. Its temporal encoder only mixes the
        pooled frame tokens, so it adds no map; it contributes the final features, which are the same as
        ``forward_features`` (the temporal encoder's normed ``B x [1+]T' x D`` tokens).

        Args:
            x: Video ``B x C x T x H x W``.
            indices: ``None``: every block; an int ``n``: the last ``n`` blocks; a sequence: those block indices
                (negative from the end).
            return_prefix_tokens: Return ``(map, prefix)`` pairs, ``prefix`` being the CLS token ``B x 1 x D``
                (Model 2: one per frame, ``B x T' x 1 x D``). Models without a CLS token return plain maps.
            norm: Pass each intermediate through the final norm of its encoder.
            stop_early: Skip the blocks after the last chosen one (the final features then come from the truncated
                encoder).
            output_fmt: ``"NCTHW"``: maps ``B x D x T' x H' x W'``; ``"NLC"``: tokens ``B x T'H'W' x D``, t-major.
            intermediates_only: Return only the list of intermediates.

        Returns:
            ``(final features, intermediates)``, or just the intermediates; intermediates are in block order.
        """
        if output_fmt not in ("NCTHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCTHW' (B x D x T' x H' x W' maps) or 'NLC', got {output_fmt!r}")
        if self.drop_static:
            raise ValueError("forward_intermediates returns every block's tokens on the t x h x w grid, from which "
                             "drop_static leaves static tubelets out; call model.set_drop_static(0) first")
        take = take_indices(len(self.encoder.get_submodule(self.encoder.intermediate_blocks)), indices)
        self.check_input(x)
        grid = self._input_grid(x)
        final, maps, prefix = self.encoder.forward_intermediates(
            self.patch_embed(x), set(take), norm=norm, stop_early=stop_early, final=not intermediates_only, grid=grid)
        if output_fmt == "NCTHW":
            t, h, w = self.grid_size if grid is None else grid
            maps = [rearrange(y, "b (t h w) d -> b d t h w", t=t, h=h, w=w).contiguous() for y in maps]
        if return_prefix_tokens and prefix is not None:
            maps = list(zip(maps, prefix, strict=True))
        return maps if intermediates_only else (final, maps)

    # ------------------------------------------------------------ timm surface
    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop what ``forward_intermediates(indices=...)`` does not need (timm); returns the kept indices.

        Args:
            indices: The intermediates that will be asked for, as in ``forward_intermediates``.
            prune_norm: Replace the final norm (Model 2: the spatial encoder's) by ``nn.Identity``.
            prune_head: Remove ``pre_logits`` and the classifier; Model 2 also drops its temporal encoder, which reads
                only pooled frames (the model then pools like the spatial-only baseline).
        """
        return _prune(self, indices, prune_norm, prune_head)

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """One entry per block ``forward_intermediates`` can return (timm): channels, strides, module name.

        ``reduction`` is the spatial stride (the tubelet's height), ``temporal_reduction`` the tubelet's length
        (1 for frame sampling, whose token frames are sampled frames).
        """
        blocks = self.encoder.intermediate_blocks
        return [dict(module=f"encoder.{blocks}.{i}", num_chs=self.embed_dim, reduction=self.tubelet_size[1],
                     temporal_reduction=self.tubelet_size[0])
                for i in range(len(self.encoder.get_submodule(blocks)))]

    def get_classifier(self) -> nn.Module:
        """The final classification layer."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a zero-initialised one for ``num_classes`` (0: no head, forward returns features).

        The new head is on the model's device and dtype and in its train/eval mode. ``global_pool=""`` stops pooling:
        ``forward`` then returns every token (``B x prefix + N x D`` with ``num_classes=0``), as timm's ViT does.
        """
        if global_pool is not None:
            check_pool_switch(self.global_pool, global_pool, self.encoder.num_prefix_tokens > 0)
            self.global_pool = global_pool
        self.num_classes = num_classes
        if num_classes > 0:
            like = self.patch_embed.proj.weight
            self.head = nn.Linear(self.num_features, num_classes, device=like.device, dtype=like.dtype)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        else:
            self.head = nn.Identity()
        self.head.train(self.training)

    def set_input_size(self, img_size: int | tuple[int, int] | None = None, num_frames: int | None = None) -> None:
        """Change the clip size the model takes, resampling its positional embeddings in place (timm's name).

        Spatial grids are resized bilinearly, time linearly, both with aligned corners (SPEC 4.3), exactly as loading
        weights into a model created for the new size does. Parameters stay parameters, ``requires_grad`` is kept.

        Args:
            img_size: New frame size ``H`` or ``(H, W)`` (default: unchanged).
            num_frames: New clip length ``T`` (default: unchanged).
        """
        _set_input_size(self, img_size, num_frames)

    def input_cfg(self) -> dict[str, Any]:
        """timm's input fields of ``pretrained_cfg`` for the model as it is now.

        ``input_size`` is ``(C, T, H, W)``; ``fixed_input_size`` is false only with ``dynamic_input_size``;
        ``pool_size`` is ``None`` (the features are tokens, not a 2-D map).
        """
        return {"input_size": (self.in_chans, self.num_frames, *self.img_size),
                "fixed_input_size": not self.dynamic_input_size, "pool_size": None}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass (same outputs, less memory)."""
        for module in self.modules():
            if isinstance(module, Transformer):
                module.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Positional embeddings and CLS tokens (timm convention)."""
        return {name for name, _ in self.named_parameters() if name.endswith(("pos_embed", "cls_token"))}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise LR decay: stem, blocks (Model 2: spatial, then temporal), final norms."""
        return _group_matcher(self.encoder, coarse)

    # ---------------------------------------------------------------- weights
    def save_pretrained(self, save_directory: str, *, label_names: list[str] | None = None,
                        allow_non_finite: bool = False) -> Any:
        """Write ``model.safetensors``, a timm-schema ``config.json`` and a ``README.md`` card to a folder.

        Weights holding NaN or infinite values are refused unless ``allow_non_finite``.
        """
        from vivit.weights.publish import save_pretrained

        return save_pretrained(self, save_directory, label_names=label_names, allow_non_finite=allow_non_finite)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload ``save_pretrained``'s folder to the Hugging Face Hub repo ``repo_id``; returns the commit URL."""
        from vivit.weights.publish import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike[str], **kwargs: Any) -> ViViT:
        """A model with weights, as Hugging Face's ``from_pretrained``: ``vivit.create_model(source, pretrained=True)``.

        Args:
            source: A folder written by :meth:`save_pretrained` (or a transformers ViViT folder), ``"hf-hub:org/repo"``
                or ``"org/repo"`` (a Hub repo, when no such local folder exists), or a tag (``"vivit_b_16x2.k400"``).
            **kwargs: ``create_model`` keywords: ``num_classes``, ``num_frames``, ``img_size``, any ViViT keyword.
        """
        # The weights path sits above the model; this constructor reaches up to it, like save_pretrained (STYLE).
        from vivit.weights.build import build, parse_source

        return build(parse_source(os.fspath(source), folder_first=True, bare_hub=True), True, **kwargs)

    @property
    def default_cfg(self) -> dict[str, Any]:
        """Alias of ``pretrained_cfg`` (timm)."""
        return self.pretrained_cfg

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Token grid ``(t, h, w)``."""
        return tuple(self.patch_embed.grid_size)



def check_slices(model: ViViT, x: torch.Tensor) -> None:
    """Raise unless ``x`` is a float ``B x C x T x H x W`` video of the model's frame size, ``T`` a multiple of the
    tubelet length (``ViViT.forward_slices``)."""
    if fx_tracing() or torch.compiler.is_exporting():  # shapes are proxies then
        return
    t = model.tubelet_size[0]
    expected = f"B x {model.in_chans} x T x {model.img_size[0]} x {model.img_size[1]} with T a positive multiple of {t}"
    if not isinstance(x, torch.Tensor) or x.ndim != 5 or x.shape[1] != model.in_chans or (
            tuple(x.shape[3:]) != model.img_size) or x.shape[2] < t or x.shape[2] % t:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected slices {expected}, got {shape}")
    dtype = model.patch_embed.proj.weight.dtype
    if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"expected {dtype} slices scaled to [-1, 1] (the model's dtype), got {x.dtype}")


def _set_input_size(model: ViViT, img_size: int | tuple[int, int] | None, num_frames: int | None) -> None:
    """``ViViT.set_input_size``: checked first, then all or nothing."""
    img_size, num_frames, grid = checked_input_size(model.img_size if img_size is None else img_size,
                                                    model.num_frames if num_frames is None else num_frames,
                                                    model.model_args)
    if model.variant != "spacetime" and isinstance(model.patch_embed, FrameSamplingEmbed) and (
            img_size[0] % model.tubelet_size[1]):
        raise ValueError(f"{model.variant} needs frame-aligned tokens: the patch height {model.tubelet_size[1]} must "
                         f"divide the frame height, got {img_size[0]}")
    old = (model.img_size, model.num_frames)
    saved = [(m, m.__dict__.get("grid"), m._parameters.get("pos_embed")) for m in model.encoder.modules()]
    try:  # all or nothing: an error (out of memory) puts back every grid and positional embedding
        model.patch_embed.set_input_size(img_size, num_frames)
        model.encoder.set_grid(grid)
    except BaseException:
        model.patch_embed.set_input_size(*old)
        for module, module_grid, pos_embed in saved:
            if module_grid is not None:
                module.grid = module_grid
            if pos_embed is not None:
                module.pos_embed = pos_embed
        raise
    model.img_size, model.num_frames = img_size, num_frames
    model.model_args.update(img_size=img_size, num_frames=num_frames)
    model.pretrained_cfg = {**model.pretrained_cfg, **model.input_cfg()}


def _make_embed(args: dict[str, Any], img_size: tuple[int, int], tubelet: tuple[int, ...]) -> nn.Module:
    """The patch embedding ``args["embedding"]`` names (``check_args`` admits only the two)."""
    if args["embedding"] == "tubelet":
        return TubeletEmbed(img_size, args["num_frames"], tubelet, args["in_chans"], args["embed_dim"])
    return FrameSamplingEmbed(img_size, args["num_frames"], tubelet[1:], args["in_chans"], args["embed_dim"],
                              args["n_sampled_frames"], args["exact_frame_count"])


def _make_encoder(args: dict[str, Any], grid: Sequence[int], global_pool: str) -> nn.Module:
    """``ENCODERS[variant]`` with the keywords only that variant takes."""
    variant = args["variant"]
    extra: dict[str, Any] = {}
    if variant == "factorized_encoder":
        extra = {k: args[k] for k in ("temporal_depth", "temporal_num_heads", "temporal_mlp_dim",
                                      "spatial_only_baseline")}
        extra["global_pool"] = global_pool
    elif variant == "factorized_self_attention":
        extra = dict(attention_order=args["attention_order"])
        if args["drop_path_rate"]:
            _logger.warning("factorized_self_attention has no stochastic depth in the reference; ignoring "
                            "drop_path_rate=%s", args["drop_path_rate"])
    block_args = BlockArgs(args["drop_rate"], args["attn_drop_rate"], args["act_layer"], args["norm_eps"],
                           args["attn_impl"])
    return ENCODERS[variant](grid, args["embed_dim"], args["depth"], args["num_heads"], args["mlp_dim"],
                             use_cls=global_pool == "token", drop_path_rate=args["drop_path_rate"], args=block_args,
                             **extra)


@torch.no_grad()
def _init_reference(model: nn.Module) -> None:
    """``ViViT.init_weights``: the reference's initialisers for every tensor."""
    for module in model.modules():
        if isinstance(module, Transformer):  # scenic AddPositionEmbs: normal(0.02); CLS tokens: zeros
            nn.init.normal_(module.pos_embed, std=0.02)
            if module.cls_token is not None:
                nn.init.zeros_(module.cls_token)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, FrameSamplingEmbed):
            module.frame_indices.copy_(torch.tensor(module.frame_index_list))
        if isinstance(module, Attention):  # flax MHA: xavier_uniform over the (d, heads*hd) kernel, zero bias
            bound = math.sqrt(6.0 / (2 * module.proj.in_features))
            for linear in (module.qkv, module.proj):
                nn.init.uniform_(linear.weight, -bound, bound)
                nn.init.zeros_(linear.bias)
        elif isinstance(module, Mlp):  # MlpBlock: xavier_uniform kernels, normal(1e-6) biases
            for linear in (module.fc1, module.fc2):
                nn.init.xavier_uniform_(linear.weight)
                nn.init.normal_(linear.bias, std=1e-6)
        elif isinstance(module, (nn.Conv2d, nn.Conv3d, PreLogits)):  # flax default: lecun_normal, zero bias
            layer = module.fc if isinstance(module, PreLogits) else module
            fan_in = layer.weight[0].numel()
            std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
            nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(layer.bias)
    if isinstance(model.head, nn.Linear):  # scenic output_projection: zeros
        nn.init.zeros_(model.head.weight)
        nn.init.zeros_(model.head.bias)


def _attention_maps(model: ViViT, x: torch.Tensor) -> dict[str, Any]:
    """``ViViT.forward_attention_maps``: record every attention layer's weights during one forward pass."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, Attention)}
    if any(m.attn_impl != "eager" for m in layers.values()):
        raise ValueError("attention maps need a model created with attn_impl='eager'")
    for m in layers.values():
        m.record_attn = True
    try:
        model.forward_head(model.forward_features(x))  # not forward: its last block has only one query
        return {name: m.attn_map for name, m in layers.items()}
    finally:
        for m in layers.values():
            m.record_attn, m.attn_map = False, None


def _group_matcher(encoder: nn.Module, coarse: bool) -> dict[str, Any]:
    """``ViViT.group_matcher``: stem, blocks (Model 2: spatial, then temporal), final norms."""
    block = r"^encoder\.(?:spatial\.)?blocks\.(\d+)"
    matcher: dict[str, Any] = {
        "stem": r"^patch_embed|^encoder\.(?:spatial\.)?(?:cls_token|pos_embed)",
        "blocks": block if coarse else [(block, None), (r"^encoder\.(?:spatial\.)?norm", (99999,))],
    }
    if getattr(encoder, "temporal", None) is not None:
        temporal = r"^encoder\.temporal\.blocks\.(\d+)"
        matcher["temporal"] = temporal if coarse else [
            (r"^encoder\.temporal\.(?:cls_token|pos_embed)", (0,)),
            (temporal, (1,)),
            (r"^encoder\.temporal\.norm", (99999,)),
        ]
    return matcher


def _prune(model: ViViT, indices: int | Sequence[int], prune_norm: bool, prune_head: bool) -> list[int]:
    """``ViViT.prune_intermediate_layers``."""
    take = take_indices(len(model.encoder.get_submodule(model.encoder.intermediate_blocks)), indices)
    model.encoder.prune(max(take) + 1, prune_norm=prune_norm, prune_head=prune_head)
    model.model_args["depth"] = max(take) + 1  # keeps save_pretrained's config able to rebuild the model
    if prune_head:
        model.pre_logits = nn.Identity()
        model.num_features = model.head_hidden_size = model.embed_dim
        model.reset_classifier(0)
        model.model_args.update(representation_size=None, spatial_only_baseline=(
            hasattr(model.encoder, "temporal") and model.encoder.temporal is None))
    return take
