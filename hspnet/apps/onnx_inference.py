"""Running the files of `hspnet export-onnx` with onnxruntime, without the PyTorch model (no torch computation: the
inputs are prepared and the outputs combined with numpy).

- :class:`ONNXImageClassifier` (`OUT.onnx`): images -> `(B, C)` scores for the model's labels, or for any label
  embeddings (`label_embeds=`, e.g. from :class:`ONNXLabelEncoder`): `logit_scale * image_embeds @ label_embeds.T`.
- :class:`ONNXLabelEncoder` (`OUT.labels.onnx`, written with `--label_encoder`): label names (and groups) -> `(C', D)`
  label embeddings, for labels the model was not trained on, equal to what `model.set_labels(names, ...)` gives the
  PyTorch model. The names are tokenized with the model's own tokenizer, stored in the file.

Each file describes itself in its `metadata_props` (:data:`METADATA_KEY`, one JSON document; the label encoder also
holds the tokenizer under :data:`TOKENIZER_KEY`); the classes read them through onnxruntime
(`session.get_modelmeta().custom_metadata_map`), so neither needs the `onnx` package.

    encoder = ONNXLabelEncoder("demo.labels.onnx")
    new = encoder(["zebra", "tram"], label_to_group={"tram": "vehicle"})   # "zebra": the nearest group
    scores = ONNXImageClassifier("demo.onnx")(["photo.jpg"], label_embeds=new)   # (1, 2), in new.labels order
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hspnet.apps.defaults import ONNX_INSTALL_HINT

METADATA_KEY = "hspnet"
"""The key of the JSON document in an exported file's `metadata_props`."""
TOKENIZER_KEY = "hspnet.tokenizer"
"""The key of the label encoder's tokenizer in its `metadata_props`: a `tokenizer.json` document (the `tokenizers`
library's format, `tokenizers.Tokenizer.from_str`)."""
FORMAT_NAME = "hspnet-onnx"
LABELS_FORMAT_NAME = "hspnet-onnx-labels"
LABEL_INPUTS = ("label_token_ids", "name_token_ids", "label_to_group")
LABEL_OUTPUTS = ("label_embeds", "label_groups", "group_similarity")
NEAREST = -1
"""The `label_to_group` input value that asks the label encoder for the nearest group."""


