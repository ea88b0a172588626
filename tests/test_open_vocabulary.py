"""Labels at inference (docs/open-vocabulary.md): `set_labels` / `add_labels` / `embed_labels` on a trained model,
checked against independent values: the model itself for an unchanged label set, a model built from scratch by
`from_clip` for the new labels with the trained weights copied in, a save / load round trip, and the cosines of the
CLIP text embeddings computed directly; the tokenizer kept, saved and loaded with the model."""

import os

import pytest
import torch
from transformers import AutoModelForImageClassification, CLIPModel

from hspnet import HSPNetForImageClassification, HSPNetModel
from hspnet.hub.transfer import model_files
from tests.helpers import GROUPS, LABEL_TO_GROUP, LABELS, one_line, randomize_trainables

CONSTANT = set(HSPNetModel.constant_buffers)


def train_a_few_steps(model, steps=3, seed=0):
    """A few SGD steps of the model's own loss on random images and targets (the image tower, the meta-net and the
    GCN move away from their initial values), then eval mode."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    for _ in range(steps):
        pixels = torch.randn(4, 3, 32, 32, generator=generator)
        targets = torch.randint(0, model.config.num_labels, (4,), generator=generator)
        loss = model(pixel_values=pixels, labels=targets).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    randomize_trainables(model)
    return model.eval()


@pytest.fixture
def trained(make_model):
    return train_a_few_steps(make_model())


def logits(model, pixel_values, **kwargs):
    with torch.no_grad():
        return model(pixel_values=pixel_values, **kwargs).logits


def from_scratch(tiny_clip_dir, trained_model, labels, label_to_group):
    """`from_clip` for `labels` (the same groups, `label_to_group` as resolved), with every trained weight of
    `trained_model` copied in (CLIP towers, GCN, meta-net), not its label buffers or relation."""
    torch.manual_seed(123)  # other initial GCN / meta-net weights: all of them are overwritten below
    reference = HSPNetForImageClassification.from_clip(tiny_clip_dir, labels=labels, groups=list(GROUPS),
                                                       label_to_group=label_to_group, trained_label_names=list(LABELS))
    state = reference.state_dict()
    copied = {key: value for key, value in trained_model.state_dict().items()
              if key.rsplit(".", 1)[-1] not in CONSTANT}
    assert set(copied) == set(state) - {key for key in state if key.rsplit(".", 1)[-1] in CONSTANT}
    state.update(copied)
    reference.load_state_dict(state)
    return reference.eval()


def test_an_equal_label_set_changes_nothing(make_model, pixel_values):
    relation = torch.rand(len(LABELS) + len(GROUPS), len(LABELS) + len(GROUPS),
                          generator=torch.Generator().manual_seed(5))  # as from the authors' file: not recomputed
    model = train_a_few_steps(make_model(relation=relation))
    before = logits(model, pixel_values)
    buffers = {name: getattr(model.hspnet, name) for name in CONSTANT}
    config = model.config.to_dict()
    for result in (model.set_labels(list(LABELS)),
                   model.set_labels(list(LABELS), label_to_group=list(LABEL_TO_GROUP)),
                   model.set_labels(tuple(LABELS), label_to_group={"car": "vehicle", "cat": 0})):
        assert not result.changed and result.labels == LABELS and result.label_to_group == LABEL_TO_GROUP
        assert not result.new_labels
    assert model.hspnet.set_labels(list(LABELS)).changed is False  # the base model has the methods too
    assert torch.equal(logits(model, pixel_values), before)  # bit for bit
    assert all(getattr(model.hspnet, name) is tensor for name, tensor in buffers.items())
    assert torch.equal(model.hspnet.relation, relation)
    assert model.config.to_dict() == config


@pytest.mark.parametrize("case", ["replace", "extend", "reorder", "regroup", "empty_groups"])
def test_a_new_label_set_equals_a_model_built_for_it(case, trained, tiny_clip_dir, pixel_values):
    if case == "replace":
        result = trained.set_labels(["zebra", "cat", "bus", "fire_hydrant", "person"],
                                    label_to_group={"fire_hydrant": "outdoor"})
    elif case == "extend":
        result = trained.add_labels(["zebra", "motorbike"], label_to_group=[None, 2])
    elif case == "reorder":
        result = trained.set_labels(list(reversed(LABELS)))
    elif case == "regroup":  # a label of the model given another group
        result = trained.set_labels(list(LABELS), label_to_group={"dog": "person"})
    else:  # groups left without a label: allowed once the label set changed after training
        result = trained.set_labels(["zebra", "giraffe"], label_to_group=["animal", None])
    assert result.changed and trained.config.trained_label_names == LABELS
    names, groups = result.labels, result.label_to_group
    assert trained.config.label_names == names and trained.config.label_to_group == groups
    assert trained.config.label2id == {name: i for i, name in enumerate(names)}
    assert trained.config.num_labels == len(names)
    reference = from_scratch(tiny_clip_dir, trained, names, groups)
    for name in CONSTANT:  # the prompts and the relation, as from_clip makes them for these labels
        assert torch.equal(getattr(trained.hspnet, name), getattr(reference.hspnet, name)), name
    for field in ("prompt_length", "prompt_label_names", "prompt_group_names", "group_names"):
        assert getattr(trained.config, field) == getattr(reference.config, field), field
    expected = logits(reference, pixel_values)
    assert expected.shape == (3, len(names))
    assert torch.equal(logits(trained, pixel_values), expected)
    trained.train()  # training mode: no cache, the text side computed in the graph
    with torch.no_grad():
        torch.testing.assert_close(trained(pixel_values=pixel_values).logits, expected, atol=1e-6, rtol=0)
    if case == "extend":
        assert names == LABELS + ["zebra", "motorbike"] and groups[:6] == LABEL_TO_GROUP and groups[7] == 2
        assert [a.how for a in result.assignments] == ["kept"] * 6 + ["nearest", "given"]
    if case == "regroup":
        assert groups == [0, 3, 1, 2, 2, 3] and result.new_labels == [] and result.assignments[1].how == "given"


def test_the_changed_model_saves_and_loads(trained, pixel_values, tmp_path):
    result = trained.add_labels(["zebra", "street_sign"])
    expected = logits(trained, pixel_values)
    trained.save_pretrained(tmp_path)
    assert {"tokenizer.json", "tokenizer_config.json", "modeling_label_set.py"} <= set(os.listdir(tmp_path))
    for loader in (HSPNetForImageClassification, AutoModelForImageClassification):
        loaded = loader.from_pretrained(tmp_path)
        assert loaded.config.id2label == trained.config.id2label and loaded.config.label2id == trained.config.label2id
        assert loaded.config.label_to_group == result.label_to_group
        assert loaded.config.trained_label_names == LABELS
        torch.testing.assert_close(logits(loaded, pixel_values), expected, atol=1e-6, rtol=0)
        assert loaded.tokenizer is not None
        assert loaded.set_labels(result.labels).changed is False  # the loaded model knows its own label set


def test_the_nearest_group_is_the_most_similar_group_name(trained, tiny_clip_dir):
    new = ["zebra", "fire hydrant", "minibus", "x"]
    result = trained.set_labels(["cat"] + new)
    # the CLIP text embeddings of the bare names, computed here with CLIPModel and the tokenizer
    clip = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    tokens = trained.tokenizer(new + [g.replace("_", " ") for g in GROUPS], padding=True, return_tensors="pt")
    with torch.no_grad():
        features = clip.get_text_features(**tokens)
        features = getattr(features, "pooler_output", features)
    features = torch.nn.functional.normalize(features.float(), dim=-1)
    cosines = features[: len(new)] @ features[len(new):].T
    for assignment, row in zip(result.assignments[1:], cosines):
        assert assignment.how == "nearest" and assignment.new
        assert assignment.group == int(row.argmax()) and assignment.group_name == GROUPS[assignment.group]
        assert assignment.similarity == pytest.approx(float(row.max()), abs=1e-5)
        assert assignment.describe() == (f"label {assignment.label!r} -> group {assignment.group_name!r} (nearest by "
                                         f"CLIP text similarity, {assignment.similarity:.2f})")
    assert result.assignments[0].how == "kept" and result.describe()[0].startswith("label 'zebra' -> group")


def test_embed_labels_leaves_the_model_unchanged(trained, pixel_values):
    before = logits(trained, pixel_values)
    config = trained.config.to_dict()
    embeds, result = trained.embed_labels(["zebra", "dog"], label_to_group={"zebra": "animal"})
    assert embeds.shape == (2, trained.config.projection_dim) and result.changed
    assert torch.equal(logits(trained, pixel_values), before) and trained.config.to_dict() == config
    scored = logits(trained.hspnet, pixel_values, label_embeds=embeds)
    trained.set_labels(["zebra", "dog"], label_to_group={"zebra": "animal"})
    assert torch.equal(scored, logits(trained, pixel_values))
    same, unchanged = trained.embed_labels(["zebra", "dog"])
    assert not unchanged.changed and torch.equal(same, embeds)


def test_thresholds_follow_their_labels(trained):
    if not hasattr(trained.config, "label_thresholds"):
        pytest.skip("HSPNetConfig has no label_thresholds field")
    trained.config.label_thresholds = [0.1, None, 0.3, 0.4, 0.5, 0.6]
    trained.set_labels(["bus", "zebra", "cat", "dog"])
    assert trained.config.label_thresholds == [0.5, None, 0.1, None]
    trained.set_labels(["zebra", "dog"])
    assert trained.config.label_thresholds is None  # no threshold left: none at all


@pytest.mark.parametrize("call, message", [
    (lambda m: m.set_labels(["cat", "zebra", "cat"]), "duplicate label 'cat'"),
    (lambda m: m.set_labels(["cat", " "]), "label 1 has an empty name"),
    (lambda m: m.set_labels([]), "no label given"),
    (lambda m: m.set_labels("zebra"), "labels must be a list of label names"),
    (lambda m: m.set_labels(["zebra", 3]), r"label 1 \(3\) is not a string"),
    (lambda m: m.set_labels(["zebra"], label_to_group=[7]), r"label 'zebra': group 7 is not a group name or index"),
    (lambda m: m.set_labels(["zebra"], label_to_group=[True]), "label 'zebra': group True is not"),
    (lambda m: m.set_labels(["zebra"], label_to_group={"zebra": "animals"}),
     "label 'zebra': group 'animals' is not a group of this model"),
    (lambda m: m.set_labels(["zebra"], label_to_group={"zebr": 0}), "label_to_group names 'zebr'"),
    (lambda m: m.set_labels(["zebra"], label_to_group=[0, 1]), "label_to_group has 2 entries for 1 labels"),
    (lambda m: m.add_labels(["zebra", "dog"]), "'dog' is already a label of the model"),
    (lambda m: m.set_labels(["zebra", "w" * 80]), r"label 'w+' has \d+ tokens"),
])
def test_bad_label_sets_are_one_line_errors_and_change_nothing(trained, pixel_values, call, message):
    before, config = logits(trained, pixel_values), trained.config.to_dict()
    with pytest.raises(ValueError, match=message) as caught:
        call(trained)
    one_line(caught)
    assert str(caught.value).startswith(("set_labels: ", "add_labels: "))
    assert torch.equal(logits(trained, pixel_values), before) and trained.config.to_dict() == config


def test_tokenizer_is_kept_saved_and_loaded(make_model, tmp_path, pixel_values):
    model = make_model()
    assert model.tokenizer is not None
    model.save_pretrained(tmp_path / "with")
    names = model_files(str(tmp_path / "with"))
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(names)
    loaded = HSPNetForImageClassification.from_pretrained(tmp_path / "with")
    text = "X X X X fire hydrant."
    assert loaded.tokenizer(text)["input_ids"] == model.tokenizer(text)["input_ids"]
    model.tokenizer = None  # a folder saved without one loads without one
    model.save_pretrained(tmp_path / "without")
    assert not any(name.startswith("tokenizer") for name in os.listdir(tmp_path / "without"))
    bare = HSPNetForImageClassification.from_pretrained(tmp_path / "without")
    assert bare.tokenizer is None
    with pytest.raises(ValueError, match=r"set_labels: this model has no tokenizer .*CLIPTokenizer\.from_pretrained"
                       ) as caught:
        bare.set_labels(["zebra"])
    one_line(caught)
    assert bare.set_labels(list(LABELS)).changed is False  # nothing to tokenize: no tokenizer needed
    bare.set_labels(["zebra"], tokenizer=loaded.tokenizer)
    loaded.set_labels(["zebra"])
    assert torch.equal(logits(bare, pixel_values), logits(loaded, pixel_values))


def test_a_model_without_a_token_table_says_so(make_model):
    model = make_model()
    embeddings = model.hspnet.clip.text_model.embeddings
    embeddings.token_embedding = torch.nn.Embedding(0, embeddings.token_embedding.embedding_dim)
    with pytest.raises(ValueError, match="no token embedding table"):
        model.set_labels(["zebra"])


def test_the_training_run_saves_its_tokenizer(trained_tiny_model):
    names = set(os.listdir(trained_tiny_model))
    assert {"tokenizer.json", "tokenizer_config.json"} <= names
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(model_files(trained_tiny_model))
    model = HSPNetForImageClassification.from_pretrained(trained_tiny_model)
    assert model.add_labels(["zebra"]).assignments[-1].how == "nearest"


def test_resnet_models_change_labels_too(hierarchy, pixel_values):
    from hspnet.utils.tiny_clip import byte_level_clip_tokenizer
    from tests.helpers import resnet_images, tiny_resnet_hspnet

    model, parts = tiny_resnet_hspnet(hierarchy)
    result = model.set_labels(["zebra", "cat", "tram"])
    torch.manual_seed(1)
    reference = HSPNetForImageClassification.from_clip(parts, tokenizer=byte_level_clip_tokenizer(),
                                                       labels=result.labels, groups=list(GROUPS),
                                                       label_to_group=result.label_to_group,
                                                       trained_label_names=list(LABELS))
    state = reference.state_dict()
    state.update({k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[-1] not in CONSTANT})
    reference.load_state_dict(state)
    images = resnet_images()
    assert torch.equal(logits(model, images), logits(reference.eval(), images))
