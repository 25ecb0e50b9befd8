"""The data path: video files -> ``video`` (decode, frame indices, views) -> ``transforms`` (model input) ->
``datasets`` (listings, class maps, datasets, loaders, ranks); ``synthetic`` draws the motion clips; ``stream``
decodes long videos forward only, in sliding windows.

The listing and dataset names are re-exported here, so ``vivit.data.read_listing`` reads as it always did.
"""

from vivit.data import datasets as _datasets
from vivit.data.datasets import *  # noqa: F403  (the names listed in datasets.__all__)

__all__ = list(_datasets.__all__)
