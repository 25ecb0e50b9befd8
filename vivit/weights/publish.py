"""Publishing a model: a folder with ``model.safetensors``, a timm-schema ``config.json`` and a ``README.md`` model
card, and its upload to the Hugging Face Hub.

Every file is written to a temporary name and renamed into place. ``huggingface_hub`` and ``safetensors`` are imported
inside the functions that need them: ``import vivit`` loads neither.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vivit._version import __version__
from vivit.files import first_line, umask_mode, write_atomic
from vivit.weights.fetch import is_offline, transport_errors
from vivit.weights.fit import measured_checkpoint
from vivit.weights.read import CONFIG_NAME, WEIGHTS_NAME, WEIGHTS_RECORD, check_finite, file_sha256
from vivit.weights.source import HUB_PREFIXES, parse_hub_name
from vivit.weights.transformers_files import auto_config_fields, folder_files
from vivit.zoo import ARCHS, GENERIC_ARCH, REFERENCE_MEAN, REFERENCE_STD, tagged_name

if TYPE_CHECKING:
    from torch import nn

_logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
# Temporary files of a killed save: ours (``.<name>.<8 hex>.tmp``) and safetensors' own (``.tmp`` + 6 characters).
_ORPHAN = re.compile(r"^\.(?:(?:model\.safetensors|config\.json|README\.md|\w+\.py|\w+\.json)\.[0-9a-f]{8}\.tmp|"
                     r"tmp[A-Za-z0-9]{6})$")
_OS_ERROR = re.compile(r"I/O error: (.*?) \(os error")
# Keys that say where the *source* weights were; a saved folder is its own source (as timm's ``remove_source``).
_SOURCE_KEYS = ("url", "file", "hf_hub_id", "hf_hub_filename", "source", "state_dict", "sha256")
_VARIANT_NAMES = {
    "spacetime": "Model 1, spatio-temporal attention",
    "factorized_encoder": "Model 2, factorised encoder",
    "factorized_self_attention": "Model 3, factorised self-attention",
    "factorized_dot_product": "Model 4, factorised dot-product attention",
}
_DATASET_NAMES = {"kinetics400": "Kinetics-400", "kinetics600": "Kinetics-600", "epic_kitchens100": "EPIC-KITCHENS-100"}
CITATION = """@inproceedings{arnab2021vivit,
  title     = {ViViT: A Video Vision Transformer},
  author    = {Arnab, Anurag and Dehghani, Mostafa and Heigold, Georg and Sun, Chen and Lu{\\v{c}}i{\\'c}, Mario and
               Schmid, Cordelia},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  pages     = {6836--6846},
  year      = {2021}
}"""



def _json_safe(value: Any, key: str = "") -> Any:
    """Tuples -> lists, paths -> str, recursively; anything JSON cannot hold raises naming the key."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"config value {key}={value} is not finite; JSON cannot store it")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"config value {key}={value!r} ({type(value).__name__}) cannot be written to {CONFIG_NAME}")


def _architecture(model: nn.Module) -> str:
    arch = model.pretrained_cfg.get("architecture")
    return arch if arch in ARCHS else GENERIC_ARCH


def model_config(model: nn.Module, *, label_names: Sequence[str] | None = None) -> dict[str, Any]:
    """``config.json`` of ``model`` in timm's schema (enough to rebuild it with ``ViViT(**config["model_args"])``).

    Args:
        model: A :class:`vivit.ViViT`.
        label_names: Class names in logit order; default ``model.pretrained_cfg["label_names"]`` when present.

    Raises:
        ValueError: ``label_names`` does not match ``num_classes``, or a value cannot be stored as JSON.
    """
    # The head and pool may have changed since construction (reset_classifier); model_args must describe them now.
    model_args = {**model.model_args, "num_classes": model.num_classes, "global_pool": model.global_pool}
    source = model.pretrained_cfg
    pretrained_cfg = {k: v for k, v in source.items() if k not in _SOURCE_KEYS and k != "label_names"}
    if source.get("num_classes", model.num_classes) != model.num_classes:
        # A new head: the source's classes no longer describe these weights.
        for key in ("label_set", "class_splits"):
            pretrained_cfg.pop(key, None)
    if measured_checkpoint(model) != tagged_name(source.get("architecture"), source.get("tag")):
        # The accuracy was measured for the released checkpoint; random, fine-tuned or resampled weights get none.
        for key in ("top1", "eval_views"):
            pretrained_cfg.pop(key, None)
    origin = f"hf-hub:{source['hf_hub_id']}" if source.get("hf_hub_id") else source.get("url")
    if origin:
        pretrained_cfg["source_checkpoint"] = origin
        if source.get("source_format") not in (None, "vivit"):
            pretrained_cfg["source_checkpoint_format"] = source["source_format"]
    pretrained_cfg.update(
        architecture=_architecture(model),
        source_format="vivit",
        input_size=(model.in_chans, model.num_frames, *model.img_size),
        mean=source.get("mean", REFERENCE_MEAN),
        std=source.get("std", REFERENCE_STD),
        crop_pct=source.get("crop_pct", 224 / 256),
        num_classes=model.num_classes,
    )
    if label_names is None and source.get("label_names") and len(source["label_names"]) == model.num_classes:
        label_names = source["label_names"]
    if label_names is not None:
        label_names = [str(n) for n in label_names]
        if len(label_names) != model.num_classes:
            raise ValueError(f"label_names has {len(label_names)} names, the model has {model.num_classes} classes")
    config: dict[str, Any] = {
        "architecture": pretrained_cfg["architecture"],
        "num_classes": model.num_classes,
        "num_features": model.num_features,
        "global_pool": model.global_pool,
        "model_args": model_args,
        "pretrained_cfg": pretrained_cfg,
    }
    if label_names is not None:
        config["label_names"] = label_names
    config["library_name"] = "vivit"
    config.update(auto_config_fields())  # transformers' Auto classes read the same file (transformers_files)
    return _json_safe(config)


def _state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous, storage-disjoint tensors (safetensors refuses views and shared memory)."""
    state: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in model.state_dict().items():
        if tensor.is_meta:
            raise ValueError(f"{key} is on the meta device (no data): load weights before saving")
        tensor = tensor.detach().cpu().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:
            tensor = tensor.clone()
        seen.add(ptr)
        state[key] = tensor
    return state


def _check_rebuild(model: nn.Module, model_args: dict[str, Any], state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Build ``type(model)(**model_args)`` on the meta device and require the same keys and shapes."""
    with torch.device("meta"):
        twin = type(model)(**model_args)
    expected = {k: tuple(v.shape) for k, v in twin.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        missing = sorted(expected.keys() - found.keys())
        unexpected = sorted(found.keys() - expected.keys())
        shapes = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
        raise ValueError(
            "model.model_args no longer describe the model's weights, so the saved config could not rebuild it "
            f"(missing: {missing[:5]}, unexpected: {unexpected[:5]}, shape changed: {shapes[:5]}). Modules changed "
            "after construction must be recreated through ViViT(...) / reset_classifier before saving."
        )
    return twin


def remove_orphans(directory: Path) -> list[Path]:
    """Delete the temporary files killed saves left in ``directory`` (``_ORPHAN`` names only); returns them.

    Concurrent saves into one folder are not supported: each save starts by clearing the others' temporary files.
    """
    removed = []
    for path in directory.iterdir():
        if _ORPHAN.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        _logger.info("removed %d temporary files of interrupted saves from %s", len(removed), directory)
    return removed


def save_pretrained(model: nn.Module, save_directory: str | Path, *, label_names: Sequence[str] | None = None,
                    repo_id: str | None = None, allow_non_finite: bool = False) -> Path:
    """Write ``model.safetensors``, ``config.json`` (timm schema) and a ``README.md`` model card.

    Each file is written to a temporary name and renamed into place; ``config.json`` records the size and sha256 of
    the weights file it belongs to, so a folder whose save was interrupted between the renames is refused when
    loaded instead of pairing new weights with an old config. Temporary files of earlier interrupted saves are removed
    first.

    Args:
        model: A :class:`vivit.ViViT`.
        save_directory: Folder to write (created if needed; existing files of the same names are replaced).
        label_names: Class names in logit order, stored in the config and card.
        repo_id: Hub repo the folder is meant for; used in the card's usage snippet.
        allow_non_finite: Save weights holding NaN or infinite values (refused by default, naming the tensors).

    Returns:
        ``save_directory`` as a ``Path``.

    Raises:
        ValueError: The weights are not finite, or the model no longer matches its ``model_args``.
        OSError: The folder cannot be written (the message names it).
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    directory = Path(save_directory)
    config = model_config(model, label_names=label_names)
    state = _state_dict_for_saving(model)
    if not allow_non_finite:
        check_finite(state, "the model to be saved")
    twin = _check_rebuild(model, config["model_args"], state)

    def write_weights(tmp: Path) -> None:
        save_file(state, str(tmp), metadata={"format": "pt"})
        config[WEIGHTS_RECORD] = {"name": WEIGHTS_NAME, "size": tmp.stat().st_size, "sha256": file_sha256(tmp)}

    try:
        directory.mkdir(parents=True, exist_ok=True)
        remove_orphans(directory)
        write_atomic(directory / WEIGHTS_NAME, write_weights, mode=umask_mode())
        write_atomic(directory / CONFIG_NAME, lambda p: p.write_text(json.dumps(config, indent=2) + "\n"),
                     mode=umask_mode())
        # transformers: the Auto classes' code (trust_remote_code) and the processors (pipeline)
        for name, text in folder_files(config["pretrained_cfg"]).items():
            write_atomic(directory / name, lambda p, t=text: p.write_text(t, encoding="utf-8"), mode=umask_mode())
        card = model_card(config, num_params=sum(t.numel() for t in state.values()), gmacs=_gmacs(twin, config),
                          repo_id=repo_id)
        write_atomic(directory / CARD_NAME, lambda p: p.write_text(card, encoding="utf-8"), mode=umask_mode())
    except (OSError, SafetensorError) as err:
        found = _OS_ERROR.search(str(err))
        reason = found.group(1) if found else getattr(err, "strerror", None) or first_line(err)
        raise OSError(f"cannot save the model to {directory}: {reason}; choose a folder you can write to") from None
    _logger.info("saved %s to %s", config["architecture"], directory)
    return directory


def _gmacs(meta_model: nn.Module, config: Mapping[str, Any]) -> float | None:
    """Multiply-accumulates (GMACs) of one clip's forward, counted on the meta device; None if it cannot run."""
    from torch.utils.flop_counter import FlopCounterMode

    c, t, h, w = config["pretrained_cfg"]["input_size"]
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            # The architecture's cost, as the paper and docs/models.md count it: every token through every block
            # (model(x) skips most of the last block under token pooling).
            meta_model.forward_head(meta_model.forward_features(torch.empty(1, c, t, h, w, device="meta")))
    except (RuntimeError, NotImplementedError) as err:  # an op without a meta kernel: the card omits compute
        _logger.debug("FLOP count skipped: %s", err)
        return None
    return counter.get_total_flops() / 2e9  # FlopCounterMode counts multiply and add separately


# What a card written without a repo id says in place of its own folder (the tests substitute a real one).
CARD_FOLDER = "path/to/this/folder"


def model_card(config: Mapping[str, Any], *, num_params: int | None = None, gmacs: float | None = None,
               repo_id: str | None = None) -> str:
    """Markdown model card (Hub YAML front matter + details, usage, evaluation, citation) from a saved config."""
    args, cfg = config["model_args"], config["pretrained_cfg"]
    c, t, h, w = cfg["input_size"]
    tt, th, tw = args.get("tubelet_size", (2, 16, 16))
    variant = args.get("variant", "spacetime")
    name = repo_id or tagged_name(cfg["architecture"], cfg.get("tag"))
    front = ["---", "library_name: vivit", f"license: {cfg.get('license') or 'apache-2.0'}", "tags:",
             "- video-classification", "- vivit", "- timm", "pipeline_tag: video-classification", "---"]
    width = (f"embed dim {args.get('embed_dim')}, depth {args.get('depth')}, {args.get('num_heads')} heads, "
             f"MLP {args.get('mlp_dim')}")
    if variant == "factorized_encoder" and not args.get("spatial_only_baseline"):
        width += f", temporal encoder depth {args.get('temporal_depth')}"
    embedding = (f"tubelet {tt}×{th}×{tw} (t×h×w)" if args.get("embedding", "tubelet") == "tubelet"
                 else f"{args.get('n_sampled_frames')} uniformly sampled frames, {th}×{tw} patches")
    details = [
        f"- **Architecture:** `{cfg['architecture']}`, ViViT {_VARIANT_NAMES.get(variant, variant)}; {width}; "
        f"`global_pool={config['global_pool']}`",
    ]
    if num_params is not None:
        details.append(f"- **Parameters:** {_num(num_params / 1e6)} M ({num_params:,})")
    if gmacs is not None:
        details.append(f"- **Compute per clip:** {_num(gmacs)} GMACs ({_num(2 * gmacs)} GFLOPs counting multiply and "
                       "add separately; the paper's GFLOPs are multiply-adds)")
    details.append(f"- **Input:** float tensor B × C × T × H × W = B × {c} × {t} × {h} × {w} ({t} frames"
                   + (f" at temporal stride {cfg['frame_stride']}" if cfg.get("frame_stride") else "")
                   + f", {h}×{w} pixels), {embedding}")
    mean, std = list(cfg.get("mean", ())), list(cfg.get("std", ()))
    if mean == [0.5] * len(mean) and std == [0.5] * len(std):
        prep = "RGB scaled to [-1, 1]: `x * 2 / 255 - 1` (mean = std = 0.5 on [0, 1])"
    else:
        prep = f"RGB scaled to [0, 1], then `(x - mean) / std` with mean {mean}, std {std}"
    crop = cfg.get("crop_pct")
    if crop:
        prep += f"; evaluation resizes the short side to {round(h / crop)} and takes {h}×{w} crops"
    details.append(f"- **Preprocessing:** {prep}")
    labels = config.get("label_names")
    label_line = f"- **Labels:** {config['num_classes']} classes"
    if cfg.get("label_set"):
        label_line += f" ({_DATASET_NAMES.get(cfg['label_set'], cfg['label_set'])})"
    if labels:
        label_line += ": " + ", ".join(f"`{n}`" for n in labels[:5]) + (", …" if len(labels) > 5 else "")
    details.append(label_line)
    for note in cfg.get("notes") or ():
        details.append(f"- **Note:** {note}")
    if cfg.get("source_checkpoint"):
        fmt = cfg.get("source_checkpoint_format")
        details.append(f"- **Source checkpoint:** {cfg['source_checkpoint']}" + (f" ({fmt} format)" if fmt else ""))
    details.append(f"- **Paper:** {cfg.get('paper_name') or 'ViViT: A Video Vision Transformer'} "
                   f"({cfg.get('paper_ids') or 'arXiv:2103.15691'})")
    if cfg.get("origin_url"):
        details.append(f"- **Reference code:** {cfg['origin_url']}")
    details.append(f"- **License:** {cfg.get('license') or 'apache-2.0'}")
    where = f"hf-hub:{repo_id}" if repo_id else CARD_FOLDER
    usage = ["```python", "import torch", "import vivit", "",
             f'model = vivit.ViViT.from_pretrained("{where}").eval()'
             + ("" if repo_id else "  # the folder holding this card"),
             f"video = torch.rand(1, {c}, {t}, {h}, {w}) * 2 - 1  # B x C x T x H x W, preprocessed as above",
             "with torch.no_grad():",
             f"    logits = model(video)  # (1, {config['num_classes']})", "```", "",
             f"`vivit.tasks.predict.predict_video(model, path)` classifies a video file: it decodes {t}-frame clips, "
             "preprocesses them as above and averages the logits over the model's evaluation views; on the command "
             f"line, `vivit classify VIDEO --model {where}`.", "",
             "In Hugging Face transformers (vivit installed): `AutoModelForVideoClassification.from_pretrained("
             f"\"{repo_id or CARD_FOLDER}\", trust_remote_code=True)`, or without `trust_remote_code` after "
             f"`import vivit`; `pipeline(\"video-classification\", model=\"{repo_id or CARD_FOLDER}\")` classifies a "
             "video file."]
    body = [f"# {name}", "", "A ViViT video classification model (Arnab et al., ICCV 2021) for the `vivit` PyTorch "
            "library.", "", "## Model details", "", *details, "", "## Usage", "", *usage]
    if cfg.get("top1") is not None:
        dataset = _DATASET_NAMES.get(cfg.get("label_set") or "", cfg.get("label_set") or "")
        body += ["", "## Evaluation", "", "| dataset | top-1 (%) | views (temporal × spatial) |",
                 "| --- | --- | --- |",
                 f"| {dataset} | {cfg['top1']} | {cfg.get('eval_views') or ''} |", "",
                 "Numbers reported for the source checkpoint (logits averaged over views); not re-measured for this "
                 "export."]
    body += ["", "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(front + [""] + body)


def _num(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.3g}"


def push_to_hub(model: nn.Module, repo_id: str, *, commit_message: str = "Upload ViViT model",
                private: bool | None = None, token: str | None = None, revision: str | None = None,
                label_names: Sequence[str] | None = None, allow_non_finite: bool = False) -> str:
    """Save ``model`` with :func:`save_pretrained` into a temporary folder and upload it to a Hub model repo.

    Args:
        model: A :class:`vivit.ViViT`.
        repo_id: ``"org/repo"`` (created if missing); ``"hf-hub:org/repo@branch"`` is accepted too.
        commit_message: Message of the upload commit.
        private: Visibility of a newly created repo (None: the Hub's default).
        token: Hub token; default the logged-in one (``hf auth login`` / ``HF_TOKEN``).
        revision: Branch to commit to (created from ``main`` if missing).
        label_names: Class names in logit order.
        allow_non_finite: Publish weights holding NaN or infinite values (refused by default).

    Returns:
        URL of the commit.

    Raises:
        ValueError: Invalid ``repo_id``.
        RuntimeError: Offline mode, network failure or the Hub refused the upload.
    """
    name = repo_id if repo_id.startswith(HUB_PREFIXES) else f"hf-hub:{repo_id}"
    repo_id, name_revision = parse_hub_name(name)
    revision = revision or name_revision
    if is_offline():
        raise RuntimeError(f"cannot push to Hub repo {repo_id!r} in offline mode (HF_HUB_OFFLINE / VIVIT_OFFLINE is "
                           "set). Save locally with save_pretrained and upload later with `hf upload`.")
    with tempfile.TemporaryDirectory(prefix="vivit-push-") as tmp:
        save_pretrained(model, tmp, label_names=label_names, repo_id=repo_id,  # before any network: fail fast
                        allow_non_finite=allow_non_finite)
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled


        api = HfApi(token=token, library_name="vivit", library_version=__version__)
        try:
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            if revision is not None:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            # Hidden files are temporary files of a save, never part of the model.
            commit = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message,
                                       revision=revision, ignore_patterns=[".*", "**/.*"])
        except HfHubHTTPError as err:
            raise RuntimeError(f"pushing to Hub repo {repo_id!r} failed: the Hub answered {first_line(err)}. Check "
                               "that you are logged in with write access (`hf auth login` or HF_TOKEN).") from None
        except (*transport_errors(), OfflineModeIsEnabled) as err:
            raise RuntimeError(f"pushing to Hub repo {repo_id!r} failed ({type(err).__name__}: {first_line(err)}); "
                               "the network may be unreachable. Save locally with save_pretrained and upload later "
                               "with `hf upload`.") from None
    _logger.info("pushed to %s", commit.commit_url)
    return str(commit.commit_url)
