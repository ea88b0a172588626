"""`pipeline("zero-shot-image-classification")` for HSPNet (docs/zero-shot-pipeline.md): the scores are the sigmoids
of the logits of the model given the candidates by `set_labels` (computed here on a copy, from the same processed
images), not a softmax; the model's own labels give its own scores; batches; the folder's `custom_pipelines` route
as remote code where `hspnet` cannot be imported (the shared fresh run) and the `pipeline_class` routes, each the
documentation's example as written; the stock pipeline fails with an error on an HSPNet model."""

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, CLIPModel, pipeline

from hspnet import HSPNetForImageClassification, HSPNetZeroShotImageClassificationPipeline
from tests.helpers import LABELS, check_result, docs_python_blocks, one_line

TASK = "zero-shot-image-classification"
CANDIDATES = ["dog", "zebra", "car"]  # the documentation's: a label of the model, a new one, another of the model


def images(n=3, size=40):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size + 7, 3), dtype=np.uint8)) for _ in range(n)]


def expected_scores(model, processor, images, labels, label_to_group=None) -> list[dict[str, float]]:
    """Per image, label -> sigmoid(logit) of a copy of `model` given `labels` by `set_labels`."""
    reference = copy.deepcopy(model).eval()
    reference.set_labels(labels, label_to_group=label_to_group)
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probs = torch.sigmoid(reference(pixel_values=pixel_values).logits)
    return [dict(zip(reference.config.label_names, row.tolist())) for row in probs]


def check(results, expected, labels):
    """`results` (one image's) hold every label of `labels` once, sorted by score, equal to `expected`."""
    assert [r["label"] for r in results] == sorted(labels, key=lambda name: -expected[name])
    for r in results:
        assert r["score"] == pytest.approx(expected[r["label"]], abs=1e-6), r
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)


def classifier_for(model):
    return pipeline(TASK, model=model, image_processor=model.image_processor,
                    pipeline_class=HSPNetZeroShotImageClassificationPipeline)


@pytest.fixture
def model(make_model):
    return make_model().eval()


def test_scores_are_the_sigmoids_of_set_labels_not_a_softmax(model):
    before = copy.deepcopy(model.state_dict()), list(model.config.label_names)
    classifier = classifier_for(model)
    pictures = images()
    labels = ["dog", "zebra", "car", "bicycle"]
    expected = expected_scores(model, model.image_processor, pictures, labels)
    for picture, reference in zip(pictures, expected):
        results = classifier(picture, candidate_labels=labels)
        check(results, reference, labels)
        scores = torch.tensor([r["score"] for r in results])
        assert scores.sum().item() != pytest.approx(1.0)  # independent sigmoids
        softmax = torch.softmax(torch.logit(scores.double()), dim=0)
        assert not torch.allclose(scores.double(), softmax, atol=1e-3)
    # the model is unchanged: its labels, every weight and buffer
    assert list(model.config.label_names) == before[1]
    state = model.state_dict()
    assert state.keys() == before[0].keys() and all(torch.equal(state[k], v) for k, v in before[0].items())


def test_the_model_s_own_labels_give_its_own_scores(model):
    pictures = images(2)
    pixel_values = model.image_processor(images=pictures, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        own = torch.sigmoid(model(pixel_values=pixel_values).logits)
    results = classifier_for(model)(pictures, candidate_labels=list(LABELS))
    for result, row in zip(results, own):
        check(result, dict(zip(LABELS, row.tolist())), LABELS)


def test_batches_equal_single_images_and_embed_once_per_call(model):
    classifier = classifier_for(model)
    pictures = images(5)
    calls = []
    embed_labels = model.embed_labels

    def counting(*args, **kwargs):
        calls.append(list(args[0]))
        return embed_labels(*args, **kwargs)

    model.embed_labels = counting
    batched = classifier(pictures, candidate_labels=CANDIDATES, batch_size=2)
    assert calls == [CANDIDATES]  # once for the 5 images (3 batches)
    one_by_one = classifier(pictures, candidate_labels=CANDIDATES)
    assert len(calls) == 2  # computed again in the next call
    expected = expected_scores(model, model.image_processor, pictures, CANDIDATES)
    assert len(batched) == len(one_by_one) == 5
    for first, second, reference in zip(batched, one_by_one, expected):
        check(first, reference, CANDIDATES)
        check(second, reference, CANDIDATES)
    classifier(pictures[:1], candidate_labels=["cat", "zebra"])
    assert calls[-1] == ["cat", "zebra"]  # another label set


def test_label_to_group_top_k_and_threshold(model):
    classifier = classifier_for(model)
    picture = images(1)[0]
    groups = {"zebra": "vehicle", "car": 0}
    expected = expected_scores(model, model.image_processor, [picture], CANDIDATES, label_to_group=groups)[0]
    everything = classifier(picture, candidate_labels=CANDIDATES, label_to_group=groups)
    check(everything, expected, CANDIDATES)
    assert classifier(picture, candidate_labels=CANDIDATES, label_to_group=groups, top_k=2) == everything[:2]
    middle = everything[1]["score"]
    kept = classifier(picture, candidate_labels=CANDIDATES, label_to_group=groups, threshold=middle)
    assert kept == everything[:2]
    assert classifier(picture, candidate_labels=CANDIDATES, hypothesis_template="{}") == \
        classifier(picture, candidate_labels=CANDIDATES)


def test_the_documented_pipeline_class_examples_as_written(model, tmp_path):
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"] == {TASK: {
        "impl": "pipeline_hspnet.HSPNetZeroShotImageClassificationPipeline",
        "pt": ["AutoModelForImageClassification"]}}
    assert (folder / "pipeline_hspnet.py").is_file()
    picture = images(1)[0]
    processor = AutoImageProcessor.from_pretrained(folder)
    expected = expected_scores(model, processor, [picture], CANDIDATES)[0]
    blocks = docs_python_blocks("zero-shot-pipeline.md")
    assert len(blocks) == 3
    example = {"folder": str(folder), "image": picture}
    exec(blocks[1], example)  # pipeline_class, the folder
    assert type(example["classifier"]) is HSPNetZeroShotImageClassificationPipeline
    assert type(example["classifier"].model) is HSPNetForImageClassification  # hspnet's class, no remote code
    check(example["scores"], expected, CANDIDATES)
    exec(blocks[2], example)  # pipeline_class, a model object; label_to_group, top_k, batches
    grouped = expected_scores(model, processor, [picture], CANDIDATES, label_to_group={"zebra": "animal"})[0]
    assert len(example["results"]) == 2
    for result in example["results"]:
        assert len(result) == 2
        check(result, {k: v for k, v in grouped.items() if k in {r["label"] for r in result}},
              [r["label"] for r in result])
        assert [r["label"] for r in result] == sorted(grouped, key=lambda name: -grouped[name])[:2]


