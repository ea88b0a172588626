"""Export a trained HSPNet classifier to ONNX: `pixel_values (B, 3, H, W)` -> `logits (B, C)` and `image_embeds
(B, D)`; with `label_encoder=True` (`--label_encoder`) also the label side, as `OUT.labels.onnx`.

At inference the whole text side of HSPNet (group prompts, GCN, meta-net, label prompts, GCN) is constant, so the
exported graph is only what a forward pass of `HSPNetModel` computes on the image side:

    image  = normalize(CLIP image tower(pixel_values))   # ViT: vision_model + visual_projection; ResNet: attnpool
    logits = config.logit_scale * float32(image) @ label_embeds.T

with `label_embeds` the `(C, D)` normalised label embeddings computed once by the PyTorch model and stored in the
graph as a constant (`HSPNetOnnxClassifier`). The graph's second output is `image_embeds`, the `(B, D)` normalised image
embeddings, to score the images against other label embeddings. The batch size is dynamic; the image size is the
model's.

The label side is a second file, written only when asked (`label_encoder=True`): `OUT.labels.onnx` takes the
tokenized label names (and their groups, or "nearest") and gives their `(C', D)` label embeddings, equal to those of
`model.set_labels(names, ...)` (see `onnx_labels.py`), for labels the model was not trained on. It is not written by
default: it holds the text tower and its token table (about 250 MB in float32 for CLIP ViT-B and RN50), it takes a
second export and check, it needs the model's tokenizer and token table (which converted checkpoints lack), and the
fixed label set, the usual deployment, needs none of it. The two files are checked, then written together.

The file is usable alone: the label names, the groups, the label -> group map, the model's calibrated decision
thresholds (`label_thresholds`, one per label or null, from `hspnet calibrate`; null when the model has none) and the
preprocessing (the model folder's image processor: resize of the shorter side, bicubic, with torchvision's size and
centre-crop rounding, CLIP mean/std) are written into the ONNX `metadata_props` under the key `"hspnet"` (one JSON
document), and the same document beside it as `OUT.json`. :class:`ONNXImageClassifier` reads both back and runs
images through onnxruntime (`hspnet.apps.onnx_inference`, with :class:`ONNXLabelEncoder` for `OUT.labels.onnx`).

The exporter is torch's default one (`torch.onnx.export(..., dynamo=True)`, `torch.export` + onnxscript): it is the
maintained exporter (the TorchScript one is deprecated since torch 2.9), it records the batch dimension symbolically
instead of tracing Python branches on concrete shapes, and it exports both image towers without warnings.
`exporter="torchscript"` (`dynamo=False`) remains available for environments without onnxscript. The default opset
18 is the dynamo exporter's native opset and runs on onnxruntime >= 1.14 (the `[onnx]` extra installs a newer one).

Every export is checked before it is written: onnxruntime (CPU) runs the new graph on random images at batch 1 and
3 and its logits and image embeddings must equal the PyTorch model's within `atol` (default 1e-4), and the label
encoder's embeddings of label sets with new names must equal `model.embed_labels`' within `atol`; the files are then
written atomically (temporary file + rename), so a failed export never replaces an older file.

Needs the optional packages `onnx`, `onnxscript` and `onnxruntime` (`pip install -e ".[onnx]"`); the rest of
`hspnet` never imports them.

    hspnet export-onnx outputs/demo demo.onnx                     # writes demo.onnx and demo.json
    hspnet export-onnx outputs/demo demo.onnx --label_encoder     # and demo.labels.onnx, demo.labels.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import warnings
from typing import Any

import torch
from torch import nn

from hspnet.apps.defaults import ONNX_DEFAULT_OPSET, ONNX_EXPORTERS, ONNX_INSTALL_HINT
from hspnet.apps.onnx_inference import (
    FORMAT_NAME,
    LABEL_INPUTS,
    LABEL_OUTPUTS,
    METADATA_KEY,
    TOKENIZER_KEY,
    ONNXImageClassifier,
    ONNXLabelEncoder,
    ONNXLabelSet,
    onnxruntime_session,
    read_onnx_metadata,
    require_onnx,
)
from hspnet.apps.onnx_labels import (
    HSPNetOnnxLabelEncoder,
    check_label_encoder,
    dynamic_axes,
    example_inputs,
    label_encoder_metadata,
    label_encoder_path,
    label_encoder_tokenizer,
)
from hspnet.models.loading import hspnet_base_model, label_names
from hspnet.models.thresholds import DEFAULT_THRESHOLD, stored_label_thresholds
from hspnet.utils.files import atomic_write, refuse_inputs_as_output, write_json

DEFAULT_OPSET = ONNX_DEFAULT_OPSET
"""The opset of the exported graph: the dynamo exporter's native opset, supported by onnxruntime >= 1.14."""
FORMAT_VERSION = 2
"""1: `logits` only; 2: also `image_embeds` (and `embedding_dim`, `label_encoder` in the metadata)."""
EXPORTERS = ONNX_EXPORTERS
INSTALL_HINT = ONNX_INSTALL_HINT
VERIFY_BATCH_SIZES = (1, 3)

