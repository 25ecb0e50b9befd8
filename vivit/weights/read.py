"""Reading weight files: detect the format of a file or folder and read it into tensors (no conversion).

Formats: safetensors, torch state dicts (``weights_only=True``, never unpickling code), ``.npz`` archives of flax
params, reference flax checkpoints (named here; read by ``vivit.weights.convert``), folders written by
``save_pretrained`` and transformers ViViT folders. Imports nothing else of vivit.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vivit.files import first_line

WEIGHTS_NAME = "model.safetensors"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_NAMES = (WEIGHTS_NAME, LEGACY_WEIGHTS_NAME)  # a model folder's weights file, preferred first
CONFIG_NAME = "config.json"
WEIGHTS_RECORD = "weights_file"  # config.json key: {"name", "size", "sha256"} of the weights file it was saved with
FORMATS = ("safetensors", "torch", "scenic", "npz", "vivit-folder", "transformers-folder")
_known_sha256: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, for this process
# msgpack map markers (the spec): fixmap 0x80-0x8f (0x80 is the empty map), map16 0xde, map32 0xdf. A pickle starts
# with PROTO 0x80 and its protocol (2-5), so sniff_format tests for a pickle first.
MSGPACK_MAP_MARKERS = frozenset({*range(0x80, 0x90), 0xDE, 0xDF})
# What sniff_format names, as words for messages.
FILE_KINDS = {
    "safetensors": "a safetensors file",
    "zip": "a zip archive (.npz, or a PyTorch .pt/.bin)",
    "pickle": "a pickle (old PyTorch checkpoint)",
    "npy": "a .npy array",
    "hdf5": "an HDF5 file (Keras .h5)",
    "json": "a JSON document",
    "msgpack": "a msgpack map (flax checkpoint)",
}
# Limits checked from headers, before any data is read. A ViViT-H safetensors header is ~60 KB for ~500 tensors.
MAX_SAFETENSORS_HEADER = 8 << 20
MAX_TENSORS = 65536
MAX_NPZ_BYTES = 8 << 30  # default bound on the arrays an .npz may declare (ViViT-H in float32 is ~2.6 GB)
# torch's refusal names the offending global; the rest of its message suggests weights_only=False, which we never do.
_TORCH_GLOBAL = re.compile(r"(?:unsupported|Unsupported) (?:GLOBAL|global:?) ?([\w.]+)")


# ------------------------------------------------------------------------------------------------ detection
def detect_format(path: str | Path) -> str:
    """Name the weight format of a local file or folder (one of ``FORMATS``); ``ValueError`` if it is none."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.is_dir():
        config = path / CONFIG_NAME
        if config.is_file() and (kind := config_kind(read_json(config))) is not None:
            return f"{kind}-folder"
        if any(p.name.startswith("checkpoint") for p in path.iterdir()):
            return "scenic"
        raise ValueError(f"{path} is a folder but not a saved ViViT (config.json with model_args), a transformers "
                         "ViViT folder, or a folder of reference checkpoint_<step> files")
    with path.open("rb") as f:
        head = f.read(16)
    size = path.stat().st_size
    kind = sniff_format(head, size)
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile:
            raise ValueError(f"{path} starts like a zip archive (torch or .npz) but is corrupt or truncated") from None
        return "npz" if names and all(n.endswith(".npy") for n in names) else "torch"
    formats = {"safetensors": "safetensors", "pickle": "torch", "msgpack": "scenic"}
    if kind in formats:
        return formats[kind]
    raise ValueError(
        f"{path} is not a weights file vivit reads ({FILE_KINDS[kind] + ', ' if kind else ''}size {size} bytes, "
        f"starts {head[:8]!r}); expected safetensors, a "
        "torch state dict (.pt/.pth/.bin), a reference flax checkpoint (checkpoint_<step>) or an .npz of flax params"
    )


def sniff_format(head: bytes, size: int) -> str | None:
    """Name a file's kind (a ``FILE_KINDS`` key) from its first 16 bytes and its size; ``None`` when unknown."""
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < size:
        return "safetensors"  # an 8-byte little-endian header length, then the JSON header
    magics = {b"PK\x03\x04": "zip", b"\x93NUMPY": "npy", b"\x89HDF": "hdf5", b"{": "json", b"[": "json"}
    found = next((kind for magic, kind in magics.items() if head.startswith(magic)), None)
    if found is not None:
        return found
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    return "msgpack" if head[:1] and head[0] in MSGPACK_MAP_MARKERS else None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file; ``ValueError`` naming it when it is not valid JSON, nested too deep or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    except RecursionError:
        raise ValueError(f"{path} is nested too deeply to be a config file") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, expected an object")
    return data


