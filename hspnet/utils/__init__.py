"""Small shared pieces with no knowledge of HSPNet: files and paths (`files.py`: writing whole files, reading text and
JSON input files, names read from files, local path vs Hub id), reading images (`images.py`), masking Hub tokens
(`redaction.py`), checking user values (`validation.py`), the one-line error convention and the error about a bad
file (`errors.py`) and a tiny random CLIP for tests and demos (`tiny_clip.py`)."""
