"""What users run, built on both paths: ``predict`` (one video, multi-view), ``evaluate`` (a dataset: evaluation
and feature extraction), ``explain`` (attention maps), ``timeline``
(what happens when, over a long video)."""
