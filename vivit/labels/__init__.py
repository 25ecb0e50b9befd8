"""Class names of the released checkpoints, shipped as package data in each checkpoint's class order.

Each ``<name>.txt`` in this package starts with ``#`` comment lines saying where the list came from, then holds one
class name per line; line ``i`` after the header is class ``i``. A transformers checkpoint's own ``id2label`` wins over
these lists for that checkpoint.

Example:
    >>> from vivit.labels import label_names
    >>> label_names("kinetics400")[0]
    'abseiling'
"""

from __future__ import annotations

import functools
from importlib import resources

__all__ = ["LABEL_SETS", "label_names"]

# label set -> package files, concatenated in logit order. scenic's EPIC-KITCHENS head is one Linear of 397 logits
# split as class_splits [300, 97]: nouns first, then verbs.
LABEL_SETS: dict[str, tuple[str, ...]] = {
    "kinetics400": ("kinetics400.txt",),
    "kinetics600": ("kinetics600.txt",),
    "epic_kitchens100": ("epic_kitchens100_nouns.txt", "epic_kitchens100_verbs.txt"),
    "epic_kitchens100_nouns": ("epic_kitchens100_nouns.txt",),
    "epic_kitchens100_verbs": ("epic_kitchens100_verbs.txt",),
    "motion": ("motion.txt",),
}


@functools.cache
def _read_names(file_name: str) -> tuple[str, ...]:
    """Reads one label file of this package, skipping its leading ``#`` header lines.

    Args:
        file_name: File name inside ``vivit.labels``.

    Returns:
        The class names in file order.

    Raises:
        FileNotFoundError: If the file is not installed with the package.
    """
    resource = resources.files(__name__).joinpath(file_name)
    if not resource.is_file():
        raise FileNotFoundError(
            f"label file {file_name!r} is missing from the installed package {__name__!r}; the .txt files must be "
            f"shipped as package data ([tool.setuptools.package-data] in pyproject.toml)"
        )
    lines = resource.read_text(encoding="utf-8").splitlines()
    start = 0
    while start < len(lines) and lines[start].startswith("#"):
        start += 1
    return tuple(line.strip() for line in lines[start:] if line.strip())


def label_names(label_set: str) -> list[str]:
    """Returns the class names of a label set, index ``i`` naming logit ``i`` of a checkpoint trained on it.

    Args:
        label_set: One of ``LABEL_SETS``: ``"kinetics400"``, ``"kinetics600"``, ``"epic_kitchens100"`` (397 names:
            300 nouns then 97 verbs, the EK100 checkpoint's logit order; six words such as ``"brush"`` name both a
            noun and a verb class), ``"epic_kitchens100_nouns"`` or ``"epic_kitchens100_verbs"``.

    Returns:
        A new list of class names (the files are read once and cached).

    Raises:
        ValueError: If ``label_set`` is not a known label set.
        FileNotFoundError: If a label file is missing from the installed package.
    """
    try:
        files = LABEL_SETS[label_set]
    except KeyError:
        raise ValueError(f"unknown label set {label_set!r}; known label sets: {', '.join(LABEL_SETS)}") from None
    return [name for file_name in files for name in _read_names(file_name)]
