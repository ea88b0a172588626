"""The zero-shot CLIP baseline of an evaluation: plain CLIP as a multi-label classifier, and which CLIP to use.

- :class:`ZeroShotCLIPClassifier`: ``logit_scale * norm(image) @ norm(text).T`` with the prompts ``"a photo of a
  {label}."`` (text embeddings computed once), whose ``forward(pixel_values=...)`` returns ``.logits`` like the HSPNet
  model, so :func:`hspnet.evaluation.loop.evaluate_model` runs both; :func:`zero_shot_logits` is the formula;
- :func:`resolve_zero_shot_clip` / :func:`load_zero_shot_clip`: which CLIP to use (by default the ``clip_model``
  recorded in the ``training_args.json`` that training writes beside the model, :func:`read_training_args`) and
  loading it with the checks of :func:`hspnet.models.loading.load_model`.
"""

from __future__ import annotations

import math
import os
import string
from typing import Any, Sequence

import torch
from torch import nn

from hspnet.hub.transfer import TRAINING_ARGS_NAME
from hspnet.models.loading import (
    check_finite_parameters,
    check_loading_info,
    check_model_folder,
    hspnet_base_model,
    load_errors,
    model_file_error,
    quiet_transformers,
)
from hspnet.utils.errors import one_line
from hspnet.utils.files import is_hub_id, read_json_file
from hspnet.utils.model_source import resolve_model_source
from hspnet.utils.tiny_clip import TINY_RANDOM

ZERO_SHOT_TEMPLATE = "a photo of a {}."
ZERO_SHOT_NOTE = (
    "zero-shot CLIP threshold metrics use sigmoid(logit_scale * cosine) > threshold, like the model's, but CLIP's "
    "logits are not calibrated for a sigmoid: compare mAP (ranking only), not the threshold metrics."
)
NO_ZERO_SHOT = ("none", "no", "off", "false", "skip", "")


def check_zero_shot_template(template: Any) -> str:
    """``template`` if it is a string with exactly one ``{}`` and no other ``{...}`` field; ``ValueError`` naming
    it otherwise (so that a bad ``--zero_shot_template`` fails before any work)."""
    if not isinstance(template, str):
        raise ValueError(f"the zero-shot template must be a string with one '{{}}', got {template!r}")
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as error:
        raise ValueError(f"the zero-shot template {template!r} is not a valid format string ({one_line(error)}); "
                         "use one '{}' for the label name and '{{' / '}}' for literal braces") from None
    if fields != [("", "", None)]:
        raise ValueError(f"the zero-shot template {template!r} must hold exactly one '{{}}' (the label name) and no "
                         "other '{...}' field")
    return template


def zero_shot_prompt(label: str, template: str = ZERO_SHOT_TEMPLATE) -> str:
    """``"a photo of a {label}."`` with underscores as spaces."""
    return check_zero_shot_template(template).format(str(label).replace("_", " "))


