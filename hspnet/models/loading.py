"""A saved model, for inference: :func:`load_model` (a folder or Hub id -> `(model, image_processor)`, checked file by
file, never running code from the folder unless asked) and what every user of a loaded model asks of it:
:func:`label_names`, :func:`scores_from_logits`, and :func:`unwrap_model` / :func:`hspnet_base_model` (the model
inside its training wrappers, the HSPNet base model inside its classification head).

The checks :func:`load_model` is made of (:func:`check_model_folder`, :func:`check_loading_info`,
:func:`check_finite_parameters`) also guard the zero-shot CLIP of :mod:`hspnet.evaluation.zero_shot`. Errors a user
can cause are :class:`ModelLoadError` (an `OSError`) or `ValueError`, naming the model or the file.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from hspnet.utils.errors import located, one_line
from hspnet.utils.files import check_regular_file, read_json_file
from hspnet.utils.model_source import ModelSourceError, resolve_model_source

_JSON_FILES = ("config.json", "preprocessor_config.json", "processor_config.json", "generation_config.json",
               "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json", "vocab.json",
               "added_tokens.json")


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


class ModelLoadError(OSError):
    """The model folder or Hub id cannot be loaded (or its weights do not fit its configuration)."""


def model_file_error(reason: str, *, file=None, line: int | None = None, field: str | None = None) -> ModelLoadError:
    """A :class:`ModelLoadError` about one file of a model, worded as every error about a file
    (:func:`hspnet.utils.errors.located`): the ``error`` that reads a model's files with
    :func:`hspnet.utils.files.read_json_file` / ``check_regular_file``."""
    return ModelLoadError(located(reason, file, line, field))


def load_errors() -> tuple[type[BaseException], ...]:
    """What loading a broken model folder raises inside transformers / safetensors / torch."""
    import pickle

    errors: list[type[BaseException]] = [OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError,
                                         EOFError, pickle.UnpicklingError]
    with contextlib.suppress(ImportError):
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    return tuple(errors)


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' warnings (e.g. its multi-line load report) while loading: the problems it reports are
    turned into one-line errors by the caller."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _check_safetensors(path: str) -> None:
    """Read the header of a safetensors file: a truncated, empty or partly downloaded file fails here, by name."""
    from safetensors import SafetensorError, safe_open

    check_regular_file(path, "weights file", error=model_file_error)
    try:
        with safe_open(path, framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        size = os.path.getsize(path)
        raise ModelLoadError(
            f"{path}: not a complete safetensors file ({size:,} bytes; {one_line(error)}): truncated or partly "
            "copied or downloaded? copy or download it again"
        ) from None


def check_model_folder(folder: str, what: str = "model") -> None:
    """Check a local model folder before transformers reads it, so that each problem names its file: ``config.json``
    exists and holds a JSON object, the JSON files transformers reads parse, every weights file is a regular file
    (never a FIFO or a device, which would block) and every ``.safetensors`` file is complete. Raises
    :class:`ModelLoadError`."""
    config = os.path.join(folder, "config.json")
    if not os.path.lexists(config):
        raise ModelLoadError(f"{folder}: not a {what} folder (no config.json)")
    if not isinstance(read_json_file(config, "config file", error=model_file_error), dict):
        raise ModelLoadError(f"{config}: the config file must hold a JSON object")
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name in _JSON_FILES[1:] or name.endswith(".index.json"):
            if os.path.exists(path):
                read_json_file(path, f"{name} file", error=model_file_error)
        elif name.endswith(_WEIGHT_SUFFIXES) or name == "README.md":
            if not os.path.exists(path):
                raise ModelLoadError(f"{path}: a broken symbolic link (its target does not exist)")
            check_regular_file(path, "model card file" if name == "README.md" else "weights file",
                               error=model_file_error)
            if name.endswith(".safetensors"):
                _check_safetensors(path)


def _describe_mismatch(name: str, model, mismatched) -> str:
    """One line about weights whose shapes are not those ``config.json`` asks for."""
    items = sorted(mismatched, key=lambda item: str(item[0]))
    shown = "; ".join(f"{key}: {tuple(saved)} in the weights, {tuple(expected)} for config.json"
                      for key, saved, expected in items[:3])
    more = f" (and {len(items) - 3} more)" if len(items) > 3 else ""
    hint = ""
    for key, saved, expected in items:
        if key.endswith("label_prompt_embeds") and saved and expected:
            hint = (f": config.json lists {expected[0]} labels (id2label) but the weights were saved for {saved[0]}; "
                    "use the config.json saved with these weights")
            break
    else:
        if getattr(model.config, "num_labels", None) is not None:
            hint = (f": config.json has {model.config.num_labels} labels (id2label); check that it is the config saved "
                    "with these weights")
    return f"{name}: the weights do not fit config.json{hint} ({shown}{more})"


def check_loading_info(name: str, model, info: dict) -> None:
    """Refuse weights that transformers would silently (re)initialise: missing tensors or other shapes."""
    mismatched = list(info.get("mismatched_keys") or [])
    if mismatched:
        raise ModelLoadError(_describe_mismatch(name, model, mismatched))
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:5]) + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
        raise ModelLoadError(
            f"{name}: the weights lack {len(missing)} tensor(s) the model needs ({shown}): an incomplete checkpoint, "
            "or one of another model; they would be left randomly initialised"
        )
    errors = [one_line(message) for message in info.get("error_msgs") or []]
    if errors:
        raise ModelLoadError(f"{name}: the weights could not be loaded ({'; '.join(errors)[:300]})")


def check_finite_parameters(name: str, model) -> None:
    """Refuse weights that hold NaN or infinite values (a corrupted or diverged checkpoint), naming the tensors."""
    bad = [key for key, value in model.named_parameters()
           if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (f" (and {len(bad) - 3} more)" if len(bad) > 3 else "")
        raise ModelLoadError(f"{name}: the weights hold NaN or infinite values in {len(bad)} tensor(s) ({shown}): "
                             "a corrupted or diverged checkpoint")


def label_names(model_or_config) -> list[str]:
    """The label names of a model (or of its config) in index order, from ``config.id2label``: the one reading of a
    model's labels. ``ValueError`` when ``id2label`` is not indexed 0..C-1 or disagrees with ``config.num_labels``."""
    config = getattr(model_or_config, "config", model_or_config)
    id2label = getattr(config, "id2label", None) or {}
    try:
        keys = sorted(int(key) for key in id2label)
    except (TypeError, ValueError):
        keys = None
    if keys != list(range(len(id2label))) or not id2label:
        raise ValueError(f"the model's config.json must name its labels in id2label with keys 0..C-1, got "
                         f"{sorted(map(str, id2label))[:10]}")
    num_labels = getattr(config, "num_labels", len(id2label))
    if num_labels != len(id2label):
        raise ValueError(f"the model's config.json has num_labels {num_labels} but names {len(id2label)} labels in "
                         "id2label")
    return [str(id2label[i] if i in id2label else id2label[str(i)]) for i in range(len(id2label))]


