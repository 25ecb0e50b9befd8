"""Reference checkpoint files (flax msgpack, ``checkpoint_<step>``) -> flat ``{flax path: ndarray}``, without jax.

The byte format is flax's ``serialization.msgpack_serialize``: nested msgpack maps whose array leaves are extension
type 1 holding msgpack ``(shape, dtype name, C-order bytes)``; type 2 is a Python complex, type 3 a numpy scalar, and
arrays over 1 GiB are maps ``{"__msgpack_chunked_array__": True, "shape": {...}, "chunks": {...}}``.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vivit.weights.read import FILE_KINDS, sniff_format

__all__ = ["read_scenic_checkpoint"]

logger = logging.getLogger(__name__)

EXPECTED = ("expected a flax msgpack checkpoint file 'checkpoint_<step>' as written by scenic "
            "(flax.training.checkpoints.save_checkpoint), or the folder holding it")
# Where the params tree sits, newest layout first; the first candidate holding ``embedding/kernel`` wins.
PARAMS_ROOTS: dict[str, tuple[str, ...]] = {
    "optax train state": ("params",),
    "flax.optim train state (oldest)": ("optimizer", "target", "params"),
    "flax.optim train state": ("optimizer", "target"),
    "bare params tree": (),
}
# Optimizer moments have the very shapes of the weights; they are skipped unread, never mistaken for weights.
SKIPPED = {("opt_state",), ("optimizer", "state")}
_STEP_FILE = re.compile(r"checkpoint_(\d+)")
_CHUNKED = "__msgpack_chunked_array__"
_MAX_MSGPACK_OBJECT = 2**32 - 1  # msgpack's own ceiling for one str/bin/ext
_ARRAY_HEADER_BYTES = 1024  # (shape, dtype name) of an array: numpy's 64 dimensions take at most ~600 bytes
_RAW_LENGTH_BYTES = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}  # bin8/16/32, str8/16/32


class _Malformed(ValueError):
    """Internal: the bytes are not a usable checkpoint; the reason is completed with the file name by the caller."""


def read_scenic_checkpoint(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read the parameters of a reference (scenic / flax) checkpoint; needs ``msgpack``, not jax or flax.

    The params tree is found by structure in every train-state layout scenic has written: ``params/`` (optax),
    ``optimizer/target/`` (flax.optim, the 2021 releases) and ``optimizer/target/params/`` (oldest); a file holding
    only a params tree is read too. Optimizer moments (``opt_state/``, ``optimizer/state/``) are skipped unread.
    ``bfloat16`` leaves are widened to ``float32`` (exact). Given a folder, the ``checkpoint_<step>`` file with the
    highest step is read, as flax's ``latest_checkpoint`` does.

    Args:
        path: A ``checkpoint_<step>`` file, or a folder holding such files.

    Returns:
        ``'/'``-joined flax paths of the params tree (``'embedding/kernel'``, ``'cls'``, ...) -> writable arrays.

    Raises:
        FileNotFoundError: ``path`` does not exist, or is a folder without ``checkpoint_<step>`` files.
        ValueError: The file is not a flax msgpack checkpoint holding a params tree (message names the file).
    """
    try:
        import msgpack
    except ImportError as e:
        raise ImportError("reading reference checkpoints needs msgpack: pip install msgpack") from e

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; {EXPECTED}")
    if path.is_dir():
        path = _latest_checkpoint(path)
    try:
        layout, flat = _read(path, msgpack)
    except _Malformed as e:
        raise ValueError(f"{path} is not a usable reference checkpoint: {e}; {EXPECTED}") from None
    logger.info("read %d parameter arrays (%s) from %s", len(flat), layout, path)
    return flat


def _latest_checkpoint(folder: Path) -> Path:
    steps = {int(m[1]): p for p in folder.iterdir() if (m := _STEP_FILE.fullmatch(p.name)) and p.is_file()}
    if not steps:
        raise FileNotFoundError(f"{folder} is a folder without checkpoint_<step> files (orbax checkpoint folders are "
                                f"not supported); {EXPECTED}")
    latest = steps[max(steps)]
    logger.info("reading %s, the latest of %d checkpoints in %s", latest.name, len(steps), folder)
    return latest


def _read(path: Path, msgpack: Any) -> tuple[str, dict[str, np.ndarray]]:
    tree = _parse(path, msgpack)  # returns after msgpack's read buffer (as large as the largest leaf) is freed
    for layout, root in PARAMS_ROOTS.items():
        params = _subtree(tree, root)
        if isinstance(params, dict) and isinstance(params.get("embedding"), dict) and "kernel" in params["embedding"]:
            return layout, _flatten(params)
    where = ", ".join("/".join(root) + "/" for root in PARAMS_ROOTS.values())
    raise _Malformed(f"no params tree (a map holding embedding/kernel) under {where} "
                     f"(top-level keys: {sorted(map(str, tree))[:12]}; optimizer moments are never used as weights)")


