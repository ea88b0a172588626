"""Small shared pieces with no knowledge of HSPNet: writing files safely and the path rules (`files.py`), reading
images (`images.py`), masking Hub tokens (`redaction.py`), checking user values (`validation.py`), the one-line error
convention (`errors.py`) and a tiny random CLIP for tests and demos (`tiny_clip.py`)."""
