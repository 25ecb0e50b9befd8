"""The data path: video files -> ``video`` (decode, frame indices, views) -> ``transforms`` (model input) ->
``datasets`` (listings, class maps, datasets, loaders, ranks); ``synthetic`` draws the motion clips; ``stream``
decodes long videos forward only, in sliding windows.

The listing and dataset names are re-exported here, so ``vivit.data.read_listing`` reads as it always did.
"""

from vivit.data.datasets import (
    KINETICS_PATTERN,
    READ_ERRORS,
    UNLABELLED,
    VIDEO_SUFFIXES,
    DataError,
    Dist,
    EvalVideos,
    Item,
    Listing,
    ResumableDistributedSampler,
    TrainClips,
    class_index,
    collate_first,
    collate_views,
    init_distributed,
    item_seed,
    make_loader,
    one_line,
    read_listing,
    resolve_classes,
    shard,
    to_items,
)

__all__ = ["DataError", "Dist", "EvalVideos", "Item", "KINETICS_PATTERN", "Listing", "READ_ERRORS",
           "ResumableDistributedSampler", "TrainClips", "UNLABELLED", "VIDEO_SUFFIXES", "class_index",
           "collate_first", "collate_views", "init_distributed", "item_seed", "make_loader", "one_line",
           "read_listing", "resolve_classes", "shard", "to_items"]
