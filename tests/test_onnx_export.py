"""ONNX export (`hspnet export-onnx`, `hspnet.apps.onnx_export`): onnxruntime's logits and image embeddings equal the
PyTorch model's for the ViT and the ResNet towers, at batch 1 and 8, on random and on real (demo) images; the file
carries its labels and preprocessing; errors are one line; outputs are written atomically; the core never imports
onnx. The label side (`--label_encoder`) is tests/test_onnx_labels.py's."""

import json
import os
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnx
import onnxruntime as ort

from hspnet import HSPNetConfig, HSPNetForImageClassification
from hspnet.apps.onnx_export import (
    DEFAULT_OPSET,
    METADATA_KEY,
    ONNXImageClassifier,
    export_onnx,
    read_onnx_metadata,
)
from hspnet.cli.export_onnx import main
from hspnet.data import draw_demo_image
from hspnet.utils.tiny_clip import byte_level_clip_tokenizer, tiny_clip_config
from tests.helpers import GROUPS, LABEL_TO_GROUP, LABELS

ATOL = 1e-4


def vit_model(clip_dir, seed=0):
    torch.manual_seed(seed)
    return HSPNetForImageClassification.from_clip(clip_dir, labels=LABELS, groups=GROUPS,
                                                  label_to_group=LABEL_TO_GROUP)


def resnet_model(seed=0):
    """A tiny CLIP-ResNet HSPNet (64 px) with real prompts, a random relation and non-trivial batch-norm statistics."""
    config = HSPNetConfig(
        clip_config=tiny_clip_config(hidden_size=32, projection_dim=16).to_dict(),
        vision_backbone="clip_resnet", resnet_layers=[1, 1, 1, 1], resnet_width=8, resnet_image_size=64,
        id2label=dict(enumerate(LABELS)), group_names=GROUPS, label_to_group=LABEL_TO_GROUP,
    )
    torch.manual_seed(seed)
    model = HSPNetForImageClassification(config)
    model.hspnet.set_prompts(byte_level_clip_tokenizer())
    size = len(LABELS) + len(GROUPS)
    model.hspnet.set_relation(torch.rand(size, size, generator=torch.Generator().manual_seed(seed)))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module", params=["clip_vit", "clip_resnet"])
def exported(request, tiny_clip_dir, tmp_path_factory):
    """A saved model folder of each tower, exported once with the default settings (dynamo exporter, opset 18)."""
    folder = tmp_path_factory.mktemp(f"onnx-{request.param}")
    model = vit_model(tiny_clip_dir) if request.param == "clip_vit" else resnet_model()
    model.save_pretrained(folder / "model")
    result = export_onnx(str(folder / "model"), str(folder / "model.onnx"))
    return dict(folder=str(folder / "model"), path=result["onnx_path"], result=result, backbone=request.param)


def reference(folder):
    from hspnet.models.loading import load_model

    model, processor = load_model(folder, device="cpu")
    return model, processor


def demo_images(n, seed=3):
    return [draw_demo_image(seed, "test", index)[0] for index in range(n)]


