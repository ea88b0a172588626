"""The CLIP ModifiedResNet (RN50-style) image tower and OpenAI-format CLIP weights in `from_clip`.

Reduced sizes (stages [1, 2, 1, 1], width 8, 64-pixel images, text width 128) with the official key structure; the
reference towers are the independent re-implementations in tests/official_reference.py."""

import json
import os

import pytest
import torch

import hspnet.conversion  # noqa: F401
from hspnet import HSPNetConfig, HSPNetForImageClassification
from hspnet.models.hspnet.modeling_clip_resnet import HSPNetModifiedResNet
from hspnet.models.openai_clip import convert_openai_clip_state_dict, load_openai_clip_parts
from hspnet.utils.tiny_clip import byte_level_clip_tokenizer, tiny_clip_config
from tests.helpers import REPO, RESNET_IMAGE as IMAGE, check_result, resnet_config, resnet_images as images
from tests.official_reference import RefCLIP, randomize


def openai_clip(vision="resnet", seed=0):
    """An OpenAI-layout CLIP whose vocabulary fits the offline byte-level tokenizer (514 ids, SOS 512, EOS 513)."""
    torch.manual_seed(seed)
    return randomize(RefCLIP(vision=vision, vocab_size=514, image_size=IMAGE), seed).eval()


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
    model = HSPNetForImageClassification.from_clip(load_openai_clip_parts(weights), tokenizer=tokenizer, **hierarchy)
    config = model.config
    assert config.vision_backbone == "clip_resnet"
    assert (config.resnet_layers, config.resnet_width, config.resnet_heads, config.resnet_image_size) == (
        [1, 2, 1, 1], 8, 4, IMAGE)
    assert config.projection_dim == 16 and config.clip_config.text_config.vocab_size == 514
    x = images()
    with torch.no_grad():
        outputs = model.hspnet.get_image_features(x)  # projected, not normalised, as CLIPModel's
        expected = clip.encode_image(x)
        torch.testing.assert_close(outputs.pooler_output, expected, atol=1e-5, rtol=1e-5)
        embeds = model.hspnet(pixel_values=x).image_embeds
        torch.testing.assert_close(embeds, expected / expected.norm(dim=-1, keepdim=True), atol=1e-5, rtol=1e-5)
        ids = tokenizer(["a photo of a cat.", "dog"], padding="max_length", max_length=77,
                        return_tensors="pt").input_ids
        text = model.hspnet.clip.get_text_features(input_ids=ids).pooler_output
        torch.testing.assert_close(text, clip.encode_text(ids), atol=1e-5, rtol=1e-5)
        assert model(pixel_values=x).logits.shape == (2, 6)


def test_from_clip_accepts_openai_vit_weights(hierarchy):
    clip = openai_clip(vision="vit")
    model = HSPNetForImageClassification.from_clip(load_openai_clip_parts(clip.state_dict()),
                                                   tokenizer=byte_level_clip_tokenizer(),
                                                   **hierarchy)
    assert model.config.vision_backbone == "clip_vit"
    vision = model.config.clip_config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.patch_size, vision.image_size) == (32, 2, 16, IMAGE)
    x = images()
    with torch.no_grad():
        embeds = model.hspnet(pixel_values=x).image_embeds
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


def test_resnet_model_saves_loads_and_runs_as_remote_code(fresh_remote_run):
    """The folder of `save_resnet_folder` loads exactly with the package, and as remote code without it (the shared
    fresh run) gives the same logits."""
    case = fresh_remote_run["clip_resnet"]
    folder, expected = case["job"]["folder"], case["expected"]
    with open(os.path.join(folder, "preprocessor_config.json"), encoding="utf-8") as handle:
        processor = json.load(handle)
    assert processor["crop_size"] == {"height": IMAGE, "width": IMAGE} and processor["resample"] == 3
    loaded = HSPNetForImageClassification.from_pretrained(folder)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=images()).logits, expected, atol=0, rtol=0)
    assert all(p.requires_grad for p in loaded.hspnet.clip.vision_model.parameters())
    out = check_result(case)
    assert out["module"].startswith("transformers_modules") and out["backbone"] == "clip_resnet"
    torch.testing.assert_close(torch.tensor(out["logits"]), expected, atol=1e-6, rtol=1e-6)


def test_converted_model_without_token_table_explains_how_to_rename(hierarchy):
    state = openai_clip().state_dict()
    state.pop("token_embedding.weight")  # like the HSPNet checkpoints: prompts are stored as embeddings
    with pytest.raises(ValueError, match="no token embedding table"):
        HSPNetForImageClassification.from_clip(load_openai_clip_parts(state), tokenizer=byte_level_clip_tokenizer(),
                                               **hierarchy)


# --- the paper configs: configs/hspnet-{coco,voc,nuswide,cub}-rn50.yaml -----------------------------------------------

# docs/method.md, section 4.2, typed here: lr (image encoder, meta-net), gcn lr, SPLC change_epoch, and the authors'
# relation file of each dataset (their repository; section 2.1)
PAPER_RECIPE = {
    "coco": (1e-4, 5e-4, 1, "relation+super+rn50.npy"),
    "voc": (1e-4, 7e-4, 2, "relation+voc+super.npy"),
    "nuswide": (1e-4, 5e-4, 3, "relation+nuswide+super.npy"),
    "cub": (1e-3, 5e-3, 1, "relation+cub+super.npy"),
}


def paper_config(name, *overrides):
    from hspnet.training.arguments import parse_training_args

    return parse_training_args(["--config", os.path.join(REPO, "configs", f"hspnet-{name}-rn50.yaml"), *overrides])


