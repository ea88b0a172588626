"""torch.compile: the forward pass compiles with at most one graph break (the cache bookkeeping), and compiled
inference and training steps give the eager results within 1e-5 (float32). Inference runs inductor's kernels; the
training checks run AOTAutograd's graphs without kernels (`aot_eager`), and inductor's too with `make test-full`."""

import copy

import pytest
import torch

pytestmark = pytest.mark.filterwarnings("ignore")


def _labels(batch, num_labels):
    labels = torch.zeros(batch, num_labels)
    labels[torch.arange(batch), torch.arange(batch) % num_labels] = 1
    return labels


def _breaks(model, **inputs):
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(**inputs)
    return explanation.graph_break_count, [reason.reason for reason in explanation.break_reasons]


def test_graph_breaks_per_forward(make_model, pixel_values):
    model = make_model()
    labels = _labels(3, 6)
    model.train()
    count, reasons = _breaks(model, pixel_values=pixel_values, labels=labels, epoch=1)
    assert count <= 2, reasons
    model.eval()
    with torch.no_grad():
        count, reasons = _breaks(model, pixel_values=pixel_values)  # cold cache: computed inside the bookkeeping
        assert count <= 2, reasons
        count, reasons = _breaks(model, pixel_values=pixel_values)  # warm cache
        assert count <= 2, reasons
    # eval mode WITH gradients (nothing cached: the text side runs in the graph)
    count, reasons = _breaks(model, pixel_values=pixel_values)
    assert count <= 2, reasons


def test_compiled_inference_equals_eager(make_model, pixel_values):
    torch._dynamo.reset()
    model = make_model().eval()
    compiled = torch.compile(model)
    with torch.no_grad():
        eager = model(pixel_values=pixel_values).logits
        for _ in range(2):  # cold, then warm cache
            torch.testing.assert_close(compiled(pixel_values=pixel_values).logits, eager, atol=1e-5, rtol=1e-5)
        # the cache rule still holds under compile: an in-place edit is seen
        model.hspnet.gcn.gamma.fill_(0.25)
        eager = model(pixel_values=pixel_values).logits
        torch.testing.assert_close(compiled(pixel_values=pixel_values).logits, eager, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", [
    "aot_eager",
    # inductor's kernels for a training step take ~60 s of C++ compilation on a cold cache (2 cores): `make test-full`
    pytest.param("inductor", marks=pytest.mark.slow),
])
def test_compiled_training_step_equals_eager(make_model, pixel_values, backend):
    """Two SGD steps, compiled vs eager: losses, every gradient, the updated parameters and the logits after.

    `aot_eager` runs what this model's code decides under compile (dynamo's graphs and guards around the cache
    bookkeeping, the chunked and checkpointed text side, AOTAutograd's functionalised forward and backward graphs)
    without generating kernels; inductor's kernels are checked here on demand and, for inference, always (above)."""
    torch._dynamo.reset()
    eager_model = make_model().train()
    compiled_model = copy.deepcopy(eager_model)
    compiled = torch.compile(compiled_model, backend=backend)
    labels = _labels(3, 6)
    # SGD, not Adam: Adam divides by sqrt(v), which turns the ~1e-9 rounding noise of a zero gradient (the attention
    # key bias has one by construction) into full-size steps of either sign
    optimizers = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
                  for m in (eager_model, compiled_model)]
    for step in range(2):
        losses = []
        for runner, optimizer in zip((eager_model, compiled), optimizers):
            loss = runner(pixel_values=pixel_values, labels=labels, epoch=step).loss
            loss.backward()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
        for (name, a), b in zip(eager_model.named_parameters(), compiled_model.parameters()):
            if a.grad is not None or b.grad is not None:
                torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad()
    for (name, a), b in zip(eager_model.named_parameters(), compiled_model.parameters()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=name)
    compiled_model.eval()
    eager_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(pixel_values=pixel_values).logits,
                                   eager_model(pixel_values=pixel_values).logits, atol=1e-5, rtol=1e-5)


