"""The transformers Auto classes' view of a vivit folder: a config class and a thin model wrapper around ViViT.

Both files are copied verbatim into every ``save_pretrained`` folder, so ``trust_remote_code=True`` loads them from
the repo; they import only ``transformers``, ``torch`` and the installed ``vivit``. Nothing here is imported by
``import vivit``: ``vivit.weights.transformers_bridge`` registers them when transformers' Auto classes are loaded.
"""
