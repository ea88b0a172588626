"""`hspnet.recipe.ModelEMA` on an HSPNet model: the averaged copy shares what is fixed by construction and leaves
the training run's loss state out (the averaging itself is checked by hand in `test_training.py`)."""

import torch

from hspnet.training.ema import ModelEMA


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