PREPROCESSING_RULE = (
    "RGB image -> resize so that the shorter side is size.shortest_edge (PIL bicubic; the longer side becomes "
    "int(shortest_edge * long / short), as torchvision's Resize) -> centre crop crop_size (torchvision's CenterCrop: "
    "zero padding if smaller, top = int(round((height - crop_height) / 2.0)), left likewise) -> float32 / 255 -> "
    "(x - image_mean) / image_std per channel -> (3, H, W), stacked to (B, 3, H, W)"
)


class OnnxExportError(ValueError):
    """The export did not produce a graph equal to the PyTorch model (nothing was written)."""


def _hspnet_base(model: nn.Module):
    """The HSPNet base model of `model` (:func:`hspnet.models.loading.hspnet_base_model`); `ValueError` if there is
    none."""
    base = hspnet_base_model(model)
    if base is None:
        raise ValueError(f"export_onnx needs an HSPNet model (HSPNetForImageClassification or HSPNetModel), got "
                         f"{type(model).__name__}")
    return base


class HSPNetOnnxClassifier(nn.Module):
    """The inference graph of an HSPNet model: the model's own forward pass with its `(C, D)` label embeddings
    computed once (in eval mode, without gradients) and passed in as a constant (`HSPNetModel.forward(...,
    label_embeds=...)`), so the exported graph holds the image tower and the logits, not the text side; it also
    returns the `(B, D)` normalised image embeddings. The model's modules are shared, not copied."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = _hspnet_base(model)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                label_embeds = self.model.get_label_embeddings()
        finally:
            self.model.train(was_training)
        self.register_buffer("label_embeds", label_embeds.detach().float().clone())

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B, 3, H, W)` -> `(logits (B, C), image_embeds (B, D))`."""
        output = self.model(pixel_values=pixel_values, label_embeds=self.label_embeds)
        return output.logits, output.image_embeds


def onnx_metadata(model: nn.Module, image_processor: Any = None, source: str | None = None) -> dict:
    """The JSON document stored with the ONNX file: input/output description, labels, hierarchy, preprocessing."""
    from hspnet.models.hspnet.modeling_from_clip import default_image_processor

    base = _hspnet_base(model)
    config = base.config
    if image_processor is None:
        image_processor = getattr(model, "image_processor", None) or default_image_processor(config)
    processor = image_processor.to_dict()
    processor.pop("auto_map", None)
    size = int(config.image_size)
    labels = label_names(config)
    import hspnet

    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "inputs": {"pixel_values": {"shape": ["batch", 3, size, size], "dtype": "float32"}},
        "outputs": {"logits": {"shape": ["batch", len(labels)], "dtype": "float32",
                               "scores": "sigmoid(logits): an independent probability per label"},
                    "image_embeds": {"shape": ["batch", int(config.projection_dim)], "dtype": "float32",
                                     "meaning": "L2-normalised image embeddings: logits = logit_scale * image_embeds "
                                                "@ label_embeds.T for any normalised label embeddings"}},
        "labels": labels,
        "groups": list(config.group_names),
        "label_to_group": [int(g) for g in config.label_to_group],
        "label_thresholds": stored_label_thresholds(config),
        "decision": f"label i is predicted when sigmoid(logits[:, i]) > label_thresholds[i] ({DEFAULT_THRESHOLD:g} "
                    "where that is null, and for every label when label_thresholds is null)",
        "vision_backbone": config.vision_backbone,
        "image_size": size,
        "logit_scale": float(config.logit_scale),
        "embedding_dim": int(config.projection_dim),
        "label_encoder": None,
        "image_processor": processor,
        "preprocessing": PREPROCESSING_RULE,
        "source_model": source or getattr(config, "_name_or_path", None) or None,
        "hspnet_version": hspnet.__version__,
        "torch_version": torch.__version__,
    }


def sidecar_path(out_path: str | os.PathLike) -> str:
    """`model.onnx` -> `model.json` (any other name gets `.json` appended)."""
    out_path = os.fspath(out_path)
    root, extension = os.path.splitext(out_path)
    return (root if extension.lower() == ".onnx" else out_path) + ".json"