def _parse(path: Path, msgpack: Any) -> dict[Any, Any]:
    """The file's top-level map, streamed from disk, with the ``SKIPPED`` subtrees left out."""
    size = path.stat().st_size
    if size == 0:
        raise _Malformed("the file is empty")
    with path.open("rb") as f:
        head = f.read(16)
        kind = sniff_format(head, size)  # formats people pass by mistake are named; a flax checkpoint is a map
        if kind not in (None, "msgpack"):
            raise _Malformed(f"it is {FILE_KINDS[kind]}")
        f.seek(0)
        # Limits from the file size: no header inside it can make msgpack allocate more than the file holds.
        limit = max(1, min(size, _MAX_MSGPACK_OBJECT))
        unpacker = msgpack.Unpacker(f, read_size=min(limit, 1 << 22), max_buffer_size=limit, raw=False,
                                    strict_map_key=False, ext_hook=_ext_hook(msgpack))
        try:
            tree = _unpack_tree(unpacker, ())
        except _Malformed:
            raise
        except msgpack.OutOfData:
            raise _Malformed("it ends early (truncated file?)") from None
        except msgpack.BufferFull:
            raise _Malformed("it declares an object larger than the file") from None
        except (ValueError, TypeError, OverflowError) as e:  # msgpack FormatError/StackError, bad keys, bad UTF-8
            raise _Malformed(f"it is not a msgpack map of the flax format ({type(e).__name__}: {e})") from None
        if unpacker.tell() != size:
            raise _Malformed(f"{size - unpacker.tell()} bytes follow the checkpoint's msgpack map")
    return tree


def _unpack_tree(unpacker: Any, path: tuple[Any, ...]) -> Any:
    """Unpack the next object, skipping the ``SKIPPED`` subtrees below ``path`` without decoding them."""
    if path in SKIPPED:
        unpacker.skip()
        return None
    if not any(len(s) > len(path) and s[:len(path)] == path for s in SKIPPED):
        return unpacker.unpack()
    tree = {}
    for _ in range(unpacker.read_map_header()):
        key = unpacker.unpack()
        tree[key] = _unpack_tree(unpacker, (*path, key))
    return tree


def _subtree(tree: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if not isinstance(tree, dict):
            return None
        tree = tree.get(key)
    return tree


def _flatten(params: dict[Any, Any]) -> dict[str, np.ndarray]:
    """``{'/'-joined path: writable native-order array}``, emptying ``params`` as it goes.

    Each read-only view (and the file bytes behind it) is dropped once copied, so no leaf exists twice over.
    """
    flat: dict[str, np.ndarray] = {}
    stack: list[tuple[tuple[str, ...], Any]] = [((), params)]  # explicit stack: msgpack nests deeper than recursion
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict) and _CHUNKED in node:
            node = _unchunk(node, "/".join(path))
        if isinstance(node, dict):
            for key in reversed(list(node)):
                if not isinstance(key, str):
                    raise _Malformed(f"params key {key!r} under '{'/'.join(path)}' is not a string")
                stack.append(((*path, key), node.pop(key)))
            continue
        name = "/".join(path)
        if isinstance(node, np.generic):
            node = np.asarray(node)
        if not isinstance(node, np.ndarray):
            hint = " (arrays stored outside this file, e.g. flax multi-process or orbax, are not supported)" \
                if isinstance(node, str) else ""
            raise _Malformed(f"params leaf '{name}' is a {type(node).__name__}, not an array{hint}")
        # torch.from_numpy wants writable native-order arrays; the views from _decode_ndarray are neither.
        flat[name] = node if node.flags.writeable and node.dtype.isnative else node.astype(node.dtype.newbyteorder("="))
    return flat


