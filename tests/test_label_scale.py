"""Large label sets: the exact speed-ups of the label side (shared prompt prefixes, chunked encoding under activation
checkpointing, adjacency computed once, in row blocks) give the same logits and gradients as the plain path."""

import copy
from dataclasses import replace

import pytest
import torch

from hspnet.models.hspnet.modeling_label_graph import process_relation
from hspnet.models.hspnet.modeling_prompts import (
    LabelChunk,
    encode_prompt_embeddings,
    encode_shared_prefix_prompts,
    label_activation_bytes,
    plan_label_chunks,
)
from hspnet.training.memory import release_freed_memory


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _step(model, pixel_values, labels):
    model.zero_grad(set_to_none=True)
    output = model(pixel_values=pixel_values, labels=labels, epoch=0)
    output.loss.backward()
    return output.logits.detach(), _grads(model)


@pytest.fixture
def labels6():
    labels = torch.zeros(3, 6)
    labels[0, 1] = labels[1, 3] = labels[2, 5] = 1
    return labels


def test_shared_prefix_encoder_equals_full_prompts(tiny_clip_dir):
    from transformers import CLIPModel

    torch.manual_seed(0)
    clip = CLIPModel.from_pretrained(tiny_clip_dir)
    width = clip.config.text_config.hidden_size
    groups, labels, prefix_length, suffix_length = 3, 7, 5, 6
    label_group = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    eos = torch.tensor([2, 5, 0, 3, 4, 1, 5])  # within the suffix
    prefix = torch.randn(groups, prefix_length, width, requires_grad=True)
    suffix = torch.randn(labels, suffix_length, width)
    full = torch.cat([prefix[label_group], suffix], dim=1)
    want = encode_prompt_embeddings(clip, full, eos + prefix_length, truncate=False)
    (grad_want,) = torch.autograd.grad(want.square().sum(), prefix)
    lengths = (eos + 1).tolist()
    plans = [None] + [plan_label_chunks(lengths, lambda n: n, budget, needs_grad=True) for budget in (100, 12, 6, 0)]
    assert {chunk.checkpoint for chunk in plans[2].chunks} == {True, False}  # some kept, some recomputed
    calls = []
    for chunk, plan, before in [(None, None, None), (1, None, release_freed_memory), (3, None, None),
                                (100, None, None), *((None, plan, lambda: calls.append(1)) for plan in plans[1:])]:
        got = encode_shared_prefix_prompts(clip, prefix, suffix, label_group, eos, chunk_size=chunk, plan=plan,
                                           before_recomputed_chunk=before)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        (grad_got,) = torch.autograd.grad(got.square().sum(), prefix)
        torch.testing.assert_close(grad_got, grad_want, atol=1e-5, rtol=1e-5)
    # the hook runs before each recomputed chunk, in the forward pass and again in the backward pass
    recomputed = sum(chunk.checkpoint for plan in plans[1:] for chunk in plan.chunks)
    assert len(calls) == 2 * recomputed > 0
    with torch.no_grad():  # inference: chunks by the budget, nothing recomputed
        plan = plan_label_chunks(lengths, lambda n: n, 6, needs_grad=False)
        torch.testing.assert_close(encode_shared_prefix_prompts(clip, prefix, suffix, label_group, eos, plan=plan),
                                   want.detach(), atol=1e-5, rtol=1e-5)


