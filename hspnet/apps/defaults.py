"""The choices and defaults of the applications that their command lines show, in one module that imports nothing
heavy: `hspnet <command> --help` reads them without loading torch (see `hspnet.cli`)."""

PREDICT_FORMATS = ("table", "jsonl")
"""Output formats of `hspnet predict`: a text table, or one JSON object per image."""
ON_ERROR = ("fail", "skip")
"""What prediction does with an unreadable or non-image file: stop naming it, or skip it with a warning."""

ONNX_DEFAULT_OPSET = 18
ONNX_EXPORTERS = ("dynamo", "torchscript")
ONNX_INSTALL_HINT = 'pip install -e ".[onnx]"'

GRADIO_INSTALL_HINT = 'pip install -e ".[demo]"'
DEMO_DEFAULT_THRESHOLD = 0.5
"""The demo page's initial threshold on sigmoid scores."""
DEMO_MAX_UPLOAD_MB = 20
"""Uploads larger than this (per file, in MB) are refused with a message, before they are read."""
DEMO_MAX_IMAGES = 16
"""At most this many images are scored per upload; the rest get a message."""
DEMO_MAX_EXAMPLES = 12
"""At most this many example images are shown under the demo page."""
