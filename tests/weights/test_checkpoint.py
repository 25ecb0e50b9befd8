"""Reference checkpoint files: every train-state layout reads to the golden params; anything else is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import GOLDEN_DIR
from vivit.weights.convert import from_scenic
from vivit.weights.convert.checkpoint import read_scenic_checkpoint

msgpack = pytest.importorskip("msgpack", reason="reading reference checkpoints needs msgpack")
hypothesis = pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

CHECKPOINTS = GOLDEN_DIR / "scenic" / "checkpoints"
CHECKPOINT_DIRS = sorted(p.name for p in CHECKPOINTS.iterdir() if p.is_dir()) if CHECKPOINTS.is_dir() else []
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def pack_flax(tree: Any, max_chunk_bytes: int = 2**30) -> bytes:
    """Serialise nested dicts of numpy arrays / scalars the way ``flax.serialization.msgpack_serialize`` does."""

    def chunk_big_arrays(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: chunk_big_arrays(v) for k, v in node.items()}
        if isinstance(node, np.ndarray) and node.nbytes > max_chunk_bytes:
            step = max(1, max_chunk_bytes // node.itemsize)
            flat = node.reshape(-1)
            chunks = [flat[i:i + step] for i in range(0, flat.size, step)]
            return {"__msgpack_chunked_array__": True, "shape": {str(i): d for i, d in enumerate(node.shape)},
                    "chunks": {str(i): c for i, c in enumerate(chunks)}}
        return node

    def ext(x: Any) -> msgpack.ExtType:
        if isinstance(x, (np.ndarray, np.generic)):
            arr = np.asarray(x)
            data = msgpack.packb((arr.shape, arr.dtype.name, arr.tobytes("C")), use_bin_type=True)
            return msgpack.ExtType(1 if isinstance(x, np.ndarray) else 3, data)
        if isinstance(x, complex):
            return msgpack.ExtType(2, msgpack.packb((x.real, x.imag)))
        raise TypeError(f"cannot serialise {type(x)}")

    return msgpack.packb(chunk_big_arrays(tree), default=ext, strict_types=True, use_bin_type=True)


def unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def golden_params(golden_dir: Path, folder: str) -> dict[str, np.ndarray]:
    stem = folder.rsplit("_A_", 1)[0] + "_A"  # vivit_spacetime_A_optax -> vivit_spacetime_A
    arrays = np.load(golden_dir / "scenic" / f"{stem}.npz")
    return {k.removeprefix("params/"): arrays[k] for k in arrays.files if k.startswith("params/")}


def tiny_params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"embedding/kernel": rng.normal(size=(2, 4, 4, 3, 8)).astype(np.float32),
            "embedding/bias": rng.normal(size=8).astype(np.float32),
            "cls": rng.normal(size=(1, 1, 8)).astype(np.float32),
            "Transformer/encoder_norm/scale": rng.normal(size=8).astype(np.float32)}


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def assert_same_params(flat: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(flat) == sorted(expected)
    for key, value in expected.items():
        assert flat[key].dtype == value.dtype and flat[key].shape == value.shape, key
        np.testing.assert_array_equal(flat[key], value, err_msg=key)


def read_or_refuse(path: Path) -> dict[str, np.ndarray] | None:
    """The reader's whole contract: a flat dict of arrays, or ValueError/OSError naming the file."""
    try:
        flat = read_scenic_checkpoint(path)
    except (ValueError, OSError) as e:
        assert str(path) in str(e), str(e)
        return None
    assert all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in flat.items())
    return flat


def test_golden_checkpoints_are_present(golden_dir):
    assert CHECKPOINT_DIRS == ["vivit_factorized_encoder_A_flax_optim", "vivit_spacetime_A_optax"]


@pytest.mark.parametrize("folder", CHECKPOINT_DIRS)
def test_golden_checkpoint_reads_to_the_npz_params(golden_dir, folder):
    flat = read_scenic_checkpoint(golden_dir / "scenic" / "checkpoints" / folder / "checkpoint_1000")
    assert_same_params(flat, golden_params(golden_dir, folder))
    assert all(v.flags.writeable and v.dtype.isnative for v in flat.values())  # torch.from_numpy takes them quietly


