"""The loader: resolve a source -> fetch -> read (the format detected once) -> convert -> weights in our layout
(:class:`Weights`), read with the model's arguments only; then fit positional embeddings -> strict load into a model.
A saved or Hub folder is read into a :class:`ModelSpec` (what to build and its weights); the builder constructs it.

Sources: a zoo tag (``"vivit_b_16x2_fe.k400"``), ``"hf-hub:org/repo[@rev]"`` (a vivit folder or a transformers ViViT
repo), an ``http(s)`` URL, a local file (safetensors, torch state dict, reference flax checkpoint, ``.npz`` of flax
paths) or a local folder (``save_pretrained`` output, transformers folder, reference checkpoint folder).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from vivit.labels import label_names
from vivit.model.vivit import ViViT
from vivit.weights import fetch
from vivit.weights.config import checked_model_args, estimate_parameters, pretrained_cfg, with_defaults
from vivit.weights.convert.checkpoint import read_scenic_checkpoint
from vivit.weights.convert.scenic import convert_scenic_params, flatten_params
from vivit.weights.convert.transformers import convert_transformers, model_args_from_transformers
from vivit.weights.fit import LoadReport, fit_input_channels, fit_pos_embeds, grid_of_args, remember_load, source_grid
from vivit.weights.read import (
    CONFIG_NAME,
    check_finite,
    config_kind,
    detect_format,
    file_sha256,
    folder_weights_file,
    read_json,
    read_npz,
    read_state_dict,
    read_weights_file,
)
from vivit.weights.source import Source, parse_source
from vivit.zoo import ARCHS, GENERIC_ARCH, PRETRAINED, PretrainedCfg, resolve_name, tagged_name

_logger = logging.getLogger(__name__)

HEAD_KEYS = ("head.weight", "head.bias")


@dataclass
class Weights:
    """Weights in one of our layouts plus what is known about where they came from."""

    state: dict[str, torch.Tensor]
    grid: tuple[int, int, int] | None = None  # token grid the weights were trained on, when known
    label_names: list[str] | None = None
    source: str = "the weights"  # where they were read from, for error messages
    args: dict[str, Any] | None = None  # the ViViT kwargs the weights state, when known
    checkpoint: str | None = None  # the released "arch.tag" these weights are


@dataclass
class ModelSpec:
    """What to build, decided before the model exists: ``ViViT`` arguments (the head size included), the base of its
    ``pretrained_cfg``, its class names, and the weights to load (``None``: the model stays at its init)."""

    args: dict[str, Any]
    cfg: dict[str, Any]
    label_names: list[str] | None = None
    weights: Weights | None = None


def head_classes(state: Mapping[str, torch.Tensor]) -> int | None:
    """The class count of the classifier head in ``state``; ``None`` for headless weights (a backbone)."""
    head = state.get("head.weight")
    return None if head is None else int(head.shape[0])


# -------------------------------------------------------------------------------------------------- reading
def read_weights(path: str | Path, args: Mapping[str, Any]) -> Weights:
    """Read a local file or folder and bring its weights into our key layout for a ``ViViT(**args)``."""
    path = Path(path)
    fmt = detect_format(path)  # the one detection of this load
    _logger.info("reading %s weights from %s", fmt, path)
    if fmt.endswith("-folder"):
        return folder_weights(read_json(path / CONFIG_NAME), folder_weights_file(path), str(path / CONFIG_NAME))
    if fmt in ("scenic", "npz"):
        full = with_defaults(args)
        # An .npz may declare at most twice the model's float32 bytes: a zip bomb is refused from its headers.
        budget = 2 * 4 * estimate_parameters(full) + (16 << 20)
        params = read_scenic_checkpoint(path) if fmt == "scenic" else flatten_params(read_npz(path, budget))
        return Weights(convert_scenic_params(params, full["variant"], source=str(path)), source=str(path))
    return _from_state_dict(read_state_dict(path, fmt), path)


def folder_weights(config: Mapping[str, Any], path: Path, where: str) -> Weights:
    """The weights file ``path`` beside a vivit ``config.json`` (our layout, its ``model_args`` checked) or a
    transformers one (converted); ``where`` names the config for messages."""
    state = read_weights_file(config, path)
    source = f"{where.removesuffix(CONFIG_NAME).rstrip('/ ')} ({path.name})"
    if config_kind(config) == "vivit":
        args = checked_model_args(config, where)
        return Weights(state, grid_of_args(args), config.get("label_names"), source, args)
    return _from_transformers(state, config, source)


def _from_state_dict(state: dict[str, torch.Tensor], path: Path) -> Weights:
    keys = set(state)
    if any("patch_embeddings.projection" in k for k in keys):
        config = path.parent / CONFIG_NAME
        if not config.is_file():
            raise ValueError(f"{path} holds transformers ViViT weights; put its config.json beside it (or pass the "
                             "folder) so activation, eps and sizes can be read")
        return _from_transformers(state, read_json(config), str(path))
    if "patch_embed.proj.weight" in keys and state["patch_embed.proj.weight"].ndim == 4 and not any(
            k.startswith("encoder.") for k in keys):
        raise ValueError(f"{path} holds a 2D image ViT (patch_embed.proj is a Conv2d): use vivit.inflate(model, "
                         "state_dict) to inflate it into a video model")
    return Weights(state, source=str(path))


def _from_transformers(state: Mapping[str, torch.Tensor], config: Mapping[str, Any], source: str) -> Weights:
    try:
        converted = convert_transformers(state, config)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    return Weights(converted.state, grid_of_args(converted.args), converted.label_names, source, converted.args)


# ------------------------------------------------------------------------------------------------- loading
def load_weights_into(model: ViViT, weights: Weights, *, strict: bool = True,
                      allow_non_finite: bool = False) -> ViViT:
    """Resample, adapt the input channels, reconcile the head, and load; only the head may be left out, and only when
    its size changed.

    NaN or infinite values are refused (naming the tensors) unless ``allow_non_finite``.
    """
    if not allow_non_finite:
        check_finite(weights.state, weights.source)
    state = dict(weights.state)
    report = LoadReport(weights.source, weights.checkpoint)
    report.resampled = fit_pos_embeds(state, model, source_grid(state, model, weights.grid))
    report.adapted_channels = fit_input_channels(state, model)
    target = model.state_dict()
    allowed_missing = _reconcile_head(state, model, report)
    for key, value in state.items():
        if key in target and tuple(value.shape) != tuple(target[key].shape):
            raise ValueError(f"{weights.source}: weight {key} has shape {tuple(value.shape)} but the model expects "
                             f"{tuple(target[key].shape)}: the weights belong to another architecture "
                             f"(model: {model.variant}, embed_dim {model.embed_dim})")
    report.missing = sorted(set(target) - set(state) - allowed_missing)
    report.unexpected = sorted(set(state) - set(target))
    missing, unexpected = report.missing, report.unexpected
    if (missing or unexpected) and strict:
        raise ValueError(f"{weights.source} does not fit this {model.variant} model: {len(missing)} missing keys "
                         f"{missing[:12]}, {len(unexpected)} unexpected keys {unexpected[:12]}. Check the "
                         "architecture, or pass strict=False to load what fits")
    if missing or unexpected:
        _logger.warning("strict=False: %d missing keys %s, %d unexpected keys %s", len(missing), missing[:12],
                        len(unexpected), unexpected[:12])
    model.load_state_dict({k: v for k, v in state.items() if k in target}, strict=False)
    if weights.label_names and report.new_head is None and any(k in state for k in HEAD_KEYS):  # their head: names
        model.pretrained_cfg = pretrained_cfg(model, model.pretrained_cfg, weights.label_names)
    remember_load(model, report)
    return model


def _reconcile_head(state: dict[str, torch.Tensor], model: ViViT, report: LoadReport) -> set[str]:
    """Drop a head of another size from ``state`` (noted in ``report``); returns the head keys that may be missing."""
    target = model.state_dict()
    if any(k in state for k in HEAD_KEYS):
        source_classes = head_classes(state)
        if model.num_classes == 0 or source_classes != model.num_classes:
            for k in HEAD_KEYS:
                state.pop(k, None)
            report.new_head = (source_classes, model.num_classes)
            _logger.info("new classifier: %s classes in the weights, %s in the model; head left at init",
                         source_classes, model.num_classes)
            return {k for k in HEAD_KEYS if k in target}
        return set()
    if model.num_classes > 0:
        report.new_head = (None, model.num_classes)  # headless weights (a backbone): the head keeps its zero init
        return set(HEAD_KEYS)
    return set()


# ---------------------------------------------------------------------------------------------- resolving
def fetch_weights(source: Source, args: Mapping[str, Any], *, force_download: bool = False) -> Weights:
    """Resolve a parsed ``source`` (tag, ``hf-hub:``, URL, path) to weights in our layout for a ``ViViT(**args)``.

    ``force_download`` downloads again even when cached. Anything that is no tag, Hub repo or URL is read as a path.
    """
    if source.kind == "tag":
        return fetch_release(PRETRAINED[source.name], args, force_download=force_download)
    if source.kind == "hub":
        return _fetch_hub(source.repo_id, source.revision, force_download, None)
    if source.kind == "url":
        return _read_download(source.url, args, force_download, None)
    return read_weights(source.path or Path(source.text), args)


def fetch_release(cfg: PretrainedCfg, args: Mapping[str, Any], *, force_download: bool = False) -> Weights:
    """The weights of a released checkpoint (a ``PRETRAINED`` cfg): shipped, on the Hub or at a URL.

    The release's ``sha256`` (when its digest is known) is checked for downloads and shipped files alike.
    """
    if cfg.file:  # shipped inside the package
        path = Path(str(resources.files("vivit").joinpath(cfg.file)))
        if cfg.sha256 and file_sha256(path) != cfg.sha256:
            raise RuntimeError(f"{path} (shipped with vivit for {cfg.name}) does not have its release sha256 "
                               f"{cfg.sha256}: the installation is damaged; reinstall vivit")
        weights = read_weights(path, args)
    elif cfg.hf_hub_id:
        weights = _fetch_hub(cfg.hf_hub_id, None, force_download, cfg.sha256)
    else:
        weights = _read_download(cfg.url, args, force_download, cfg.sha256)
    if weights.grid is None and cfg.source_format in ("scenic", "vivit"):
        c, t, h, w = cfg.input_size
        weights.grid = grid_of_args({**args, "num_frames": t, "img_size": (h, w)})
    if weights.label_names is None and cfg.label_set:  # a checkpoint's own id2label wins (SPEC 3.2)
        weights.label_names = label_names(cfg.label_set)
    weights.checkpoint = cfg.name
    return weights


def _fetch_hub(repo_id: str, revision: str | None, force_download: bool, sha256: str | None) -> Weights:
    config, where = _hub_config(repo_id, revision, force_download)
    return folder_weights(config, fetch.hub_weights_file(repo_id, revision, force_download=force_download,
                                                         sha256=sha256), where)


def _hub_config(repo_id: str, revision: str | None, force_download: bool) -> tuple[dict[str, Any], str]:
    """A Hub repo's config.json, refused unless it is a vivit or transformers ViViT config; and its name."""
    config = read_json(fetch.hf_hub_file(repo_id, CONFIG_NAME, revision, force_download=force_download))
    where = f"hf-hub:{repo_id} {CONFIG_NAME}"
    if config_kind(config) is None:
        raise ValueError(f"{where} is neither a vivit config (model_args) nor a transformers ViViT config "
                         f"(model_type 'vivit'); found keys {sorted(config)[:10]}")
    return config, where


