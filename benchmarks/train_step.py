"""Training-step throughput of HSPNet on a random real-size ViT-B/16 CLIP (no download).

One step = forward (image tower + the full text side: group GCN, meta-net, 80 label prompts through the frozen text
tower, label GCN) + SPLC loss + backward + Adam step with the reference parameter groups.

    python benchmarks/train_step.py                       # CPU, batch 32
    python benchmarks/train_step.py --compile             # + torch.compile(model), steps interleaved with eager
    python benchmarks/train_step.py --device cuda --batch_size 128 --mixed_precision bf16
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from inference import coco_like_hierarchy, vit_b16_config  # noqa: E402

from hspnet import HSPNetForImageClassification  # noqa: E402
from hspnet.utils.tiny_clip import byte_level_clip_tokenizer  # noqa: E402
from hspnet.training.optimization import parameter_groups  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--mixed_precision", choices=["no", "bf16", "fp16"], default="no")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(model), interleaved")
    args = parser.parse_args()

    from transformers import CLIPModel

    torch.manual_seed(0)
    labels, groups, label_to_group = coco_like_hierarchy()
    model = HSPNetForImageClassification.from_clip(
        CLIPModel(vit_b16_config()), labels=labels, groups=groups, label_to_group=label_to_group,
        tokenizer=byte_level_clip_tokenizer(),
    ).to(args.device).train()
    optimizer = torch.optim.Adam(parameter_groups(model, 1e-4, 5e-4, 1e-4))
    x = torch.randn(args.batch_size, 3, 224, 224, device=args.device)
    targets = torch.zeros(args.batch_size, len(labels), device=args.device)
    targets[torch.arange(args.batch_size), torch.randint(len(labels), (args.batch_size,))] = 1
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision)

    runners = {"eager": model}
    if args.compile:
        runners["compiled"] = torch.compile(model)

    def step(runner):
        with torch.autocast(device_type=torch.device(args.device).type, dtype=dtype, enabled=dtype is not None):
            loss = runner(pixel_values=x, labels=targets, epoch=0).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed(runner) -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        step(runner)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for runner in runners.values():
        for _ in range(args.warmup):
            step(runner)  # the first compiled step compiles
    times = {name: [] for name in runners}
    for _ in range(args.steps):  # interleaved, so background load hits both alike
        for name, runner in runners.items():
            times[name].append(timed(runner))
    for name, values in times.items():
        seconds = sorted(values)[len(values) // 2]
        print(f"{name}: device={args.device} threads={torch.get_num_threads()} batch={args.batch_size} "
              f"mixed_precision={args.mixed_precision}: {1 / seconds:.4f} steps/s ({seconds:.2f} s/step median, "
              f"{args.batch_size / seconds:.2f} images/s)")
    if args.compile:
        eager, compiled = (sorted(times[n])[len(times[n]) // 2] for n in ("eager", "compiled"))
        print(f"compiled / eager step time: {compiled / eager:.3f}")


if __name__ == "__main__":
    main()
