"""`hspnet.training.ema` (docs/method.md, section 4.4): the decay that keeps 0.82 per epoch, an update by hand, the
averaged copy of an HSPNet model (it shares what is fixed by construction and leaves the training run's loss state
out), and the tie rule of model selection (section 4.5: on equal mAP the EMA model wins)."""

import pytest
import torch

from hspnet.training.ema import ModelEMA, ema_decay, select_source


def test_ema_decay_keeps_082_per_epoch():
    decay = ema_decay(641)
    assert decay ** 641 == pytest.approx(0.82)
    assert decay == pytest.approx(0.9996904, abs=1e-7)  # the released log's 0.9997 ** 641 ~= 0.82


def test_model_ema_update_by_hand():
    model = torch.nn.Linear(2, 1)
    model.register_buffer("count", torch.tensor(3))
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.fill_(0.0)
    ema = ModelEMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 0.0]]))
        model.bias.fill_(1.0)
        model.count.fill_(7)
    ema.update(model)
    # 0.9 * old + 0.1 * new: [0.9*1 + 0.1*3, 0.9*2 + 0.1*0] = [1.2, 1.8]; bias 0.1; integer buffers are copied
    torch.testing.assert_close(ema.module.weight, torch.tensor([[1.2, 1.8]]))
    torch.testing.assert_close(ema.module.bias, torch.tensor([0.1]))
    assert int(ema.module.count) == 7
    # tensors that cannot change in training (frozen parameters, named constants) are left alone
    frozen = torch.nn.Linear(2, 1)
    frozen.weight.requires_grad_(False)
    keep = ModelEMA(frozen, decay=0.5, constant={"bias"})
    with torch.no_grad():
        frozen.weight.add_(1.0)
        frozen.bias.add_(1.0)
    keep.update(frozen)
    torch.testing.assert_close(keep.module.weight, frozen.weight - 1.0)
    torch.testing.assert_close(keep.module.bias, frozen.bias - 1.0)
    state = ema.trained_state()
    other = ModelEMA(torch.nn.Linear(2, 1), decay=0.5)
    other.module.register_buffer("count", torch.tensor(0))
    other.load_trained_state(state, ema.decay)
    assert other.decay == 0.9
    torch.testing.assert_close(other.module.weight, ema.module.weight)


def test_the_copy_shares_constant_buffers_and_adjacencies_and_not_the_loss_state(make_model, pixel_values):
    model = make_model(loss="role", loss_kwargs={"num_train_images": 10})
    model.train()
    labels = torch.zeros(3, 6)
    labels[torch.arange(3), torch.tensor([0, 2, 4])] = 1
    model(pixel_values=pixel_values, labels=labels, indices=torch.tensor([0, 1, 2])).loss.backward()
    assert model.__dict__["_loss_cache"] is not None  # ROLE's (10, 6) estimates exist now
    adjacency = model.hspnet.adjacency()

    ema = ModelEMA(model, decay=0.5)
    copy = ema.module
    for name in type(model.hspnet).constant_buffers:
        assert getattr(copy.hspnet, name) is getattr(model.hspnet, name), name  # the same tensor, not a copy
    label_adjacency, group_adjacency = copy.hspnet.adjacency()
    assert label_adjacency is adjacency[0] and group_adjacency is adjacency[1]  # still valid, not recomputed
    assert copy.__dict__.get("_loss_cache") is None
    for (name, a), b in zip(model.named_parameters(), copy.parameters()):
        assert a is not b and a.data_ptr() != b.data_ptr(), name  # parameters are averaged: copies of their own
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(copy(pixel_values=pixel_values).logits, model(pixel_values=pixel_values).logits,
                                   rtol=0, atol=0)
    # an update averages the parameters and leaves the shared constants as they are
    relation = model.hspnet.relation.clone()
    with torch.no_grad():
        model.hspnet.gcn.gamma.fill_(0.5)
    before = copy.hspnet.gcn.gamma.item()
    ema.update(model)
    assert copy.hspnet.gcn.gamma.item() == 0.5 * before + 0.5 * 0.5
    assert torch.equal(model.hspnet.relation, relation)
    # the copy can still compute a loss: its own, built on first use
    copy.train()
    assert torch.isfinite(copy(pixel_values=pixel_values, labels=labels, indices=torch.tensor([0, 1, 2])).loss)
    assert copy.loss_module is not model.loss_module


def test_ema_wins_ties_like_the_reference():
    assert select_source({"regular": {"mAP": 50.0}, "ema": {"mAP": 50.0}}) == "ema"
    assert select_source({"regular": {"mAP": 50.1}, "ema": {"mAP": 50.0}}) == "regular"
    assert select_source({"regular": {"mAP": 50.0}}) == "regular"
