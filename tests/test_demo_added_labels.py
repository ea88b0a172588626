"""The demo page's "Add labels" box (hspnet.apps.demo.added_labels, docs/open-vocabulary.md): the added labels' scores
equal those of the model after `add_labels` with the same labels and groups (the model's own API, checked against a
model built from scratch in tests/test_open_vocabulary.py), the trained labels keep the unchanged model's scores, the
page's model is never changed, the added labels are drawn in their own section, and bad typed labels are notes."""

import os

import pytest
import torch
from PIL import Image

from hspnet.apps.demo.page import DemoModel, render_image_result
from hspnet.apps.predict import predict_images
from hspnet.data.demo import draw_demo_image
from hspnet.models.loading import label_names, load_model


@pytest.fixture(scope="module")
def demo_model(tiny_demo_model_dir):
    return DemoModel.load(tiny_demo_model_dir, device="cpu")


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("added")
    out = []
    for i in range(3):
        image, _ = draw_demo_image(0, "test", i)
        image.save(root / f"img{i}.png")
        out.append(str(root / f"img{i}.png"))
    return out


def test_added_labels_score_as_add_labels_and_trained_ones_stay(demo_model, tiny_demo_model_dir, paths):
    groups = list(demo_model.model.config.group_names)
    before = {k: v.clone() for k, v in demo_model.model.state_dict().items()}
    results, notes = demo_model.predict_files(paths, f"zebra, red boat: {groups[1]}\nlamp")

    model, processor = load_model(tiny_demo_model_dir, device="cpu")
    trained = predict_images(model, processor, paths, threshold=None, top_k=len(label_names(model)),
                             all_scores=True, progress=False)
    result = model.add_labels(["zebra", "red boat", "lamp"], label_to_group=[None, groups[1], None])
    pixels = processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        extended = torch.sigmoid(model(pixel_values=pixels).logits)[:, -3:].tolist()
    names = label_names(demo_model.model)
    for row, prediction, scores in zip(results, trained, extended):
        assert row["scores"] == pytest.approx([prediction.scores[n] for n in names], abs=1e-6)
        assert [a["label"] for a in row["added"]] == ["zebra", "red boat", "lamp"]
        assert [a["score"] for a in row["added"]] == pytest.approx(scores, abs=1e-6)
        assert [a["group"] for a in row["added"]] == [a.group_name for a in result.assignments[-3:]]
        assert [a["how"] for a in row["added"]] == ["nearest", "given", "nearest"]
    assert len(notes) == 1 and notes[0].startswith("Added labels (not trained on): label 'zebra' -> group ")
    # the page's model is the trained one, whatever was typed
    assert label_names(demo_model.model) == names and demo_model.model.config.num_labels == len(names)
    assert all(torch.equal(v, before[k]) for k, v in demo_model.model.state_dict().items())


def test_added_labels_are_drawn_apart(demo_model, paths):
    results, _ = demo_model.predict_files(paths[:1], "zebra")
    html = render_image_result(results[0], demo_model.label_groups, threshold=0.3)
    section = html[html.index('data-group="(added)"'):]
    assert "Added labels, not trained on" in section and 'data-label="zebra" data-added="1"' in section
    assert 'data-threshold="0.3"' in section
    assert html.count('data-added="1"') == 1  # the trained labels' sections have none
    score = results[0]["added"][0]["score"]
    assert (" hsp-on" in section.split('data-label="zebra"')[0][-40:]) == (score > 0.3)


@pytest.mark.parametrize("text, message", [
    ("zebra: no such group", "'no such group' is not a group of the model"),
    ("red circle", "'red circle' is already a label of the model"),
    (": animal", "no label name before ':'"),
])
def test_bad_typed_labels_are_notes(demo_model, paths, text, message):
    results, notes = demo_model.predict_files(paths[:1], text)
    assert "added" not in results[0] and results[0]["scores"]
    assert len(notes) == 1 and notes[0].startswith("The added labels were not scored: ") and message in notes[0]


def test_no_typed_labels_no_section(demo_model, paths):
    results, notes = demo_model.predict_files(paths[:1], "  ,\n")
    assert notes == [] and "added" not in results[0]
    assert "(added)" not in render_image_result(results[0], demo_model.label_groups)
    assert os.path.exists(paths[0])
