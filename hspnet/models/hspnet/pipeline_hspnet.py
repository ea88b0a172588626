# Copyright 2026 The hspnet authors. Licensed under the Apache License, Version 2.0.
"""`pipeline("zero-shot-image-classification")` for HSPNet: candidate labels scored with independent sigmoids
(remote code beside `modeling_hspnet.py`: imports only torch and transformers; docs/zero-shot-pipeline.md).

transformers' `ZeroShotImageClassificationPipeline` (transformers 5) is written for CLIP-like models: it tokenizes
`hypothesis_template.format(label)` ("This is a photo of {}."), calls `model(input_ids=..., attention_mask=...,
pixel_values=...)`, reads `outputs.logits_per_image` and applies a softmax over the candidates (a sigmoid only when
"siglip" is in `config.model_type`). HSPNet takes no text input: each label's prompt is learned context followed by
the label name, and its embedding depends on the whole label set (the GCN over the label-group relation), so this
subclass keeps the stock pipeline's call and output and changes what runs in between:

- `preprocess`: the image only (the stock image loading and the model's image processor);
- `_forward`: the candidates' label embeddings from `model.embed_labels(candidate_labels, label_to_group)` (what
  `set_labels` would give, the model unchanged), computed once per call and label set (not once per image), then the
  base model's forward with `label_embeds=` -> `(B, C')` logits;
- `postprocess`: `sigmoid(logits)` per label (multi-label: the scores do not sum to 1), sorted by score, as
  `[{"score", "label"}]`; `top_k` and `threshold` keep fewer.

It is used either through the folder's config (`custom_pipelines`, written by `save_pretrained`:
`pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)`) or named explicitly
(`pipeline(..., pipeline_class=HSPNetZeroShotImageClassificationPipeline)`); nothing is registered on import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers.image_utils import load_image
from transformers.pipelines.zero_shot_image_classification import ZeroShotImageClassificationPipeline
from transformers.utils import logging

logger = logging.get_logger(__name__)

TASK = "zero-shot-image-classification"


def custom_pipelines() -> dict:
    """The `custom_pipelines` entry `save_pretrained` writes into a saved folder's config: transformers' `pipeline()`
    looks the task up there first and loads `impl` from the folder (with `trust_remote_code=True`), the model with the
    Auto class of `pt`. A new dict each time (transformers replaces `pt` by the classes in the config it loaded)."""
    return {TASK: {"impl": f"pipeline_hspnet.{HSPNetZeroShotImageClassificationPipeline.__name__}",
                   "pt": ["AutoModelForImageClassification"]}}


def _check_candidates(labels: Any, what: str) -> list[str]:
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
        raise ValueError(f"{what}: candidate_labels must be a list of label names, got "
                         f"{type(labels).__name__} {labels!r:.60}")
    if not all(isinstance(label, str) for label in labels):
        raise ValueError(f"{what}: candidate_labels must be strings, got {list(labels)!r:.80}")
    return list(labels)


def _label_set_key(labels: list[str], label_to_group: Any) -> tuple:
    """A hashable key of one request: the labels and the caller's groups (None, a mapping or a list)."""
    if isinstance(label_to_group, Mapping):
        groups = ("mapping", tuple(label_to_group.items()))
    elif label_to_group is None:
        groups = None
    else:
        groups = ("list", tuple(label_to_group))
    return tuple(labels), groups


