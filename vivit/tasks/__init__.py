"""What users run, built on both paths: ``predict`` (one video, multi-view), ``evaluate`` and ``extract`` (a whole
dataset: evaluation, feature extraction; ``run`` holds what they share), ``explain`` (attention maps) and
``timeline`` (what happens when, over a long video)."""
