"""The label side as its own ONNX file (`hspnet export-onnx --label_encoder`, `hspnet.apps.onnx_labels`,
`hspnet.apps.onnx_inference.ONNXLabelEncoder`): onnxruntime's label embeddings of new labels (groups given by name
or index, kept, nearest) equal those of the PyTorch model after `set_labels`, and the scores of images against them
equal that model's logits; the model's own labels give its own embeddings; any number of labels and any padding;
the ViT (dynamo exporter, through the command line) and the ResNet tower (torchscript exporter, through the API); the
docs' examples run as written; errors are one line and a failed export writes nothing."""

import contextlib
import io
import json
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnxruntime as ort

from hspnet import HSPNetForImageClassification
from hspnet.apps.onnx_export import export_onnx
from hspnet.apps.onnx_inference import LABEL_INPUTS, LABEL_OUTPUTS, ONNXImageClassifier, ONNXLabelEncoder
from hspnet.apps.onnx_labels import HSPNetOnnxLabelEncoder
from hspnet.cli.export_onnx import main
from hspnet.data import draw_demo_image
from tests.helpers import REPO, one_line, randomize_trainables

ATOL = 1e-4
NEW = ["gray star", "black dot", "red circle", "navy_blue_zigzag", "blue square", "tiny spiral"]
GIVEN = {"black dot": "round shape", "navy_blue_zigzag": 2}  # by name and by index; "red circle": kept
DIFFS = {}  # the largest differences measured, printed at the end of the module (pytest -s)


def note(name, value):
    DIFFS[name] = max(DIFFS.get(name, 0.0), float(value))
    return float(value)


@pytest.fixture(scope="module", autouse=True)
def report_differences():
    yield
    print("\nlargest |onnxruntime - PyTorch|:", json.dumps({k: f"{v:.2e}" for k, v in DIFFS.items()}))


@pytest.fixture(scope="module")
def exported(tiny_demo_model_dir, tmp_path_factory):
    """The demo hierarchy's tiny model (GCN and meta-net moved off their initial values) saved as outputs/demo and
    exported by the command line of docs/onnx.md, run in that folder: demo.onnx, demo.labels.onnx and their JSON."""
    root = tmp_path_factory.mktemp("onnx-labels")
    model = HSPNetForImageClassification.from_pretrained(tiny_demo_model_dir)
    randomize_trainables(model)
    model.save_pretrained(root / "outputs" / "demo")
    printed, here = io.StringIO(), os.getcwd()
    os.chdir(root)
    try:
        with contextlib.redirect_stdout(printed):
            status = main(["outputs/demo", "demo.onnx", "--label_encoder"])
    finally:
        os.chdir(here)
    assert status == 0
    return SimpleNamespace(root=root, folder=root / "outputs" / "demo", printed=printed.getvalue(),
                           image=str(root / "demo.onnx"), labels=str(root / "demo.labels.onnx"))


def reference(exported):
    model = HSPNetForImageClassification.from_pretrained(exported.folder).eval()
    assert model.tokenizer is not None
    return model


def images(n=3, seed=4):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def assert_close(name, got, expected):
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else expected
    assert got.shape == expected.shape and got.dtype == np.float32
    assert note(name, np.abs(got - expected).max()) <= ATOL


def test_new_labels_equal_the_model_after_set_labels(exported):
    model = reference(exported)
    encoder = ONNXLabelEncoder(exported.labels)
    new = encoder(NEW, GIVEN)
    expected, result = model.embed_labels(NEW, GIVEN)
    assert_close("new label embeddings (ViT)", new.label_embeds, expected)
    assert new.labels == NEW and new.label_to_group == result.label_to_group
    assert new.how == [a.how for a in result.assignments] == ["nearest", "given", "kept", "given", "kept", "nearest"]
    assert new.describe() == result.describe()  # the same groups, "nearest" with the same similarity (2 digits)
    for i, assignment in enumerate(result.assignments):
        if assignment.how == "nearest":
            assert abs(new.group_similarity[i, assignment.group] - assignment.similarity) <= 1e-5
            assert new.group_similarity[i].argmax() == assignment.group

    # images scored against them: the logits of the PyTorch model whose labels were set to NEW
    classifier = ONNXImageClassifier(exported.image)
    x = images()
    model.set_labels(NEW, GIVEN)
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    assert_close("logits of new labels (ViT)", classifier.logits(x.numpy(), label_embeds=new), logits)
    assert_close("logits of new labels (ViT)", classifier.logits(x.numpy(), label_embeds=new.label_embeds), logits)
    pictures = [draw_demo_image(5, "test", index)[0] for index in range(2)]
    pixel_values = classifier.preprocess(pictures)
    with torch.no_grad():
        scores = torch.sigmoid(model(pixel_values=torch.from_numpy(pixel_values)).logits)
    assert_close("scores of new labels (ViT)", classifier(pictures, label_embeds=new), scores)