def require_onnx(*modules: str) -> None:
    """Raise a one-line `ImportError` naming `pip install -e ".[onnx]"` when one of `modules` is not installed."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"ONNX export needs the optional package(s) {', '.join(missing)}: {ONNX_INSTALL_HINT}")


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


def _open(model: bytes | str | os.PathLike, threads: int | None, expected_format: str) -> tuple[Any, dict, dict]:
    """`(session, metadata document, every metadata_props entry)` of an exported file (path or bytes)."""
    name = "the ONNX model" if isinstance(model, bytes) else os.fspath(model)
    if not isinstance(model, bytes) and not os.path.isfile(name):
        raise ValueError(f"{name}: no such file")
    require_onnx("onnxruntime")
    try:
        session = onnxruntime_session(model, threads)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ValueError(f"{name}: not a readable ONNX file ({' '.join(str(error).split())[:200]})") from None
    props = dict(session.get_modelmeta().custom_metadata_map)
    if METADATA_KEY not in props:
        raise ValueError(f"{name}: no {METADATA_KEY!r} metadata; not a file written by hspnet export-onnx")
    metadata = json.loads(props[METADATA_KEY])
    if metadata.get("format") != expected_format:
        hint = " (the label encoder: use ONNXLabelEncoder)" if metadata.get("format") == LABELS_FORMAT_NAME else \
            " (the image classifier: use ONNXImageClassifier)" if metadata.get("format") == FORMAT_NAME else ""
        raise ValueError(f"{name}: a {metadata.get('format')!r} file{hint}, not {expected_format!r}")
    return session, metadata, props


def _sigmoid(logits):
    import numpy as np

    return 1.0 / (1.0 + np.exp(-logits))


# ---------------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------------


class ONNXImageClassifier:
    """An exported HSPNet file run by onnxruntime, with its own labels and preprocessing (no PyTorch model needed).

        classifier = ONNXImageClassifier("demo.onnx")
        scores = classifier(["a.jpg", pil_image])         # (B, C) sigmoid scores, in classifier.labels order
        scores = classifier(["a.jpg"], label_embeds=new)  # (B, C') for other labels (ONNXLabelEncoder)
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        from hspnet.models.hspnet.image_processing_hspnet import HSPNetImageProcessor

        self.path = os.fspath(path)
        self.session, self.metadata, _ = _open(self.path, threads, FORMAT_NAME)
        self.labels: list[str] = list(self.metadata["labels"])
        settings = {k: v for k, v in self.metadata["image_processor"].items() if k != "image_processor_type"}
        self.image_processor = HSPNetImageProcessor(**settings)
        self.outputs = [output.name for output in self.session.get_outputs()]

    def preprocess(self, images: Sequence[Any]):
        """Image paths or PIL images / arrays -> `(B, 3, H, W)` float32 `pixel_values` (numpy)."""
        from hspnet.utils.images import open_image, to_rgb

        images = [open_image(item) if isinstance(item, (str, os.PathLike)) else to_rgb(item) for item in images]
        if not images:  # an empty batch: no image to process, an empty array of the right shape
            import numpy as np

            size = self.image_processor.crop_size
            return np.zeros((0, 3, size["height"], size["width"]), dtype=np.float32)
        return self.image_processor(images=images, return_tensors="np")["pixel_values"]

    def _run(self, output: str, pixel_values, width: int):
        import numpy as np

        if len(pixel_values) == 0:  # the graph is exported for batches of 1 and more
            return np.zeros((0, width), dtype=np.float32)
        (result,) = self.session.run([output], {"pixel_values": np.ascontiguousarray(pixel_values, np.float32)})
        return result

    def image_embeds(self, pixel_values):
        """`(B, 3, H, W)` float32 array -> `(B, D)` L2-normalised image embeddings (the graph's second output)."""
        if "image_embeds" not in self.outputs:
            raise ValueError(f"{self.path}: this file has no image_embeds output (it was exported by an older hspnet); "
                             "export the model again to score other labels")
        return self._run("image_embeds", pixel_values, int(self.metadata.get("embedding_dim", 0)))

    def label_embeds_array(self, label_embeds: Any):
        """`label_embeds` (an `(C', D)` array, or what :class:`ONNXLabelEncoder` returns) as float32, checked."""
        import numpy as np

        array = np.ascontiguousarray(getattr(label_embeds, "label_embeds", label_embeds), dtype=np.float32)
        dim = self.metadata.get("embedding_dim")
        if array.ndim != 2 or (dim is not None and array.shape[1] != dim):
            raise ValueError(f"label_embeds must have shape (labels, {dim}) (this model's embedding size), got "
                             f"{array.shape}")
        return array

    def logits(self, pixel_values, label_embeds: Any = None):
        """`(B, 3, H, W)` float32 array -> `(B, C)` logits; with `label_embeds` `(C', D)` (normalised, e.g. an
        :class:`ONNXLabelSet`): `(B, C')` logits `logit_scale * image_embeds @ label_embeds.T`."""
        import numpy as np

        if label_embeds is None:
            return self._run("logits", pixel_values, len(self.labels))
        labels = self.label_embeds_array(label_embeds)
        scale = np.float32(self.metadata["logit_scale"])
        return (scale * self.image_embeds(pixel_values)) @ labels.T

    def __call__(self, images: Sequence[Any], label_embeds: Any = None):
        """Images -> `(B, C)` per-label sigmoid scores (numpy); `(B, C')` for `label_embeds` (see `logits`)."""
        return _sigmoid(self.logits(self.preprocess(images), label_embeds))


# ---------------------------------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ONNXLabelSet:
    """What :class:`ONNXLabelEncoder` returns for a label set: `label_embeds` `(C', D)` float32 (L2-normalised, in
    `labels` order), each label's group (`label_to_group`, `group_names`) and how it was chosen (`how`: `"given"`,
    `"kept"`: a label of the model keeps its group, or `"nearest"`), and `group_similarity` `(C', G)`: the cosine of
    each label name's CLIP text embedding with each group name's (the nearest group is its argmax)."""

    labels: list[str]
    label_embeds: Any
    label_to_group: list[int]
    group_names: list[str]
    how: list[str]
    group_similarity: Any

    def describe(self) -> list[str]:
        """One line per label whose group was not simply kept, as `LabelSetResult.describe` says it."""
        lines = []
        for i, (label, group, name, how) in enumerate(zip(self.labels, self.label_to_group, self.group_names,
                                                          self.how)):
            if how != "kept":
                reason = (f"nearest by CLIP text similarity, {float(self.group_similarity[i, group]):.2f}"
                          if how == "nearest" else how)
                lines.append(f"label {label!r} -> group {name!r} ({reason})")
        return lines


