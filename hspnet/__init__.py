"""hspnet: HSPNet (ACM MM 2023) for the Hugging Face stack."""

__version__ = "0.1.0"