def test_the_models_own_labels_give_its_own_embeddings(exported):
    model = reference(exported)
    own = ONNXLabelEncoder(exported.labels)(model.config.label_names)
    assert own.how == ["kept"] * model.config.num_labels and own.label_to_group == model.config.label_to_group
    with torch.no_grad():
        assert_close("the model's own label embeddings", own.label_embeds, model.base_model.get_label_embeddings())
        logits = model(pixel_values=images()).logits
    classifier = ONNXImageClassifier(exported.image)
    assert_close("logits of the model's own labels", classifier.logits(images().numpy(), label_embeds=own), logits)
    assert_close("logits of the model's own labels", classifier.logits(images().numpy()), logits)  # the constant


LONG = ["a rather long name with many words in it", "x"] + list(reversed(NEW)) + ["q" * 60]


@pytest.mark.parametrize("names", [["gray star"], ["blue square", "tiny spiral"], LONG],
                         ids=["1 label", "2 labels", "9 labels"])
def test_any_number_of_labels_and_any_padding(exported, names):
    """Exported with 4 labels (3 of the model's and a new one); run with 1, 2 and 9, prompts of 8 to 73 tokens."""
    model = reference(exported)
    encoder = ONNXLabelEncoder(exported.labels)
    new = encoder(names)
    expected, result = model.embed_labels(names)
    assert_close("new label embeddings (ViT)", new.label_embeds, expected)
    assert new.label_to_group == result.label_to_group
    # padding after the end token changes nothing (here: to CLIP's full 77 tokens, with another id)
    feed = encoder.inputs(names)
    for name in ("label_token_ids", "name_token_ids"):
        padded = np.full((len(names), 77), 7, dtype=np.int64)
        padded[:, : feed[name].shape[1]] = feed[name]
        feed[name] = padded
    label_embeds, _, _ = encoder.session.run(None, feed)
    assert_close("new label embeddings (ViT)", label_embeds, expected)


