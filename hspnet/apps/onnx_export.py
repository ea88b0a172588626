"""Export a trained HSPNet classifier to ONNX: `pixel_values (B, 3, H, W)` -> `logits (B, C)`.

At inference the whole text side of HSPNet (group prompts, GCN, meta-net, label prompts, GCN) is constant, so the
exported graph is only what a forward pass of `HSPNetModel` computes on the image side:

    image  = normalize(CLIP image tower(pixel_values))   # ViT: vision_model + visual_projection; ResNet: attnpool
    logits = config.logit_scale * float32(image) @ label_embeds.T

with `label_embeds` the `(C, D)` normalised label embeddings computed once by the PyTorch model and stored in the
graph as a constant (`HSPNetOnnxClassifier`). The batch size is dynamic; the image size is the model's.

The file is usable alone: the label names, the groups, the label -> group map and the preprocessing (the model
folder's image processor: resize of the shorter side, bicubic, with torchvision's size and centre-crop rounding, CLIP
mean/std) are written into the ONNX `metadata_props` under the key `"hspnet"` (one JSON document), and the same
document beside it as `OUT.json`. :class:`ONNXImageClassifier` reads both back and runs images through onnxruntime.

The exporter is torch's default one (`torch.onnx.export(..., dynamo=True)`, `torch.export` + onnxscript): it is the
maintained exporter (the TorchScript one is deprecated since torch 2.9), it records the batch dimension symbolically
instead of tracing Python branches on concrete shapes, and it exports both image towers without warnings.
`exporter="torchscript"` (`dynamo=False`) remains available for environments without onnxscript. The default opset
18 is the dynamo exporter's native opset and runs on onnxruntime >= 1.14 (the `[onnx]` extra installs a newer one).

Every export is checked before it is written: onnxruntime (CPU) runs the new graph on random images at batch 1 and
3 and its logits must equal the PyTorch model's within `atol` (default 1e-4); the file is then written atomically
(temporary file + rename), so a failed export never replaces an older file.

Needs the optional packages `onnx`, `onnxscript` and `onnxruntime` (`pip install -e ".[onnx]"`); the rest of
`hspnet` never imports them.

    hspnet export-onnx outputs/demo demo.onnx          # writes demo.onnx and demo.json
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import warnings
from typing import Any, Sequence

import torch
from torch import nn

from hspnet.apps.defaults import ONNX_DEFAULT_OPSET, ONNX_EXPORTERS, ONNX_INSTALL_HINT
from hspnet.models.loading import hspnet_base_model, label_names
from hspnet.utils.files import atomic_write, refuse_inputs_as_output, write_json

DEFAULT_OPSET = ONNX_DEFAULT_OPSET
"""The opset of the exported graph: the dynamo exporter's native opset, supported by onnxruntime >= 1.14."""
METADATA_KEY = "hspnet"
"""The key of the JSON document in the ONNX file's `metadata_props`."""
FORMAT_NAME = "hspnet-onnx"
FORMAT_VERSION = 1
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


def require_onnx(*modules: str) -> None:
    """Raise a one-line `ImportError` naming `pip install -e ".[onnx]"` when one of `modules` is not installed."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"ONNX export needs the optional package(s) {', '.join(missing)}: {INSTALL_HINT}")


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
    label_embeds=...)`), so the exported graph holds the image tower and the logits, not the text side. The model's
    modules are shared, not copied."""

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

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values, label_embeds=self.label_embeds).logits


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
                               "scores": "sigmoid(logits): an independent probability per label"}},
        "labels": labels,
        "groups": list(config.group_names),
        "label_to_group": [int(g) for g in config.label_to_group],
        "vision_backbone": config.vision_backbone,
        "image_size": size,
        "logit_scale": float(config.logit_scale),
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


def _export_proto(wrapper: nn.Module, example: torch.Tensor, opset: int, exporter: str):
    """The ONNX `ModelProto` of `wrapper` with a dynamic batch dimension."""
    import onnx

    if exporter == "dynamo":
        import logging

        batch = torch.export.Dim("batch", min=1)
        registry_logger = logging.getLogger("torch.onnx._internal.exporter._registration")
        level = registry_logger.level
        registry_logger.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms" x 4
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    wrapper, (example,), dynamo=True, input_names=["pixel_values"], output_names=["logits"],
                    dynamic_shapes={"pixel_values": {0: batch}}, opset_version=opset, external_data=False,
                    verbose=False,
                )
        finally:
            registry_logger.setLevel(level)
        return program.model_proto
    import io

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice and the tracer's notes on CLIP's shape checks
        torch.onnx.export(
            wrapper, (example,), buffer, dynamo=False, input_names=["pixel_values"], output_names=["logits"],
            dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
        )
    return onnx.load_from_string(buffer.getvalue())