def _read_download(url: str, args: Mapping[str, Any], force_download: bool, sha256: str | None) -> Weights:
    """A downloaded file's weights; a file that cannot be read is named as a cache entry the user may delete."""
    path = fetch.download_url(url, sha256=sha256, force_download=force_download)
    try:
        return read_weights(path, args)
    except ValueError as err:
        raise ValueError(f"{err}. It is the cached download of {url}: if the download is damaged, delete this cache "
                         f"entry ({path}) or pass force_download=True (CLI: --force-download)") from None


def source_fields(source: Source) -> dict[str, Any]:
    """The ``pretrained_cfg`` fields saying where weights from a parsed ``source`` (no zoo tag) came from; read back by
    :func:`saved_source`."""
    where: dict[str, Any] = dict(hf_hub_id=None, url=None, file=None)
    if source.kind == "hub":
        # The pinned revision stays part of the id, so load_pretrained(model) reloads that revision, not main.
        where.update(source="hf-hub", hf_hub_id=f"{source.repo_id}@{source.revision}" if source.revision
                     else source.repo_id)
    elif source.kind == "url":
        where.update(source="url", url=source.url)
    else:
        where.update(source="local-dir", file=str(Path(source.path or source.text).expanduser()))
    return where


def saved_source(cfg: Mapping[str, Any]) -> str | None:
    """The source a model made by ``create_model("hf-hub:...")`` / ``("local-dir:...")`` came from, else ``None``."""
    if cfg.get("source") == "hf-hub" and cfg.get("hf_hub_id"):
        return f"hf-hub:{cfg['hf_hub_id']}"
    if cfg.get("source") == "local-dir" and cfg.get("file"):
        return str(cfg["file"])
    return None


