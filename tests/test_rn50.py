"""The CLIP ModifiedResNet (RN50-style) image tower and OpenAI-format CLIP weights in `from_clip`.

Reduced sizes (stages [1, 2, 1, 1], width 8, 64-pixel images, text width 128) with the official key structure; the
reference towers are the independent re-implementations in tests/official_reference.py."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import hspnet.conversion  # noqa: E402,F401
from hspnet import HSPNetConfig, HSPNetForImageClassification  # noqa: E402
from hspnet.conversion.openai_clip import convert_openai_clip_state_dict  # noqa: E402
from hspnet.modeling_clip_resnet import HSPNetModifiedResNet  # noqa: E402
from hspnet.tiny_clip import byte_level_clip_tokenizer, tiny_clip_config  # noqa: E402
from tests.official_reference import RefCLIP, randomize  # noqa: E402

IMAGE = 64


def openai_clip(vision="resnet", seed=0):
    """An OpenAI-layout CLIP whose vocabulary fits the offline byte-level tokenizer (514 ids, SOS 512, EOS 513)."""
    torch.manual_seed(seed)
    return randomize(RefCLIP(vision=vision, vocab_size=514, image_size=IMAGE), seed).eval()


def images(n=2, seed=1):
    return torch.randn(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def resnet_config(**overrides):
    options = dict(
        clip_config=tiny_clip_config(hidden_size=32, projection_dim=16).to_dict(),
        vision_backbone="clip_resnet", resnet_layers=[1, 1, 1, 1], resnet_width=8, resnet_image_size=IMAGE,
        id2label={0: "cat", 1: "dog", 2: "car"}, group_names=["animal", "vehicle"], label_to_group=[0, 0, 1],
    )
    options.update(overrides)
    return HSPNetConfig(**options)


def test_resnet_tower_matches_reference_and_openai_names():
    clip = openai_clip()
    tower = HSPNetModifiedResNet(layers=[1, 2, 1, 1], width=8, heads=4, image_size=IMAGE, output_dim=16).eval()
    tower.load_state_dict(clip.visual.state_dict())  # strict: the same key names and shapes as OpenAI's `visual.*`
    x = images(3)
    with torch.no_grad():
        out = tower(x, output_hidden_states=True)
        expected = clip.encode_image(x)
    torch.testing.assert_close(out.pooler_output, expected, atol=1e-5, rtol=1e-5)
    assert [tuple(h.shape[1:]) for h in out.hidden_states] == [(8, 16, 16), (32, 16, 16), (64, 8, 8), (128, 4, 4),
                                                               (256, 2, 2)]
    assert out.last_hidden_state.shape == (3, 256, 2, 2)
    with pytest.raises(ValueError, match="expects 64x64 images"):
        tower(torch.randn(1, 3, 96, 96))


@pytest.mark.parametrize("source", ["state_dict", "torch_save", "torchscript"])
def test_from_clip_accepts_openai_resnet_weights(source, hierarchy, tmp_path):
    clip = openai_clip()
    if source == "state_dict":
        weights = clip.state_dict()
    elif source == "torch_save":
        weights = str(tmp_path / "RN.pt")
        torch.save(clip.state_dict(), weights)
    else:  # OpenAI's release format: a TorchScript archive, read without running its code
        weights = str(tmp_path / "RN-jit.pt")
        torch.jit.trace(clip, torch.ones(1)).save(weights)
    tokenizer = byte_level_clip_tokenizer()
    model = HSPNetForImageClassification.from_clip(weights, tokenizer=tokenizer, **hierarchy)
    config = model.config
    assert config.vision_backbone == "clip_resnet"
    assert (config.resnet_layers, config.resnet_width, config.resnet_heads, config.resnet_image_size) == (
        [1, 2, 1, 1], 8, 4, IMAGE)
    assert config.projection_dim == 16 and config.clip_config.text_config.vocab_size == 514
    x = images()
    with torch.no_grad():
        embeds, outputs = model.hspnet.get_image_features(x)
        expected = clip.encode_image(x)
        torch.testing.assert_close(embeds, expected / expected.norm(dim=-1, keepdim=True), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(outputs.pooler_output, expected, atol=1e-5, rtol=1e-5)
        ids = tokenizer(["a photo of a cat.", "dog"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        text = model.hspnet.clip.get_text_features(input_ids=ids).pooler_output
        torch.testing.assert_close(text, clip.encode_text(ids), atol=1e-5, rtol=1e-5)
        assert model(pixel_values=x).logits.shape == (2, 6)


def test_from_clip_accepts_openai_vit_weights(hierarchy):
    clip = openai_clip(vision="vit")
    model = HSPNetForImageClassification.from_clip(clip.state_dict(), tokenizer=byte_level_clip_tokenizer(),
                                                   **hierarchy)
    assert model.config.vision_backbone == "clip_vit"
    vision = model.config.clip_config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.patch_size, vision.image_size) == (32, 2, 16, IMAGE)
    x = images()
    with torch.no_grad():
        embeds, _ = model.hspnet.get_image_features(x)
        expected = clip.encode_image(x)
    torch.testing.assert_close(embeds, expected / expected.norm(dim=-1, keepdim=True), atol=1e-5, rtol=1e-5)


def test_openai_weights_with_unknown_or_missing_keys_are_refused():
    state = openai_clip().state_dict()
    with pytest.raises(KeyError, match="unexpected key"):
        convert_openai_clip_state_dict({**state, "visual.extra": torch.zeros(1)})
    state.pop("visual.attnpool.c_proj.weight")
    with pytest.raises(KeyError, match="visual.attnpool.c_proj.weight"):
        convert_openai_clip_state_dict(state)
    ignored = {**openai_clip().state_dict(), "input_resolution": torch.tensor(64), "context_length": torch.tensor(77)}
    convert_openai_clip_state_dict(ignored)  # OpenAI's bookkeeping entries are not weights


def test_resnet_model_has_no_vit_tower_and_trains_the_image_encoder():
    torch.manual_seed(0)
    model = HSPNetForImageClassification(resnet_config()).train()
    names = [name for name, _ in model.named_parameters()]
    assert not any("visual_projection" in n or "vision_model.encoder" in n or "embeddings.patch" in n for n in names)
    vision = model.hspnet.clip.vision_model
    assert all(p.requires_grad for p in vision.parameters())
    labels = torch.zeros(2, 3)
    labels[0, 0] = labels[1, 2] = 1
    model(pixel_values=images(), labels=labels, epoch=0).loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name  # no unused trainable parameter (DDP-safe)
    assert all(not p.requires_grad for p in model.hspnet.clip.text_model.parameters())
    assert float(vision.attnpool.c_proj.weight.grad.abs().sum()) > 0 and float(vision.conv1.weight.grad.abs().sum()) > 0


def test_resnet_config_validation_and_round_trip(tmp_path):
    config = resnet_config()
    assert config.resnet_heads == 4 and config.image_size == IMAGE
    config.save_pretrained(tmp_path)
    loaded = HSPNetConfig.from_pretrained(tmp_path)
    assert loaded.vision_backbone == "clip_resnet" and loaded.resnet_layers == [1, 1, 1, 1]
    assert HSPNetConfig(clip_config=tiny_clip_config().to_dict(), id2label={0: "a"}, group_names=["g"],
                        label_to_group=[0]).vision_backbone == "clip_vit"
    for overrides, message in [
        (dict(vision_backbone="resnet"), "vision_backbone must be one of"),
        (dict(resnet_layers=[1, 1, 1]), "four positive block counts"),
        (dict(resnet_width=7), "positive even number"),
        (dict(resnet_heads=3), "must divide"),
        (dict(resnet_image_size=100), "multiple of 32"),
    ]:
        with pytest.raises(ValueError, match=message):
            resnet_config(**overrides)


REMOTE_CHECK = """
import json, sys
sys.modules["hspnet"] = None
import torch
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True)
with torch.no_grad():
    logits = model(pixel_values=torch.load(sys.argv[2])).logits