def onnxruntime_session(model: bytes | str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU `InferenceSession` on an ONNX file (path) or its bytes; `threads`: intra-op threads."""
    require_onnx("onnxruntime")
    import onnxruntime as ort

    model = model if isinstance(model, bytes) else os.fspath(model)

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


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
) -> dict:
    """Export an HSPNet classifier to `out_path` (ONNX, one file) and its metadata to `OUT.json`.

    Args:
        model_or_path: a model folder, a Hub id, or an `HSPNetForImageClassification` / `HSPNetModel` (its mode,
            device and dtype are left as they were; a model that is not float32 on the CPU is exported from a float32
            CPU copy).
        out_path: the `.onnx` file (its folder is created if needed); written atomically, never one of the model
            folder's files.
        opset: ONNX opset (default 18). exporter: `"dynamo"` (default) or `"torchscript"`.
        image_processor: the preprocessing to record; default the model folder's (or `model.image_processor`, or CLIP
            preprocessing at the model's resolution).
        verify: run the graph with onnxruntime (random images, batch 1 and 3) and require logits within `atol` of the
            PyTorch model before writing (needs onnxruntime).
        write_sidecar: also write the metadata as `OUT.json` (it is always inside the ONNX file too).

    Returns: the metadata document, plus `"onnx_path"`, `"json_path"` (or None) and, with `verify`, `"max_abs_diff"`.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if not isinstance(opset, int) or isinstance(opset, bool) or opset < 14:
        raise ValueError(f"opset must be an integer >= 14 (scaled dot-product attention), got {opset!r}")
    require_onnx("onnx", *(("onnxscript",) if exporter == "dynamo" else ()), *(("onnxruntime",) if verify else ()))
    import onnx

    out_path = os.fspath(out_path)
    if os.path.isdir(out_path):
        raise ValueError(f"{out_path}: is a folder; give the path of the .onnx file to write")
    json_path = sidecar_path(out_path) if write_sidecar else None
    model, processor, source = _load(model_or_path, trust_remote_code)
    if source is not None and os.path.isdir(source):
        inputs = [os.path.join(source, name) for name in os.listdir(source)]
        for path in filter(None, (out_path, json_path)):
            refuse_inputs_as_output(path, inputs, what="the ONNX output")
    metadata = onnx_metadata(model, image_processor or processor, source)

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
        proto = _export_proto(wrapper, example, opset, exporter)
        checks = [torch.randn(n, 3, size, size, generator=generator) for n in VERIFY_BATCH_SIZES] if verify else []
        with torch.no_grad():
            expected = [exported(pixel_values=x).logits.float() for x in checks]
    finally:
        exported.train(was_training)

    metadata.update(opset=opset, exporter=exporter)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(metadata, ensure_ascii=False)})
    proto.doc_string = (f"HSPNet multi-label classifier: pixel_values (batch, 3, {size}, {size}) float32 -> logits "
                        f"(batch, {len(metadata['labels'])}) float32; sigmoid(logits) are per-label probabilities. "
                        f"Labels and preprocessing: metadata_props[{METADATA_KEY!r}].")
    proto.producer_name = "hspnet"
    proto.producer_version = metadata["hspnet_version"]
    data = proto.SerializeToString()

    max_diff = None
    if verify:
        session = onnxruntime_session(data)
        max_diff = 0.0
        for x, reference in zip(checks, expected):
            (logits,) = session.run(["logits"], {"pixel_values": x.numpy()})
            if logits.shape != tuple(reference.shape):
                raise OnnxExportError(f"the exported graph gives logits of shape {logits.shape} for a batch of "
                                      f"{x.shape[0]}, expected {tuple(reference.shape)}; nothing was written")
            max_diff = max(max_diff, float((torch.from_numpy(logits) - reference).abs().max()))
        if not max_diff <= atol:
            raise OnnxExportError(f"onnxruntime's logits differ from the PyTorch model's by {max_diff:.3g} "
                                  f"(> atol {atol:g}); nothing was written")

    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with atomic_write(out_path, "wb") as stream:
        stream.write(data)
    if json_path:
        write_json(json_path, metadata)
    return {**metadata, "onnx_path": out_path, "json_path": json_path, "max_abs_diff": max_diff}


