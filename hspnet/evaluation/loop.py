"""The evaluation loop: a model over a dataloader -> every metric of :mod:`hspnet.evaluation.metrics`, streaming (the
scores are accumulated, never a list of batches) and distributed-safe (gathered across processes without duplicated
samples).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch


@torch.no_grad()
def evaluate_model(model, dataloader, accelerator, num_labels: int, description: str = "eval",
                   threshold: float = 0.5, k: int = 3, verified_targets: Any = None) -> tuple[dict, Any]:
    """Every metric of :func:`hspnet.evaluation.metrics.compute_all_metrics` over a (prepared) dataloader, gathered across
    processes without duplicated samples. Returns `(metrics, accumulator)`; the accumulator holds the scores
    (`accumulator.scores` / `.targets`, `(N, C)`). `model(pixel_values=...)` must return `.logits` `(B, C)` (HSPNet,
    the zero-shot CLIP classifier). An image that cannot be read in a DataLoader worker is a `ValueError` naming it.
    `verified_targets`: the split's (N, C) targets in {1, 0, -1} (verified present / absent / unknown,
    :func:`hspnet.evaluation.openimages.openimages_targets`) for a split with known negatives (Open Images): the
    metrics then also hold `mAP_openimages` (AP on verified pairs only), which :func:`selection_map` selects by."""
    from tqdm.auto import tqdm

    from hspnet.evaluation.metrics import MultiLabelMetricAccumulator

    was_training = model.training
    model.eval()
    try:
        capacity = len(dataloader.dataset)  # gather_for_metrics yields exactly this many samples on every process
    except (AttributeError, TypeError):
        capacity = None
    accumulator = MultiLabelMetricAccumulator(num_labels, from_logits=True, threshold=threshold, k=k,
                                              capacity=capacity)
    try:
        for batch in tqdm(dataloader, desc=description, disable=not accelerator.is_local_main_process, leave=False):
            with accelerator.autocast():
                logits = model(pixel_values=batch["pixel_values"]).logits
            accumulator.add_from_accelerator(accelerator, logits.float(), batch["labels"])
    except RuntimeError as error:  # an ImageReadError raised in a DataLoader worker comes back as a RuntimeError
        found = re.findall(r"ImageReadError: (.+)", str(error))
        if found:
            raise ValueError(found[-1].strip()) from error
        raise
    finally:
        model.train(was_training)
    metrics = accumulator.compute()
    if verified_targets is not None and accumulator.num_samples:
        from hspnet.evaluation.openimages import openimages_average_precision

        ap = openimages_average_precision(accumulator.scores, verified_targets)  # the ranked definition only
        evaluated = ~np.isnan(ap)
        if not evaluated.any():
            raise ValueError("no class has a verified positive (targets == 1): the Open Images mAP is undefined")
        metrics.update(mAP_openimages=float(100.0 * ap[evaluated].mean()), mAP_openimages_classes=int(evaluated.sum()))
    return metrics, accumulator


def selection_map(metrics: dict) -> float:
    """The mAP a model is selected by: the Open Images protocol's (`mAP_openimages`) on a split with verified
    negatives, where unknown pairs are not negatives, else `mAP`."""
    return metrics.get("mAP_openimages", metrics["mAP"])
