"""The model (docs/method.md, section 1): the forward pass against a plain re-implementation, the prompts and buffers,
what trains and what is frozen, saving and loading (the Auto classes, bfloat16, pickling, inference mode), `from_clip`,
the initial values and the loss the model computes. The text-side caches are tests/test_text_cache.py, the label graph
tests/test_label_graph.py."""

import math
import pickle

import pytest
import torch
from transformers import CLIPModel

from hspnet import HSPNetForImageClassification, HSPNetModel, encode_prompt_embeddings
from hspnet.utils.tiny_clip import byte_level_clip_tokenizer
from tests.helpers import randomize_trainables
from tests.reference_hspnet import plain_hspnet_logits

# ----------------------------------------------------------------------------------------------------------------------
# The forward pass and its pieces (docs/method.md, sections 1.2-1.8)
# ----------------------------------------------------------------------------------------------------------------------


def test_forward_matches_plain_reimplementation(make_model, pixel_values):
    model = make_model()
    randomize_trainables(model)
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
        image_features = model.hspnet.clip.get_image_features(pixel_values=pixel_values).pooler_output
    expected = plain_hspnet_logits(model, image_features)
    assert logits.shape == (3, 6)
    torch.testing.assert_close(logits.double(), expected, atol=1e-4, rtol=1e-4)


