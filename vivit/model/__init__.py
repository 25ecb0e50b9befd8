"""The network: tubelet / frame-sampling embedding -> one of four encoders -> norm -> pool -> pre_logits -> head.

Read bottom up: ``layers`` (attention, MLP, blocks), ``embed`` (tokens and their grid), ``encoders`` (the four
variants), ``vivit`` (the ``ViViT`` module with timm's backbone surface). Imports nothing else of the package.
"""

from vivit.model.vivit import ViViT

__all__ = ["ViViT"]
