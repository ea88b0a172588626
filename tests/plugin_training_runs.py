"""Session fixtures for the training, resume, Hub and distributed tests (loaded by `tests/conftest.py`)."""
