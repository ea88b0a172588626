"""The Hugging Face Hub side of hspnet: model cards (`cards.py`), and which files make up a model folder and moving
model folders and training states to and from the Hub (`transfer.py`, `hspnet push`)."""