def test_model_paths_give_the_same_logits_and_gradients(make_model, pixel_values, labels6):
    reference = make_model(seed=3).train()
    base = reference.hspnet
    base.text_options = replace(base.text_options, share_prompt_prefix=False, label_chunk_size=None)
    want_logits, want_grads = _step(reference, pixel_values, labels6)
    assert "hspnet.meta_net.linear1.weight" in want_grads
    layout = base.prompt_layout()
    assert layout.shared_prefix and layout.first_label_eos > base.config.n_ctx  # the shared path applies
    for share, chunk in [(True, None), (True, 2), (False, 4), (True, 1)]:
        model = copy.deepcopy(reference)
        model.hspnet.text_options = replace(model.hspnet.text_options, share_prompt_prefix=share,
                                            label_chunk_size=chunk)
        logits, grads = _step(model, pixel_values, labels6)
        torch.testing.assert_close(logits, want_logits, atol=1e-5, rtol=1e-5)
        assert grads.keys() == want_grads.keys()
        for name in grads:
            torch.testing.assert_close(grads[name], want_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    # inference too
    model.eval()
    reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=pixel_values).logits,
                                   reference(pixel_values=pixel_values).logits, atol=1e-5, rtol=1e-5)


def test_label_chunk_plan_by_hand():
    lengths = [3, 1, 2, 1, 3]  # one byte per token: labels cost 3, 1, 2, 1, 3 (total 10)
    size = lambda n: n  # noqa: E731
    plan = plan_label_chunks(lengths, size, 100, needs_grad=True)  # fits: one chunk per length, nothing recomputed
    assert plan.order.tolist() == [1, 3, 2, 0, 4] and plan.inverse.tolist() == [3, 0, 2, 1, 4]
    assert plan.chunks == (LabelChunk(0, 2, 1, False), LabelChunk(2, 3, 2, False), LabelChunk(3, 5, 3, False))
    # over budget 6: chunks of at most 3 bytes; the first 3 bytes keep their activations, the rest are recomputed
    plan = plan_label_chunks(lengths, size, 6, needs_grad=True)
    assert plan.chunks == (LabelChunk(0, 2, 1, False), LabelChunk(2, 3, 2, True), LabelChunk(3, 4, 3, True),
                           LabelChunk(4, 5, 3, True))
    # no gradients: chunks of the whole budget, none checkpointed
    plan = plan_label_chunks(lengths, size, 6, needs_grad=False)
    assert plan.chunks == (LabelChunk(0, 2, 1, False), LabelChunk(2, 3, 2, False), LabelChunk(3, 5, 3, False))
    # a fixed chunk size (label_chunk_size) checkpoints every chunk when there are several
    plan = plan_label_chunks(lengths, size, None, max_labels=2, needs_grad=True)
    assert plan.chunks == (LabelChunk(0, 2, 1, True), LabelChunk(2, 3, 2, True), LabelChunk(3, 5, 3, True))
    assert plan_label_chunks([2, 2], size, None, max_labels=2).chunks == (LabelChunk(0, 2, 2, False),)
    # already sorted: no reordering; a budget below one label still runs one label at a time
    plan = plan_label_chunks([1, 1, 2], size, 0, needs_grad=True)
    assert plan.order is None and plan.chunks == (LabelChunk(0, 1, 1, True), LabelChunk(1, 2, 1, True),
                                                  LabelChunk(2, 3, 2, True))


def test_activation_estimate_matches_what_autograd_saves(make_model):
    """`label_activation_bytes` against the bytes autograd really keeps per extra label (saved-tensor hooks), on the
    tiny CLIP: the memory budget relies on it."""
    model = make_model().train()
    base = model.hspnet
    base.text_options = replace(base.text_options, label_chunk_size=10**6)  # one chunk, nothing recomputed
    suffix_lengths = base.prompt_layout().suffix_lengths
    length = max(set(suffix_lengths), key=suffix_lengths.count)
    same = [i for i, n in enumerate(suffix_lengths) if n == length]
    assert len(same) >= 4, suffix_lengths

    def saved_bytes(indices):
        storages = {}

        def pack(tensor):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        group = base.encode_groups()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            base.compute_label_embeddings(group, label_indices=torch.tensor(indices))
        return sum(storages.values())

    per_label = (saved_bytes(same) - saved_bytes(same[:2])) / (len(same) - 2)
    text_config = base.config.clip_config.text_config
    estimate = label_activation_bytes(text_config, 1 + base.config.n_ctx, length)
    assert 0.7 * per_label <= estimate <= 1.5 * per_label, (estimate, per_label)