def test_onnxruntime_logits_equal_pytorch_on_random_and_real_images(exported):
    model, processor = reference(exported["folder"])
    size = model.config.image_size
    session = ort.InferenceSession(exported["path"], providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixel_values"]
    assert [o.name for o in session.get_outputs()] == ["logits", "image_embeds"]  # logits first, as before
    batch_dim = session.get_inputs()[0].shape[0]
    assert isinstance(batch_dim, str), "the batch dimension must be dynamic"
    generator = torch.Generator().manual_seed(7)
    inputs = [torch.randn(batch, 3, size, size, generator=generator) for batch in (1, 8)]
    inputs.append(processor(images=demo_images(8), return_tensors="pt")["pixel_values"])  # real images, batch 8
    inputs.append(inputs[-1][:1])  # and one of them alone
    for pixel_values in inputs:
        with torch.no_grad():
            expected = model.base_model(pixel_values=pixel_values)
        logits, image_embeds = session.run(None, {"pixel_values": pixel_values.numpy()})
        assert logits.dtype == np.float32 and logits.shape == tuple(expected.logits.shape)
        np.testing.assert_allclose(logits, expected.logits.numpy(), rtol=0, atol=ATOL)
        np.testing.assert_allclose(image_embeds, expected.image_embeds.numpy(), rtol=0, atol=ATOL)
    assert exported["result"]["max_abs_diff"] <= ATOL


def test_file_carries_labels_hierarchy_and_preprocessing(exported):
    proto = onnx.load(exported["path"])
    assert {entry.domain or "ai.onnx": entry.version for entry in proto.opset_import}["ai.onnx"] == DEFAULT_OPSET
    props = {entry.key: entry.value for entry in proto.metadata_props}
    metadata = json.loads(props[METADATA_KEY])
    assert metadata == read_onnx_metadata(exported["path"])
    with open(exported["path"][: -len(".onnx")] + ".json", encoding="utf-8") as handle:
        assert json.load(handle) == metadata  # the same document beside the file
    assert metadata["labels"] == LABELS and metadata["groups"] == GROUPS
    assert metadata["label_to_group"] == LABEL_TO_GROUP and metadata["vision_backbone"] == exported["backbone"]
    assert metadata["logit_scale"] == 10.0 and metadata["opset"] == DEFAULT_OPSET
    with open(os.path.join(exported["folder"], "preprocessor_config.json"), encoding="utf-8") as handle:
        saved = json.load(handle)
    saved.pop("auto_map", None)
    assert metadata["image_processor"] == saved  # size, crop, mean, std, resample of the model folder
    size = metadata["image_size"]
    assert metadata["inputs"]["pixel_values"]["shape"] == ["batch", 3, size, size]
    assert metadata["outputs"]["image_embeds"]["shape"] == ["batch", metadata["embedding_dim"]]
    assert metadata["label_encoder"] is None  # exported without --label_encoder

    # usable alone: preprocessing + session from the file only, equal to the PyTorch pipeline
    classifier = ONNXImageClassifier(exported["path"])
    model, processor = reference(exported["folder"])
    images = demo_images(3, seed=5)
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    np.testing.assert_array_equal(classifier.preprocess(images), pixel_values.numpy())
    with torch.no_grad():
        expected = torch.sigmoid(model(pixel_values=pixel_values).logits).numpy()
    np.testing.assert_allclose(classifier(images), expected, rtol=0, atol=ATOL)
    assert classifier.labels == LABELS
    # an empty batch gives an empty result of the right shape
    assert classifier.preprocess([]).shape == (0, 3, size, size)
    assert classifier([]).shape == (0, len(LABELS))


def test_cli_torchscript_exporter_atomic_outputs_and_one_line_errors(tiny_clip_dir, tmp_path, capsys):
    model = vit_model(tiny_clip_dir).train()
    out = tmp_path / "m.onnx"
    result = export_onnx(model, out, exporter="torchscript", write_sidecar=False)
    assert model.training, "export_onnx must leave the model's mode as it was"
    assert result["json_path"] is None and not (tmp_path / "m.json").exists()
    assert result["max_abs_diff"] <= ATOL and result["exporter"] == "torchscript"

    folder = tmp_path / "model"
    model.save_pretrained(folder)
    assert main([str(folder), str(out), "--exporter", "torchscript"]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "m.json" in printed
    before = out.read_bytes()

    # a failed check writes nothing: the previous file stays, no temporary file is left
    assert main([str(folder), str(out), "--exporter", "torchscript", "--atol", "-1"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "nothing was written" in error and error.startswith("hspnet export-onnx: error:")
    assert out.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.json", "m.onnx", "model"]

    assert main([str(tmp_path / "missing"), str(tmp_path / "x.onnx")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "missing" in error
    assert main([str(folder), str(folder / "model.safetensors")]) == 1  # never overwrite an input
    assert "input" in capsys.readouterr().err
    assert main([str(folder), str(out), "--opset", "9"]) == 1
    assert "opset" in capsys.readouterr().err


def test_missing_onnx_gives_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` fails, find_spec says "not installed"
    (tmp_path / "any").mkdir()  # (a model path that does not exist is named first, before anything is imported)
    assert main([str(tmp_path / "any"), str(tmp_path / "x.onnx")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and 'pip install -e ".[onnx]"' in error and "onnx" in error


def test_core_does_not_import_onnx(fresh_package_report):
    """A fresh interpreter (the shared run of `fresh_package_report`) imports hspnet.apps.onnx_export and
    hspnet.apps.predict (with the rest of the core) without onnx, onnxruntime or onnxscript."""
    assert "hspnet.apps.onnx_export" in fresh_package_report["core_modules"]
    onnx_modules = ("onnx", "onnxruntime", "onnxscript")
    assert [m for m in fresh_package_report["optional_after_core"] if m.split(".")[0] in onnx_modules] == []