print(json.dumps({"module": type(model).__module__, "backbone": model.config.vision_backbone,
                  "logits": logits.tolist()}))
"""


def test_resnet_model_saves_loads_and_runs_as_remote_code(tmp_path):
    torch.manual_seed(0)
    model = HSPNetForImageClassification(resnet_config()).eval()
    with torch.no_grad():
        for buffer in (model.hspnet.group_prompt_embeds, model.hspnet.label_prompt_embeds, model.hspnet.relation):
            buffer.normal_()
        model.hspnet.group_eos_positions.fill_(5)
        model.hspnet.label_eos_positions.copy_(torch.tensor([7, 7, 8]))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
        x = images()
        expected = model(pixel_values=x).logits
    folder = tmp_path / "rn"
    model.save_pretrained(folder)
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": IMAGE, "width": IMAGE} and processor["resample"] == 3
    loaded = HSPNetForImageClassification.from_pretrained(folder)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).logits, expected, atol=0, rtol=0)
    assert all(p.requires_grad for p in loaded.hspnet.clip.vision_model.parameters())
    torch.save(x, tmp_path / "x.pt")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONPATH="")
    result = subprocess.run([sys.executable, "-c", REMOTE_CHECK, str(folder), str(tmp_path / "x.pt")], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["module"].startswith("transformers_modules") and out["backbone"] == "clip_resnet"
    torch.testing.assert_close(torch.tensor(out["logits"]), expected, atol=1e-6, rtol=1e-6)


def test_converted_model_without_token_table_explains_how_to_rename(hierarchy):
    state = openai_clip().state_dict()
    state.pop("token_embedding.weight")  # like the HSPNet checkpoints: prompts are stored as embeddings
    with pytest.raises(ValueError, match="no token embedding table"):
        HSPNetForImageClassification.from_clip(state, tokenizer=byte_level_clip_tokenizer(), **hierarchy)