def test_release_freed_memory_is_harmless():
    release_freed_memory()
    release_freed_memory()  # the C function is looked up once


def _naive_adjacency(relation, keep_ratio, p):
    n = relation.shape[0]
    k = int(keep_ratio * n)
    out = torch.zeros(n, n)
    for i in range(n):
        kept = torch.zeros(n)
        if k:
            values, indices = torch.topk(relation[i], k)
            kept[indices] = values
        kept[i] = 0
        total = kept.sum()
        out[i] = kept / total * p if total != 0 else 0
        out[i, i] = 1 - p if total != 0 else 1.0
    return out


def test_relation_processed_in_row_blocks_is_exact():
    torch.manual_seed(0)
    relation = torch.rand(23, 23)
    want = _naive_adjacency(relation, 0.75, 0.2)
    for block in (1, 4, 23, 1024):
        torch.testing.assert_close(process_relation(relation, 0.75, 0.2, block_rows=block), want)


def test_adjacency_is_computed_once_not_per_step(make_model, pixel_values, labels6):
    model = make_model().train()
    _step(model, pixel_values, labels6)
    first = model.hspnet.label_graph()
    _step(model, pixel_values, labels6)
    assert model.hspnet.label_graph() is first
    model.hspnet.set_relation(model.hspnet.relation * 0.5 + 0.5)  # a new relation: recomputed
    _step(model, pixel_values, labels6)
    assert model.hspnet.label_graph() is not first


# --------------------------------------------------------------------------------------------------------------------
# label sampling (an approximation, off by default)
# --------------------------------------------------------------------------------------------------------------------


def test_weighted_label_sample_is_an_unbiased_estimate_of_the_loss():
    import itertools

    from hspnet.models.hspnet.losses import build_loss

    torch.manual_seed(0)
    logits, targets = torch.randn(4, 6), torch.zeros(4, 6)
    targets[0, 1] = targets[2, 1] = targets[3, 4] = 1
    loss = build_loss("splc", 6)
    full = loss(logits, targets, epoch=1)
    always, others, size = [1, 4], [0, 2, 3, 5], 2
    estimates = []
    for picked in itertools.combinations(others, size):  # every sample is equally likely: the expectation exactly
        columns = torch.tensor(always + list(picked))
        weights = torch.tensor([1.0, 1.0] + [len(others) / size] * size)
        estimates.append(loss(logits[:, columns], targets[:, columns], epoch=1, label_weights=weights))
    torch.testing.assert_close(torch.stack(estimates).mean(), full, atol=1e-5, rtol=1e-6)
    mean_loss = build_loss("an", 6, reduction="mean")
    columns = torch.tensor([1, 4])
    assert torch.isclose(mean_loss(logits[:, columns], targets[:, columns], label_weights=torch.ones(2)) * 24,
                         build_loss("an", 6, reduction="sum")(logits[:, columns], targets[:, columns],
                                                              label_weights=torch.ones(2)))


def test_losses_that_couple_labels_refuse_sampling():
    from hspnet import HSPNetConfig
    from hspnet.models.hspnet.losses import build_loss

    with pytest.raises(ValueError, match="couples the labels"):
        build_loss("epr", 6, expected_num_pos=1.5)(torch.zeros(2, 3), torch.zeros(2, 3), label_weights=torch.ones(3))
    with pytest.raises(ValueError, match="label_sample_size is set but the loss 'role'"):
        HSPNetConfig(id2label={0: "a", 1: "b"}, group_names=["g"], label_to_group=[0, 0], loss="role",
                     loss_kwargs={"num_train_images": 4, "expected_num_pos": 1.0}, label_sample_size=1)