class HSPNetZeroShotImageClassificationPipeline(ZeroShotImageClassificationPipeline):
    """`ZeroShotImageClassificationPipeline` for HSPNet models: each candidate label gets `sigmoid(logit)`, the
    probability that it is in the image, independently of the others (module docstring).

    Call: `classifier(image_or_images, candidate_labels=[...], label_to_group=None, top_k=None, threshold=None,
    timeout=None)`. The tokenizer is the one given, else the model's own (`model.tokenizer`, saved with the model).
    """

    _load_tokenizer = False  # the model's own tokenizer (model.tokenizer) unless one is given

    def __init__(self, **kwargs):
        self._label_embeds: tuple[tuple, torch.Tensor] | None = None  # (request key, (C', D) label embeddings)
        super().__init__(**kwargs)  # checks the model (check_model_type)
        name = type(self).__name__
        if self.tokenizer is None:
            self.tokenizer = getattr(self.model, "tokenizer", None)
        if self.tokenizer is None:
            raise ValueError(f"{name}: the model has no tokenizer (model.tokenizer is None: its folder was saved "
                             "without one); pass tokenizer=, the tokenizer of the CLIP it was built on")
        if isinstance(self.tokenizer, (str, tuple)):
            raise ValueError(f"{name}: pass tokenizer= as a tokenizer object (e.g. CLIPTokenizer.from_pretrained(...)) "
                             f"or leave it out to use the model's own, not {self.tokenizer!r:.60}")

    def check_model_type(self, supported_models) -> None:
        """An HSPNet model (one with `embed_labels`), not one of transformers' CLIP-like `supported_models`."""
        if not callable(getattr(self.model, "embed_labels", None)):
            raise ValueError(f"{type(self).__name__} runs HSPNet models (with embed_labels), got "
                             f"{type(self.model).__name__}; use the stock zero-shot-image-classification pipeline")

    def __call__(self, image=None, candidate_labels: Sequence[str] | None = None, **kwargs: Any):
        """
        Score `candidate_labels` on `image`.

        Args:
            image (`str`, `PIL.Image`, or a list of them): an image (a URL or a local path too), or several.
            candidate_labels (`list[str]`): the label names, scored as HSPNet labels (see `set_labels`): names the
                model has keep their group, new ones go to the group given in `label_to_group` or the nearest one.
            label_to_group (mapping label -> group, or one group or None per label; *optional*): groups by index or
                name, as `set_labels` takes them.
            top_k (`int`, *optional*): keep the `top_k` highest scores.
            threshold (`float`, *optional*): keep the scores >= `threshold`.
            timeout (`float`, *optional*): seconds to wait for an image URL.
        Returns:
            Per image, `[{"score": float, "label": str}, ...]` sorted by score (highest first; equal scores in the
            order of `candidate_labels`), each score `sigmoid(logit)` of its label: independent, they do not sum to 1.
            A list of those for a list of images.
        """
        self._label_embeds = None  # computed again in each call: the model may have changed since the last one
        return super().__call__(image, candidate_labels=candidate_labels, **kwargs)

    def _sanitize_parameters(self, candidate_labels=None, label_to_group=None, top_k=None, threshold=None,
                             timeout=None, hypothesis_template=None, tokenizer_kwargs=None, **kwargs):
        name = type(self).__name__
        if hypothesis_template not in (None, "{}"):
            raise ValueError(f"{name}: hypothesis_template is not used: HSPNet builds each label's prompt itself "
                             "(learned context + the label name); pass the bare label names as candidate_labels")
        if tokenizer_kwargs is not None:
            raise ValueError(f"{name}: tokenizer_kwargs is not used: HSPNet tokenizes its label prompts itself")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"{name}: top_k must be a positive integer or None, got {top_k!r}")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
            raise ValueError(f"{name}: threshold must be a number or None, got {threshold!r}")
        preprocess, forward, postprocess = {}, {}, {}
        if timeout is not None:
            preprocess["timeout"] = timeout
        if candidate_labels is not None:
            forward["candidate_labels"] = postprocess["candidate_labels"] = _check_candidates(candidate_labels, name)
        if label_to_group is not None:
            forward["label_to_group"] = label_to_group
        if top_k is not None:
            postprocess["top_k"] = top_k
        if threshold is not None:
            postprocess["threshold"] = float(threshold)
        return preprocess, forward, postprocess

    def preprocess(self, image, timeout=None) -> dict[str, torch.Tensor]:
        """One image -> `{"pixel_values": (1, 3, H, W)}` (the model's image processor, in the model's dtype)."""
        image = load_image(image, timeout=timeout)
        return self.image_processor(images=[image], return_tensors="pt").to(self.dtype)

    def label_embeddings(self, candidate_labels: list[str], label_to_group: Any = None) -> torch.Tensor:
        """`(C', D)` label embeddings of the candidates, `embed_labels` computed once per call and label set."""
        key = _label_set_key(candidate_labels, label_to_group)
        if self._label_embeds is None or self._label_embeds[0] != key:
            try:
                embeds, result = self.model.embed_labels(candidate_labels, label_to_group, tokenizer=self.tokenizer)
            except ValueError as error:
                message = str(error).removeprefix("set_labels: ")
                raise ValueError(f"{type(self).__name__}: candidate_labels: {message}") from None
            for line in result.describe():
                logger.info(line)
            self._label_embeds = (key, embeds)
        return self._label_embeds[1]

    def _forward(self, model_inputs, candidate_labels=None, label_to_group=None) -> dict[str, torch.Tensor]:
        """`{"logits": (B, C')}`: the images scored against the candidates' label embeddings."""
        if candidate_labels is None:
            raise ValueError(f"{type(self).__name__}: candidate_labels are required (a list of label names)")
        label_embeds = self.label_embeddings(candidate_labels, label_to_group)
        outputs = self.model.base_model(pixel_values=model_inputs["pixel_values"], label_embeds=label_embeds)
        return {"logits": outputs.logits}

    def postprocess(self, model_outputs, candidate_labels=None, top_k=None, threshold=None) -> list[dict[str, Any]]:
        """`(1, C')` logits -> `[{"score": sigmoid(logit), "label": name}]`, highest first."""
        scores = torch.sigmoid(model_outputs["logits"][0].float()).tolist()
        order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable: ties keep the candidates' order
        result = [{"score": scores[i], "label": candidate_labels[i]} for i in order]
        if threshold is not None:
            result = [entry for entry in result if entry["score"] >= threshold]
        return result[:top_k] if top_k is not None else result


__all__ = ["HSPNetZeroShotImageClassificationPipeline", "custom_pipelines"]