def zero_shot_logits(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """``logit_scale * normalize(image_embeds) @ normalize(text_embeds).T``: ``(B, D) x (C, D) -> (B, C)``."""
    if image_embeds.ndim != 2 or text_embeds.ndim != 2 or image_embeds.shape[-1] != text_embeds.shape[-1]:
        raise ValueError(f"zero_shot_logits needs (B, D) image and (C, D) text embeddings, got "
                         f"{tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}")
    _check_logit_scale(logit_scale)
    image = nn.functional.normalize(image_embeds.float(), dim=-1)
    text = nn.functional.normalize(text_embeds.float(), dim=-1)
    return logit_scale * image @ text.T


def _check_logit_scale(logit_scale: Any) -> float:
    if isinstance(logit_scale, bool) or not isinstance(logit_scale, (int, float)) or not math.isfinite(logit_scale) \
            or logit_scale <= 0:
        raise ValueError(f"logit_scale must be a finite number > 0, got {logit_scale!r}")
    return float(logit_scale)


class ZeroShotCLIPClassifier(nn.Module):
    """Plain CLIP as a multi-label classifier (the zero-shot baseline).

    ``forward(pixel_values=...)`` returns an ``ImageClassifierOutput`` whose ``logits`` are
    :func:`zero_shot_logits` of CLIP's image embeddings and the text embeddings of ``template.format(label)``
    (underscores -> spaces), computed once here and kept as a buffer. ``logit_scale``: default CLIP's learned
    ``logit_scale.exp()`` (capped at 100, as CLIP clamps it). Only the image tower is kept.
    """

    def __init__(self, clip_model, tokenizer, labels: Sequence[str], template: str = ZERO_SHOT_TEMPLATE,
                 logit_scale: float | None = None):
        super().__init__()
        from hspnet.models.hspnet.modeling_prompts import clip_text_embeddings

        check_zero_shot_template(template)
        self.labels = [str(name) for name in labels]
        if not self.labels:
            raise ValueError("the zero-shot classifier needs at least one label")
        self.prompts = [zero_shot_prompt(name, template) for name in self.labels]
        self.template = template
        with torch.no_grad():
            text = clip_text_embeddings(clip_model, tokenizer, self.prompts)
        self.register_buffer("text_embeds", nn.functional.normalize(text.float(), dim=-1))
        if logit_scale is None:
            logit_scale = min(float(clip_model.logit_scale.detach().exp()), 100.0)
        self.logit_scale = _check_logit_scale(logit_scale)
        self.vision_model = clip_model.vision_model
        self.visual_projection = clip_model.visual_projection
        self.config = clip_model.config
        self.requires_grad_(False)
        self.eval()

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = self.visual_projection.weight.dtype
        pooled = self.vision_model(pixel_values=pixel_values.to(dtype)).pooler_output
        return self.visual_projection(pooled)

    def forward(self, pixel_values: torch.Tensor, **kwargs):
        from transformers.modeling_outputs import ImageClassifierOutput

        logits = zero_shot_logits(self.get_image_features(pixel_values), self.text_embeds, self.logit_scale)
        return ImageClassifierOutput(logits=logits)


def _clip_available(name: str) -> bool:
    if name == TINY_RANDOM or os.path.isdir(name):
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # noqa: BLE001 (not a valid repo id)
        return False


def read_training_args(model_name_or_path: str) -> dict:
    """The options of the run that trained the model: ``training_args.json``, written beside the model by training
    (``clip_model``, ``seed``, ``model_name_or_path`` among every training option). Empty when there is none (a
    converted model, a folder saved otherwise, a Hub model offline); for a Hub id, the file of the cached or
    downloadable repository. Raises ``ValueError`` naming the file when it is not a JSON object or a field read here
    has the wrong type."""
    name = os.fspath(model_name_or_path)
    path = os.path.join(name, TRAINING_ARGS_NAME)
    if os.path.isdir(name):
        if not os.path.lexists(path):
            return {}
    elif not is_hub_id(name):
        return {}
    else:
        try:  # the file if it is cached or can be downloaded
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(name, TRAINING_ARGS_NAME)
        except Exception:  # noqa: BLE001 (offline, no such file, not a repo: no record)
            return {}
    args = read_json_file(path, "training arguments file", error=model_file_error)  # a FIFO is refused, never opened
    if not isinstance(args, dict):
        raise ValueError(f"{path}: expected a JSON object of training options, got {type(args).__name__}")
    for field, kinds in (("clip_model", str), ("model_name_or_path", str), ("seed", int)):
        value = args.get(field)
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
            raise ValueError(f"{path}: field {field!r} must be a {kinds.__name__} or null, got {value!r}")
    return args


def resolve_zero_shot_clip(model_name_or_path: str, requested: str | None = "auto") -> tuple[str | None, int, str]:
    """Which CLIP the baseline uses: ``(clip or None, tiny_random_seed, message)``.

    ``requested``: a Hub id / folder / ``"tiny-random"`` (used as given), ``"none"`` (skip), or ``"auto"`` / None:
    the ``clip_model`` of the model's ``training_args.json`` (:func:`read_training_args`; none when the model was
    fine-tuned from another HSPNet) when it is ``tiny-random``, an existing folder, or a Hub id in the local cache;
    otherwise ``None`` with the reason in ``message``. The tiny random CLIP is rebuilt with the run's ``seed``
    (default 0).
    """
    skip = requested is not None and requested.strip().lower() in NO_ZERO_SHOT
    recorded = {} if skip or requested not in (None, "auto", TINY_RANDOM) else read_training_args(model_name_or_path)
    seed = int(recorded.get("seed") or 0)
    if skip:
        return None, seed, "zero-shot CLIP baseline skipped (--zero_shot_clip none)"
    if requested not in (None, "auto"):
        return requested, seed, f"zero-shot CLIP baseline: {requested}"
    base = None if recorded.get("model_name_or_path") else recorded.get("clip_model")
    if not base:
        return None, seed, (
            f"zero-shot CLIP baseline skipped: {model_name_or_path} does not record the CLIP it was built on "
            f"(no clip_model in a {TRAINING_ARGS_NAME} beside it); pass --zero_shot_clip HUB_ID_OR_FOLDER (or "
            "tiny-random)"
        )
    if not _clip_available(base):
        return None, seed, (
            f"zero-shot CLIP baseline skipped: the model was built on {base!r}, which is neither a local folder nor in "
            "the Hugging Face cache; pass --zero_shot_clip HUB_ID_OR_FOLDER"
        )
    return base, seed, f"zero-shot CLIP baseline: {base} (the model's base CLIP, from its {TRAINING_ARGS_NAME})"


def load_zero_shot_clip(name: str, seed: int = 0):
    """``(clip_model, tokenizer, image_processor)``: ``"tiny-random"`` (the tiny random CLIP of the demo, rebuilt
    with ``seed``), a CLIP folder or a Hub id. Raises ``OSError`` naming it when it cannot be loaded."""
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel

    import hspnet  # noqa: F401  (so that an HSPNet folder is recognised and refused by name)

    if name == TINY_RANDOM:
        from hspnet.utils.tiny_clip import load_tiny_random

        return load_tiny_random(seed)
    if not isinstance(name, (str, os.PathLike)) or not os.fspath(name).strip():
        raise ValueError(f"the zero-shot CLIP must be a folder, a Hub id or {TINY_RANDOM!r}, got {name!r}")
    name = os.fspath(name)
    local = os.path.isdir(name)
    if local:
        check_model_folder(name, "CLIP")
    elif os.path.exists(name):
        raise ValueError(f"{name}: the zero-shot CLIP must be a folder (or a Hub id), not a file")
    local_files_only = resolve_model_source(name, "zero-shot CLIP").local_files_only
    where = "CLIP folder" if local else "no such local folder, and the Hub model"
    errors = load_errors()
    with quiet_transformers():
        try:
            model_type = AutoConfig.from_pretrained(name, local_files_only=local_files_only).model_type
        except errors as error:
            raise OSError(f"{name}: cannot load it as a CLIP model for the zero-shot baseline ({where}: "
                          f"{one_line(error)[:300]})") from error
        if model_type != "clip":
            raise ValueError(f"{name}: a {model_type!r} model, not a CLIP model; the zero-shot baseline needs plain "
                             "CLIP (e.g. openai/clip-vit-base-patch16)")
        try:
            clip, info = CLIPModel.from_pretrained(name, output_loading_info=True, ignore_mismatched_sizes=True,
                                                   local_files_only=local_files_only)
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)
        except errors as error:
            raise OSError(f"{name}: cannot load it as a CLIP model for the zero-shot baseline ({where}: "
                          f"{one_line(error)[:300]})") from error
    check_loading_info(name, clip, info)
    check_finite_parameters(name, clip)
    clip.eval()
    with quiet_transformers():
        try:
            processor = AutoImageProcessor.from_pretrained(name, local_files_only=local_files_only)
        except errors as error:
            saved = os.path.join(name, "preprocessor_config.json")
            if local and os.path.lexists(saved):
                raise OSError(f"{saved}: the image processor of the zero-shot CLIP cannot be loaded "
                              f"({one_line(error)[:200]})") from error
            from hspnet.utils.tiny_clip import tiny_clip_image_processor

            size = clip.config.vision_config.image_size
            processor = tiny_clip_image_processor(size if isinstance(size, int) else size[0])
    return clip, tokenizer, processor


def _text_tower_matches(model, clip) -> bool | None:
    """Whether an HSPNet model's frozen text projection equals ``clip``'s (None when it cannot be told)."""
    base = hspnet_base_model(model)
    if base is None or not getattr(model.config, "freeze_text_encoder", False):
        return None
    mine, theirs = base.clip.text_projection.weight, clip.text_projection.weight
    if mine.shape != theirs.shape:
        return False
    return bool(torch.allclose(mine.detach().float().cpu(), theirs.detach().float().cpu(), atol=1e-6))
