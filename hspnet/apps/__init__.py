"""The applications over the engine, one per file: `evaluate.py` (`hspnet evaluate`), `predict.py` (`hspnet
predict`), `demo/` (the Gradio page and the Space writer), `onnx_export.py` (`hspnet export-onnx`) and `trainer.py`
(the 🤗 Trainer adapter)."""