# ---------------------------------------------------------------------------------------------------------------------
# Using an exported file
# ---------------------------------------------------------------------------------------------------------------------


def read_onnx_metadata(path: str | os.PathLike) -> dict:
    """The JSON document stored in an exported file's `metadata_props` (needs `onnx`; the weights are not loaded)."""
    require_onnx("onnx")
    import onnx

    path = os.fspath(path)
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as error:  # noqa: BLE001 - protobuf raises its own DecodeError
        raise ValueError(f"{path}: not a readable ONNX file ({' '.join(str(error).split())[:200]})") from None
    props = {entry.key: entry.value for entry in proto.metadata_props}
    if METADATA_KEY not in props:
        raise ValueError(f"{path}: no {METADATA_KEY!r} metadata; not a file written by hspnet export-onnx")
    return json.loads(props[METADATA_KEY])


class ONNXImageClassifier:
    """An exported HSPNet file run by onnxruntime, with its own labels and preprocessing (no PyTorch model needed).

        classifier = ONNXImageClassifier("demo.onnx")
        scores = classifier(["a.jpg", pil_image])         # (B, C) sigmoid scores, in classifier.labels order
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        require_onnx("onnx", "onnxruntime")
        from hspnet.models.hspnet.image_processing_hspnet import HSPNetImageProcessor

        self.path = os.fspath(path)
        self.metadata = read_onnx_metadata(self.path)
        self.labels: list[str] = list(self.metadata["labels"])
        settings = {k: v for k, v in self.metadata["image_processor"].items() if k != "image_processor_type"}
        self.image_processor = HSPNetImageProcessor(**settings)
        self.session = onnxruntime_session(self.path, threads)

    def preprocess(self, images: Sequence[Any]):
        """Image paths or PIL images / arrays -> `(B, 3, H, W)` float32 `pixel_values` (numpy)."""
        from hspnet.utils.images import open_image, to_rgb

        images = [open_image(item) if isinstance(item, (str, os.PathLike)) else to_rgb(item) for item in images]
        if not images:  # an empty batch: no image to process, an empty array of the right shape
            import numpy as np

            size = self.image_processor.crop_size
            return np.zeros((0, 3, size["height"], size["width"]), dtype=np.float32)
        return self.image_processor(images=images, return_tensors="np")["pixel_values"]

    def logits(self, pixel_values):
        """`(B, 3, H, W)` float32 array -> `(B, C)` logits."""
        import numpy as np

        if len(pixel_values) == 0:  # the graph is exported for batches of 1 and more
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        (logits,) = self.session.run(["logits"], {"pixel_values": np.ascontiguousarray(pixel_values, np.float32)})
        return logits

    def __call__(self, images: Sequence[Any]):
        """Images -> `(B, C)` per-label sigmoid scores (numpy)."""
        import numpy as np

        return 1.0 / (1.0 + np.exp(-self.logits(self.preprocess(images))))


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def run_export(args: argparse.Namespace) -> dict:
    result = export_onnx(args.model, args.output, opset=args.opset, exporter=args.exporter, verify=not args.no_verify,
                         atol=args.atol, write_sidecar=not args.no_json, trust_remote_code=args.trust_remote_code)
    size = os.path.getsize(result["onnx_path"]) / 2**20
    diff = result["max_abs_diff"]
    check = "" if diff is None else f"; onnxruntime max |logit difference| {diff:.2e}"
    print(f"wrote {result['onnx_path']} ({size:.1f} MiB, opset {args.opset}, {args.exporter} exporter, "
          f"{len(result['labels'])} labels, input (batch, 3, {result['image_size']}, {result['image_size']}){check})")
    if result["json_path"]:
        print(f"wrote {result['json_path']} (labels, groups, preprocessing)")
    return result


__all__ = [
    "DEFAULT_OPSET",
    "EXPORTERS",
    "HSPNetOnnxClassifier",
    "METADATA_KEY",
    "ONNXImageClassifier",
    "OnnxExportError",
    "export_onnx",
    "onnx_metadata",
    "onnxruntime_session",
    "read_onnx_metadata",
    "require_onnx",
    "run_export",
    "sidecar_path",
]
