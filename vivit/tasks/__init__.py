"""What users run, built on both paths: ``predict`` (one video, multi-view), ``evaluate`` and ``extract`` (a whole
dataset: tasks plugged into the driver ``run``), ``explain`` (attention maps) and ``timeline`` (what happens when,
over a long video); ``runtime`` is the one setup of what runs the model (``backend``), ``optimize`` its fast path."""
