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
    """Register HSPNet with transformers' `AutoConfig`, `AutoModel`, `AutoModelForImageClassification`,
    `AutoImageProcessor` and `AutoVideoProcessor` (and so with `pipeline("image-classification")`), the way
    transformers documents for models defined outside it. Idempotent; `import hspnet` calls it.

    `AutoVideoProcessor` gets HSPNet with NO video processor class. Every pipeline asks for one: transformers derives a
    video processor's remote-code name from the image processor's `auto_map`
    (`image_processing_hspnet.HSPNetVideoProcessor`, which does not exist) and, finding no local class registered for
    the config, asks at a terminal whether to run that custom code (a 15 s `[y/N]` prompt, also with `import hspnet`).
    Registered, the config has local code (none), so nothing is asked and the pipeline goes on without one."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification
    # transformers.AutoVideoProcessor is a placeholder that needs torchvision; this is the class itself
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    AutoConfig.register(HSPNetConfig.model_type, HSPNetConfig, exist_ok=True)
    AutoModel.register(HSPNetConfig, HSPNetModel, exist_ok=True)
    AutoModelForImageClassification.register(HSPNetConfig, HSPNetForImageClassification, exist_ok=True)
    AutoImageProcessor.register(HSPNetConfig, image_processor_classes={"pil": HSPNetImageProcessor}, exist_ok=True)
    try:
        AutoVideoProcessor.register(HSPNetConfig, video_processor_classes={}, exist_ok=True)
    except TypeError:  # a transformers 5 release without per-backend video processors: the same, as it names it
        AutoVideoProcessor.register(HSPNetConfig, None, exist_ok=True)