def config_kind(config: Mapping[str, Any]) -> str | None:
    """``"vivit"``: a ``save_pretrained`` config (``model_args``); ``"transformers"``: a transformers ViViT one."""
    if isinstance(config.get("model_args"), dict):
        return "vivit"
    return "transformers" if config.get("model_type") == "vivit" else None


# -------------------------------------------------------------------------------------------------- reading
def read_torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A torch state dict file (``weights_only=True``; training checkpoints' ``state_dict``/``model`` unwrapped)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)  # never executes pickled code
    except pickle.UnpicklingError as err:
        found = _TORCH_GLOBAL.search(str(err))
        what = f"it needs the Python object {found.group(1)}" if found else "it holds more than tensors and containers"
        raise ValueError(f"{path} is not a plain torch state dict: the safe loader refused it ({what}; such files can "
                         "run code when unpickled, so vivit never loads them). Re-save the weights alone with "
                         "torch.save(model.state_dict()) or as safetensors") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a readable torch file ({first_line(err)[:200]}); it may be truncated"
                         ) from None
    for key in ("state_dict", "model", "model_state_dict", "module"):  # training checkpoints wrap the weights
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors (found {type(obj).__name__})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, its header checked before any tensor is read; ``ValueError`` naming it when corrupt.

    The header's size (``MAX_SAFETENSORS_HEADER``), tensor count (``MAX_TENSORS``), names, dtypes, shapes and byte
    ranges are checked first: a forged header of a million empty tensors is refused in milliseconds.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_safetensors_header(path)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a valid safetensors file ({err}); it may be corrupt or truncated") from None


def check_safetensors_header(path: Path) -> dict[str, Any]:
    """Read and check a safetensors header without touching the data; returns ``{name: entry}``."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 2 or 8 + length > size:
            raise ValueError(f"{path} is not a valid safetensors file: its header length {length} does not fit the "
                             f"file's {size} bytes; it may be corrupt or truncated")
        if length > MAX_SAFETENSORS_HEADER:
            raise ValueError(f"{path} declares a safetensors header of {length} bytes (limit "
                             f"{MAX_SAFETENSORS_HEADER}; a ViViT's is tens of KB): refused unread as forged or not "
                             "model weights")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a valid safetensors file: its header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a valid safetensors file: its header is a JSON {type(header).__name__}")
    header.pop("__metadata__", None)
    if len(header) > MAX_TENSORS:
        raise ValueError(f"{path} declares {len(header)} tensors (limit {MAX_TENSORS}; a ViViT has hundreds): "
                         "refused unread as forged or not model weights")
    data = size - 8 - length
    for name, entry in header.items():
        shape, offsets = (entry.get("shape"), entry.get("data_offsets")) if isinstance(entry, dict) else (None, None)
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
                and isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data and isinstance(entry.get("dtype"), str)):
            raise ValueError(f"{path} is not a valid safetensors file: tensor {name[:80]!r} has entry "
                             f"{str(entry)[:120]} (needs dtype, a shape of non-negative ints and data_offsets within "
                             f"the {data} data bytes)")
    return header


def read_npz(path: Path, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """An ``.npz`` of flax params: ``'/'``-joined paths -> arrays (only the ``params/`` entries when there are any).

    Every entry's npy header is read first and checked against the zip's declared sizes: object arrays, entries
    shorter or longer than their shape, and archives declaring more than ``max_bytes`` (default ``MAX_NPZ_BYTES``)
    in all are refused before any array is allocated, so a zip bomb costs nothing.

    Raises:
        ValueError: The archive is corrupt, forged or too large; the message names the file and the entry.
    """
    limit = MAX_NPZ_BYTES if max_bytes is None else max_bytes
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if i.filename.endswith(".npy")]
            infos = [i for i in infos if i.filename.startswith("params/")] or infos
            total = 0
            for info in infos:
                total += _npy_entry_bytes(path, zf, info)
            if total > limit:
                raise ValueError(f"{path} declares {total / 2**20:.0f} MiB of arrays, more than the "
                                 f"{limit / 2**20:.0f} MiB the weights can need: refused unread (a zip bomb, or not "
                                 "this model's weights)")
            arrays = {}
            for info in infos:
                with zf.open(info) as f:
                    arrays[info.filename[:-4]] = np.lib.format.read_array(f, allow_pickle=False)
            return arrays
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"{path} is not a readable .npz archive ({first_line(err)}); it may be truncated") from None


def _npy_entry_bytes(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    """Bytes of the array an npy entry declares, after checking its header against the zip's declared size."""
    name = info.filename[:-4]
    with zf.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f, max_header_size=10000)
        except ValueError as err:
            raise ValueError(f"{path}: entry {name!r} is not a valid npy array ({first_line(err)})") from None
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{path}: entry {name!r} holds Python objects (dtype {dtype}); only numeric arrays are read, "
                         "never pickles")
    nbytes = math.prod(shape) * dtype.itemsize
    if info.file_size - offset != nbytes:
        raise ValueError(f"{path}: entry {name!r} declares shape {shape} of {dtype} ({nbytes} bytes) but holds "
                         f"{info.file_size - offset} bytes: the archive is truncated or forged")
    return nbytes