def load_model(model_name_or_path: str | os.PathLike, device: Any = None, trust_remote_code: bool = False):
    """``(model, image_processor)`` from a model folder or Hub id, in eval mode on ``device``.

    The model is loaded with ``AutoModelForImageClassification`` (HSPNet is registered by importing :mod:`hspnet`;
    other image classifiers work too) and the image processor is the one saved with it (``AutoImageProcessor``);
    an HSPNet folder without one falls back to CLIP preprocessing at the tower's resolution (a saved one that cannot be
    read is an error). Nothing in the folder runs code unless ``trust_remote_code``: weights are safetensors or
    ``torch.load(weights_only=True)``. Raises :class:`ModelLoadError` (an ``OSError``) naming the model or the file
    when it cannot be loaded: no folder, no / malformed ``config.json``, truncated weights, weights that lack tensors
    or have other shapes than ``config.json`` asks for (e.g. another number of labels), NaN / inf weights.
    """
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    import hspnet  # noqa: F401  (registers HSPNet with the Auto classes)

    if not isinstance(model_name_or_path, (str, os.PathLike)) or not os.fspath(model_name_or_path):
        raise ValueError(f"model must be a model folder or a Hub id, got {model_name_or_path!r}")
    name = os.fspath(model_name_or_path)
    local = os.path.isdir(name)
    if local:
        check_model_folder(name)
    elif os.path.exists(name):
        raise ModelLoadError(f"{name}: the model must be a folder (or a Hub id), not a file")
    # a missing path is named at once; a Hub id is asked about once, briefly (network, id or access)
    try:
        local_files_only = resolve_model_source(name, "model").local_files_only
    except ModelSourceError as error:
        raise ModelLoadError(str(error)) from None
    errors = load_errors()
    with quiet_transformers():
        try:
            model, info = AutoModelForImageClassification.from_pretrained(
                name, trust_remote_code=trust_remote_code, output_loading_info=True, ignore_mismatched_sizes=True,
                local_files_only=local_files_only,
            )
        except errors as error:
            where = "model folder" if local else "no such local folder, and the Hub model"
            raise ModelLoadError(f"{name}: {where} could not be loaded ({one_line(error)[:300]})") from error
    check_loading_info(name, model, info)
    check_finite_parameters(name, model)
    try:
        label_names(model)
    except ValueError as error:
        raise ModelLoadError(f"{name}: {error}") from None
    saved_processor = os.path.join(name, "preprocessor_config.json")
    with quiet_transformers():
        try:
            processor = AutoImageProcessor.from_pretrained(name, trust_remote_code=trust_remote_code,
                                                           local_files_only=local_files_only)
        except errors as error:
            reason = one_line(error)[:200]
            if local and os.path.lexists(saved_processor):
                raise ModelLoadError(
                    f"{saved_processor}: the image processor saved with the model cannot be loaded ({reason})"
                ) from error
            if getattr(model.config, "model_type", None) != "hspnet":
                raise ModelLoadError(f"{name}: no image processor saved with the model ({reason})") from error
            from hspnet.models.hspnet.modeling_from_clip import default_image_processor

            processor = default_image_processor(model.config)
    if device is not None:
        model.to(torch.device(device))
    return model.eval(), processor


def scores_from_logits(model, logits):
    """Per-label probabilities: sigmoid for multi-label models (HSPNet), softmax for single-label classifiers."""
    if getattr(model.config, "problem_type", None) == "single_label_classification":
        return torch.softmax(logits.float(), dim=-1)
    return torch.sigmoid(logits.float())


def unwrap_model(model):
    """The model inside the wrappers that hold it as ``.module`` (``DistributedDataParallel``, ``DataParallel``,
    DeepSpeed's engine); a model that is not wrapped is returned as it is."""
    while isinstance(getattr(model, "module", None), torch.nn.Module) and not hasattr(model, "config"):
        model = model.module
    return model


def hspnet_base_model(model):
    """The :class:`~hspnet.models.hspnet.modeling_hspnet.HSPNetModel` of ``model`` (an
    ``HSPNetForImageClassification``, an ``HSPNetModel``, either in a :func:`unwrap_model` wrapper), or None when
    ``model`` is not an HSPNet model."""
    from hspnet.models.hspnet.modeling_hspnet import HSPNetModel

    model = unwrap_model(model)
    base = getattr(model, "base_model", model)
    return base if isinstance(base, HSPNetModel) else None