def test_training_with_torch_compile_matches_eager(tmp_path, pixel_values):
    """`train()`'s compiled path (training and model-selection forward passes, checkpoint and model saved from the
    compiled model) gives the eager run's model. With the `aot_eager` backend: dynamo's graphs and AOTAutograd's
    forward / backward graphs, without generating kernels (inductor's kernels for a training step are checked by
    `test_compiled_training_step_equals_eager`; compiling them again here cost ~90 s on a cold cache)."""
    from hspnet import HSPNetForImageClassification
    from hspnet.training.arguments import TrainingConfig
    from hspnet.training.loop import train
    from tests.helpers import tiny_options

    torch._dynamo.reset()
    results, logits = {}, {}
    for name, backend in (("eager", None), ("compiled", "aot_eager")):
        options = tiny_options(tmp_path / name, epochs=1, schedule_epochs=2, torch_compile_backend=backend,
                               evaluate_before_training=False)
        # 48 training images: six full batches of 8, so one compiled graph serves every step (a short last batch
        # would compile the graphs again, for dynamic shapes: seconds, and nothing this test is about)
        options["dataset_options"] = dict(options["dataset_options"], num_train=64)
        results[name] = train(TrainingConfig(**options))
        model = HSPNetForImageClassification.from_pretrained(str(tmp_path / name / "out")).eval()
        with torch.no_grad():
            logits[name] = model(pixel_values=pixel_values).logits
    # the outputs, not every parameter: Adam turns the rounding noise of structurally-zero gradients (the attention
    # key biases) into full steps, which change no output
    torch.testing.assert_close(logits["compiled"], logits["eager"], atol=1e-3, rtol=1e-3)
    assert abs(results["compiled"]["test"]["mAP"] - results["eager"]["test"]["mAP"]) < 0.5


def test_predict_with_torch_compile_gives_the_eager_scores(make_model, tmp_path, capsys):
    import json

    import numpy as np
    from PIL import Image

    from hspnet.cli.predict import main

    make_model().save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    outputs = []
    for extra in ([], ["--torch_compile"]):
        torch._dynamo.reset()
        assert main(["--model", str(tmp_path / "model"), str(tmp_path / "0.png"), str(tmp_path / "1.png"),
                     str(tmp_path / "2.png"), "--format", "jsonl", "--all_scores", "--no_progress", *extra]) == 0
        outputs.append([json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()])
    for eager, compiled in zip(*outputs):
        assert eager["path"] == compiled["path"] and len(eager["scores"]) == 6
        for name, score in eager["scores"].items():
            assert abs(compiled["scores"][name] - score) < 1e-5


def test_no_recompiles_across_epochs_and_mode_switches(make_model, pixel_values):
    """A compiled training run as `hspnet train` makes one: epochs of full batches and a short last one, with an
    evaluation (eval mode, no gradients, other batch sizes) after each. The epoch reaches the loss as a tensor (its
    buffer), so a new epoch compiles nothing, except the small loss graph when it first changes (dynamo then takes
    it as a symbolic int); before, every epoch compiled the loss graph twice and dynamo's recompile limit (8) sent
    the loss back to eager after four epochs. The short batch and the evaluation compile once, in the first epoch.
    Checked with dynamo's graph backend (`eager`): recompilation is dynamo's decision, whatever backend compiles the
    graphs."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = make_model()
    compiled = torch.compile(model, backend="eager")
    labels = _labels(3, 6)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    frames = []
    for epoch in range(6):
        model.train()
        for size in (3, 3, 2):
            compiled(pixel_values=pixel_values[:size], labels=labels[:size], epoch=epoch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
        with torch.no_grad():
            compiled(pixel_values=pixel_values)
            compiled(pixel_values=pixel_values[:1])
        frames.append(counters["frames"]["ok"])
    assert frames[2:] == [frames[1]] * 4, frames  # epochs 2-5: nothing compiled
    assert frames[1] - frames[0] <= 2, frames  # epoch 1: the loss frame, once per batch shape (a symbolic epoch)
    assert "recompile_limit" not in str(dict(counters["unimplemented"]))
    # the loss still corrects labels from `change_epoch` on (SPLC's default change_epoch=1), as in eager
    loss = model.loss_module
    eager = {epoch: float(loss(model.eval()(pixel_values=pixel_values).logits, labels, epoch=epoch))
             for epoch in (0, 1)}
    model.train()
    with torch.no_grad():
        for epoch in (0, 1):
            compiled_loss = torch.compile(loss, backend="eager")(model.eval()(pixel_values=pixel_values).logits,
                                                                 labels, epoch=epoch)
            assert abs(float(compiled_loss) - eager[epoch]) < 1e-5
    assert eager[0] != eager[1]
