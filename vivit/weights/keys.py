"""Key tables: the one loop that maps another layout's weights onto ours and checks every key on both sides.

A table is a list of ``Entry`` rows ``(source keys, our key, transform)``: the transform takes the source values in
order and returns our value (an entry with no source keys makes a value from nothing, e.g. a zero bias). The
converters (reference, transformers) and inflation each write a table; ``apply_key_table`` applies it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

Entry = tuple[tuple[str, ...], str, Callable[..., Any]]


def same(x: Any) -> Any:
    """The identity transform of a key table row."""
    return x


def apply_key_table(
    source: Mapping[str, Any],
    table: Sequence[Entry],
    *,
    what: str,
    into: str,
    target_shapes: Mapping[str, Sequence[int]] | None = None,
    ignored: Collection[str] = (),
    complete: bool = True,
    spell: Callable[[str], str] = str,
    giver: str = "the source",
    hint: str = "",
) -> dict[str, Any]:
    """Apply ``table`` to ``source``: every source key used (or ``ignored``), every row's sources present, and with
    ``target_shapes`` every target key filled with its shape. Nothing is returned half done.

    Args:
        source: Source key -> value.
        table: The rows (see the module docstring).
        what: The source, for messages (``"/path/ckpt: scenic parameters"``).
        into: The target, for messages (``"a spacetime ViViT"``).
        target_shapes: Our key -> expected shape; when given, unknown keys and wrong shapes are refused.
        ignored: Source keys dropped on purpose.
        complete: With ``target_shapes``, every target key must be filled (inflation fills only some).
        spell: Source key -> the name the caller knows it by (e.g. with a prefix the table does not use).
        giver: The source as the subject of a sentence (``"the image ViT"``), for messages.
        hint: What to do, appended to every error.

    Raises:
        ValueError: What is missing, left over or of the wrong shape, naming up to 10 keys of each.
    """
    missing = sorted({spell(k) for sources, _, _ in table for k in sources if k not in source})
    used = {k for sources, _, _ in table for k in sources}
    unused = sorted(spell(k) for k in set(source) - used - set(ignored))
    if missing or unused:
        parts = [f"{len(missing)} missing {missing[:10]}"] if missing else []
        parts += [f"no place for {len(unused)}: {unused[:10]}"] if unused else []
        raise ValueError(f"{what} do not fit {into}: {'; '.join(parts)}{hint}")
    out: dict[str, Any] = {}
    for sources, key, fn in table:
        value = fn(*(source[k] for k in sources))
        if target_shapes is not None:
            expected = tuple(target_shapes[key]) if key in target_shapes else None
            if expected != tuple(value.shape):
                raise ValueError(f"{what} do not fit {into}: {key}: the model expects shape "
                                 f"{expected or '(no such key)'}, {giver} gives {tuple(value.shape)} (from "
                                 f"{', '.join(spell(k) for k in sources) or 'nothing'}){hint}")
        out[key] = value
    unfilled = sorted(set(target_shapes or ()) - set(out)) if complete else []
    if unfilled:
        raise ValueError(f"{what} do not fit {into}: {len(unfilled)} of its keys have no source {unfilled[:10]}{hint}")
    return out
