"""Evaluation: the metrics (`average_precision.py`: ranked and tie-aware mAP and the input checks; `metrics.py`: the
threshold / top-k F1 family, every metric at once and the streaming accumulator), the evaluation loop (`loop.py`),
the per-class report (`report.py`) and the zero-shot CLIP baseline (`zero_shot.py`)."""
