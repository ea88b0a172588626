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
        "modeling_prompts.py",
        "modeling_text_state.py",
        "preprocessor_config.json",
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
        with pytest.raises(ValueError, match="epoch"):
            model(pixel_values=pixel_values, labels=labels)  # SPLC needs the epoch: no silent default
        loss0 = model(pixel_values=pixel_values, labels=labels, epoch=0).loss
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