@pytest.mark.parametrize("folder", CHECKPOINT_DIRS)
def test_from_scenic_on_a_checkpoint_path_matches_reference_logits(golden_dir, folder):
    stem = folder.rsplit("_A_", 1)[0] + "_A"
    sidecar = json.loads((golden_dir / "scenic" / f"{stem}.json").read_text())
    arrays = np.load(golden_dir / "scenic" / f"{stem}.npz")
    video = torch.from_numpy(arrays["input"]).permute(0, 4, 1, 2, 3)  # NTHWC -> B C T H W
    path = golden_dir / "scenic" / "checkpoints" / folder / "checkpoint_1000"
    model = from_scenic(path, sidecar["scenic_config"], img_size=(16, 16))
    with torch.no_grad():
        logits = model(video)
    np.testing.assert_allclose(logits.numpy(), arrays["logits"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("folder", CHECKPOINT_DIRS)
def test_pack_helper_writes_the_golden_files_byte_for_byte(golden_dir, folder):
    # Pins the test helper to flax's format, so the layouts it builds below stand for real files.
    data = (golden_dir / "scenic" / "checkpoints" / folder / "checkpoint_1000").read_bytes()

    def ext(code: int, payload: bytes) -> Any:
        shape, name, buf = msgpack.unpackb(payload, raw=True)
        arr = np.frombuffer(buf, np.dtype(name.decode())).reshape(shape)
        return arr if code == 1 else arr[()]

    assert pack_flax(msgpack.unpackb(data, ext_hook=ext, raw=False, strict_map_key=False)) == data


def test_oldest_layout_optimizer_target_params_is_read(golden_dir, tmp_path):
    params = golden_params(golden_dir, "vivit_spacetime_A_optax")
    moments = {k: np.full_like(v, 7.0) for k, v in params.items()}
    state = {"optimizer": {"state": {"step": np.int32(1000), "param_states": unflatten(moments)},
                           "target": {"params": unflatten(params)}},
             "global_step": 1000, "model_state": {}, "rng": np.arange(2, dtype=np.uint32)}
    flat = read_scenic_checkpoint(write(tmp_path / "checkpoint_1000", pack_flax(state)))
    assert_same_params(flat, params)


@pytest.mark.parametrize("root", [("params",), ("optimizer", "target"), ("optimizer", "target", "params"), ()])
def test_every_layout_is_found_by_structure(tmp_path, root):
    params = tiny_params()
    tree: Any = unflatten(params)
    for key in reversed(root):
        tree = {key: tree}
    tree = {"opt_state": {"0": {"mu": unflatten(params)}}, **tree} if root else tree
    assert_same_params(read_scenic_checkpoint(write(tmp_path / "checkpoint_1", pack_flax(tree))), params)


def test_optimizer_moments_are_never_taken_as_weights(tmp_path):
    tree = {"opt_state": {"0": {"mu": unflatten(tiny_params())}}, "optimizer": {"state": unflatten(tiny_params())},
            "params": {}, "global_step": 3}
    path = write(tmp_path / "checkpoint_3", pack_flax(tree))
    with pytest.raises(ValueError, match="no params tree"):
        read_scenic_checkpoint(path)


def test_chunked_arrays_are_joined(tmp_path):
    params = tiny_params()
    data = pack_flax({"params": unflatten(params)}, max_chunk_bytes=64)
    assert b"__msgpack_chunked_array__" in data
    assert_same_params(read_scenic_checkpoint(write(tmp_path / "checkpoint_1", data)), params)


def test_bfloat16_leaves_widen_exactly_to_float32(tmp_path):
    f32 = (np.arange(-6, 6, dtype=np.float32) / 4).reshape(3, 4)  # exactly representable in bfloat16
    bf16 = (f32.view(np.uint32) >> 16).astype(np.uint16)
    kernel = msgpack.ExtType(1, msgpack.packb((list(f32.shape), "bfloat16", bf16.tobytes()), use_bin_type=True))
    data = msgpack.packb({"params": {"embedding": {"kernel": kernel}}}, use_bin_type=True)
    flat = read_scenic_checkpoint(write(tmp_path / "checkpoint_1", data))
    assert flat["embedding/kernel"].dtype == np.float32
    np.testing.assert_array_equal(flat["embedding/kernel"], f32)


def test_scalar_and_complex_leaves_outside_params_are_tolerated(tmp_path):
    params = tiny_params()
    tree = {"params": unflatten(params), "metadata": {"lr": np.float32(0.1), "z": complex(1, 2), "step": np.int64(5)}}
    assert_same_params(read_scenic_checkpoint(write(tmp_path / "checkpoint_1", pack_flax(tree))), params)


def test_folder_reads_the_highest_step(tmp_path):
    for step in (200, 1000, 30):
        tree = {"params": unflatten({**tiny_params(), "cls": np.full((1, 1, 8), step, np.float32)})}
        write(tmp_path / f"checkpoint_{step}", pack_flax(tree))
    write(tmp_path / "checkpoint_tmp", b"partial")  # flax's in-progress file, never a candidate
    (tmp_path / "checkpoint_5000_gda").mkdir()
    assert read_scenic_checkpoint(tmp_path)["cls"].flat[0] == 1000


def test_folder_without_checkpoints_is_refused(tmp_path):
    write(tmp_path / "model.npz", b"PK\x03\x04")
    with pytest.raises(FileNotFoundError, match="checkpoint_<step>") as info:
        read_scenic_checkpoint(tmp_path)
    assert str(tmp_path) in str(info.value)


FOREIGN = {
    "empty": b"",
    "random": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
    "plain_map": msgpack.packb({"a": 1, "b": [1, 2]}),
    "not_a_map": msgpack.packb([1, 2, 3]),
    "pickle": b"\x80\x04\x95" + bytes(32),
    "trailing": pack_flax({"params": unflatten(tiny_params())}) + b"\x00",
    "truncated": pack_flax({"params": unflatten(tiny_params())})[:-1],
    "text_leaf": pack_flax({"params": {"embedding": {"kernel": "//GDAPlaceholder:params/embedding/kernel"}}}),
    "object_dtype": msgpack.packb({"params": {"embedding": {"kernel": msgpack.ExtType(
        1, msgpack.packb(([1], "object", bytes(8)), use_bin_type=True))}}}, use_bin_type=True),
    "short_buffer": msgpack.packb({"params": {"embedding": {"kernel": msgpack.ExtType(
        1, msgpack.packb(([4], "float32", bytes(12)), use_bin_type=True))}}}, use_bin_type=True),
}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_non_checkpoint_bytes_are_refused_naming_the_file(tmp_path, kind):
    path = write(tmp_path / f"{kind}.ckpt", FOREIGN[kind])
    with pytest.raises(ValueError, match="expected a flax msgpack checkpoint file 'checkpoint_<step>'") as info:
        read_scenic_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ["vivit_spacetime_A.npz", "vivit_spacetime_A.json", "README.md"])
def test_golden_npz_and_json_are_refused_naming_the_file(golden_dir, name):
    with pytest.raises(ValueError, match="checkpoint_<step>") as info:
        read_scenic_checkpoint(golden_dir / "scenic" / name)
    assert name in str(info.value)


@pytest.mark.parametrize("name", [b",", b"float32,int8", b"(", b"[1]"])
def test_array_dtype_names_numpy_parses_as_python_are_refused(tmp_path, name):
    # numpy hands comma names to ast.literal_eval: a SyntaxError, not a ValueError (found by the fuzz test below)
    leaf = msgpack.ExtType(1, msgpack.packb(([], name, b""), use_bin_type=True))
    path = write(tmp_path / "checkpoint_1", msgpack.packb({"params": {"embedding": leaf}}, use_bin_type=True))
    with pytest.raises(ValueError, match="dtype") as info:
        read_scenic_checkpoint(path)
    assert str(path) in str(info.value)


def test_missing_path_is_refused_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint_<step>") as info:
        read_scenic_checkpoint(tmp_path / "checkpoint_404")
    assert "checkpoint_404" in str(info.value)


@FUZZ
@given(data=st.binary(max_size=512))
def test_fuzz_random_bytes(tmp_path_factory, data):
    read_or_refuse(write(tmp_path_factory.mktemp("bytes") / "checkpoint_1", data))


_KEYS = st.sampled_from(["params", "optimizer", "target", "opt_state", "embedding", "kernel", "cls",
                         "__msgpack_chunked_array__", "shape", "chunks", "0", "1"]) | st.text(max_size=4) \
    | st.integers(-9, 9)
_ARRAYS = hnp.arrays(st.sampled_from([np.float32, np.float64, np.int32, np.uint8, np.bool_, np.complex64]),
                     hnp.array_shapes(min_dims=0, max_dims=3, max_side=3))
_ARRAY_EXT = st.builds(
    lambda code, shape, name, buf: msgpack.ExtType(code, msgpack.packb((shape, name, buf), use_bin_type=True)),
    st.sampled_from([1, 3]), st.lists(st.integers(-2, 2**40), max_size=3) | st.integers(-9, 9),
    st.sampled_from(["float32", "bfloat16", "object", "V4", "<U2", "nonsense", "float32,int8"]) | st.binary(max_size=8),
    st.binary(max_size=16))
_LEAVES = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8)
           | st.binary(max_size=8) | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=24))
           | _ARRAY_EXT | _ARRAYS.map(lambda a: pack_flax({"x": a})).map(lambda b: msgpack.unpackb(b, raw=False)["x"]))
