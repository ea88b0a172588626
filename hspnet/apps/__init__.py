"""The applications, one per file, over the model, data and evaluation layers: `evaluate.py` (`hspnet evaluate`),
`predict.py` (`hspnet predict`), `calibrate.py` (`hspnet calibrate`: per-label thresholds), `label_sets.py` (labels
files -> `set_labels` / `add_labels`), `demo/` (`hspnet demo`: the Gradio page and the Space writer), `onnx_export.py`
(`hspnet export-onnx`; the label-side graph in `onnx_labels.py`, running exported files without torch in
`onnx_inference.py`) and `trainer.py` (the 🤗 Trainer adapter)."""