def _export_proto(module: nn.Module, inputs: dict[str, torch.Tensor], output_names: list[str],
                  axes: dict[str, dict[int, tuple[str, int, int | None]]], output_axes: dict[str, dict[int, str]],
                  opset: int, exporter: str, deduplicate: bool = False):
    """The ONNX `ModelProto` of `module` on the example `inputs` (by name, in the order of its `forward` arguments),
    with the dynamic `axes` of each input (`{axis: (name, min, max)}`: one name, one dimension) and, for the
    TorchScript exporter, of each output (`output_axes`). `deduplicate`: keep one copy of equal initializers (the
    dynamo exporter can fold a weight used by two calls of a module, e.g. the label encoder's text tower, into two
    equal constants; this holds a copy of the weights in memory while it runs)."""
    import onnx

    names, examples = list(inputs), tuple(inputs.values())
    if exporter == "dynamo":
        import logging

        dims, shapes = {}, {}
        for name, spec in axes.items():
            for axis, (dim, low, high) in spec.items():
                dims.setdefault(dim, torch.export.Dim(dim, min=low, max=high))
                shapes.setdefault(name, {})[axis] = dims[dim]
        registry_logger = logging.getLogger("torch.onnx._internal.exporter._registration")
        level = registry_logger.level
        registry_logger.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms" x 4
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    module, examples, dynamo=True, input_names=names, output_names=output_names,
                    dynamic_shapes=shapes, opset_version=opset, external_data=False, verbose=False,
                )
        finally:
            registry_logger.setLevel(level)
        if deduplicate:
            from onnx_ir.passes.common import DeduplicateInitializersPass

            DeduplicateInitializersPass(size_limit=2**62)(program.model)
        return program.model_proto
    import io

    buffer = io.BytesIO()
    dynamic = {name: {axis: spec[0] for axis, spec in spec_axes.items()} for name, spec_axes in axes.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice and the tracer's notes on CLIP's shape checks
        torch.onnx.export(
            module, examples, buffer, dynamo=False, input_names=names, output_names=output_names,
            dynamic_axes={**dynamic, **output_axes}, opset_version=opset,
        )
    return onnx.load_from_string(buffer.getvalue())


def _serialize(proto, metadata: dict, doc_string: str, extra_props: dict | None = None) -> bytes:
    """The file's bytes: `proto` with `metadata` (JSON) under `METADATA_KEY` (and `extra_props`), `doc_string`."""
    import onnx

    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(metadata, ensure_ascii=False), **(extra_props or {})})
    proto.doc_string = doc_string
    proto.producer_name = "hspnet"
    proto.producer_version = metadata["hspnet_version"]
    return proto.SerializeToString()


def _load(model_or_path, trust_remote_code: bool):
    """`(model, image_processor, source name)`."""
    if isinstance(model_or_path, nn.Module):
        return model_or_path, getattr(model_or_path, "image_processor", None), None
    if not isinstance(model_or_path, (str, os.PathLike)):
        raise ValueError(f"export_onnx: pass a model folder, a Hub id or an HSPNet model, got {model_or_path!r}")
    from hspnet.models.loading import load_model

    name = os.fspath(model_or_path)
    model, processor = load_model(name, device="cpu", trust_remote_code=trust_remote_code)
    _hspnet_base(model)
    return model, processor, name


def _label_encoder_file(exported: nn.Module, tokenizer: Any, metadata: dict, out_path: str, opset: int,
                        exporter: str, verify: bool, atol: float) -> tuple[bytes, dict, float | None]:
    """`(bytes, metadata, max_abs_diff)` of the label encoder of `exported` (float32, CPU, eval mode), checked with
    `check_label_encoder` when `verify`."""
    encoder = HSPNetOnnxLabelEncoder(exported, tokenizer).eval()
    document, tokenizer_json = label_encoder_metadata(exported, tokenizer)
    document.update(image_model=os.path.basename(out_path), source_model=metadata["source_model"], opset=opset,
                    exporter=exporter)
    examples = dict(zip(LABEL_INPUTS, example_inputs(document, tokenizer_json, exported)))
    proto = _export_proto(encoder, examples, list(LABEL_OUTPUTS), dynamic_axes(),
                          {name: {0: "labels"} for name in LABEL_OUTPUTS}, opset, exporter, deduplicate=True)
    doc_string = (f"HSPNet label encoder: label_token_ids (labels, prompt_length), name_token_ids (labels, "
                  f"name_length), label_to_group (labels,) int64 -> label_embeds (labels, {document['embedding_dim']}) "
                  f"float32, label_groups, group_similarity. Prompts, tokenization, groups: metadata_props"
                  f"[{METADATA_KEY!r}]; the tokenizer: metadata_props[{TOKENIZER_KEY!r}].")
    data = _serialize(proto, document, doc_string, {TOKENIZER_KEY: tokenizer_json})
    max_diff = None
    if verify:
        max_diff, problem = check_label_encoder(data, exported, tokenizer, atol)
        if problem:
            raise OnnxExportError(f"{problem}; nothing was written")
    return data, document, max_diff


