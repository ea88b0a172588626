"""The GPU check: one command on a machine with one CUDA GPU and the project installed, one JSON of results.

    python benchmarks/gpu_check.py                          # CUDA, real sizes, about 7.5 minutes, gpu_check.json
    python benchmarks/gpu_check.py --device cpu --tiny      # the sections with tiny models (tests/test_gpu_check.py)

Sections, each in a process of its own with a time box (a section that fails, runs out of memory or out of time is
recorded as such and the next one runs; the JSON is rewritten after every section, so a cut-off run keeps what it
measured):

1. `tests`: the CUDA tests (`pytest -k cuda`; they skip without a GPU): passed / failed / skipped counts.
2. `inference`: images/s of HSPNet and of the bare CLIP image tower of the same weights (ViT-B/16, bfloat16 on a
   GPU), batch 1 and 128, and their ratio (`benchmarks/inference.py`).
3. `train_rn50`: the RN50 training step at batch 128 in bf16 autocast: eager, `torch.compile` and the authors' step
   on the same weights, interleaved (`benchmarks/train_step.py --backbone rn50 --compile --baseline authors`):
   images/s, ratios, compile time and recompiles after warm-up.
4. `labels_10k_exact`: a training step at C = 10,000 labels, exact text side (ViT-B/32, batch 32): step time and
   peak GPU memory (`torch.cuda.max_memory_allocated`, model included).
5. `labels_100k_sampled`: the same at C = 100,000 with label sampling (256 labels + the positives per step). The
   raw relation and the label adjacency are dense `(C + G)^2` and `C^2` float32 (~80 GB at C = 100,000), so this
   needs a GPU with more memory than that (an H200); on a smaller one the section records why it did not run.
6. `train_vit`: the ViT-B/16 training step in bf16, eager and compiled.

The label-scale sections build their models from a config with random prompt embeddings and a random relation
(the cost of a step does not depend on the values), directly on the device: `from_clip` would run every label name
through the text tower on the CPU first.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCHMARKS)

# (name, time box in seconds on a GPU); the order is the order of importance
SECTIONS = [("tests", 120), ("inference", 45), ("train_rn50", 150), ("labels_10k_exact", 45),
            ("labels_100k_sampled", 60), ("train_vit", 120)]


# ----- the sections (each runs in a child process: `--section NAME --section_out FILE`) ---------------------------


def section_tests(args) -> dict:
    import importlib.util

    if importlib.util.find_spec("pytest") is None:
        return {"ok": False, "reason": 'pytest is not installed: pip install -e ".[dev]"'}
    with tempfile.TemporaryDirectory() as folder:
        report = os.path.join(folder, "junit.xml")
        command = [sys.executable, "-m", "pytest", "-q", "-k", "cuda", "-p", "no:cacheprovider",
                   f"--junitxml={report}", *args.tests]
        finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        if os.path.exists(report):
            for suite in ElementTree.parse(report).getroot().iter("testsuite"):
                for key in counts:
                    counts[key] += int(suite.get(key, 0))
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["returncode"] = finished.returncode  # 5: nothing selected
    counts["command"] = " ".join(["python", *command[1:-1 - len(args.tests)], *args.tests])
    counts["output_tail"] = (finished.stdout + finished.stderr)[-2000:]
    counts["ok"] = finished.returncode in (0, 5) and counts["failures"] == counts["errors"] == 0
    return counts


def section_inference(args) -> dict:
    sys.path.insert(0, BENCHMARKS)
    import inference

    dtype = "float32" if args.device == "cpu" else "bfloat16"
    sizes = ["1", "4"] if args.tiny else ["1", "128"]
    argv = ["--device", args.device, "--dtype", dtype, "--batch_sizes", *sizes, "--rounds", "3",
            "--iters", "3" if args.tiny else "20"] + (["--tiny"] if args.tiny else [])
    rows = inference.main(argv)
    return {"command": "python benchmarks/inference.py " + " ".join(argv), "dtype": dtype,
            "rows": [{"batch_size": r["batch_size"], "tower_images_per_s": r["tower"],
                      "hspnet_images_per_s": r["hspnet"], "hspnet_over_tower": r["hspnet"] / r["tower"]}
                     for r in rows]}


def _train(args, backbone: str) -> dict:
    sys.path.insert(0, BENCHMARKS)
    import train_step

    argv = ["--backbone", backbone, "--device", args.device, "--compile", "--steps", "3", "--warmup", "1",
            "--batch_size", "4" if args.tiny else "128"]
    if args.device != "cpu":
        argv += ["--mixed_precision", "bf16"]
    if backbone == "rn50":
        argv += ["--baseline", "authors"]
    if args.tiny:  # inductor's C++ kernels take minutes to compile on a small CPU: dynamo's graphs only
        argv += ["--tiny", "--compile_backend", "eager"]
    results = train_step.main(argv)
    results["command"] = "python benchmarks/train_step.py " + " ".join(argv)
    return results


def section_train_rn50(args) -> dict:
    return _train(args, "rn50")


def section_train_vit(args) -> dict:
    return _train(args, "vit-b16")


def random_label_model(num_labels: int, sample_size: int | None, device: str, tiny: bool, name_length: int = 3):
    """An HSPNet classifier for `num_labels` labels (G = round(sqrt(C)) groups) built from its config on `device`,
    with random prompt embeddings (SOS, `n_ctx` context slots, a name of `name_length` tokens, ".", EOS), random
    EOS-consistent positions and a random symmetric relation: a training step costs what it costs with real
    prompts of that length."""
    import torch
    from transformers import CLIPConfig

    from hspnet import HSPNetConfig, HSPNetForImageClassification
    from hspnet.utils.tiny_clip import BOS_TOKEN_ID, EOS_TOKEN_ID, tiny_clip_config

    groups = max(1, round(math.sqrt(num_labels)))
    if tiny:
        clip_config = tiny_clip_config()
    else:
        text = dict(bos_token_id=BOS_TOKEN_ID, eos_token_id=EOS_TOKEN_ID, pad_token_id=EOS_TOKEN_ID)
        clip_config = CLIPConfig(text_config=text, vision_config=dict(patch_size=32, image_size=224),
                                 projection_dim=512)
    n_ctx = 4
    length = 1 + n_ctx + name_length + 2  # SOS, context, name, ".", EOS
    config = HSPNetConfig(clip_config=clip_config.to_dict(), id2label={i: f"l{i}" for i in range(num_labels)},
                          group_names=[f"g{g}" for g in range(groups)],
                          label_to_group=[i % groups for i in range(num_labels)], prompt_length=length,
                          label_sample_size=sample_size)
    torch.manual_seed(0)
    with torch.device("meta"):  # nothing allocated (nor an adjacency derived from an all-zero relation) until filled
        model = HSPNetForImageClassification(config)
    model = model.to_empty(device=device)
    base = model.hspnet
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.02)
        for name, buffer in model.named_buffers():  # CLIP's (non-persistent) position ids
            if name.endswith("position_ids"):
                buffer.copy_(torch.arange(buffer.shape[-1]).expand_as(buffer))
        base.label_prompt_embeds.normal_(0, 0.02)
        base.group_prompt_embeds.normal_(0, 0.02)
        base.label_eos_positions.fill_(length - 1)
        base.group_eos_positions.fill_(length - 1)
        base.relation.uniform_(0.0, 1.0)  # in place: at C = 100,000 it is 40 GB
    base.prepare_text_state()  # the label graph from it, once
    return model.train()


def _labels(args, num_labels: int, sample_size: int | None) -> dict:
    import torch

    from hspnet.training.optimization import parameter_groups

    cuda = args.device.startswith("cuda")
    if cuda and sample_size is not None:
        need = 4 * ((num_labels + round(math.sqrt(num_labels))) ** 2 + num_labels ** 2)
        have = torch.cuda.get_device_properties(0).total_memory
        if need > 0.9 * have:
            return {"labels": num_labels, "ran": False,
                    "reason": f"the dense relation and label adjacency need {need / 2**30:.0f} GiB; this GPU has "
                              f"{have / 2**30:.0f} GiB"}
    start = time.perf_counter()
    model = random_label_model(num_labels, sample_size, args.device, args.tiny)
    built = time.perf_counter() - start
    batch = 4 if args.tiny else 32
    side = model.config.clip_config.vision_config.image_size
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, side, side, generator=generator).to(args.device)
    targets = torch.zeros(batch, num_labels)
    targets[torch.arange(batch), torch.randint(num_labels, (batch,), generator=generator)] = 1
    targets = targets.to(args.device)
    optimizer = torch.optim.Adam(parameter_groups(model, 1e-4, 5e-4, 1e-4))
    dtype = None if args.device == "cpu" else torch.bfloat16

    def step() -> float:
        if cuda:
            torch.cuda.synchronize()
        began = time.perf_counter()
        with torch.autocast(device_type=torch.device(args.device).type, dtype=dtype, enabled=dtype is not None):
            loss = model(pixel_values=x, labels=targets, epoch=0).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - began

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up (the optimizer state is allocated here)
    times = [step() for _ in range(3)]
    result = {"labels": num_labels, "ran": True, "label_sample_size": sample_size, "batch_size": batch,
              "mixed_precision": "bf16" if dtype is not None else "no", "build_seconds": built,
              "step_seconds": times, "best_step_seconds": min(times)}
    if cuda:
        result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def section_labels_10k_exact(args) -> dict:
    return _labels(args, 300 if args.tiny else 10_000, None)


def section_labels_100k_sampled(args) -> dict:
    return _labels(args, 3000 if args.tiny else 100_000, 256)


# ----- the parent: sections in child processes, time boxes, one JSON -------------------------------------------------


def machine(device: str) -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "device": device}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    return info


def run_section(name: str, box: float, args) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "section.json")
        command = [sys.executable, os.path.abspath(__file__), "--section", name, "--section_out", out,
                   "--device", args.device, *(["--tiny"] if args.tiny else []), "--tests", *args.tests]
        began = time.perf_counter()
        try:
            finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=box)
            status = "ok" if finished.returncode == 0 else f"failed (exit status {finished.returncode})"
            tail = (finished.stdout + finished.stderr)[-3000:]
        except subprocess.TimeoutExpired as expired:
            status = f"timed out after {box:.0f} s"
            tail = ((expired.stdout or b"").decode(errors="replace") + (expired.stderr or b"").decode(
                errors="replace"))[-3000:]
        seconds = time.perf_counter() - began
        result = {}
        if os.path.exists(out):
            with open(out) as handle:
                result = json.load(handle)
    if status == "ok" and result.get("ok") is False:
        status = "failed"
    return {"status": status, "seconds": round(seconds, 1), "result": result,
            **({"output_tail": tail} if status != "ok" else {})}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny models and sizes (the CPU test of this script)")
    parser.add_argument("--out", default="gpu_check.json", help="the JSON of results")
    parser.add_argument("--budget", type=float, default=465.0,
                        help="seconds for all sections together (default 465: under 8 minutes with start-up; the "
                             "last section gets what is left)")
    parser.add_argument("--sections", nargs="+", default=[name for name, _ in SECTIONS],
                        choices=[name for name, _ in SECTIONS])
    parser.add_argument("--tests", nargs="+", default=["tests"], help="where `pytest -k cuda` looks")
    parser.add_argument("--section", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--section_out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.section is not None:  # a child: one section
        result = globals()[f"section_{args.section}"](args)
        with open(args.section_out, "w") as handle:
            json.dump(result, handle, indent=2, default=str)
        return result

    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device: run on a GPU machine, or with --device cpu --tiny")
    started = time.perf_counter()
    results = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(args.device),
               "options": {"device": args.device, "tiny": args.tiny, "budget_seconds": args.budget},
               "sections": {}}
    boxes = dict(SECTIONS)
    for name in args.sections:
        left = args.budget - (time.perf_counter() - started)
        if left < 15:
            results["sections"][name] = {"status": "skipped: out of time", "seconds": 0, "result": {}}
        else:
            print(f"gpu_check: {name} (up to {min(boxes[name], left):.0f} s)", flush=True)
            results["sections"][name] = run_section(name, min(boxes[name], left), args)
            print(f"gpu_check: {name}: {results['sections'][name]['status']} in "
                  f"{results['sections'][name]['seconds']} s", flush=True)
        results["seconds"] = round(time.perf_counter() - started, 1)
        with open(args.out, "w") as handle:  # after every section: a cut-off run keeps what it measured
            json.dump(results, handle, indent=2, default=str)
    print(f"gpu_check: wrote {args.out} in {results['seconds']} s")
    return results


if __name__ == "__main__":
    main()