def load_pretrained(model: ViViT, source: str | Path | Source | None = None, *, strict: bool = True,
                    force_download: bool = False, allow_non_finite: bool = False) -> ViViT:
    """Load weights into ``model``, converting foreign layouts and resampling positional embeddings.

    Args:
        model: The model to fill (its variant, sizes and head decide what is expected).
        source: ``None`` (the model's own pretrained cfg), a tag ``"arch.tag"``, ``"hf-hub:org/repo[@rev]"``, an
            ``http(s)`` URL, or a local file/folder (or a parsed ``Source``); the format is detected (see
            ``FORMATS``).
        strict: Refuse missing or unexpected keys (listing them). A head whose size differs from the model's is
            always dropped and left at its zero init; that is the only tolerated gap.
        force_download: Download the file(s) again even when cached.
        allow_non_finite: Load weights holding NaN or infinite values (refused by default, naming the tensors).

    Returns:
        ``model``, in place.
    """
    if source is None:
        cfg = model.pretrained_cfg or {}
        name = tagged_name(cfg.get("architecture"), cfg.get("tag"))
        if not cfg.get("hf_hub_id") and not cfg.get("url") and not cfg.get("file"):
            raise ValueError(f"model {name or '(unnamed)'} has no default weights; pass a source (tag, 'hf-hub:...', "
                             "URL or local path)")
        source = saved_source(cfg) or name
    parsed = source if isinstance(source, Source) else parse_source(str(source))
    weights = fetch_weights(parsed, model.model_args, force_download=force_download)
    return load_weights_into(model, weights, strict=strict, allow_non_finite=allow_non_finite)


