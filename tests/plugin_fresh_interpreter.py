"""Session fixtures for the tests that need a fresh interpreter (loaded by `tests/conftest.py`)."""
