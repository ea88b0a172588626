"""Models: `hspnet/models/hspnet/` is the HSPNet model itself (the remote-code bundle saved beside the weights);
beside it, what the package adds around the model: loading a saved model for inference (`loading.py`) and reading
OpenAI-format CLIP weights (`openai_clip.py`)."""

from hspnet.models.hspnet import (
    HSPNetConfig,
    HSPNetForImageClassification,
    HSPNetImageProcessor,
    HSPNetModel,
)


def register_auto_classes() -> None:
    """Register HSPNet with transformers' `AutoConfig`, `AutoModel`, `AutoModelForImageClassification` and
    `AutoImageProcessor` (and so with `pipeline("image-classification")`), the way transformers documents for models
    defined outside it. Idempotent; `import hspnet` calls it."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

    AutoConfig.register(HSPNetConfig.model_type, HSPNetConfig, exist_ok=True)
    AutoModel.register(HSPNetConfig, HSPNetModel, exist_ok=True)
    AutoModelForImageClassification.register(HSPNetConfig, HSPNetForImageClassification, exist_ok=True)
    AutoImageProcessor.register(HSPNetConfig, image_processor_classes={"pil": HSPNetImageProcessor}, exist_ok=True)
