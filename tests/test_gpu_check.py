"""The GPU check (`benchmarks/gpu_check.py`) and the CUDA tests it runs.

The tests named `test_cuda_*` are the CUDA tests (`pytest -k cuda`): they skip without a GPU and compare what runs on
it with the CPU or with eager. `test_gpu_check_on_cpu_writes_every_section` runs the whole check on the CPU with tiny
models, so the script cannot rot where no GPU is at hand."""

import copy
import json

import pytest
import torch

from tests.helpers import REPO, resnet_config, resnet_images, run_script

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _targets(batch, num_labels):
    labels = torch.zeros(batch, num_labels)
    labels[torch.arange(batch), torch.arange(batch) % num_labels] = 1
    return labels


@pytest.fixture
def exact_cuda():
    """float32 on the GPU without TF32 (cuDNN convolutions default to it), restored afterwards."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def _resnet_model():
    from hspnet import HSPNetForImageClassification

    torch.manual_seed(0)
    model = HSPNetForImageClassification(resnet_config())
    with torch.no_grad():
        for buffer in (model.hspnet.group_prompt_embeds, model.hspnet.label_prompt_embeds, model.hspnet.relation):
            buffer.normal_()
        model.hspnet.group_eos_positions.fill_(5)
        model.hspnet.label_eos_positions.copy_(torch.tensor([7, 7, 8]))
    model.hspnet.prepare_text_state()
    return model


@needs_cuda
@pytest.mark.parametrize("backbone", ["vit", "resnet"])
def test_cuda_logits_and_gradients_equal_the_cpu(make_model, pixel_values, exact_cuda, backbone):
    model = make_model() if backbone == "vit" else _resnet_model()
    x = pixel_values if backbone == "vit" else resnet_images(3)
    labels = _targets(3, model.config.num_labels)
    gpu = copy.deepcopy(model).cuda()
    for m in (model, gpu):
        m.train()
    cpu_loss = model(pixel_values=x, labels=labels, epoch=1).loss
    gpu_loss = gpu(pixel_values=x.cuda(), labels=labels.cuda(), epoch=1).loss
    cpu_loss.backward()
    gpu_loss.backward()
    torch.testing.assert_close(gpu_loss.cpu(), cpu_loss, atol=1e-4, rtol=1e-4)
    for (name, a), b in zip(model.named_parameters(), gpu.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(b.grad.cpu(), a.grad, atol=1e-4, rtol=1e-3, msg=name)
    model.eval(), gpu.eval()
    with torch.no_grad():
        torch.testing.assert_close(gpu(pixel_values=x.cuda()).logits.cpu(), model(pixel_values=x).logits,
                                   atol=1e-4, rtol=1e-4)


@needs_cuda
def test_cuda_resnet_channels_last_equals_nchw(exact_cuda):
    model = _resnet_model().cuda().eval()
    tower = model.hspnet.clip.vision_model
    x = resnet_images(3).cuda()
    with torch.no_grad():
        channels_last = model(pixel_values=x).logits
        tower.channels_last = False
        nchw = model(pixel_values=x).logits
    torch.testing.assert_close(channels_last, nchw, atol=1e-5, rtol=1e-5)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_mixed_precision_training_step(make_model, pixel_values, dtype):
    model = make_model().cuda().train()
    labels = _targets(3, model.config.num_labels).cuda()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    for epoch in range(2):
        with torch.autocast("cuda", dtype=dtype):
            outputs = model(pixel_values=pixel_values.cuda(), labels=labels, epoch=epoch)
        assert outputs.logits.dtype == torch.float32 and torch.isfinite(outputs.loss)  # logits outside autocast
        scaler.scale(outputs.loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    assert all(torch.isfinite(p).all() for p in model.parameters())


@needs_cuda
def test_cuda_compiled_training_steps_equal_eager_without_recompiling(make_model, pixel_values, exact_cuda):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    eager = make_model().cuda().train()
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin)  # inductor: triton kernels
    x, labels = pixel_values.cuda(), _targets(3, eager.config.num_labels).cuda()
    optimizers = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1) for m in (eager, twin)]
    frames = None
    for epoch in range(4):
        if epoch == 2:
            frames = counters["frames"]["ok"]
        losses = []
        for runner, optimizer in zip((eager, compiled), optimizers):
            loss = runner(pixel_values=x, labels=labels, epoch=epoch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], atol=1e-4, rtol=1e-4)
    assert counters["frames"]["ok"] == frames  # epochs 2 and 3: nothing compiled again


@needs_cuda
def test_cuda_label_sampling_step(make_model, pixel_values):
    model = make_model(label_sample_size=2).cuda().train()
    labels = _targets(3, model.config.num_labels).cuda()
    outputs = model(pixel_values=pixel_values.cuda(), labels=labels, epoch=0)
    assert outputs.label_indices.numel() < model.config.num_labels and torch.isfinite(outputs.loss)
    outputs.loss.backward()


@needs_cuda
def test_cuda_training_run_trains_on_the_gpu(tmp_path):
    from hspnet.training.arguments import TrainingConfig
    from hspnet.training.loop import train
    from tests.helpers import tiny_options

    torch.cuda.reset_peak_memory_stats()
    results = train(TrainingConfig(**tiny_options(tmp_path, epochs=1, schedule_epochs=1, mixed_precision="bf16")))
    assert results["test"]["mAP"] > 0
    assert torch.cuda.max_memory_allocated() > 0  # it ran on the GPU (accelerate's default device)


def test_gpu_check_on_cpu_writes_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    finished = run_script([str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out),
                           "--tests", "tests/test_gpu_check.py"], timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["machine"]["device"] == "cpu" and report["machine"]["torch"] == torch.__version__
    sections = report["sections"]
    assert list(sections) == ["tests", "inference", "train_rn50", "labels_10k_exact", "labels_100k_sampled",
                              "train_vit"]
    assert {name: s["status"] for name, s in sections.items()} == dict.fromkeys(sections, "ok"), {
        name: s.get("output_tail") for name, s in sections.items() if s["status"] != "ok"}
    tests = sections["tests"]["result"]
    cuda_tests = [name for name in globals() if name.startswith("test_cuda_")]
    assert tests["passed"] == 0 and tests["failures"] == tests["errors"] == 0
    assert tests["skipped"] >= len(cuda_tests)  # parametrised ones count once per case
    inference = sections["inference"]["result"]["rows"]
    assert [row["batch_size"] for row in inference] == [1, 4]
    assert all(row["hspnet_over_tower"] > 0 for row in inference)
    rn50 = sections["train_rn50"]["result"]
    assert set(rn50["runners"]) == {"eager", "compiled", "authors"} and rn50["recompiles_after_warmup"] == 0
    assert all(runner["images_per_second"] > 0 for runner in rn50["runners"].values())
    assert set(sections["train_vit"]["result"]["runners"]) == {"eager", "compiled"}
    for name, labels in (("labels_10k_exact", 300), ("labels_100k_sampled", 3000)):
        result = sections[name]["result"]
        assert result["ran"] and result["labels"] == labels and result["best_step_seconds"] > 0
    assert sections["labels_100k_sampled"]["result"]["label_sample_size"] == 256
    assert report["seconds"] < 300


def test_gpu_check_refuses_to_start_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    finished = run_script([str(SCRIPT), "--out", str(tmp_path / "x.json")], timeout=120)
    assert finished.returncode == 2 and "no CUDA device" in finished.stderr
