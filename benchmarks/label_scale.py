"""Training-step time and peak memory of HSPNet as the number of labels C grows (exact and sampled text side).

Configuration (no download): a random real-size CLIP with a ViT-B/32 image tower and the standard 12-layer text tower,
batch 32, label names of 2-3 letters (prompts of BPE-like length with the byte-level tokenizer), G = round(sqrt(C))
groups, SPLC loss, Adam with the reference parameter groups.

- step time: every C (and mode) is built in ONE process and the steps are interleaved round by round, so background
  load hits all alike; reported as the median step and its ratio to the C = 80 exact step;
- peak memory: each (C, mode) runs in its own process (build + one warm-up step + one timed step), started before
  the timing models are built; peak RSS of that process (`VmHWM`), or peak CUDA memory with `--device cuda`.

    python benchmarks/label_scale.py                                   # C = 80, 1000, 10000; exact and sampled
    python benchmarks/label_scale.py --labels 80 1000 --modes exact --steps 2
    python benchmarks/label_scale.py --labels 80 10000 --modes sampled --skip_memory   # sampled vs C = 80 exact
    python benchmarks/label_scale.py --device cuda --steps 5
    python benchmarks/label_scale.py --sharing --labels 80 1000   # text side only: shared prefixes vs full prompts
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import string
import subprocess
import sys
import time
from dataclasses import replace

import torch


def label_names(num_labels: int) -> list[str]:
    """`num_labels` distinct names of 2-3 lowercase letters ("aa", "ab", ..., then "aaa", ...)."""
    letters = string.ascii_lowercase
    names = [a + b for a in letters for b in letters] + [a + b + c for a in letters for b in letters for c in letters]
    return names[:num_labels]


def build(num_labels: int, sample_size: int | None, device: str, seed: int = 0):
    from transformers import CLIPConfig, CLIPModel

    from hspnet import HSPNetForImageClassification
    from hspnet.utils.tiny_clip import BOS_TOKEN_ID, EOS_TOKEN_ID, byte_level_clip_tokenizer

    torch.manual_seed(seed)
    text = dict(bos_token_id=BOS_TOKEN_ID, eos_token_id=EOS_TOKEN_ID, pad_token_id=EOS_TOKEN_ID)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=dict(patch_size=32, image_size=224),
                                projection_dim=512))
    groups = max(1, round(math.sqrt(num_labels)))
    model = HSPNetForImageClassification.from_clip(
        clip, labels=label_names(num_labels), groups=[f"group {g}" for g in range(groups)],
        label_to_group=[i % groups for i in range(num_labels)], tokenizer=byte_level_clip_tokenizer(),
        label_sample_size=sample_size,
    )
    if device == "cpu":  # as `hspnet train` does (--release_memory_between_chunks, on by default)
        from hspnet.training.memory import release_freed_memory

        base = model.hspnet
        base.text_options = replace(base.text_options, before_recomputed_chunk=release_freed_memory)
    return model.to(device).train()


def make_step(model, batch_size: int, device: str):
    from hspnet.training.optimization import parameter_groups

    optimizer = torch.optim.Adam(parameter_groups(model, 1e-4, 5e-4, 1e-4))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, 224, 224, generator=generator).to(device)
    targets = torch.zeros(batch_size, model.config.num_labels)
    targets[torch.arange(batch_size), torch.randint(model.config.num_labels, (batch_size,), generator=generator)] = 1
    targets = targets.to(device)

    def step() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(pixel_values=x, labels=targets, epoch=0).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def peak_rss_kib() -> int:
    """This process's peak resident set size in KiB: `VmHWM` (Linux; it starts afresh at exec), else `ru_maxrss`,
    which on Linux keeps the high-water mark of the parent at fork time and so overstates a child's."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure_memory(num_labels: int, mode: str, args) -> dict:
    """In this process: build, one warm-up step, `args.steps` steps; the peak memory and the median step."""
    sample = args.sample_size if mode == "sampled" else None
    model = build(num_labels, sample, args.device)
    step = make_step(model, args.batch_size, args.device)
    step()
    times = sorted(step() for _ in range(args.steps))
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = peak_rss_kib() / 2**20

    return {"labels": num_labels, "mode": mode, "peak_gib": peak, "median_step_s": times[len(times) // 2]}


def sharing_ratio(num_labels: int, args) -> dict:
    """Median wall and CPU (this process) time of the text side (forward + backward of `compute_label_embeddings`)
    with and without shared prompt prefixes, interleaved in this process. CPU time is the steadier measure on a
    shared machine: the shared path runs fewer FLOPs but more (smaller) operations, so waiting for a busy CPU
    inflates its wall time more."""
    model = build(num_labels, None, args.device)
    base = model.hspnet
    times = {(share, kind): [] for share in (True, False) for kind in ("wall", "cpu")}
    for _ in range(args.steps + 1):
        for share in (True, False):
            base.text_options = replace(base.text_options, share_prompt_prefix=share)
            wall, cpu = time.perf_counter(), time.process_time()
            base.compute_label_embeddings().square().sum().backward()
            times[(share, "wall")].append(time.perf_counter() - wall)
            times[(share, "cpu")].append(time.process_time() - cpu)
    return {key: sorted(t[1:])[len(t[1:]) // 2] for key, t in times.items()}


def relation_times(num_labels: int, args) -> tuple[float, float]:
    """Median seconds of the label adjacency from a `(C, C)` raw relation (cosine similarities of random unit
    vectors): the released steps (`topk` + `scatter_` into zeros, then the row normalisation) and
    `process_relation` (the same result, checked bit for bit), interleaved in this process."""
    from hspnet.models.hspnet.modeling_label_graph import process_relation

    embeddings = torch.nn.functional.normalize(torch.randn(num_labels, 64, generator=torch.Generator().manual_seed(0)),
                                               dim=1)
    relation, k, p = embeddings @ embeddings.T, int(0.75 * num_labels), 0.2

    def released() -> torch.Tensor:
        kept = torch.zeros_like(relation)
        values, indices = torch.topk(relation, k, dim=1)
        kept.scatter_(1, indices, values).fill_diagonal_(0.0)
        adjacency = kept / kept.sum(dim=1, keepdim=True) * p
        return adjacency.fill_diagonal_(1.0 - p)

    times: dict[str, list[float]] = {"released": [], "process_relation": []}
    for _ in range(args.steps):
        for name, run in (("released", released), ("process_relation", lambda: process_relation(relation, 0.75, p))):
            start = time.perf_counter()
            result = run()
            times[name].append(time.perf_counter() - start)
            if name == "released":
                expected = result
            elif not torch.equal(result, expected):
                raise SystemExit("process_relation differs from the released steps")
    return tuple(sorted(t)[len(t) // 2] for t in times.values())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, nargs="+", default=[80, 1000, 10000])
    parser.add_argument("--modes", nargs="+", choices=["exact", "sampled"], default=["exact", "sampled"])
    parser.add_argument("--sample_size", type=int, default=256, help="unobserved labels sampled per step (sampled)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration (after one warm-up)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip_memory", action="store_true", help="only the interleaved step times")
    parser.add_argument("--skip_time", action="store_true", help="only the per-process peak memory")
    parser.add_argument("--sharing", action="store_true", help="only: text side with vs without shared prefixes")
    parser.add_argument("--relation", action="store_true", help="only: the label adjacency from the raw relation "
                        "(what every model load computes), released steps vs process_relation")
    parser.add_argument("--memory_worker", nargs=2, metavar=("C", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.relation:
        print(f"threads={torch.get_num_threads()}\n| C | released steps (s) | process_relation (s) | speed-up |\n"
              "|---:|---:|---:|---:|")
        for c in args.labels:
            before, after = relation_times(c, args)
            print(f"| {c:,} | {before:.3f} | {after:.3f} | {before / after:.2f}x |", flush=True)
        return
    if args.sharing:
        print("| C | shared prefixes, wall / CPU (s) | full prompts, wall / CPU (s) | shared / full (wall) | "
              "shared / full (CPU) |")
        print("|---:|---:|---:|---:|---:|")
        for c in args.labels:
            t = sharing_ratio(c, args)
            print(f"| {c:,} | {t[(True, 'wall')]:.2f} / {t[(True, 'cpu')]:.2f} | {t[(False, 'wall')]:.2f} / "
                  f"{t[(False, 'cpu')]:.2f} | {t[(True, 'wall')] / t[(False, 'wall')]:.2f}x | "
                  f"{t[(True, 'cpu')] / t[(False, 'cpu')]:.2f}x |", flush=True)
        return
    if args.memory_worker:
        print(json.dumps(measure_memory(int(args.memory_worker[0]), args.memory_worker[1], args)))
        return

    configs = [(c, mode) for c in args.labels for mode in args.modes if not (mode == "sampled" and c <= 80)]
    if (min(args.labels), "exact") not in configs:  # the reference of the ratios
        configs.insert(0, (min(args.labels), "exact"))
    print(f"device={args.device} threads={torch.get_num_threads()} batch={args.batch_size} "
          f"ViT-B/32 + 12-layer text tower (random), 2-3 letter label names, G = round(sqrt(C)), "
          f"sampled: observed positives + {args.sample_size} others", flush=True)
    memory = {}
    if not args.skip_memory:
        for c, mode in configs:
            command = [sys.executable, __file__, "--memory_worker", str(c), mode, "--steps", "1",
                       "--batch_size", str(args.batch_size), "--device", args.device,
                       "--sample_size", str(args.sample_size)]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode:
                memory[(c, mode)] = None
                print(f"C={c} {mode}: failed ({result.stderr.strip().splitlines()[-1:]})", flush=True)
            else:
                memory[(c, mode)] = json.loads(result.stdout.strip().splitlines()[-1])["peak_gib"]
                print(f"C={c} {mode}: peak {memory[(c, mode)]:.2f} GiB", flush=True)
    medians: dict = {}
    if not args.skip_time:
        steps = {}
        for c, mode in configs:
            print(f"building C={c} {mode} ...", flush=True)
            steps[(c, mode)] = make_step(build(c, args.sample_size if mode == "sampled" else None, args.device),
                                         args.batch_size, args.device)
            steps[(c, mode)]()  # warm-up
        times = {key: [] for key in steps}
        for round_index in range(args.steps):
            for key, step in steps.items():
                times[key].append(step())
            print(f"round {round_index + 1}/{args.steps}: "
                  + ", ".join(f"C={c} {m}: {t[-1]:.1f} s" for (c, m), t in times.items()), flush=True)
        medians = {key: sorted(t)[len(t) // 2] for key, t in times.items()}
        del steps
    base = medians.get((min(args.labels), "exact"))
    print()
    print("| C | mode | training step (s, median) | vs C = 80 exact | peak memory (GiB, own process) |")
    print("|---:|---|---:|---:|---:|")
    for key in configs:
        t = medians.get(key)
        m = memory.get(key)
        print(f"| {key[0]:,} | {key[1]} | {f'{t:.1f}' if t else '-'} | "
              f"{f'{t / base:.2f}x' if t and base else '-'} | {f'{m:.2f}' if m else '-'} |")


if __name__ == "__main__":
    main()