def read_saved(config: Mapping[str, Any], weights_file: Callable[[], Path], where: str, pretrained: bool) -> ModelSpec:
    """What a vivit or transformers ``config.json`` (named by ``where``) says to build, with its weights when
    ``pretrained``.

    ``weights_file()`` is read at most once: a transformers config needs the weights' shapes to name the
    architecture, and those same tensors are then loaded. A weights file that is not the one the config was saved
    with is refused (``check_weights_record``).
    """
    kind = config_kind(config)
    if kind is None:
        raise ValueError(f"{where} is not a vivit or transformers ViViT config (keys: {sorted(config)[:10]})")
    if kind == "vivit":
        args = checked_model_args(config, where)  # before any weights are fetched
        weights = folder_weights(config, weights_file(), where) if pretrained else None
        # the saved count is the saved head's: the model's own head (overrides included) is stated on construction
        cfg = {k: v for k, v in dict(config.get("pretrained_cfg") or {}).items() if k != "num_classes"}
        return ModelSpec(args, cfg, config.get("label_names"), weights)
    weights = folder_weights(config, weights_file(), where)
    return ModelSpec(dict(weights.args or {}), {}, None, weights if pretrained else None)


def read_hub_model(source: Source, pretrained: bool = False, *, force_download: bool = False) -> ModelSpec:
    """``create_model("hf-hub:org/repo[@rev]")``: what the repo's config.json says to build (a vivit repo's
    ``model_args``, a transformers ViViT repo's config), with its weights when ``pretrained``; ``force_download``
    fetches the files again even when cached."""
    repo_id, revision = source.repo_id, source.revision
    config, where = _hub_config(repo_id, revision, force_download)
    saved = read_saved(config, lambda: fetch.hub_weights_file(repo_id, revision, force_download=force_download),
                       where, pretrained)
    saved.cfg.update(source_fields(source))
    return saved


