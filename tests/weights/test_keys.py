"""vivit.weights.keys: the one key-table loop checks every key on both sides and returns nothing half done."""

from __future__ import annotations

import numpy as np
import pytest

from vivit.weights.keys import apply_key_table, same

SOURCE = {"a/kernel": np.ones((2, 3)), "a/bias": np.zeros(3)}
TABLE = [(("a/kernel",), "fc.weight", lambda k: k.T), (("a/bias",), "fc.bias", same),
         ((), "extra.bias", lambda: np.zeros(4))]
SHAPES = {"fc.weight": (3, 2), "fc.bias": (3,), "extra.bias": (4,)}


def apply(source=SOURCE, table=TABLE, **kwargs):
    return apply_key_table(source, table, what="the ckpt params", into="a tiny ViViT", **kwargs)


def test_every_row_is_applied_in_order_with_its_transform() -> None:
    out = apply(target_shapes=SHAPES)
    assert list(out) == ["fc.weight", "fc.bias", "extra.bias"]
    assert out["fc.weight"].shape == (3, 2) and not out["extra.bias"].any()
    assert same(out["fc.bias"]) is out["fc.bias"]


def test_a_missing_source_key_is_named() -> None:
    with pytest.raises(ValueError, match=r"the ckpt params do not fit a tiny ViViT: 1 missing \['a/bias'\]"):
        apply({"a/kernel": SOURCE["a/kernel"]})


def test_a_source_key_no_row_uses_is_refused_unless_ignored() -> None:
    source = {**SOURCE, "a/extra": np.zeros(1)}
    with pytest.raises(ValueError, match=r"no place for 1: \['a/extra'\]"):
        apply(source)
    assert set(apply(source, ignored={"a/extra"})) == {"fc.weight", "fc.bias", "extra.bias"}


def test_a_wrong_shape_names_the_key_both_shapes_and_the_sources() -> None:
    with pytest.raises(ValueError, match=r"fc.weight: the model expects shape \(2, 3\), the source gives \(3, 2\) "
                                         r"\(from a/kernel\)"):
        apply(target_shapes={**SHAPES, "fc.weight": (2, 3)})


def test_a_key_the_model_lacks_is_refused() -> None:
    shapes = {k: v for k, v in SHAPES.items() if k != "extra.bias"}
    with pytest.raises(ValueError, match=r"extra.bias: the model expects shape \(no such key\)"):
        apply(target_shapes=shapes)


def test_unfilled_target_keys_are_refused_only_when_complete() -> None:
    shapes = {**SHAPES, "head.weight": (5, 3)}
    with pytest.raises(ValueError, match=r"1 of its keys have no source \['head.weight'\]"):
        apply(target_shapes=shapes)
    assert "head.weight" not in apply(target_shapes=shapes, complete=False)


def test_messages_spell_keys_as_the_caller_knows_them_and_end_with_the_hint() -> None:
    with pytest.raises(ValueError, match=r"missing \['params/a/bias'\]; re-export it$"):
        apply({"a/kernel": SOURCE["a/kernel"]}, spell=lambda k: f"params/{k}", hint="; re-export it")
    with pytest.raises(ValueError, match="the image ViT gives"):
        apply(target_shapes={**SHAPES, "fc.bias": (4,)}, giver="the image ViT")
