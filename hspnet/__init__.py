"""hspnet: HSPNet (Wang et al., ACM MM 2023) for the Hugging Face stack.

Importing the package registers the HSPNet classes with `AutoConfig`, `AutoModel` and
`AutoModelForImageClassification` (and therefore with `pipeline("image-classification")`).
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

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
from .modeling_hspnet import (
    HSPNetForImageClassification,
    HSPNetModel,
    HSPNetModelOutput,
    HSPNetModifiedResNet,
    HSPNetPreTrainedModel,
    clip_text_embeddings,
    convert_openai_clip_state_dict,
    encode_prompt_embeddings,
    load_clip_checkpoint_file,
    process_relation,
)
from . import conversion  # noqa: E402,F401  registers the safe reader of OpenAI's TorchScript .pt files (from_clip)

__version__ = "0.1.0"

AutoConfig.register(HSPNetConfig.model_type, HSPNetConfig, exist_ok=True)
AutoModel.register(HSPNetConfig, HSPNetModel, exist_ok=True)
AutoModelForImageClassification.register(HSPNetConfig, HSPNetForImageClassification, exist_ok=True)

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
    "HSPNetModelOutput",
    "HSPNetPreTrainedModel",
    "HSPNetModifiedResNet",
    "convert_openai_clip_state_dict",
    "load_clip_checkpoint_file",
    "clip_text_embeddings",
    "encode_prompt_embeddings",
    "process_relation",
]
