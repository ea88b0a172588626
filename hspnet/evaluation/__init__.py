"""Evaluation: the metrics (`metrics.py`: ranked and tie-aware mAP, the F1 family), the evaluation loop (`loop.py`),
the per-class report (`report.py`) and the zero-shot CLIP baseline (`zero_shot.py`)."""