class LabelTokenizer:
    """The label encoder's inputs from label names, as the PyTorch model makes its prompts (`metadata`: the label
    encoder's document; `tokenizer_json`: the model's tokenizer as a `tokenizer.json` document)."""

    def __init__(self, metadata: dict, tokenizer_json: str):
        from tokenizers import Tokenizer

        self.metadata = metadata
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()

    def texts(self, labels: Sequence[str]) -> tuple[list[str], list[str]]:
        """`(label prompts, bare names)`: `label_prompt_template` and `name_template` of each name, underscores read
        as spaces."""
        prompt, bare = self.metadata["label_prompt_template"], self.metadata["name_template"]
        names = [label.replace("_", " ") for label in labels]
        return [prompt.format(name) for name in names], [bare.format(name) for name in names]

    def token_ids(self, texts: list[str], labels: Sequence[str], what: str):
        """`(N, L)` int64 token ids (with the start and end tokens), padded with `pad_token_id` to the longest."""
        import numpy as np

        rows = [encoding.ids for encoding in self.tokenizer.encode_batch(texts)]
        limit = self.metadata["max_length"]
        for text, label, row in zip(texts, labels, rows):
            if len(row) > limit:
                raise ValueError(f"{what}: the prompt {text!r} for label {label!r} has {len(row)} tokens; CLIP's text "
                                 f"tower takes {limit}")
        ids = np.full((len(rows), max(map(len, rows))), self.metadata["pad_token_id"], dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        return ids

    def inputs(self, labels: Sequence[str], label_to_group: Any = None, what: str = "ONNXLabelEncoder") -> tuple:
        """`(feed, how)`: the three inputs of the label encoder for `labels` (checked as `set_labels` checks them: a
        one-line `ValueError` naming the label) and how each label's group is chosen. `label_to_group` as for
        `set_labels`: a mapping label -> group, or one entry per label; a group is its index or its name; None (or a
        label left out): the label's group in the model, else the nearest group."""
        import numpy as np

        from hspnet.models.hspnet.modeling_label_set import _check_names, _given_groups

        labels = _check_names(labels, what)
        groups = list(self.metadata["groups"])
        given = _given_groups(labels, label_to_group, groups, what)
        model_groups = dict(zip(self.metadata["labels"], self.metadata["label_to_group"]))
        how = ["given" if group is not None else "kept" if label in model_groups else "nearest"
               for label, group in zip(labels, given)]
        chosen = [group if group is not None else int(model_groups.get(label, NEAREST))
                  for label, group in zip(labels, given)]
        prompts, names = self.texts(labels)
        feed = {"label_token_ids": self.token_ids(prompts, labels, what),
                "name_token_ids": self.token_ids(names, labels, what),
                "label_to_group": np.asarray(chosen, dtype=np.int64)}
        return feed, how


class ONNXLabelEncoder:
    """The label side of an exported HSPNet model (`OUT.labels.onnx`, `hspnet export-onnx --label_encoder`) run by
    onnxruntime: label names -> L2-normalised label embeddings, for any labels, equal to those of the PyTorch model
    after `model.set_labels(labels, label_to_group)` (prompts with the trained context of each label's group, the
    relation of the names recomputed by the text tower, the label GCN; every learned weight as trained).

        encoder = ONNXLabelEncoder("demo.labels.onnx")
        new = encoder(["zebra", "traffic_light"], label_to_group={"zebra": "animal"})
        new.label_embeds          # (2, D) float32; score images with ONNXImageClassifier(..., label_embeds=new)
        new.describe()            # ["label 'zebra' -> group 'animal' (given)", ...]

    Each label's group: the one given; else, for a label of the model, its group; else the group whose name's CLIP
    text embedding is the most similar (`set_labels`' rule). The labels are embedded together: each one's embedding
    depends on the others through the label graph, as in the PyTorch model.
    """

    def __init__(self, path: str | os.PathLike | bytes, threads: int | None = None):
        self.path = "the ONNX model" if isinstance(path, bytes) else os.fspath(path)
        self.session, self.metadata, props = _open(path, threads, LABELS_FORMAT_NAME)
        if TOKENIZER_KEY not in props:
            raise ValueError(f"{self.path}: no {TOKENIZER_KEY!r} metadata (the tokenizer); export the model again")
        self.tokenizer = LabelTokenizer(self.metadata, props[TOKENIZER_KEY])
        self.groups: list[str] = list(self.metadata["groups"])
        self.labels: list[str] = list(self.metadata["labels"])

    def inputs(self, labels: Sequence[str], label_to_group: Any = None) -> dict:
        """The graph's inputs for `labels` (numpy): what a caller without hspnet computes (the file's metadata)."""
        return self.tokenizer.inputs(labels, label_to_group)[0]

    def __call__(self, labels: Sequence[str], label_to_group: Any = None) -> ONNXLabelSet:
        """Embed `labels` (one call; see the class docstring for the groups) -> :class:`ONNXLabelSet`."""
        feed, how = self.tokenizer.inputs(labels, label_to_group)
        label_embeds, groups, similarity = self.session.run(list(LABEL_OUTPUTS), feed)
        groups = [int(g) for g in groups]
        return ONNXLabelSet(list(labels), label_embeds, groups, [self.groups[g] for g in groups], how, similarity)


__all__ = [
    "LABEL_INPUTS",
    "LABEL_OUTPUTS",
    "METADATA_KEY",
    "NEAREST",
    "ONNXImageClassifier",
    "ONNXLabelEncoder",
    "ONNXLabelSet",
    "TOKENIZER_KEY",
    "onnxruntime_session",
    "read_onnx_metadata",
    "require_onnx",
]
