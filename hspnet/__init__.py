"""hspnet: HSPNet (Wang et al., ACM MM 2023) for the Hugging Face stack.

Importing the package registers the HSPNet classes with transformers' `AutoConfig`, `AutoModel`,
`AutoModelForImageClassification` and `AutoImageProcessor` (and therefore with `pipeline("image-classification")`),
the way transformers documents for models defined outside it. That is all it changes: no torch hooks, no patching.
Saved folders carry the same classes as remote code (`trust_remote_code=True`) for environments without `hspnet`.

The model classes are imported at once; everything else (training, evaluation, the applications) only when first
used, so `import hspnet` does not load the training stack.
"""

import importlib

from hspnet.models import register_auto_classes
from hspnet.models.hspnet import (
    LOSS_DEFAULTS,
    LOSSES,
    HSPNetConfig,
    HSPNetForImageClassification,
    HSPNetImageProcessor,
    HSPNetModel,
    HSPNetModelOutput,
    HSPNetModifiedResNet,
    HSPNetPreTrainedModel,
    HSPNetZeroShotImageClassificationPipeline,
    build_loss,
)

__version__ = "0.1.0"

register_auto_classes()

# name -> module that defines it, imported on first use
_LAZY = {
    **{name: "hspnet.evaluation.average_precision" for name in (
        "average_precision_ranked", "average_precision_tie_aware", "mean_average_precision")},
    **{name: "hspnet.evaluation.metrics" for name in (
        "MultiLabelMetricAccumulator", "compute_all_metrics", "threshold_metrics", "topk_metrics")},
    **{name: "hspnet.models.hspnet.modeling_prompts" for name in (
        "clip_text_embeddings", "encode_prompt_embeddings", "encode_shared_prefix_prompts")},
    "process_relation": "hspnet.models.hspnet.modeling_label_graph",
    "load_model": "hspnet.models.loading",
    "load_openai_clip_parts": "hspnet.models.openai_clip",
    "convert_openai_clip_state_dict": "hspnet.models.openai_clip",
    "load_clip_checkpoint_file": "hspnet.models.openai_clip",
    "TrainingConfig": "hspnet.training.arguments",
    "train": "hspnet.training.loop",
    "predict_images": "hspnet.apps.predict",
    "export_onnx": "hspnet.apps.onnx_export",
    "ONNXImageClassifier": "hspnet.apps.onnx_export",
    "ONNXLabelEncoder": "hspnet.apps.onnx_inference",
    "ONNXLabelSet": "hspnet.apps.onnx_inference",
    "HSPNetTrainer": "hspnet.apps.trainer",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hspnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "LOSSES",
    "LOSS_DEFAULTS",
    "HSPNetConfig",
    "HSPNetForImageClassification",
    "HSPNetImageProcessor",
    "HSPNetModel",
    "HSPNetModelOutput",
    "HSPNetModifiedResNet",
    "HSPNetPreTrainedModel",
    "HSPNetZeroShotImageClassificationPipeline",
    "build_loss",
    *_LAZY,
]
