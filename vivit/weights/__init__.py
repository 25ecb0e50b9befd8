"""The weights path: name -> ``build`` -> ``fetch`` (cache, Hub) -> ``read`` (detect + read formats) ->
``convert`` (scenic, transformers) or ``inflate`` (image ViTs) -> ``fit`` (positional embeddings) -> ``load``;
``publish`` writes a saved folder and ``timm_bridge`` registers everything into timm."""