@pytest.mark.parametrize("name", sorted(PAPER_RECIPE))
def test_paper_config_is_the_released_recipe_on_rn50(name):
    lr, gcn_lr, change_epoch, relation = PAPER_RECIPE[name]
    config = paper_config(name)  # the real parser: YAML checks and TrainingConfig validation
    assert (config.clip_model, config.dataset, config.relation_file) == ("RN50.pt", name, relation)
    assert config.tokenizer_name == "openai/clip-vit-base-patch32"
    assert config.protocol == "authors"  # the paper selected on the test set (the released code does)
    assert (config.lr, config.gcn_lr) == (lr, gcn_lr)
    # common to the four: batch 128, Adam with weight decay 1e-4, OneCycleLR pct_start 0.2 over 80 epochs stopping at
    # 60, EMA keeping 0.82 per epoch, SPLC (sum) tau 0.6, margin 1, gamma 2, no early stop, mixed precision
    assert (config.batch_size, config.weight_decay, config.pct_start) == (128, 1e-4, 0.2)
    assert (config.epochs, config.schedule_epochs, config.patience) == (60, 80, None)
    assert config.ema is True and config.ema_keep_per_epoch == 0.82
    assert config.loss == "splc" and config.loss_kwargs == {"tau": 0.6, "margin": 1.0, "gamma": 2.0,
                                                            "change_epoch": change_epoch, "reduction": "sum"}
    assert config.mixed_precision == "fp16"
    observed = config.dataset_options.get("observed_labels_file")
    assert observed == {"coco": "coco_train_singlelabel.txt", "voc": "voc_train.txt", "nuswide": None,
                        "cub": "cub_train.txt"}[name]


def test_paper_architecture_is_the_model_default():
    """What the paper configs leave to HSPNetConfig (docs/method.md, section 1.10): n_ctx 4, fixed "a photo of a" group
    prompts, top 75 % per row and reweight p 0.2 for the relation, GCN gamma 0.9 and slope 0.2, logit scale 10."""
    config = HSPNetConfig()
    assert (config.n_ctx, config.ctx_init, config.group_prompt_template) == (4, "X X X X", "a photo of a {}.")
    assert (config.relation_keep_ratio, config.relation_reweight_p) == (0.75, 0.2)
    assert (config.gcn_gamma_init, config.gcn_negative_slope, config.logit_scale) == (0.9, 0.2, 10.0)


def test_paper_config_trains_on_an_openai_weights_file(tmp_path):
    """`clip_model: RN50.pt` through the real training entry point, with a tiny OpenAI-layout ResNet CLIP saved as
    RN50.pt and the offline tokenizer standing in for openai/clip-vit-base-patch32 (the recipe is cut to one step)."""
    from hspnet.training.loop import train

    torch.save(openai_clip().state_dict(), tmp_path / "RN50.pt")
    byte_level_clip_tokenizer().save_pretrained(tmp_path / "tokenizer")
    config = paper_config(
        "coco", "--clip_model", str(tmp_path / "RN50.pt"), "--tokenizer_name", str(tmp_path / "tokenizer"),
        "--relation_file", "null", "--dataset", "demo", "--dataset_options", '{"num_train": 16, "num_test": 8}',
        "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "out"), "--batch_size", "8",
        "--epochs", "1", "--schedule_epochs", "1", "--max_train_steps", "1", "--mixed_precision", "no",
        "--num_workers", "0", "--with_tracking", "false", "--evaluate_before_training", "false",
        "--checkpointing_steps", "null", "--cpu", "true",
    )
    train(config)
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["vision_backbone"] == "clip_resnet" and saved["resnet_image_size"] == IMAGE  # from the weights file
    assert saved["loss"] == "splc" and saved["loss_kwargs"]["change_epoch"] == 1
    processor = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": IMAGE, "width": IMAGE} and processor["resample"] == 3  # bicubic


def test_channels_last_tower_equals_nchw_forward_and_backward():
    """The tower runs channels-last by default (`channels_last`): the same outputs and gradients as NCHW within float
    rounding, NHWC feature maps, and NCHW again when switched off."""
    clip = openai_clip()
    tower = HSPNetModifiedResNet(layers=[1, 2, 1, 1], width=8, heads=4, image_size=IMAGE, output_dim=16).train()
    tower.load_state_dict(clip.visual.state_dict())
    assert tower.channels_last
    x = images(3)
    outputs = {}
    for layout in (True, False):
        tower.channels_last = layout
        tower.zero_grad()
        out = tower(x, output_hidden_states=True)
        out.pooler_output.square().sum().backward()
        outputs[layout] = (out, {name: p.grad.clone() for name, p in tower.named_parameters()})
        expected_format = torch.channels_last if layout else torch.contiguous_format
        assert all(h.is_contiguous(memory_format=expected_format) for h in out.hidden_states)
    (cl, cl_grads), (nchw, nchw_grads) = outputs[True], outputs[False]
    torch.testing.assert_close(cl.pooler_output, nchw.pooler_output, atol=1e-5, rtol=1e-5)
    for a, b in zip(cl.hidden_states, nchw.hidden_states):  # batch-norm statistics of the batch (training mode)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    for name in cl_grads:
        torch.testing.assert_close(cl_grads[name], nchw_grads[name], atol=1e-4, rtol=1e-4, msg=name)
    tower.eval()  # (its batch-norm statistics moved in the training passes above)
    with torch.no_grad():
        tower.channels_last = False
        nchw = tower(x).pooler_output
        tower.channels_last = True
        torch.testing.assert_close(tower(x).pooler_output, nchw, atol=1e-5, rtol=1e-5)
        # NCHW weights too (`model.to(memory_format=torch.channels_last)`): the same logits
        model = HSPNetForImageClassification(resnet_config()).eval()
        before = model(pixel_values=images(2)).logits
        after = model.to(memory_format=torch.channels_last)(pixel_values=images(2)).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
