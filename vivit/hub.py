"""Fetching and publishing weights: cached URL downloads, Hugging Face Hub files, saved-model folders and cards.

Downloads go to a temporary file in the cache folder and are renamed into place only when complete, so a killed or
truncated download never leaves a cache entry. ``huggingface_hub`` and ``safetensors`` are imported inside the
functions that need them: ``import vivit`` loads neither.

Environment:
    VIVIT_CACHE: cache folder of :func:`download_url` (default ``~/.cache/vivit``). Hub files use the Hugging Face
        cache (``HF_HOME`` / ``HF_HUB_CACHE``).
    HF_HUB_OFFLINE, VIVIT_OFFLINE: ``1`` serves cached files only and never touches the network.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import math
import os
import re
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch import nn

_logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
HUB_PREFIXES = ("hf-hub:", "hf_hub:")  # timm accepts the underscore spelling too
DOWNLOAD_TIMEOUT = 60.0  # seconds without progress before a download is abandoned
_CHUNK = 1 << 20
_STALE_PART_SECONDS = 24 * 3600
# Keys that say where the *source* weights were; a saved folder is its own source (as timm's ``remove_source``).
_SOURCE_KEYS = ("url", "file", "hf_hub_id", "hf_hub_filename", "source", "state_dict")
_HUB_PART = re.compile(r"^[A-Za-z0-9_](?:[\w.-]{0,94}[A-Za-z0-9_])?$")
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


# ----------------------------------------------------------------------------------------------- plain URLs
def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` or ``VIVIT_OFFLINE`` forbids network access."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("VIVIT_OFFLINE")


def default_cache_dir() -> Path:
    """``$VIVIT_CACHE``, else ``~/.cache/vivit``."""
    return Path(os.environ.get("VIVIT_CACHE") or Path.home() / ".cache" / "vivit").expanduser()


def cache_path(url: str, cache_dir: str | Path | None = None) -> Path:
    """Where :func:`download_url` keeps ``url``: ``<cache>/<sha256(url)[:16]>-<basename>``.

    The hash keeps URLs with the same basename apart (every reference checkpoint is called ``checkpoint``).
    """
    basename = urllib.parse.unquote(Path(urllib.parse.urlparse(url).path).name)
    basename = re.sub(r"[^\w.-]", "_", basename).lstrip(".") or "download"
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(cache_dir or default_cache_dir()).expanduser() / f"{digest}-{basename[:100]}"


def _manual_hint(url: str, dest: Path) -> str:
    return (f"Download {url} on a machine with network access and save it as {dest} (or pass the local file to "
            "vivit.load_pretrained(model, path)).")


def download_url(url: str, cache_dir: str | Path | None = None, *, sha256: str | None = None,
                 timeout: float = DOWNLOAD_TIMEOUT) -> Path:
    """Download ``url`` once into the cache and return the cached file.

    Args:
        url: An ``http(s)://`` URL.
        cache_dir: Cache folder; default ``$VIVIT_CACHE`` or ``~/.cache/vivit``.
        sha256: Expected hex digest (or a prefix of it) of the file; a mismatch keeps nothing.
        timeout: Seconds to wait for the connection or the next chunk.

    Returns:
        The cached file (see :func:`cache_path`), reused without network access on later calls.

    Raises:
        ValueError: ``url`` is not http(s).
        RuntimeError: Offline with no cached copy, the download failed or was incomplete; the message names the
            URL and where to put a manually downloaded copy.
    """
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"download_url needs an http(s) URL, got {url!r}; pass local files to vivit.load_pretrained")
    dest = cache_path(url, cache_dir)
    if dest.is_file():
        return dest
    if is_offline():
        raise RuntimeError(f"offline mode (HF_HUB_OFFLINE / VIVIT_OFFLINE is set) and {url} is not cached. "
                           + _manual_hint(url, dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(dest)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        received, expected, digest = _fetch(url, tmp, timeout, desc=dest.name)
        if expected is not None and received != expected:
            raise RuntimeError(f"download of {url} is incomplete: the connection closed after {received} of "
                               f"{expected} bytes; nothing was cached. Retry, or " + _lower(_manual_hint(url, dest)))
        if sha256 is not None and not digest.startswith(sha256.lower()):
            raise RuntimeError(f"{url} has sha256 {digest}, expected {sha256}; nothing was cached. The file changed "
                               "on the server or was corrupted in transit.")
        os.replace(tmp, dest)
    except urllib.error.HTTPError as err:
        raise RuntimeError(f"could not download {url}: the server answered HTTP {err.code} {err.reason}. "
                           + _manual_hint(url, dest)) from None
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ssl.SSLError) as err:
        raise RuntimeError(f"could not download {url} ({type(err).__name__}: {err}); the network may be unreachable. "
                           + _manual_hint(url, dest)) from None
    finally:
        tmp.unlink(missing_ok=True)
    _logger.info("downloaded %s to %s", url, dest)
    return dest


def _lower(text: str) -> str:
    return text[:1].lower() + text[1:]


def _remove_stale_parts(dest: Path) -> None:
    """Delete day-old ``.part`` files of ``dest`` left by killed processes (never cache entries, only litter)."""
    for part in dest.parent.glob(f".{dest.name}.*.part"):
        try:
            if time.time() - part.stat().st_mtime > _STALE_PART_SECONDS:
                part.unlink()
        except FileNotFoundError:  # another process cleaned it up first
            pass


def _fetch(url: str, tmp: Path, timeout: float, desc: str) -> tuple[int, int | None, str]:
    """Stream ``url`` into ``tmp``; returns (bytes received, Content-Length or None, sha256 hex)."""
    from . import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"vivit/{__version__}"})
    digest = hashlib.sha256()
    received = 0
    with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        with _Progress(expected, desc) as update:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                update(len(chunk))
    return received, expected, digest.hexdigest()


class _Progress:
    """A tqdm bar on an interactive stderr, otherwise nothing (logs and CI stay clean)."""

    def __init__(self, total: int | None, desc: str) -> None:
        self.bar: Any = None
        if sys.stderr is not None and sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm is optional
                return
            self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr)

    def __enter__(self) -> Callable[[int], None]:
        return self.bar.update if self.bar is not None else (lambda n: None)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------------------ Hugging Face Hub
def parse_hub_name(name: str) -> tuple[str, str | None]:
    """``"hf-hub:org/repo[@revision]"`` -> ``("org/repo", "revision" or None)``.

    Raises:
        ValueError: No ``hf-hub:`` prefix, a repo id that is not ``org/repo``, or an empty revision.
    """
    prefix = next((p for p in HUB_PREFIXES if name.startswith(p)), None)
    if prefix is None:
        raise ValueError(f"expected 'hf-hub:<org>/<repo>[@<revision>]', got {name!r}")
    repo_id, at, revision = name[len(prefix):].partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_HUB_PART.match(p) and ".." not in p and "--" not in p for p in parts):
        raise ValueError(f"invalid Hub repo id {repo_id!r} in {name!r}: expected '<org>/<repo>' of letters, digits, "
                         "'-', '_' and '.' (e.g. 'hf-hub:google/vivit-b-16x2-kinetics400')")
    if at and (not revision or any(c.isspace() for c in revision)):
        raise ValueError(f"invalid revision {revision!r} in {name!r}: expected a branch, tag or commit after '@'")
    return repo_id, (revision if at else None)


def hf_hub_file(repo_id: str, filename: str, revision: str | None = None, *,
                cache_dir: str | Path | None = None) -> Path:
    """Fetch one file of a Hub repo through the Hugging Face cache (``huggingface_hub.hf_hub_download``).

    Args:
        repo_id: ``"org/repo"``.
        filename: Path of the file inside the repo.
        revision: Branch, tag or commit; default ``main``.
        cache_dir: Overrides the Hugging Face cache folder.

    Raises:
        FileNotFoundError: The repo, revision or file does not exist (or the repo is private).
        RuntimeError: Offline without a cached copy, the Hub is unreachable, or access is refused.
    """
    from huggingface_hub import constants, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from . import __version__

    rev = revision or constants.DEFAULT_REVISION
    url = hf_hub_url(repo_id, filename, revision=rev)
    where = f"Hub repo {repo_id!r} (revision {rev!r})"
    manual = (f"Download it elsewhere (`hf download {repo_id} {filename} --revision {rev}`, or {url}) and pass the "
              "local file or folder to vivit.load_pretrained(model, path).")
    try:
        path = hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, library_name="vivit",
                               library_version=__version__, local_files_only=_env_true("VIVIT_OFFLINE"))
    except RemoteEntryNotFoundError:
        raise FileNotFoundError(f"{where} has no file {filename!r} ({url} answered 404). Check the file name; "
                                f"vivit folders hold {WEIGHTS_NAME} and {CONFIG_NAME}.") from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"Hub repo {repo_id!r} has no revision {rev!r}; check the branch, tag or commit "
                                "after '@'.") from None
    except GatedRepoError:
        raise RuntimeError(f"Hub repo {repo_id!r} is gated: accept its terms at {constants.ENDPOINT}/{repo_id} and "
                           "log in (`hf auth login` or HF_TOKEN). " + manual) from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"Hub repo {repo_id!r} was not found at {constants.ENDPOINT} (or it is private and "
                                "you are not logged in: `hf auth login` or HF_TOKEN). Check the name.") from None
    except LocalEntryNotFoundError as err:
        if constants.is_offline_mode() or _env_true("VIVIT_OFFLINE"):
            reason = "offline mode (HF_HUB_OFFLINE / VIVIT_OFFLINE is set) and the file is not in the Hugging Face " \
                     "cache"
        else:
            cause = err.__cause__ or err
            reason = (f"the Hub at {constants.ENDPOINT} could not be reached ({type(cause).__name__}: "
                      f"{_first_line(cause)}); the network may be unreachable, and the file is not cached")
        raise RuntimeError(f"cannot get {filename!r} from {where}: {reason}. " + manual) from None
    except HfHubHTTPError as err:
        raise RuntimeError(f"cannot get {filename!r} from {where}: the Hub answered {_first_line(err)}. "
                           "If the repo is private, log in (`hf auth login` or HF_TOKEN). " + manual) from None
    except _transport_errors() as err:
        raise RuntimeError(f"cannot get {filename!r} from {where}: {type(err).__name__}: {_first_line(err)}; the "
                           "network may be unreachable. " + manual) from None
    return Path(path)


def _transport_errors() -> tuple[type[Exception], ...]:
    """Connection/timeout errors of the HTTP client huggingface_hub uses (httpx2 in 2.x, httpx before)."""
    for module in ("httpx2", "httpx"):  # older huggingface_hub releases use httpx
        try:
            return (__import__(module).TransportError,)
        except ImportError:
            continue
    return ()  # neither client: nothing more to translate; the original error propagates


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


# ----------------------------------------------------------------------------------------- saved folders
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
    from .registry import ARCHS, GENERIC_ARCH

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
    from .registry import REFERENCE_MEAN, REFERENCE_STD

    # The head and pool may have changed since construction (reset_classifier); model_args must describe them now.
    model_args = {**model.model_args, "num_classes": model.num_classes, "global_pool": model.global_pool}
    source = model.pretrained_cfg
    pretrained_cfg = {k: v for k, v in source.items() if k not in _SOURCE_KEYS and k != "label_names"}
    if source.get("num_classes", model.num_classes) != model.num_classes:
        # A new head: the source's classes and accuracy no longer describe these weights.
        for key in ("label_set", "class_splits", "top1", "eval_views"):
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


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_pretrained(model: nn.Module, save_directory: str | Path, *, label_names: Sequence[str] | None = None,
                    repo_id: str | None = None) -> Path:
    """Write ``model.safetensors``, ``config.json`` (timm schema) and a ``README.md`` model card.

    Args:
        model: A :class:`vivit.ViViT`.
        save_directory: Folder to write (created if needed; existing files of the same names are replaced).
        label_names: Class names in logit order, stored in the config and card.
        repo_id: Hub repo the folder is meant for; used in the card's usage snippet.

    Returns:
        ``save_directory`` as a ``Path``.
    """
    from safetensors.torch import save_file

    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model_config(model, label_names=label_names)
    state = _state_dict_for_saving(model)
    twin = _check_rebuild(model, config["model_args"], state)
    _atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    _atomic_write(directory / CONFIG_NAME, lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    card = model_card(config, num_params=sum(t.numel() for t in state.values()), gmacs=_gmacs(twin, config),
                      repo_id=repo_id)
    _atomic_write(directory / CARD_NAME, lambda p: p.write_text(card, encoding="utf-8"))
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


def model_card(config: Mapping[str, Any], *, num_params: int | None = None, gmacs: float | None = None,
               repo_id: str | None = None) -> str:
    """Markdown model card (Hub YAML front matter + details, usage, evaluation, citation) from a saved config."""
    args, cfg = config["model_args"], config["pretrained_cfg"]
    c, t, h, w = cfg["input_size"]
    tt, th, tw = args.get("tubelet_size", (2, 16, 16))
    variant = args.get("variant", "spacetime")
    name = repo_id or (f"{cfg['architecture']}.{cfg['tag']}" if cfg.get("tag") else cfg["architecture"])
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
    if repo_id:
        build = [f'model = vivit.create_model("hf-hub:{repo_id}", pretrained=True).eval()']
    else:
        build = ['config, state_dict = vivit.hub.load_saved("path/to/this/folder")',
                 'model = vivit.ViViT(**config["model_args"])', "model.load_state_dict(state_dict)", "model.eval()"]
    usage = ["```python", "import vivit", "", *build,
             f"logits = model(video)  # video: float B x {c} x {t} x {h} x {w}, preprocessed as above", "```"]
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


def load_saved(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a folder written by :func:`save_pretrained`: ``(config dict, state dict)``.

    Falls back to ``pytorch_model.bin`` (loaded with ``weights_only=True``) when there is no ``model.safetensors``.

    Raises:
        FileNotFoundError: The folder, its ``config.json`` or its weights file is missing.
        ValueError: A file is corrupt or truncated, or the config was not written by vivit; the message names it.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"saved-model folder {directory} does not exist (expected {CONFIG_NAME} and "
                                f"{WEIGHTS_NAME} inside)")
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: {directory} is not a folder written by "
                                "vivit.save_pretrained")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is not valid JSON ({err}); re-save or re-download it") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_args"), dict):
        hint = (" It looks like a transformers ViViT config: use vivit.convert.from_transformers."
                if isinstance(config, dict) and config.get("model_type") == "vivit" else "")
        found = sorted(config) if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{config_path} has no 'model_args' object (found {found}): not written by "
                         f"vivit.save_pretrained.{hint}")
    return config, _load_weights(directory)


def _load_weights(directory: Path) -> dict[str, torch.Tensor]:
    from .pretrained import read_safetensors, read_torch_state_dict

    path = directory / WEIGHTS_NAME
    if path.is_file():
        return read_safetensors(path)
    legacy = directory / LEGACY_WEIGHTS_NAME
    if legacy.is_file():
        return read_torch_state_dict(legacy)
    raise FileNotFoundError(f"{path} is missing: {directory} has no weights ({WEIGHTS_NAME} or {LEGACY_WEIGHTS_NAME})")


def push_to_hub(model: nn.Module, repo_id: str, *, commit_message: str = "Upload ViViT model",
                private: bool | None = None, token: str | None = None, revision: str | None = None,
                label_names: Sequence[str] | None = None) -> str:
    """Save ``model`` with :func:`save_pretrained` into a temporary folder and upload it to a Hub model repo.

    Args:
        model: A :class:`vivit.ViViT`.
        repo_id: ``"org/repo"`` (created if missing); ``"hf-hub:org/repo@branch"`` is accepted too.
        commit_message: Message of the upload commit.
        private: Visibility of a newly created repo (None: the Hub's default).
        token: Hub token; default the logged-in one (``hf auth login`` / ``HF_TOKEN``).
        revision: Branch to commit to (created from ``main`` if missing).
        label_names: Class names in logit order.

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
        save_pretrained(model, tmp, label_names=label_names, repo_id=repo_id)  # before any network: fail fast
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        from . import __version__

        api = HfApi(token=token, library_name="vivit", library_version=__version__)
        try:
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            if revision is not None:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message,
                                       revision=revision)
        except HfHubHTTPError as err:
            raise RuntimeError(f"pushing to Hub repo {repo_id!r} failed: the Hub answered {_first_line(err)}. Check "
                               "that you are logged in with write access (`hf auth login` or HF_TOKEN).") from None
        except (*_transport_errors(), OfflineModeIsEnabled) as err:
            raise RuntimeError(f"pushing to Hub repo {repo_id!r} failed ({type(err).__name__}: {_first_line(err)}); "
                               "the network may be unreachable. Save locally with save_pretrained and upload later "
                               "with `hf upload`.") from None
    _logger.info("pushed to %s", commit.commit_url)
    return str(commit.commit_url)
