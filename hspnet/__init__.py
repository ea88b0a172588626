"""hspnet: HSPNet (Wang et al., ACM MM 2023) for the Hugging Face stack.

Importing the package registers the HSPNet classes with transformers' `AutoConfig`, `AutoModel`,
`AutoModelForImageClassification` and `AutoImageProcessor` (and therefore with `pipeline("image-classification")`),
the way transformers documents for models defined outside it. That is all it changes: no torch hooks, no patching.
Saved folders carry the same classes as remote code (`trust_remote_code=True`) for environments without `hspnet`.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from .configuration_hspnet import HSPNetConfig
from .losses import LOSS_DEFAULTS, LOSSES, build_loss
from .metrics import (
    MultiLabelMetricAccumulator,
    average_precision_ranked,
    average_precision_tie_aware,
    compute_all_metrics,
    mean_average_precision,
    threshold_metrics,
    topk_metrics,
)
from .conversion.openai_clip import convert_openai_clip_state_dict, load_clip_checkpoint_file
from .image_processing_hspnet import HSPNetImageProcessor
from .modeling_clip_resnet import HSPNetModifiedResNet
from .modeling_hspnet import (
    HSPNetForImageClassification,
    HSPNetModel,
    HSPNetModelOutput,
    HSPNetPreTrainedModel,
)
from .modeling_label_graph import process_relation
from .modeling_prompt_encoder import clip_text_embeddings, encode_prompt_embeddings, encode_shared_prefix_prompts

__version__ = "0.1.0"

AutoConfig.register(HSPNetConfig.model_type, HSPNetConfig, exist_ok=True)
AutoModel.register(HSPNetConfig, HSPNetModel, exist_ok=True)
AutoModelForImageClassification.register(HSPNetConfig, HSPNetForImageClassification, exist_ok=True)
AutoImageProcessor.register(HSPNetConfig, image_processor_classes={"pil": HSPNetImageProcessor}, exist_ok=True)

__all__ = [
    "LOSSES",
    "LOSS_DEFAULTS",
    "build_loss",
    "MultiLabelMetricAccumulator",
    "average_precision_ranked",
    "average_precision_tie_aware",
    "compute_all_metrics",
    "mean_average_precision",
    "threshold_metrics",
    "topk_metrics",
    "HSPNetConfig",
    "HSPNetModel",
    "HSPNetForImageClassification",
    "HSPNetImageProcessor",
    "HSPNetModelOutput",
    "HSPNetPreTrainedModel",
    "HSPNetModifiedResNet",
    "convert_openai_clip_state_dict",
    "load_clip_checkpoint_file",
    "clip_text_embeddings",
    "encode_prompt_embeddings",
    "process_relation",
]
