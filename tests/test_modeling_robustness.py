"""Precision, optimizer, inference-mode and HF-integration paths of the model (found in review)."""

from dataclasses import replace
import math
import pickle

import numpy as np
import pytest
import torch

from hspnet import HSPNetForImageClassification, process_relation


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


def test_half_precision_cast_keeps_the_graph():
    """Casting the model must not round the raw similarities: top-k on rounded values would pick other neighbours."""
    from hspnet import HSPNetConfig, HSPNetModel
    from hspnet.utils.tiny_clip import tiny_clip_config

    rng = np.random.default_rng(0)
    n_labels = 12
    relation = torch.from_numpy(rng.uniform(0.80, 0.81, size=(15, 15)).astype(np.float32))  # near-ties in bf16
    config = HSPNetConfig(clip_config=tiny_clip_config(), id2label={i: f"l{i}" for i in range(n_labels)},
                          group_names=["a", "b", "c"], label_to_group=[i % 3 for i in range(n_labels)])
    model = HSPNetModel(config)
    model.set_relation(relation)
    fp32 = model.adjacency()
    rounded = process_relation(relation[:n_labels, :n_labels].bfloat16())
    assert not torch.equal((rounded > 0), (fp32[0] > 0))  # the hazard is real for these values
    for dtype in (torch.bfloat16, torch.float16):
        model.to(dtype)
        assert model.relation.dtype == torch.float32
        for got, want in zip(model.adjacency(), fp32):
            torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_cache_not_stale_after_a_fused_optimizer_step(make_model, pixel_values):
    # fused optimizers update parameters without bumping their version counters
    model = make_model()
    with torch.no_grad():
        model(pixel_values=pixel_values)  # fills the eval-mode cache
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1, fused=True)
    labels = torch.zeros(3, 6)
    labels[:, 0] = 1
    model(pixel_values=pixel_values, labels=labels, epoch=0).loss.backward()
    version = model.hspnet.meta_net.linear1.weight._version
    optimizer.step()
    assert model.hspnet.meta_net.linear1.weight._version == version  # the hazard: no version bump
    with torch.no_grad():
        stale = model(pixel_values=pixel_values).logits  # not seen without process-wide hooks (documented)
        model.hspnet.clear_text_cache()
        cached = model(pixel_values=pixel_values).logits
        model.hspnet.text_options = replace(model.hspnet.text_options, cache_label_embeddings=False)
        fresh = model(pixel_values=pixel_values).logits
    assert not torch.allclose(stale, fresh)
    torch.testing.assert_close(cached, fresh)


def test_fused_optimizer_training_then_eval_is_exact(make_model, pixel_values):
    # the usual flow: train() ... fused steps ... eval(); switching modes drops the cache
    model = make_model()
    with torch.no_grad():
        model(pixel_values=pixel_values)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1, fused=True)
    labels = torch.zeros(3, 6)
    labels[:, 0] = 1
    model.train()
    model(pixel_values=pixel_values, labels=labels, epoch=0).loss.backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        cached = model(pixel_values=pixel_values).logits
        model.hspnet.text_options = replace(model.hspnet.text_options, cache_label_embeddings=False)
        fresh = model(pixel_values=pixel_values).logits
    torch.testing.assert_close(cached, fresh)


def test_values_cached_under_inference_mode_do_not_leak_into_training(make_model, pixel_values):
    model = make_model()
    model.train()
    with torch.inference_mode():
        model(pixel_values=pixel_values)  # caches the group features as inference tensors
    labels = torch.zeros(3, 6)
    labels[:, 1] = 1
    model(pixel_values=pixel_values, labels=labels, epoch=0).loss.backward()  # must not raise
    assert model.hspnet.meta_net.linear1.weight.grad is not None


def test_editing_returned_label_embeddings_does_not_corrupt_the_cache(make_model, pixel_values):
    model = make_model()
    with torch.no_grad():
        first = model.hspnet(pixel_values=pixel_values)
        first.label_embeds.mul_(0)
        second = model.hspnet(pixel_values=pixel_values)
    assert second.label_embeds.abs().sum() > 0
    assert second.logits.abs().sum() > 0


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


def test_output_loading_info_and_pickling(make_model, tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    loaded, info = HSPNetForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not any(p.requires_grad for p in loaded.hspnet.clip.text_model.parameters())
    restored = pickle.loads(pickle.dumps(loaded))
    assert restored.config.label_names == loaded.config.label_names


def test_save_pretrained_push_to_hub_passes_options_and_uploads_the_processor(make_model, tmp_path, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoUrl

    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["private"] = kwargs.get("private")
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, **kwargs):
        calls["repo"], calls["message"] = repo_id, kwargs.get("commit_message")
        calls["files"] = sorted(op.path_in_repo for op in operations)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    make_model().save_pretrained(tmp_path / "m", push_to_hub=True, repo_id="me/m", commit_message="hello",
                                 private=True)
    assert calls["repo"] == "me/m" and calls["message"] == "hello" and calls["private"] is True
    assert "preprocessor_config.json" in calls["files"] and "model.safetensors" in calls["files"]
    assert "modeling_hspnet.py" in calls["files"] and "losses.py" in calls["files"]


def test_vision_kwargs_reach_the_tower(make_model):
    model = make_model()
    with torch.no_grad():
        out = model(pixel_values=torch.randn(1, 3, 48, 48), interpolate_pos_encoding=True)
    assert out.logits.shape == (1, 6)


def test_a_model_built_under_inference_mode_runs(tiny_clip_dir, hierarchy, pixel_values, tmp_path):
    make = lambda: HSPNetForImageClassification.from_clip(tiny_clip_dir, **hierarchy)  # noqa: E731
    torch.manual_seed(0)
    make().save_pretrained(tmp_path)
    with torch.inference_mode():
        model = HSPNetForImageClassification.from_pretrained(tmp_path)
        first = model(pixel_values=pixel_values).logits
        second = model(pixel_values=pixel_values).logits
    torch.testing.assert_close(first, second)