_TREES = st.recursive(_LEAVES, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_KEYS, kids, max_size=4),
                      max_leaves=24)


@FUZZ
@given(tree=_TREES)
def test_fuzz_random_msgpack_objects(tmp_path_factory, tree):
    read_or_refuse(write(tmp_path_factory.mktemp("objects") / "checkpoint_1", msgpack.packb(tree, use_bin_type=True)))


@FUZZ
@given(tree=st.fixed_dictionaries({"embedding": st.dictionaries(_KEYS, _TREES, max_size=3)}), root=st.sampled_from(
    [("params",), ("optimizer", "target"), ("optimizer", "target", "params"), ()]))
def test_fuzz_params_trees_with_random_leaves(tmp_path_factory, tree, root):
    for key in reversed(root):
        tree = {key: tree}
    read_or_refuse(write(tmp_path_factory.mktemp("params") / "checkpoint_1", msgpack.packb(tree, use_bin_type=True)))


@FUZZ
@given(data=st.data())
def test_fuzz_truncated_golden_files_are_refused(golden_dir, tmp_path_factory, data):
    folder = data.draw(st.sampled_from(CHECKPOINT_DIRS))
    whole = (golden_dir / "scenic" / "checkpoints" / folder / "checkpoint_1000").read_bytes()
    path = write(tmp_path_factory.mktemp("cut") / "checkpoint_1000", whole[:data.draw(st.integers(0, len(whole) - 1))])
    assert read_or_refuse(path) is None