def test_induced_adjacency_by_hand():
    from hspnet.models.hspnet.modeling_label_graph import induced_adjacency

    # a 4-label adjacency with p = 0.2: row 0 has neighbours 1 (0.15) and 2 (0.05); row 2 only neighbour 3
    adjacency = torch.tensor([[0.8, 0.15, 0.05, 0.0],
                              [0.1, 0.8, 0.0, 0.1],
                              [0.0, 0.0, 0.8, 0.2],
                              [0.2, 0.0, 0.0, 0.8]])
    got = induced_adjacency(adjacency, torch.tensor([0, 2, 3]), 0.2)
    want = torch.tensor([[0.8, 0.2, 0.0],   # only neighbour 2 sampled: it gets the whole 0.2
                         [0.0, 0.8, 0.2],
                         [0.2, 0.0, 0.8]])
    torch.testing.assert_close(got, want)
    got = induced_adjacency(adjacency, torch.tensor([1, 2]), 0.2)
    torch.testing.assert_close(got, torch.eye(2))  # no sampled neighbours: each keeps only itself


def test_sampled_training_step(make_model, pixel_values, labels6):
    model = make_model(label_sample_size=2).train()
    torch.manual_seed(0)
    output = model(pixel_values=pixel_values, labels=labels6, epoch=0)
    observed = {1, 3, 5}
    indices = output.label_indices.tolist()
    assert set(indices[:3]) == observed and len(indices) == 5 and not set(indices[3:]) & observed
    assert output.logits.shape == (3, 5) and torch.isfinite(output.loss)
    output.loss.backward()
    assert model.hspnet.meta_net.linear1.weight.grad is not None
    # without label-to-label mixing (p = 0) the sampled columns are exactly the full model's columns
    model = make_model(label_sample_size=2, relation_reweight_p=0.0).train()
    torch.manual_seed(1)
    sampled = model(pixel_values=pixel_values, labels=labels6, epoch=0)
    model.config.label_sample_size = None
    full = model(pixel_values=pixel_values, labels=labels6, epoch=0).logits
    torch.testing.assert_close(sampled.logits, full[:, sampled.label_indices], atol=1e-5, rtol=1e-5)
    # evaluation and inference always use every label
    model.config.label_sample_size = 2
    model.eval()
    with torch.no_grad():
        assert model(pixel_values=pixel_values, labels=labels6, epoch=0).logits.shape == (3, 6)


def test_training_script_samples_labels(tmp_path, monkeypatch):
    from hspnet import HSPNetForImageClassification
    from hspnet.training.arguments import TrainingConfig
    from hspnet.training.loop import train
    from tests.helpers import tiny_options

    calls = []
    original = HSPNetForImageClassification.sample_labels

    def spy(self, labels, size=None):
        result = original(self, labels, size)
        # the model samples in its own forward pass, with the size of its config (which training sets)
        calls.append((self.config.label_sample_size if size is None else size,
                      None if result[0] is None else result[0].numel()))
        return result

    monkeypatch.setattr(HSPNetForImageClassification, "sample_labels", spy)
    results = train(TrainingConfig(**tiny_options(tmp_path, epochs=1, schedule_epochs=2, label_sample_size=3,
                                                  evaluate_before_training=False)))
    assert calls and all(size == 3 for size, _ in calls)
    assert any(count is not None and count < 12 for _, count in calls)  # a real sample of the 12 demo labels
    assert len(results["test_per_class_AP"]) == 12  # evaluation scores every label
    with pytest.raises(ValueError, match="couples the labels"):
        train(TrainingConfig(**tiny_options(tmp_path / "epr", loss="epr", loss_kwargs={}, label_sample_size=3)))


def test_the_trainer_sees_only_labels_as_targets():
    # transformers' Trainer takes every forward argument with "label" in its name for a target
    from transformers.utils import find_labels

    from hspnet import HSPNetForImageClassification

    assert find_labels(HSPNetForImageClassification) == ["labels"]