def export_onnx(
    model_or_path: str | os.PathLike | nn.Module,
    out_path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    image_processor: Any = None,
    verify: bool = True,
    atol: float = 1e-4,
    write_sidecar: bool = True,
    trust_remote_code: bool = False,
    label_encoder: bool = False,
    tokenizer: Any = None,
) -> dict:
    """Export an HSPNet classifier to `out_path` (ONNX, one file) and its metadata to `OUT.json`; with
    `label_encoder`, also its label side to `OUT.labels.onnx` (and `OUT.labels.json`).

    Args:
        model_or_path: a model folder, a Hub id, or an `HSPNetForImageClassification` / `HSPNetModel` (its mode,
            device and dtype are left as they were; a model that is not float32 on the CPU is exported from a float32
            CPU copy).
        out_path: the `.onnx` file (its folder is created if needed); written atomically, never one of the model
            folder's files.
        opset: ONNX opset (default 18). exporter: `"dynamo"` (default) or `"torchscript"`.
        image_processor: the preprocessing to record; default the model folder's (or `model.image_processor`, or CLIP
            preprocessing at the model's resolution).
        verify: run the graph with onnxruntime (random images, batch 1 and 3) and require logits and image embeddings
            within `atol` of the PyTorch model before writing (needs onnxruntime); with `label_encoder`, also label
            embeddings of new label sets within `atol` of `model.embed_labels`'.
        write_sidecar: also write the metadata as `OUT.json` (it is always inside the ONNX file too).
        label_encoder: also export the label side (`onnx_labels.py`) as `OUT.labels.onnx`, for labels the model was
            not trained on (:class:`ONNXLabelEncoder`); needs the model's tokenizer (`model.tokenizer`, or pass
            `tokenizer`, a fast CLIP tokenizer).

    Returns: the metadata document, plus `"onnx_path"`, `"json_path"` (or None) and, with `verify`, `"max_abs_diff"`;
    with `label_encoder`, `"label_encoder_path"`, `"label_encoder_json_path"`, `"label_encoder_max_abs_diff"` and
    `"label_encoder_metadata"`.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if not isinstance(opset, int) or isinstance(opset, bool) or opset < 14:
        raise ValueError(f"opset must be an integer >= 14 (scaled dot-product attention), got {opset!r}")
    require_onnx("onnx", *(("onnxscript",) if exporter == "dynamo" else ()), *(("onnxruntime",) if verify else ()))

    out_path = os.fspath(out_path)
    if os.path.isdir(out_path):
        raise ValueError(f"{out_path}: is a folder; give the path of the .onnx file to write")
    json_path = sidecar_path(out_path) if write_sidecar else None
    labels_path = label_encoder_path(out_path) if label_encoder else None
    labels_json_path = sidecar_path(labels_path) if labels_path and write_sidecar else None
    model, processor, source = _load(model_or_path, trust_remote_code)
    if source is not None and os.path.isdir(source):
        inputs = [os.path.join(source, name) for name in os.listdir(source)]
        for path in filter(None, (out_path, json_path, labels_path, labels_json_path)):
            refuse_inputs_as_output(path, inputs, what="the ONNX output")
    if label_encoder:
        tokenizer = label_encoder_tokenizer(model, tokenizer)  # before the long export
    metadata = onnx_metadata(model, image_processor or processor, source)
    metadata.update(opset=opset, exporter=exporter, label_encoder=labels_path and os.path.basename(labels_path))

    parameter = next(model.parameters())
    exported = model
    if parameter.dtype != torch.float32 or parameter.device.type != "cpu":
        exported = copy.deepcopy(model).to("cpu", torch.float32)
    was_training = exported.training
    exported.eval()
    try:
        wrapper = HSPNetOnnxClassifier(exported).eval()
        size = metadata["image_size"]
        generator = torch.Generator().manual_seed(0)
        example = torch.randn(2, 3, size, size, generator=generator)
        proto = _export_proto(wrapper, {"pixel_values": example}, ["logits", "image_embeds"],
                              {"pixel_values": {0: ("batch", 1, None)}},
                              {"logits": {0: "batch"}, "image_embeds": {0: "batch"}}, opset, exporter)
        checks = [torch.randn(n, 3, size, size, generator=generator) for n in VERIFY_BATCH_SIZES] if verify else []
        with torch.no_grad():
            expected = [(output.logits.float(), output.image_embeds.float())
                        for output in (_hspnet_base(exported)(pixel_values=x) for x in checks)]
        labels_file = None
        if label_encoder:
            labels_file = _label_encoder_file(exported, tokenizer, metadata, out_path, opset, exporter, verify, atol)
    finally:
        exported.train(was_training)

    data = _serialize(proto, metadata, (
        f"HSPNet multi-label classifier: pixel_values (batch, 3, {size}, {size}) float32 -> logits (batch, "
        f"{len(metadata['labels'])}) float32 (sigmoid(logits) are per-label probabilities), image_embeds (batch, "
        f"{metadata['embedding_dim']}) float32. Labels and preprocessing: metadata_props[{METADATA_KEY!r}]."))

    max_diff = None
    if verify:
        session = onnxruntime_session(data)
        max_diff = 0.0
        for x, references in zip(checks, expected):
            outputs = session.run(["logits", "image_embeds"], {"pixel_values": x.numpy()})
            for name, value, reference in zip(("logits", "image embeddings"), outputs, references):
                if value.shape != tuple(reference.shape):
                    raise OnnxExportError(f"the exported graph gives {name} of shape {value.shape} for a batch of "
                                          f"{x.shape[0]}, expected {tuple(reference.shape)}; nothing was written")
                max_diff = max(max_diff, float((torch.from_numpy(value) - reference).abs().max()))
        if not max_diff <= atol:
            raise OnnxExportError(f"onnxruntime's logits or image embeddings differ from the PyTorch model's by "
                                  f"{max_diff:.3g} (> atol {atol:g}); nothing was written")

    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with atomic_write(out_path, "wb") as stream:
        stream.write(data)
    if json_path:
        write_json(json_path, metadata)
    result = {**metadata, "onnx_path": out_path, "json_path": json_path, "max_abs_diff": max_diff}
    if labels_file is not None:
        labels_data, labels_metadata, labels_diff = labels_file
        with atomic_write(labels_path, "wb") as stream:
            stream.write(labels_data)
        if labels_json_path:
            write_json(labels_json_path, labels_metadata)
        result.update(label_encoder_path=labels_path, label_encoder_json_path=labels_json_path,
                      label_encoder_max_abs_diff=labels_diff, label_encoder_metadata=labels_metadata)
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def run_export(args: argparse.Namespace) -> dict:
    label_encoder = getattr(args, "label_encoder", False)
    result = export_onnx(args.model, args.output, opset=args.opset, exporter=args.exporter, verify=not args.no_verify,
                         atol=args.atol, write_sidecar=not args.no_json, trust_remote_code=args.trust_remote_code,
                         label_encoder=label_encoder)
    def wrote(path: str, what: str, diff: float | None, compared: str) -> None:
        check = "" if diff is None else f"; onnxruntime max |{compared} difference| {diff:.2e}"
        print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB, {what}{check})")

    size = result["image_size"]
    wrote(result["onnx_path"], f"opset {args.opset}, {args.exporter} exporter, {len(result['labels'])} labels, input "
          f"(batch, 3, {size}, {size})", result["max_abs_diff"], "logit")
    if result["json_path"]:
        print(f"wrote {result['json_path']} (labels, groups, thresholds, preprocessing)")
    if label_encoder:
        wrote(result["label_encoder_path"], f"label encoder: label names -> label embeddings for any labels, "
              f"{len(result['groups'])} groups", result["label_encoder_max_abs_diff"], "label embedding")
        if result["label_encoder_json_path"]:
            print(f"wrote {result['label_encoder_json_path']} (prompt templates, tokenization, groups)")
    return result


__all__ = [
    "DEFAULT_OPSET",
    "EXPORTERS",
    "HSPNetOnnxClassifier",
    "METADATA_KEY",
    "ONNXImageClassifier",
    "ONNXLabelEncoder",
    "ONNXLabelSet",
    "OnnxExportError",
    "export_onnx",
    "onnx_metadata",
    "onnxruntime_session",
    "read_onnx_metadata",
    "require_onnx",
    "run_export",
    "sidecar_path",
]
