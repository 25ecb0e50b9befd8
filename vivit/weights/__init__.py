"""The weights path: ``source`` (parse once) -> ``build`` (what to build: arguments, head size, ``pretrained_cfg``
base) -> ``load`` (``fetch``: cache, Hub -> ``read``: the format detected once -> ``convert``: scenic, transformers;
a saved folder's ``config`` checked) -> ``config.construct`` (the one ``ViViT(...)``) -> ``load`` (``fit``: positional
embeddings, channels, head -> strict load); ``inflate`` brings image ViTs in, ``publish`` writes a saved folder,
``export`` a transformers ViViT folder, and ``timm_bridge`` / ``transformers_bridge`` register everything into timm /
transformers' Auto classes."""
