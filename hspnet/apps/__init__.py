"""The applications, one per file, over the model, data and evaluation layers: `evaluate.py` (`hspnet evaluate`),
`predict.py` (`hspnet predict`), `demo/` (`hspnet demo`: the Gradio page and the Space writer), `onnx_export.py`
(`hspnet export-onnx`) and `trainer.py` (the 🤗 Trainer adapter)."""