def test_the_documented_remote_code_example_without_hspnet(fresh_remote_run, tmp_path):
    """docs/zero-shot-pipeline.md's first example, run where `import hspnet` fails: transformers takes the pipeline
    class from the folder's `custom_pipelines` and the folder's code; its scores are the sigmoids of set_labels."""
    case = fresh_remote_run["hspnet_vit"]
    out = check_result(case)
    assert fresh_remote_run["report"]["hspnet_import"] == "ModuleNotFoundError"
    module, name = out["zero_shot_pipeline"].rsplit(".", 1)
    assert name == "HSPNetZeroShotImageClassificationPipeline"
    assert module.startswith("transformers_modules") and module.endswith("pipeline_hspnet"), module
    assert out["zero_shot_model_module"].startswith("transformers_modules"), out["zero_shot_model_module"]
    folder = case["job"]["folder"]
    model = HSPNetForImageClassification.from_pretrained(folder)
    picture = Image.new("RGB", (40, 30))  # the image of the fresh run
    expected = expected_scores(model, AutoImageProcessor.from_pretrained(folder), [picture], CANDIDATES)[0]
    check(out["zero_shot"], expected, CANDIDATES)


def test_bad_requests_fail_with_one_line(model, tiny_clip_dir):
    classifier = classifier_for(model)
    picture = images(1)[0]
    bad = [
        (dict(candidate_labels="dog, car"), "candidate_labels must be a list of label names"),
        (dict(candidate_labels=["dog", 3]), "candidate_labels must be strings"),
        (dict(candidate_labels=["dog", "dog"]), "candidate_labels: duplicate label 'dog'"),
        (dict(candidate_labels=["dog", " "]), "candidate_labels: label 1 has an empty name"),
        (dict(candidate_labels=["dog", "zebra"], label_to_group={"zebra": "sky"}), "group 'sky' is not a group"),
        (dict(candidate_labels=["dog"], hypothesis_template="This is a photo of {}."), "hypothesis_template"),
        (dict(candidate_labels=["dog"], tokenizer_kwargs={"padding": True}), "tokenizer_kwargs is not used"),
        (dict(candidate_labels=["dog"], top_k=0), "top_k must be a positive integer"),
        (dict(candidate_labels=["dog"], threshold="high"), "threshold must be a number"),
        (dict(), "candidate_labels are required"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError) as error:
            classifier(picture, **kwargs)
        text = one_line(error)
        assert text.startswith("HSPNetZeroShotImageClassificationPipeline") and message in text, (kwargs, text)
    clip = CLIPModel.from_pretrained(tiny_clip_dir)
    with pytest.raises(ValueError, match="runs HSPNet models"):
        pipeline(TASK, model=clip, image_processor=model.image_processor,
                 pipeline_class=HSPNetZeroShotImageClassificationPipeline)
    model.tokenizer = None
    with pytest.raises(ValueError, match="the model has no tokenizer"):
        classifier_for(model)


def test_the_stock_pipeline_fails_on_hspnet_and_never_gives_softmax_scores(model, tmp_path):
    picture = images(1)[0]
    # a model object: the stock pipeline tokenizes hypotheses; the model refuses them
    stock = pipeline(TASK, model=model, tokenizer=model.tokenizer, image_processor=model.image_processor)
    assert type(stock).__name__ == "ZeroShotImageClassificationPipeline"
    with pytest.raises(ValueError, match="HSPNet takes no input_ids"):
        stock(picture, candidate_labels=CANDIDATES)
    # a saved folder names its own pipeline: transformers asks for trust_remote_code (or pipeline_class)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        pipeline(TASK, model=str(folder))
    # a folder saved before custom_pipelines: no zero-shot model class loads it
    config = json.loads((folder / "config.json").read_text())
    del config["custom_pipelines"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="Could not load model"):
        pipeline(TASK, model=str(folder))
