"""The text side's caches and shortcuts (docs/method.md, section 1.11): group features and label embeddings computed
once, prompts cut after the last EOS. They give the plain path's outputs, are never served stale (optimizer steps,
in-place edits, replaced parameters and layers, loaded weights, settings, dtypes), and are not used where they would
be wrong (training, trainable gradients, values made under inference mode)."""

import copy
from dataclasses import replace

import torch

from tests.helpers import randomize_trainables


def test_speedups_equal_plain_path(make_model, pixel_values):
    model = make_model()
    randomize_trainables(model)
    base = model.hspnet

    def logits(cache, truncate):
        base.text_options = replace(base.text_options, cache_label_embeddings=cache, cache_group_features=cache,
                                    truncate_prompts=truncate)
        with torch.no_grad():
            return model(pixel_values=pixel_values).logits

    plain = logits(False, False)
    for cache, truncate in [(True, False), (False, True), (True, True)]:
        torch.testing.assert_close(logits(cache, truncate), plain, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits(cache, truncate), plain, atol=1e-5, rtol=1e-5)  # served from the cache
    assert base._text_cache.kinds() == {"group", "label"}


def test_caches_never_go_stale(make_model, pixel_values):
    model = make_model()
    fresh = copy.deepcopy(model)
    fresh.hspnet.text_options = replace(fresh.hspnet.text_options, cache_label_embeddings=False,
                                        cache_group_features=False)

    def check(message):
        with torch.no_grad():
            got = model(pixel_values=pixel_values).logits
            want = fresh(pixel_values=pixel_values).logits
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=message)

    check("initial")
    # 1. an optimizer step in training mode, then back to eval
    labels = torch.zeros(3, 6)
    labels[:, 1] = 1
    for m in (model, fresh):
        m.train()
        optimizer = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
        torch.manual_seed(0)
        m(pixel_values=pixel_values, labels=labels, epoch=0).loss.backward()
        optimizer.step()
        m.eval()
    check("after an optimizer step")
    # 2. an optimizer step WITHOUT switching modes (eval-mode training, e.g. frozen batch norms)
    for m in (model, fresh):
        with torch.no_grad():
            m(pixel_values=pixel_values)  # fills the cache
        optimizer = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1.0)
        m(pixel_values=pixel_values, labels=labels, epoch=0).loss.backward()
        optimizer.step()
    check("after an eval-mode optimizer step")
    # 3. in-place edits of a text-side parameter and of the frozen text tower, under no_grad
    with torch.no_grad():
        for m in (model, fresh):
            m.hspnet.gcn.gamma.fill_(0.3)
    check("after gamma.fill_")
    with torch.no_grad():
        for m in (model, fresh):
            m.hspnet.clip.text_model.final_layer_norm.weight.mul_(1.5)
    check("after editing the frozen text tower")
    # 3b. a parameter and a layer replaced by new objects (e.g. an adapter injected into the text side)
    for m in (model, fresh):
        torch.manual_seed(5)
        m.hspnet.gcn.gamma = torch.nn.Parameter(torch.tensor([0.7]))
        m.hspnet.meta_net.linear2 = torch.nn.Linear(*reversed(m.hspnet.meta_net.linear2.weight.shape))
    check("after replacing gamma and meta_net.linear2")
    for m in (model, fresh):
        torch.manual_seed(6)
        layer = m.hspnet.clip.text_model.encoder.layers[1]
        layer.mlp.fc2 = torch.nn.Linear(layer.mlp.fc2.in_features, layer.mlp.fc2.out_features).requires_grad_(False)
    # a layer replaced deep inside the frozen text tower: new tensor objects, seen without any hook
    check("after replacing a layer of the frozen text tower")
    # 4. load_state_dict with other weights
    other = model.state_dict()
    other = {k: (v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v) for k, v in other.items()}
    for m in (model, fresh):
        m.load_state_dict(other)
    check("after load_state_dict")
    # 5. relation settings and dtype changes
    for m in (model, fresh):
        m.config.relation_keep_ratio = 0.5
    check("after changing relation_keep_ratio")
    for m in (model, fresh):
        m.double()
    with torch.no_grad():
        got = model(pixel_values=pixel_values.double()).logits
        want = fresh(pixel_values=pixel_values.double()).logits
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want)


def test_cache_is_not_used_in_training_or_with_trainable_grad(make_model, pixel_values):
    model = make_model()
    base = model.hspnet
    model.train()
    with torch.no_grad():
        model(pixel_values=pixel_values)
    assert base._text_cache.kinds() == {"group"}  # group features are constant: cached in training too
    model.eval()
    assert base._text_cache.kinds() == set()  # dropped on train()/eval()
    model(pixel_values=pixel_values).logits.sum().backward()  # grad enabled, trainable text side: no cache
    assert "label" not in base._text_cache.kinds()
    assert base.meta_net.linear1.weight.grad is not None


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