def test_embedding_path_equals_clip_token_path(tiny_clip_dir):
    # Running the text tower on token embeddings must equal CLIP's own forward on token ids.
    clip = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    tokenizer = byte_level_clip_tokenizer()
    ids = tokenizer(["a photo of a cat.", "a dog"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    eos = (ids == 513).int().argmax(-1)
    with torch.no_grad():
        expected = clip.get_text_features(input_ids=ids).pooler_output
        embeds = clip.text_model.embeddings.token_embedding(ids)
        for truncate in (False, True):
            got = encode_prompt_embeddings(clip, embeds, eos, truncate=truncate)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_prompts_and_buffers(make_model):
    model = make_model()
    base = model.hspnet
    tokenizer = byte_level_clip_tokenizer()
    embed = base.clip.text_model.embeddings.token_embedding
    # group prompt: "a photo of a {group}." with underscores replaced; label prompt: "X X X X {label}."
    # stored up to the longest prompt (the tower is causal: later positions never matter)
    texts = [f"a photo of a {g}." for g in ("animal", "outdoor", "vehicle", "person")]
    texts += [f"X X X X {n}." for n in ("cat", "dog", "traffic light", "car", "bus", "person")]
    kept = max(len(tokenizer(t).input_ids) for t in texts)
    assert base.config.prompt_length == kept and base.label_prompt_embeds.shape[1] == kept < 77
    ids = tokenizer("a photo of a outdoor.", padding="max_length", max_length=77, return_tensors="pt").input_ids
    torch.testing.assert_close(base.group_prompt_embeds[1], embed(ids)[0, :kept])
    ids = tokenizer("X X X X traffic light.", padding="max_length", max_length=77, return_tensors="pt").input_ids
    torch.testing.assert_close(base.label_prompt_embeds[2], embed(ids)[0, :kept])
    assert int(base.label_eos_positions[2]) == len(tokenizer("X X X X traffic light.").input_ids) - 1
    assert base.config.label_to_group == [0, 0, 1, 2, 2, 3]
    # default relation: cosine similarity of the text features of the names (labels, then groups)
    C = 6
    assert base.relation.shape == (10, 10)
    torch.testing.assert_close(torch.diagonal(base.relation), torch.ones(10), atol=1e-5, rtol=0)
    names = ["cat", "dog", "traffic light", "car", "bus", "person", "animal", "outdoor", "vehicle", "person"]
    batch = tokenizer(names, padding=True, return_tensors="pt")
    with torch.no_grad():
        features = base.clip.get_text_features(**batch).pooler_output
    features = features / features.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(base.relation, features @ features.T, atol=1e-5, rtol=1e-5)
    assert torch.allclose(base.relation[5, :C], base.relation[9, :C], atol=1e-5)  # label and group "person"


def test_output_dataclasses(make_model, pixel_values):
    model = make_model()
    with torch.no_grad():
        out = model.hspnet(pixel_values=pixel_values)
        assert out.logits.shape == (3, 6) and out.image_embeds.shape == (3, 24) and out.label_embeds.shape == (6, 24)
        torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(3))
        torch.testing.assert_close(out.logits, 10 * out.image_embeds @ out.label_embeds.T)
        hidden = model(pixel_values=pixel_values, output_hidden_states=True).hidden_states
        assert hidden is not None and len(hidden) == 3  # embeddings + 2 layers
        assert isinstance(model(pixel_values=pixel_values, return_dict=False), tuple)


def test_vision_kwargs_reach_the_tower(make_model):
    model = make_model()
    with torch.no_grad():
        out = model(pixel_values=torch.randn(1, 3, 48, 48), interpolate_pos_encoding=True)
    assert out.logits.shape == (1, 6)


# ----------------------------------------------------------------------------------------------------------------------
# Trained and frozen, initial values (docs/method.md, sections 1.4, 1.5, 1.9)
# ----------------------------------------------------------------------------------------------------------------------


def test_gradients_reach_trainable_parts_only(make_model, pixel_values):
    model = make_model()
    model.train()
    labels = torch.zeros(3, 6)
    labels[0, 0] = labels[1, 3] = labels[2, 5] = 1
    model(pixel_values=pixel_values, labels=labels, epoch=0).loss.backward()
    base = model.hspnet
    for name, p in base.clip.text_model.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    assert not base.clip.text_projection.weight.requires_grad and base.clip.text_projection.weight.grad is None
    assert not base.clip.logit_scale.requires_grad
    for name, module in [("meta_net", base.meta_net), ("gcn", base.gcn), ("vision", base.clip.vision_model)]:
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name
    assert float(base.gcn.gamma.grad.abs()) > 0
    assert float(base.clip.visual_projection.weight.grad.abs().sum()) > 0


def test_unfrozen_text_encoder_trains(make_model, pixel_values):
    model = make_model(freeze_text_encoder=False)
    model.train()
    model(pixel_values=pixel_values).logits.sum().backward()
    assert model.hspnet.clip.text_model.final_layer_norm.weight.grad is not None
    assert model.hspnet.clip.text_model.embeddings.token_embedding.weight.grad is None  # prompts are stored embeddings


def test_initial_values_follow_the_reference(make_model):
    model = make_model()
    base = model.hspnet
    D = model.config.projection_dim
    for layer, out in ((base.gcn.gc1, 2 * D), (base.gcn.gc2, 2 * D), (base.gcn.gc3, D)):
        bound = 1 / math.sqrt(out)  # uniform(-1/sqrt(out), 1/sqrt(out))
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.8 * bound
    assert float(base.gcn.gamma.detach()) == pytest.approx(0.9)
    for linear in (base.meta_net.linear1, base.meta_net.linear2):
        bound = 1 / math.sqrt(linear.in_features)  # PyTorch's default nn.Linear init
        assert linear.weight.abs().max() <= bound and linear.bias.abs().max() <= bound
        assert linear.weight.abs().max() > 0.8 * bound


# ----------------------------------------------------------------------------------------------------------------------
# Saving and loading
# ----------------------------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(make_model, pixel_values, tmp_path):
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

    model = make_model()
    randomize_trainables(model)
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [
        "config.json",
        "configuration_hspnet.py",
        "image_processing_hspnet.py",
        "losses.py",
        "losses_base.py",
        "losses_cole.py",
        "model.safetensors",
        "modeling_clip_resnet.py",
        "modeling_from_clip.py",
        "modeling_hspnet.py",
        "modeling_label_graph.py",
        "modeling_label_set.py",
        "modeling_prompts.py",
        "modeling_text_state.py",
        "pipeline_hspnet.py",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert type(AutoConfig.from_pretrained(tmp_path)).__name__ == "HSPNetConfig"
    for loader, cls in [
        (HSPNetForImageClassification, HSPNetForImageClassification),
        (AutoModelForImageClassification, HSPNetForImageClassification),
        (AutoModel, HSPNetModel),
    ]:
        loaded = loader.from_pretrained(tmp_path)
        assert type(loaded) is cls
        assert not loaded.training
        saved = model.state_dict() if cls is HSPNetForImageClassification else model.hspnet.state_dict()
        assert loaded.state_dict().keys() == saved.keys()
        for name, tensor in loaded.state_dict().items():  # every weight and buffer, bit for bit
            assert torch.equal(tensor, saved[name]), name
        with torch.no_grad():  # weights loaded from a memory-mapped file may sit at other alignments, which can
            # change the last bit of small BLAS products: 1e-6, the project's exactness bound
            torch.testing.assert_close(loaded(pixel_values=pixel_values).logits, expected, atol=1e-6, rtol=0)
        base = loaded.base_model
        assert not any(p.requires_grad for p in base.clip.text_model.parameters())  # freezing survives loading
        assert base.config.label_to_group == [0, 0, 1, 2, 2, 3]


def test_load_in_bfloat16_runs_and_keeps_the_relation_exact(make_model, pixel_values, tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    loaded = HSPNetForImageClassification.from_pretrained(tmp_path, dtype=torch.bfloat16)
    base = loaded.hspnet
    assert base.clip.vision_model.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert base.clip.text_model.final_layer_norm.weight.dtype == torch.bfloat16
    assert base.gcn.gc1.weight.dtype == torch.bfloat16
    assert base.relation.dtype == torch.float32
    torch.testing.assert_close(base.relation, model.hspnet.relation, atol=0, rtol=0)
    with torch.no_grad():
        logits = loaded(pixel_values=pixel_values.bfloat16()).logits
        expected = model(pixel_values=pixel_values).logits
    assert logits.dtype == torch.float32  # logits are computed in float32 whatever the model dtype
    torch.testing.assert_close(logits, expected, atol=0.1, rtol=0.05)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(pixel_values=pixel_values).logits.dtype == torch.float32


def test_output_loading_info_and_pickling(make_model, tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    loaded, info = HSPNetForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not any(p.requires_grad for p in loaded.hspnet.clip.text_model.parameters())
    restored = pickle.loads(pickle.dumps(loaded))
    assert restored.config.label_names == loaded.config.label_names


def test_a_model_built_under_inference_mode_runs(tiny_clip_dir, hierarchy, pixel_values, tmp_path):
    make = lambda: HSPNetForImageClassification.from_clip(tiny_clip_dir, **hierarchy)  # noqa: E731
    torch.manual_seed(0)
    make().save_pretrained(tmp_path)
    with torch.inference_mode():
        model = HSPNetForImageClassification.from_pretrained(tmp_path)
        first = model(pixel_values=pixel_values).logits
        second = model(pixel_values=pixel_values).logits
    torch.testing.assert_close(first, second)


# ----------------------------------------------------------------------------------------------------------------------
# from_clip (docs/method.md, section 1.1)
# ----------------------------------------------------------------------------------------------------------------------


def test_from_clip_accepts_a_model_object(tiny_clip_dir, hierarchy, pixel_values):
    clip = CLIPModel.from_pretrained(tiny_clip_dir)
    torch.manual_seed(0)
    a = HSPNetForImageClassification.from_clip(clip, tokenizer=byte_level_clip_tokenizer(), **hierarchy)
    torch.manual_seed(0)
    b = HSPNetForImageClassification.from_clip(tiny_clip_dir, **hierarchy)
    with torch.no_grad():
        torch.testing.assert_close(a(pixel_values=pixel_values).logits, b(pixel_values=pixel_values).logits)


def test_from_clip_errors(tiny_clip_dir, hierarchy):
    with pytest.raises(ValueError, match="label_to_group has 5 entries"):
        HSPNetForImageClassification.from_clip(tiny_clip_dir, **{**hierarchy, "label_to_group": [0, 0, 1, 2, 2]})
    with pytest.raises(ValueError, match="has 8[0-9] tokens"):
        HSPNetForImageClassification.from_clip(tiny_clip_dir, **{**hierarchy, "labels": ["x" * 80] + hierarchy["labels"][1:]})
    with pytest.raises(OSError):
        HSPNetForImageClassification.from_clip("no-such-org/no-such-clip", **hierarchy)


# ----------------------------------------------------------------------------------------------------------------------
# The loss the model computes (docs/method.md, section 3)
# ----------------------------------------------------------------------------------------------------------------------


def test_default_loss_is_splc_summed(make_model, pixel_values):
    import math

    model = make_model()
    assert model.config.loss == "splc"
    labels = torch.zeros(3, 6)
    labels[0, 2] = 1
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
        # a model never told its epoch computes the loss as at the start of training (docs: forward's `epoch`)
        default = model(pixel_values=pixel_values, labels=labels).loss
        loss0 = model(pixel_values=pixel_values, labels=labels, epoch=0).loss
        assert float(default) == float(loss0)
        # the loss module alone still needs it: no silent default where the epoch changes the result
        with pytest.raises(ValueError, match="epoch"):
            type(model.loss_module)(6)(logits, labels)
    # epoch 0 < change_epoch 1: no pseudo-labels. margin 1 on the observed positive, focal gamma 2, a SUM.
    total = 0.0
    for b in range(3):
        for c in range(6):
            y = float(labels[b, c])
            z = float(logits[b, c]) - (1.0 if y == 1 else 0.0)
            p = 1 / (1 + math.exp(-z))
            pt = (1 - p) if y == 1 else p
            total += -(y * math.log(p) + (1 - y) * math.log(1 - p)) * pt**2
    assert float(loss0) == pytest.approx(total, rel=1e-5)
    model.set_epoch(3)
    with torch.no_grad():
        assert float(model(pixel_values=pixel_values, labels=labels).loss) > 0
    assert "loss" not in "".join(model.state_dict())  # the loss state is not part of the weights


def test_loss_is_selected_by_name(make_model, pixel_values):
    model = make_model(loss="an", loss_kwargs={"reduction": "mean"})
    labels = torch.zeros(3, 6)
    labels[1, 4] = 1
    with torch.no_grad():
        out = model(pixel_values=pixel_values, labels=labels)
    x, y = out.logits, labels
    expected = -(y * torch.log(torch.sigmoid(x)) + (1 - y) * torch.log(1 - torch.sigmoid(x))).mean()
    torch.testing.assert_close(out.loss, expected)
    with pytest.raises(ValueError, match="nope"):
        make_model(loss="nope")
    with pytest.raises(ValueError, match="bogus"):
        make_model(loss="splc", loss_kwargs={"bogus": 1})


# ----------------------------------------------------------------------------------------------------------------------
# As a transformers model (the common tests are tests/test_transformers_common.py, when the release's tests are there)
# ----------------------------------------------------------------------------------------------------------------------


def test_get_image_features_returns_what_clip_returns(make_model, pixel_values):
    """`get_image_features` is CLIPModel's: the tower's output with the projected, unnormalised embedding as
    `pooler_output` (a tuple with return_dict=False); the forward's `image_embeds` is it normalised."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    model = make_model().hspnet
    with torch.no_grad():
        ours = model.get_image_features(pixel_values=pixel_values, output_hidden_states=True)
        clip = model.clip.get_image_features(pixel_values=pixel_values, output_hidden_states=True)
        as_tuple = model.get_image_features(pixel_values=pixel_values, return_dict=False)
        image_embeds = model(pixel_values=pixel_values).image_embeds
    assert isinstance(ours, BaseModelOutputWithPooling) and isinstance(as_tuple, tuple)
    torch.testing.assert_close(ours.pooler_output, clip.pooler_output, atol=0, rtol=0)
    assert len(ours.hidden_states) == 3  # embeddings + 2 layers
    torch.testing.assert_close(image_embeds, torch.nn.functional.normalize(clip.pooler_output, dim=-1))


def test_input_embeddings_are_the_patch_embedding(make_model):
    model = make_model()
    assert model.get_input_embeddings() is model.hspnet.clip.vision_model.embeddings.patch_embedding
    assert model.hspnet.get_input_embeddings() is model.get_input_embeddings()


def test_hidden_states_of_chosen_layers_reach_the_tower_as_given(make_model, pixel_values, monkeypatch):
    """`output_hidden_states=[0, 2, -1]` (transformers 5 accepts the layers to return) reaches the vision tower as
    that list, not turned into True, and the model returns what the tower returns for it."""
    model = make_model()
    tower = model.hspnet.clip.vision_model
    seen = []
    original = type(tower).forward

    def forward(self, *args, **kwargs):
        seen.append(kwargs.get("output_hidden_states"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(tower), "forward", forward)
    with torch.no_grad():
        ours = model(pixel_values=pixel_values, output_hidden_states=[0, 2, -1]).hidden_states
        theirs = tower(pixel_values=pixel_values, output_hidden_states=[0, 2, -1]).hidden_states
    assert seen[0] == [0, 2, -1]
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_labels_give_a_loss_without_an_epoch_and_as_class_indices(make_model, pixel_values):
    """A stock Trainer passes `labels` only, in eval mode too: the loss is computed as at epoch 0 until the model is
    told another (`set_epoch`); `labels` of shape (B,) are each image's one observed positive."""
    model = make_model().eval()
    multi_hot = torch.zeros(3, 6)
    multi_hot[torch.arange(3), torch.tensor([1, 4, 4])] = 1
    with torch.no_grad():
        at_zero = model(pixel_values=pixel_values, labels=multi_hot, epoch=0).loss
        assert float(model(pixel_values=pixel_values, labels=multi_hot).loss) == float(at_zero)
        assert float(model(pixel_values=pixel_values, labels=torch.tensor([1, 4, 4])).loss) == float(at_zero)
        model.set_epoch(5)  # from now on the loss is computed for epoch 5
        at_five = model(pixel_values=pixel_values, labels=multi_hot, epoch=5).loss
        assert float(model(pixel_values=pixel_values, labels=multi_hot).loss) == float(at_five)
        assert model.loss_module.get_epoch() == 5


def test_config_fields_assigned_later_are_validated(make_model):
    config = make_model().config
    with pytest.raises(ValueError, match="problem_type must be 'multi_label_classification'"):
        config.problem_type = "regression"
    with pytest.raises(ValueError, match="num_labels 3 does not match the hierarchy's 6 labels"):
        config.num_labels = 3
    assert config.problem_type == "multi_label_classification" and config.num_labels == 6  # unchanged
    config.num_labels = 6  # the same count is fine


def test_missing_weights_get_clips_initialisation(make_model):
    """Weights missing at load time get CLIP's own initialisation (attention and MLP weights at CLIP's std, by width,
    depth and `initializer_factor`), and CLIP's `logit_scale` its initial value, as a model built from the config."""
    config = make_model().config
    loaded = HSPNetModel.from_pretrained(None, config=config, state_dict={})
    clip_config = config.clip_config
    assert float(loaded.clip.logit_scale) == pytest.approx(clip_config.logit_scale_init_value)
    text = clip_config.text_config
    q_proj = loaded.clip.text_model.encoder.layers[0].self_attn.q_proj.weight
    expected = text.hidden_size**-0.5 * (2 * text.num_hidden_layers) ** -0.5 * text.initializer_factor  # CLIP's rule
    assert float(q_proj.std()) == pytest.approx(expected, rel=0.25)
    assert abs(float(q_proj.std()) - 0.02) > 0.03  # not the generic std


def test_torch_export_traces_the_full_model_and_equals_eager(make_model, pixel_values):
    """`torch.export` of both classes traces the text side too (no cached tensors or storage addresses read from
    traced tensors), and the exported program gives the eager logits."""
    model = make_model().eval()
    for module in (model, model.hspnet):
        exported = torch.export.export(module, args=(), kwargs={"pixel_values": pixel_values})
        with torch.no_grad():
            got = exported.module()(pixel_values=pixel_values)
            want = module(pixel_values=pixel_values).logits
        got = got["logits"] if isinstance(got, dict) else got.logits
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_a_folder_whose_label_names_were_edited_says_what_its_scores_follow(make_model, pixel_values, tmp_path,
                                                                          caplog, tiny_clip_dir):
    """`config.json` edited by hand after saving: labels swapped and renamed, a group renamed. The stored prompts
    (embeddings of the original names) still decide every score, so loading warns, naming the labels that differ
    and the prompt each one is scored by; a spelling whose prompt is the same text (`traffic light`) is no change."""
    import json
    import logging

    model = make_model().eval()
    model.save_pretrained(tmp_path / "model")
    with torch.no_grad():
        original = model(pixel_values=pixel_values).logits
    path = tmp_path / "model" / "config.json"
    config = json.loads(path.read_text())
    assert config["prompt_label_names"] == ["cat", "dog", "traffic_light", "car", "bus", "person"]
    assert config["prompt_group_names"] == ["animal", "outdoor", "vehicle", "person"]

    def load():
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            loaded = HSPNetForImageClassification.from_pretrained(tmp_path / "model").eval()
        return loaded, [r.getMessage() for r in caplog.records if "stored prompts" in r.getMessage()]

    _, warnings = load()
    assert warnings == []  # unedited: nothing to say
    names = ["dog", "cat", "traffic light", "truck", "bus", "person"]  # cat <-> dog, car -> truck
    config.update(id2label={str(i): name for i, name in enumerate(names)},
                  label2id={name: i for i, name in enumerate(names)},
                  group_names=["animal", "outdoor", "transport", "person"])
    path.write_text(json.dumps(config))
    loaded, warnings = load()
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    message = warnings[0]
    assert message.startswith(f"{tmp_path / 'model'}: id2label renames the label names the stored prompts were made "
                              "from (label 0 'dog' is scored by the prompt made for 'cat', label 1 'cat' is scored by "
                              "the prompt made for 'dog', label 3 'truck' is scored by the prompt made for 'car'); "
                              "group_names renames the group names the stored prompts were made from (group 2 "
                              "'transport' has the prompt made for 'vehicle')."), message
    assert "traffic" not in message and "set_prompts(tokenizer)" in message
    with torch.no_grad():
        edited = loaded(pixel_values=pixel_values).logits
    torch.testing.assert_close(edited, original, rtol=0, atol=0)  # column 0, now named 'dog', is the cat score

    # the same names in another order
    swapped = ["dog", "cat", "traffic_light", "car", "bus", "person"]
    config.update(id2label={str(i): name for i, name in enumerate(swapped)},
                  label2id={name: i for i, name in enumerate(swapped)},
                  group_names=["animal", "outdoor", "vehicle", "person"])
    path.write_text(json.dumps(config))
    loaded, warnings = load()
    assert len(warnings) == 1 and warnings[0].startswith(
        f"{tmp_path / 'model'}: id2label lists the same names in another order than the label names the stored "
        "prompts were made from (label 0 'dog' is scored by the prompt made for 'cat', label 1 'cat' is scored by the "
        "prompt made for 'dog')."), warnings

    # prompts made again for the new names (the documented way to rename): they are a fresh model's, no warning
    from transformers import AutoTokenizer

    loaded.hspnet.set_prompts(AutoTokenizer.from_pretrained(tiny_clip_dir))
    fresh = make_model(labels=swapped)
    torch.testing.assert_close(loaded.hspnet.label_prompt_embeds, fresh.hspnet.label_prompt_embeds, rtol=0, atol=0)
    loaded.save_pretrained(tmp_path / "renamed")
    assert json.loads((tmp_path / "renamed" / "config.json").read_text())["prompt_label_names"] == swapped
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        HSPNetForImageClassification.from_pretrained(tmp_path / "renamed")
    assert not [r for r in caplog.records if "stored prompts" in r.getMessage()]
