"""The streamed training pipeline (`hspnet train --streaming true`) against the map-style one, on the same images.

1. Throughput: images/s of one epoch of training batches (read, decode, transform to 224 x 224 `pixel_values`, through
   a `DataLoader`) with 0, 1 and 2 loader workers, streamed (`hspnet.training.streaming.StreamedLoader` over the
   Parquet shards of `hspnet prepare --shards`) and map-style (the shuffled `DataLoader` over the same shards read
   whole, `hspnet.data.load_prepared_dataset`), interleaved in one process: map w=0, stream w=0, map w=1, ... for
   each repeat, the median reported.
2. Memory: the peak resident memory of a process that reads one epoch of N images (0 workers), for each N of
   `--memory_sizes` (one fresh process each, streamed and map-style): before the epoch, after its first
   `--memory_batches` batches and at its end. Flat from there to the end is memory that does not grow with the
   number of images read.

The demo's coloured shapes (64 x 64 PNG, `--image_size`) are drawn and sharded into `--output_dir` once per size.

    python benchmarks/streaming.py                                   # 2,000 images; memory 2,000 vs 20,000
    python benchmarks/streaming.py --num_images 500 --repeats 1 --memory_sizes 500 5000   # quicker
    python benchmarks/streaming.py --memory_only --shards 80 --memory_sizes 20000  # shards of 250 images
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def prepared(folder: str, num_images: int, image_size: int, shards: int) -> str:
    """The demo set of `num_images` training images as shards in `folder/shards-N` (made once)."""
    from hspnet.data import load_demo_dataset
    from hspnet.data.shards import save_sharded_dataset

    out = os.path.join(folder, f"shards-{num_images}-px{image_size}")
    if not os.path.isfile(os.path.join(out, "hspnet_build.json")):
        data = load_demo_dataset(cache_dir=os.path.join(folder, "cache"), num_train=num_images, num_test=8,
                                 image_size=image_size, validation_fraction=0.0, num_proc=os.cpu_count() or 1)
        save_sharded_dataset(data, out, shards, overwrite=True)
    return out


def loaders(folder: str, batch_size: int, shuffle_buffer: int):
    """`make(kind, workers)`: a fresh loader over the training split, "map" or "stream"."""
    import torch
    from torch.utils.data import DataLoader

    from hspnet.data import load_prepared_dataset
    from hspnet.data.batches import collate, make_transform, undecoded
    from hspnet.data.shards import open_sharded_dataset
    from hspnet.models.hspnet.image_processing_hspnet import HSPNetImageProcessor
    from hspnet.training.streaming import StreamedBatches, StreamedLoader, node_stream

    transform = make_transform(HSPNetImageProcessor(), 12)  # CLIP's preprocessing: 224 x 224
    cache = os.path.join(os.path.dirname(folder), "cache")
    streamed = open_sharded_dataset(folder, cache_dir=cache)["train"]
    whole = None

    def make(kind: str, workers: int):
        nonlocal whole
        if kind == "map":
            if whole is None:
                whole = undecoded(load_prepared_dataset(folder, cache_dir=cache)["train"])
            return DataLoader(whole.with_transform(transform), batch_size=batch_size, shuffle=True,
                              collate_fn=collate, num_workers=workers)
        batches = StreamedBatches(node_stream(streamed, 0, shuffle_buffer, 0, 1), len(streamed), batch_size)
        return StreamedLoader(batches, transform, num_workers=workers, device=torch.device("cpu"), description={})

    return make, len(streamed)


def epoch_seconds(loader) -> tuple[float, int]:
    start, count = time.perf_counter(), 0
    for batch in loader:
        count += len(batch["pixel_values"])
    return time.perf_counter() - start, count


def throughput(args) -> dict:
    import datasets

    datasets.disable_progress_bars()
    folder = prepared(args.output_dir, args.num_images, args.image_size, args.shards)
    make, rows = loaders(folder, args.batch_size, args.shuffle_buffer)
    order = [(kind, workers) for workers in args.workers for kind in ("map", "stream")]
    times: dict[str, list[float]] = {f"{kind} w={workers}": [] for kind, workers in order}
    make("map", 0)  # read the map-style copy into the Arrow cache before timing
    for repeat in range(args.repeats + 1):  # the first round warms up (files in the page cache, imports)
        for kind, workers in order:
            seconds, count = epoch_seconds(make(kind, workers))
            assert count == rows, (kind, workers, count, rows)
            if repeat:
                times[f"{kind} w={workers}"].append(seconds)
    return {name: round(rows / statistics.median(values), 1) for name, values in times.items()}


def peak_rss_mib() -> float:
    """The process's peak resident memory so far (Linux: VmHWM; elsewhere ru_maxrss), in MiB."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(args) -> dict:
    """One epoch of `args.memory_child` images, streamed or map-style, 0 workers: the peak resident memory (MiB)
    before the epoch, after its first `--memory_batches` batches and at its end."""
    import datasets

    datasets.disable_progress_bars()
    folder = prepared(args.output_dir, args.memory_child, args.image_size, args.shards)
    make, rows = loaders(folder, args.batch_size, args.shuffle_buffer)
    loader = make(args.kind, 0)
    before, early, count, start = peak_rss_mib(), None, 0, time.perf_counter()
    for index, batch in enumerate(loader):
        count += len(batch["pixel_values"])
        if index + 1 == args.memory_batches:
            early = peak_rss_mib()
    return {"images": count, "kind": args.kind, "before": round(before, 1), "early": round(early or peak_rss_mib(), 1),
            "end": round(peak_rss_mib(), 1), "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/benchmarks/streaming", help="where the shards are made")
    parser.add_argument("--num_images", type=int, default=2000, help="images of the throughput measurement")
    parser.add_argument("--image_size", type=int, default=64, help="side of the demo's PNG images")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--shuffle_buffer", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="loader worker counts")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per configuration (after a warm-up)")
    parser.add_argument("--memory_sizes", type=int, nargs="*", default=[2000, 20000],
                        help="dataset sizes of the memory measurement (one process each); none: skip it")
    parser.add_argument("--memory_batches", type=int, default=32,
                        help="the memory measurement also reports the peak after this many batches (32 x 64 images)")
    parser.add_argument("--memory_only", action="store_true", help="skip the throughput measurement")
    parser.add_argument("--memory_child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="stream", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import datasets

    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0  # datasets' 5 s pause at the end of each epoch's stream
    if args.memory_child:
        print(json.dumps(memory_child(args)))
        return
    import torch

    torch.set_num_threads(1)
    print(f"images of {args.image_size} px in {args.shards} shards, batch {args.batch_size}, shuffle buffer "
          f"{args.shuffle_buffer}, {os.cpu_count()} CPUs")
    if not args.memory_only:
        print(f"{args.num_images} images, images/s (median of {args.repeats} epochs):")
        for name, rate in throughput(args).items():
            print(f"  {name:<14} {rate:>8.1f}")
    if args.memory_sizes:
        print(f"peak resident memory (MiB): before the epoch, after {args.memory_batches} batches, at its end")
    for size in args.memory_sizes:
        for kind in ("stream", "map"):
            command = [sys.executable, os.path.abspath(__file__), "--memory_child", str(size), "--kind", kind]
            for option in ("output_dir", "image_size", "shards", "batch_size", "shuffle_buffer", "memory_batches"):
                command += [f"--{option}", str(getattr(args, option))]
            result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
            if result.returncode:
                raise SystemExit(result.stderr[-3000:])
            report = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"  {kind:<6} {report['images']:>6} images: {report['before']:7.1f} {report['early']:7.1f} "
                  f"{report['end']:7.1f}  ({report['seconds']} s)")


if __name__ == "__main__":
    main()