def read_state_dict(path: Path, fmt: str | None = None) -> dict[str, torch.Tensor]:
    """A flat state dict file: safetensors or a torch pickle (read safely); ``fmt`` when already detected."""
    fmt = fmt or detect_format(path)
    return read_safetensors(path) if fmt == "safetensors" else read_torch_state_dict(path)


def check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse NaN or infinite values in any floating-point tensor, naming ``source`` and the tensors.

    Raises:
        ValueError: Lists up to 8 offending tensors with their count of non-finite values.
    """
    bad = []
    for key, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not tensor.is_meta:
            count = int((~torch.isfinite(tensor)).sum())
            if count:
                bad.append(f"{key} ({count} of {tensor.numel()})")
    if bad:
        raise ValueError(f"{source} holds NaN or infinite values in {len(bad)} tensors: {', '.join(bad[:8])}"
                         + (", ..." if len(bad) > 8 else "") + "; such weights give NaN outputs. Fix or re-export them "
                         "(or pass allow_non_finite=True to accept them)")


# ------------------------------------------------------------------------------------------------- folders
def folder_weights_file(folder: Path) -> Path:
    """The weights file of a model folder: the first of ``WEIGHTS_NAMES`` present."""
    found = next((folder / n for n in WEIGHTS_NAMES if (folder / n).is_file()), None)
    if found is None:
        raise FileNotFoundError(f"{folder / WEIGHTS_NAME} is missing: {folder} has a {CONFIG_NAME} but no weights "
                                f"({' or '.join(WEIGHTS_NAMES)})")
    return found


def read_weights_file(config: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The state dict beside a ``config.json``, refused when it is not the file the config was saved with."""
    check_weights_record(config, path)
    return read_state_dict(path)


def check_weights_record(config: Mapping[str, Any], weights: Path) -> None:
    """The weights file beside a ``config.json`` must be the one the config was saved with (size and sha256).

    ``save_pretrained`` records it, so a folder whose save was killed between renames (new weights, old config, or
    the reverse) is refused instead of loading with the wrong labels or sizes. Folders without a record load as before.

    Raises:
        ValueError: The folder is inconsistent; the message names it and says to save it again.
    """
    record = config.get(WEIGHTS_RECORD)
    if not isinstance(record, Mapping) or record.get("name") != weights.name:
        return  # saved before records existed, or a legacy weights file put beside the config by hand
    found = {"size": weights.stat().st_size}
    if record.get("size") == found["size"]:
        found["sha256"] = file_sha256(weights)
    if any(record.get(k) != v for k, v in found.items()):
        mismatch = ", ".join(f"{k} {record.get(k)!r} recorded, {v!r} found" for k, v in found.items()
                             if record.get(k) != v)
        raise ValueError(f"{weights.parent} is inconsistent: {weights.name} is not the weights file its {CONFIG_NAME} "
                         f"was saved with ({mismatch}); a save was interrupted, files were mixed or {weights} is "
                         "damaged. Save the model again (or restore the matching pair of files)")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, remembered for this process while its size and mtime stay the same."""
    key = _stat_key(path)
    if key not in _known_sha256:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        _known_sha256[key] = digest.hexdigest()
    return _known_sha256[key]


def remember_sha256(path: Path, digest: str) -> None:
    """Record the digest of a file just written (a download hashed as it streamed), so it is not read again."""
    _known_sha256[_stat_key(path)] = digest


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = os.stat(path)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns)
