"""The HSPNet model: exactly the files a saved model carries as remote code (configuration, modeling, image
processor, losses, the zero-shot pipeline). They import only each other, torch and transformers, so a saved folder
loads with `trust_remote_code=True` where `hspnet` is not installed. Reading order: `modeling_hspnet.py` (the forward
pass), then `modeling_prompts.py` (the text tower on prompt embeddings), `modeling_label_graph.py` (relation ->
adjacency, GCN), `modeling_from_clip.py` (what a model is built from), `losses.py`, `pipeline_hspnet.py`
(`pipeline("zero-shot-image-classification")`)."""

from .configuration_hspnet import HSPNetConfig
from .image_processing_hspnet import HSPNetImageProcessor
from .losses import LOSS_DEFAULTS, LOSSES, build_loss
from .modeling_clip_resnet import HSPNetModifiedResNet
from .modeling_hspnet import (
    HSPNetClassifierOutput,
    HSPNetForImageClassification,
    HSPNetModel,
    HSPNetModelOutput,
    HSPNetPreTrainedModel,
)
from .pipeline_hspnet import HSPNetZeroShotImageClassificationPipeline

__all__ = [
    "HSPNetClassifierOutput",
    "HSPNetConfig",
    "HSPNetForImageClassification",
    "HSPNetImageProcessor",
    "HSPNetModel",
    "HSPNetModelOutput",
    "HSPNetModifiedResNet",
    "HSPNetPreTrainedModel",
    "HSPNetZeroShotImageClassificationPipeline",
    "LOSSES",
    "LOSS_DEFAULTS",
    "build_loss",
]
