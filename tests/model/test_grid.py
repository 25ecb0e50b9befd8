"""vivit.model.grid: the token grid arithmetic and the one size check."""

from __future__ import annotations

import numpy as np
import pytest

from vivit.model.grid import (
    MAX_SIDE,
    MAX_TOKENS,
    checked_input_size,
    checked_sides,
    grid_of_args,
    infer_plane,
    is_int,
    pair,
    sample_frame_indices,
    token_grid,
    tubelet_grid,
)

TUBELET = dict(tubelet_size=(2, 8, 8))


def test_pair_and_is_int() -> None:
    assert pair(32) == (32, 32) and pair(np.int64(16)) == (16, 16) and pair((16, 24)) == (16, 24)
    assert is_int(3) and is_int(np.int32(3)) and not is_int(True) and not is_int(3.0) and not is_int("3")


@pytest.mark.parametrize(("value", "length", "expected"), [
    (8, 1, (8,)), (np.int64(8), 1, (8,)), (32, 2, (32, 32)), ((16, 24), 2, (16, 24)), ([16, 24], 2, (16, 24)),
    ((2, 16, 16), 3, (2, 16, 16)), ((MAX_SIDE,) * 3, 3, (MAX_SIDE,) * 3),
])
def test_checked_sides_returns_plain_ints(value, length: int, expected: tuple) -> None:
    out = checked_sides("x", value, length)
    assert out == expected and all(type(v) is int for v in out)


@pytest.mark.parametrize(("value", "length"), [
    ("64", 2), (3.5, 2), (True, 2), ((32,), 2), ((16, 16, 16), 2), ((16.0, 16), 2), (None, 2),
    (16, 3), ((2, 16), 3), ((2, 16, "16"), 3), (np.array([16, 16]), 2), (2.7, 1), ((4,), 1), (True, 1),
])
def test_checked_sides_refuses_what_is_no_size_as_a_type_error_naming_it(value, length: int) -> None:
    with pytest.raises(TypeError, match=r"^frame_size must be .*got "):
        checked_sides("frame_size", value, length)


@pytest.mark.parametrize(("value", "length"), [
    (0, 1), (-3, 1), (MAX_SIDE + 1, 1), (0, 2), ((16, 0), 2), ((16, MAX_SIDE + 1), 2), ((0, 16, 16), 3),
    ((2, -16, 16), 3),
])
def test_checked_sides_refuses_out_of_range_sides_as_a_value_error_naming_the_bound(value, length: int) -> None:
    with pytest.raises(ValueError, match=rf"^side must be .* in \[1, {MAX_SIDE}\], got "):
        checked_sides("side", value, length)


def test_checked_sides_takes_a_tighter_bound() -> None:
    assert checked_sides("n", 64, 1, high=64) == (64,)
    with pytest.raises(ValueError, match=r"in \[1, 64\]"):
        checked_sides("n", 65, 1, high=64)


def test_tubelet_grid_drops_leftovers_and_token_grid_picks_the_embedding() -> None:
    assert tubelet_grid(9, (33, 40), (2, 8, 8)) == (4, 4, 5)
    assert token_grid(8, (32, 32), (1, 16, 16), n_sampled_frames=4, exact_frame_count=True) == (4, 2, 2)
    assert token_grid(8, (32, 32), (2, 16, 16)) == (4, 2, 2)


def test_grid_of_args_uses_vivits_defaults_where_absent() -> None:
    assert grid_of_args({}) == (16, 14, 14)  # 32 x 224² in 2 x 16² tubelets
    assert grid_of_args(dict(num_frames=8, img_size=(32, 64), **TUBELET)) == (4, 4, 8)
    # n_sampled_frames counts only with frame sampling
    assert grid_of_args(dict(num_frames=8, img_size=32, n_sampled_frames=2, **TUBELET)) == (4, 4, 4)


def test_sample_frame_indices_keeps_the_references_repeat_unless_exact() -> None:
    assert sample_frame_indices(8, 5) == [1, 3, 4, 5, 7, 7]
    assert sample_frame_indices(8, 5, exact=True) == [1, 3, 4, 5, 7]
    assert sample_frame_indices(4, 8) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="num_frames >= 1 and n_sampled_frames >= 1"):
        sample_frame_indices(0, 2)


def test_infer_plane_prefers_known_planes_then_squares_else_none() -> None:
    assert infer_plane(12, [(3, 4)]) == (3, 4)
    assert infer_plane(16, [(3, 4)]) == (4, 4)
    assert infer_plane(12) is None and infer_plane(0) is None


def test_checked_input_size_returns_the_new_sizes_and_grid() -> None:
    assert checked_input_size(32, 8, TUBELET) == ((32, 32), 8, (4, 4, 4))
    assert checked_input_size((16, 24), np.int64(4), TUBELET) == ((16, 24), 4, (2, 2, 3))


@pytest.mark.parametrize(("img_size", "num_frames", "error", "match"), [
    ("64", 4, TypeError, "img_size must be an int or"), (32, 2.5, TypeError, "num_frames must be an int"),
    ((32, 0), 4, ValueError, r"img_size must be .* in \[1, 8192\]"), (32, 0, ValueError, "num_frames must be"),
    (4, 4, ValueError, "smaller than one tubelet"), ((8192, 8192), 8192, ValueError, f"more than {MAX_TOKENS}"),
])
def test_checked_input_size_refuses_with_one_error_naming_set_input_size(img_size, num_frames, error, match) -> None:
    with pytest.raises(error, match=f"^set_input_size: .*{match}"):
        checked_input_size(img_size, num_frames, TUBELET)
