"""The weights path: name -> ``build`` -> ``fetch`` (cache, Hub) -> ``read`` (detect + read formats) ->
``convert`` (scenic, transformers) or ``inflate`` (image ViTs) -> ``fit`` (positional embeddings) -> ``load``;
``publish`` writes a saved folder, ``export`` a transformers ViViT folder, and ``timm_bridge`` /
``transformers_bridge`` register everything into timm / transformers' Auto classes."""