def test_the_files_describe_themselves(exported):
    assert "demo.labels.onnx" in exported.printed and "label embedding difference" in exported.printed
    assert sorted(p.name for p in exported.root.iterdir()) == ["demo.json", "demo.labels.json", "demo.labels.onnx",
                                                               "demo.onnx", "outputs"]
    session = ort.InferenceSession(exported.labels, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(LABEL_INPUTS)
    assert [o.name for o in session.get_outputs()] == list(LABEL_OUTPUTS)
    assert all(isinstance(dim, str) for i in session.get_inputs() for dim in i.shape), "labels and lengths: dynamic"
    meta = session.get_modelmeta().custom_metadata_map
    doc = json.loads(meta["hspnet"])
    assert json.loads((exported.root / "demo.labels.json").read_text()) == doc
    image_doc = json.loads((exported.root / "demo.json").read_text())
    assert image_doc["label_encoder"] == "demo.labels.onnx" and doc["image_model"] == "demo.onnx"
    assert image_doc["format_version"] == 2 and image_doc["embedding_dim"] == doc["embedding_dim"]
    model = reference(exported)
    assert doc["groups"] == model.config.group_names and doc["labels"] == model.config.label_names
    assert doc["label_prompt_template"] == "X X X X {}." and doc["name_template"] == "{}"
    assert doc["eos_token_id"] == model.config.clip_config.text_config.eos_token_id == doc["pad_token_id"]
    # the stored tokenizer gives the ids of the model's own tokenizer, prompts as the model builds them
    from tokenizers import Tokenizer

    texts = [doc["label_prompt_template"].format(name.replace("_", " ")) for name in NEW]
    assert [e.ids for e in Tokenizer.from_str(meta["hspnet.tokenizer"]).encode_batch(texts)] == \
        model.tokenizer(texts)["input_ids"]
    # every weight is stored once (the text tower runs twice: names and prompts), and nothing of the image tower
    import onnx

    initializers = onnx.load(exported.labels).graph.initializer
    stored = sum(int(np.prod(t.dims)) for t in initializers)
    base = model.base_model
    weights = sum(p.numel() for m in (base.clip.text_model, base.clip.text_projection, base.gcn) for p in
                  m.parameters())
    groups, n_ctx, width = base.config.num_groups, base.config.n_ctx, base.config.text_width
    constants = groups * n_ctx * width + groups * base.config.projection_dim + 77  # context, group names, positions
    assert stored <= weights + constants + 200  # + small index and scalar constants (equal values: stored once)
    assert not [t.name for t in initializers if "vision" in t.name or "visual" in t.name]
    # the legacy end-token rule (eos_token_id 2: the largest id), as CLIP's text model reads it
    ids = torch.tensor([[9, 4, 30, 30, 3], [9, 40, 2, 2, 2]])
    assert HSPNetOnnxLabelEncoder.eos_positions(SimpleNamespace(eos_token_id=2), ids).tolist() == [2, 1]
    assert HSPNetOnnxLabelEncoder.eos_positions(SimpleNamespace(eos_token_id=2 + 28), ids).tolist() == [2, 0]


def doc_section_blocks():
    text = (REPO / "docs" / "onnx.md").read_text()
    section = text.split("## Labels the model was not trained on", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```python\n(.*?)^```", section, re.S | re.M)


def test_the_docs_examples_run_as_written(exported, tmp_path):
    """docs/onnx.md's section: the command line (the fixture), the example with hspnet and the one without it."""
    for name in ("demo.onnx", "demo.labels.onnx"):
        shutil.copy(exported.root / name, tmp_path / name)
    picture = draw_demo_image(6, "test", 0)[0]
    picture.save(tmp_path / "photo.jpg")
    classifier = ONNXImageClassifier(exported.image)
    pixel_values = classifier.preprocess([picture, draw_demo_image(6, "test", 1)[0]])
    with_hspnet, without_hspnet = doc_section_blocks()
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        first, second = {}, {"pixel_values": pixel_values}
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(with_hspnet, "docs/onnx.md", "exec"), first)
        exec(compile(without_hspnet, "docs/onnx.md", "exec"), second)
    finally:
        os.chdir(here)
    model = reference(exported)
    new = first["new"]
    expected, result = model.embed_labels(new.labels, {"black dot": "round shape"})
    assert_close("new label embeddings (ViT)", new.label_embeds, expected)
    assert [a.how for a in result.assignments] == new.how == ["nearest", "given", "kept"]
    model.set_labels(new.labels, {"black dot": "round shape"})
    with torch.no_grad():
        photo = torch.from_numpy(classifier.preprocess([Path(tmp_path) / "photo.jpg"]))
        scores = torch.sigmoid(model(pixel_values=photo).logits)
    assert_close("scores of new labels (ViT)", first["scores"], scores)

    expected, _ = reference(exported).embed_labels(["gray star", "black dot"], {"black dot": "round shape"})
    assert_close("new label embeddings (ViT)", second["label_embeds"], expected)
    model.set_labels(["gray star", "black dot"], {"black dot": "round shape"})
    with torch.no_grad():
        probabilities = torch.sigmoid(model(pixel_values=torch.from_numpy(pixel_values)).logits)
    assert_close("scores of new labels (ViT)", second["probabilities"].astype(np.float32), probabilities)


def test_resnet_tower_with_the_torchscript_exporter(hierarchy, tmp_path):
    from tests.helpers import resnet_images, tiny_resnet_hspnet

    model, _ = tiny_resnet_hspnet(hierarchy)
    result = export_onnx(model, tmp_path / "rn.onnx", exporter="torchscript", label_encoder=True)
    assert result["label_encoder_path"] == str(tmp_path / "rn.labels.onnx")
    assert note("export check (RN50, label embeddings)", result["label_encoder_max_abs_diff"]) <= ATOL
    names, given = ["zebra", "cat", "tram", "traffic_light"], {"tram": "vehicle"}
    new = ONNXLabelEncoder(result["label_encoder_path"])(names, given)
    expected, assignments = model.embed_labels(names, given)
    assert_close("new label embeddings (RN50)", new.label_embeds, expected)
    assert new.label_to_group == assignments.label_to_group
    x = resnet_images(3)
    logits = ONNXImageClassifier(result["onnx_path"]).logits(x.numpy(), label_embeds=new)
    model.set_labels(names, given)
    with torch.no_grad():
        assert_close("logits of new labels (RN50)", logits, model(pixel_values=x).logits)


def test_errors_are_one_line_and_a_failed_export_writes_nothing(exported, make_model, tmp_path):
    encoder = ONNXLabelEncoder(exported.labels)
    for labels, given, words in [(["a", "a"], None, "duplicate label 'a'"), (["a", " "], None, "empty name"),
                                 (["a"], {"a": "animal"}, "'animal' is not a group"),
                                 (["a"], [7], "7 is not a group"), (["b"], {"c": 0}, "'c'"),
                                 (["z" * 80], None, "has 87 tokens")]:
        with pytest.raises(ValueError) as excinfo:
            encoder(labels, given)
        assert words in one_line(excinfo) and one_line(excinfo).startswith("ONNXLabelEncoder: ")
    with pytest.raises(ValueError) as excinfo:
        ONNXLabelEncoder(exported.image)
    assert "use ONNXImageClassifier" in one_line(excinfo)
    with pytest.raises(ValueError) as excinfo:
        ONNXImageClassifier(exported.labels)
    assert "use ONNXLabelEncoder" in one_line(excinfo)
    with pytest.raises(ValueError) as excinfo:
        ONNXImageClassifier(exported.image).logits(images().numpy(), label_embeds=np.zeros((2, 5), np.float32))
    assert "(labels, " in one_line(excinfo)

    model = make_model()
    model.tokenizer = None
    with pytest.raises(ValueError) as excinfo:
        export_onnx(model, tmp_path / "m.onnx", label_encoder=True)
    assert "no tokenizer" in one_line(excinfo)
    model = make_model()
    with pytest.raises(ValueError) as excinfo:  # the label check fails first: neither file is written
        export_onnx(model, tmp_path / "m.onnx", exporter="torchscript", label_encoder=True, atol=-1)
    assert "label embeddings differ" in one_line(excinfo) and "nothing was written" in one_line(excinfo)
    assert os.listdir(tmp_path) == []