def _unchunk(node: dict[str, Any], name: str) -> np.ndarray:
    """flax splits arrays over 1 GiB into 1-D chunks: ``{"shape": {"0": d0, ...}, "chunks": {"0": a0, ...}}``."""
    shape, chunks = node.get("shape"), node.get("chunks")
    if not isinstance(shape, dict) or not isinstance(chunks, dict) or not chunks:
        raise _Malformed(f"chunked array '{name}' lacks its shape or chunks map")
    dims = [shape.get(str(i)) for i in range(len(shape))]
    if not all(type(d) is int and d >= 0 for d in dims):
        raise _Malformed(f"chunked array '{name}' has shape {dims}")
    parts = [chunks.get(str(i)) for i in range(len(chunks))]
    if not all(isinstance(p, np.ndarray) and p.ndim == 1 and p.dtype == parts[0].dtype for p in parts):
        raise _Malformed(f"chunked array '{name}' has chunks that are not 1-D arrays of one dtype (keys 0..n-1)")
    if sum(p.size for p in parts) != math.prod(dims):
        raise _Malformed(f"chunked array '{name}' holds {sum(p.size for p in parts)} values for shape {dims}")
    flat = np.empty(math.prod(dims), parts[0].dtype.newbyteorder("="))
    del parts
    offset = 0
    for i in range(len(chunks)):
        part = chunks.pop(str(i))  # each chunk is freed once copied: a giant leaf never exists twice over
        flat[offset:offset + part.size] = part
        offset += part.size
    return flat.reshape(dims)


def _ext_hook(msgpack: Any) -> Callable[[int, bytes], Any]:
    """flax's extension types: 1 ndarray, 2 Python complex, 3 numpy scalar; others stay ``ExtType`` (as in flax)."""

    def hook(code: int, data: bytes) -> Any:
        if code == 1:
            return _decode_ndarray(data, msgpack)
        if code == 2:
            value = _unpack_inner(data, msgpack)
            if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)):
                raise _Malformed("a complex-number entry is not (real, imag)")
            return complex(*value)
        if code == 3:
            return _decode_ndarray(data, msgpack)[()]
        return msgpack.ExtType(code, data)

    return hook


def _unpack_inner(data: bytes, msgpack: Any) -> Any:
    try:
        return msgpack.unpackb(data, raw=True)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise _Malformed(f"an extension entry is not valid msgpack ({type(e).__name__}: {e})") from None


def _decode_ndarray(data: bytes, msgpack: Any) -> np.ndarray:
    """flax's ``msgpack((shape, dtype name, bytes))`` -> a read-only little-endian view of ``data``."""
    # The small header is unpacked from a prefix and the payload viewed in place: no copy while parsing.
    header = msgpack.Unpacker(raw=True, max_buffer_size=_ARRAY_HEADER_BYTES)
    header.feed(data[:_ARRAY_HEADER_BYTES])
    try:
        fields, shape, name = header.read_array_header(), header.unpack(), header.unpack()
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise _Malformed(f"an array entry is not (shape, dtype name, bytes) ({type(e).__name__}: {e})") from None
    buffer = _raw_payload(data, header.tell())
    if fields != 3 or buffer is None:
        raise _Malformed("an array entry is not (shape, dtype name, bytes)")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape) and isinstance(name, bytes)):
        raise _Malformed(f"an array entry has shape {shape!r}, dtype {name!r}")
    bfloat16 = name == b"bfloat16"
    try:
        # Written in the writer's byte order, little-endian on every TPU/GPU host; bfloat16 is the top half of f32.
        dtype = np.dtype("<u2" if bfloat16 else name.decode("ascii")).newbyteorder("<")
    except (TypeError, ValueError, SyntaxError) as e:  # numpy parses "a,b" names as a Python literal (SyntaxError)
        raise _Malformed(f"an array has dtype {name!r}, which numpy does not know ({type(e).__name__})") from None
    if dtype.kind not in "biufc":
        raise _Malformed(f"an array has dtype {name!r}; only numeric arrays are read")
    if len(buffer) != math.prod(shape) * dtype.itemsize:
        raise _Malformed(f"an array of shape {tuple(shape)} and dtype {name.decode(errors='replace')} "
                         f"holds {len(buffer)} bytes")
    try:
        array = np.frombuffer(buffer, dtype).reshape(shape)
    except ValueError as e:  # e.g. more than 64 dimensions
        raise _Malformed(f"an array of shape {tuple(shape)} cannot be built ({e})") from None
    return (array.astype("<u4") << 16).view("<f4") if bfloat16 else array


def _raw_payload(data: bytes, offset: int) -> memoryview | None:
    """The msgpack bin (or str, as raw) object at ``offset`` when it runs exactly to the end of ``data``."""
    marker = data[offset] if offset < len(data) else -1
    if 0xA0 <= marker <= 0xBF:  # fixstr
        start, size = offset + 1, marker & 0x1F
    elif marker in _RAW_LENGTH_BYTES:
        start = offset + 1 + _RAW_LENGTH_BYTES[marker]
        size = int.from_bytes(data[offset + 1:start], "big")
    else:
        return None
    return memoryview(data)[start:] if start <= len(data) and start + size == len(data) else None