@FUZZ
@given(data=st.data())
def test_fuzz_corrupted_golden_files(golden_dir, tmp_path_factory, data):
    folder = data.draw(st.sampled_from(CHECKPOINT_DIRS))
    whole = bytearray((golden_dir / "scenic" / "checkpoints" / folder / "checkpoint_1000").read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        whole[data.draw(st.integers(0, len(whole) - 1))] = data.draw(st.integers(0, 255))
    read_or_refuse(write(tmp_path_factory.mktemp("flip") / "checkpoint_1000", bytes(whole)))


def test_import_loads_no_msgpack():
    code = ("import sys, vivit, vivit.weights.convert.checkpoint; "
            "assert 'msgpack' not in sys.modules, 'msgpack imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


@pytest.mark.parametrize("damage, match", [
    ("query_rank", r"query/kernel has shape \(32, 32\), expected \(d=32, heads=4, hd=8\)"),
    ("mlp_width", r"Dense_1/kernel has shape \(63, 32\), expected \(mlp=64, d=32\)"),
    ("embedding_rank", r"embedding/kernel has shape \(4, 4, 3, 32\).*needs a 5-D kernel"),
])
def test_flax_kernels_of_the_wrong_rank_or_width_are_refused_naming_the_file(golden_dir, tmp_path, damage, match):
    import vivit

    params = golden_params(golden_dir, "vivit_spacetime_A_optax")
    key = {"query_rank": "Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel",
           "mlp_width": "Transformer/encoderblock_0/MlpBlock_0/Dense_1/kernel", "embedding_rank": "embedding/kernel"}
    value = params[key[damage]]
    params[key[damage]] = {"query_rank": lambda: value.reshape(value.shape[0], -1), "mlp_width": lambda: value[:-1],
                           "embedding_rank": lambda: value[0]}[damage]()
    path = write(tmp_path / "checkpoint_1", pack_flax({"params": unflatten(params)}))
    config = json.loads((golden_dir / "scenic" / "vivit_spacetime_A.json").read_text())["scenic_config"]
    with pytest.raises(ValueError, match=match) as info:  # a (d, d) query kernel once built a 32-head model
        from_scenic(path, config, img_size=(16, 16))
    assert str(path) in str(info.value)
    good = from_scenic(golden_dir / "scenic" / "checkpoints" / "vivit_spacetime_A_optax" / "checkpoint_1000", config,
                       img_size=(16, 16))
    with pytest.raises(ValueError, match=str(path)):
        vivit.load_pretrained(good, path)
