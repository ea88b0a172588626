"""The demo page: the Gradio page of a trained model (`page.py`), the label groups and card summary it shows
(`summary.py`), and the Hugging Face Space folder writer (`space.py`); `hspnet demo` is `hspnet.cli.demo`."""