def read_folder_model(source: Source, pretrained: bool = True) -> ModelSpec:
    """``create_model("local-dir:PATH")``: what a folder written by ``save_pretrained`` or a transformers ViViT folder
    says to build, with its weights when ``pretrained``."""
    folder = Path(source.path or source.text).expanduser()
    config_path = folder / CONFIG_NAME
    config = read_json(config_path) if folder.is_dir() and config_path.is_file() else None
    if config is None or config_kind(config) is None:
        fmt = detect_format(folder)  # says what else it is, or that it is nothing vivit reads
        raise ValueError(f"{folder} is a {fmt} source, not a model folder: create the architecture and call "
                         "vivit.load_pretrained(model, path)")
    saved = read_saved(config, lambda: folder_weights_file(folder), str(config_path), pretrained)
    saved.cfg.update(source_fields(source))
    return saved


def peek_model_args(source: Source, *, force_download: bool = False) -> dict[str, Any] | None:
    """The ``ViViT`` arguments (defaults filled in) of the model ``source`` builds, read without its weights: a zoo
    name's from the zoo, a folder's or Hub repo's from its ``config.json`` alone (fetched alone: a few kB). ``None``
    where only the weights would tell (a weights file, a URL, a folder without a config the loader reads), or where the
    config is one the loader will refuse itself (it says why, in its words).

    Raises:
        ValueError, OSError: What loading the source would raise first (an unknown name, an unreachable Hub, a
            config.json that is not JSON or states a hostile size).
    """
    if source.kind in ("tag", "name"):
        if source.text == GENERIC_ARCH:
            return None
        arch, _ = resolve_name(source.text)
        return with_defaults(ARCHS[arch])
    if source.kind == "hub":
        config, where = _hub_config(source.repo_id, source.revision, force_download)
    elif source.kind in ("folder", "local-dir"):
        path = Path(source.path or source.text).expanduser() / CONFIG_NAME
        if not path.is_file():
            return None
        config, where = read_json(path), str(path)
    else:
        return None
    kind = config_kind(config)
    if kind == "vivit":
        return with_defaults(checked_model_args(config, where))
    if kind is None:
        return None
    try:  # the head and pooler come from the weights; the sizes, which the checks need, are in the config
        return with_defaults(model_args_from_transformers(config, {}))
    except (KeyError, TypeError, ValueError):  # a malformed transformers config: the loader's message says what
        return None
