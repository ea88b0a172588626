"""Images/s of the image pipeline a GPU waits on: decode + resize + crop + normalise, from files to a batch tensor.

Generates JPEG and PNG files of a realistic size (640x480 by default: smooth gradients with seeded noise, JPEG
quality 90) in a temporary folder, then times, interleaved round by round in one process (best round reported):

- `reference (PIL + numpy)`: the authors' torchvision transform written with PIL and numpy only, image by image:
  `Image.open(path).convert("RGB")`, `Resize(224, BICUBIC)` (short side 224, long side `int(224 * long / short)`),
  `CenterCrop(224)` (offsets `int(round(margin / 2))`), `ToTensor` (/255, float32) and CLIP's `Normalize`;
- `hspnet`: what training, evaluation and `hspnet predict` run: `hspnet.utils.images.open_image` (EXIF orientation,
  16-bit scaling, RGB) and the saved `HSPNetImageProcessor` (loaded from a folder with `from_pretrained`) on the batch;
- `hspnet, per-image path`: the same processor with `fast_pil_path = False` (its previous implementation);
- `JPEG draft (not identical)`: `Image.draft` (libjpeg's DCT-domain downscaling to at least 224 on the short side)
  before the processor. Faster, but its pixels differ from what the model was trained with (the max difference is
  printed), so it is not used by hspnet: an option a user can take knowingly.

The pixels of `hspnet` and of the reference are checked bit-identical first. Then the same pipelines run as the
`collate_fn` of a `torch.utils.data.DataLoader` (batches built in the workers) with 1 and 2 worker processes;
each loader is iterated once untimed (workers started, files in the page cache), then timed.

    python benchmarks/image_pipeline.py                       # 64 JPEG + 64 PNG, batch 32, workers 1 and 2
    python benchmarks/image_pipeline.py --images 128 --rounds 5 --workers 1 2 4
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from functools import partial

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hspnet.models.hspnet.image_processing_hspnet import HSPNetImageProcessor  # noqa: E402
from hspnet.utils.images import open_image  # noqa: E402

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def write_images(folder: str, count: int, width: int, height: int, kind: str, seed: int = 0) -> list[str]:
    """`count` photo-like files (gradients + noise, varied per image) of `width x height`."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    paths = []
    for index in range(count):
        phase = rng.integers(0, 256, size=3)
        base = np.stack([(x * 255 // (width - 1) + phase[0]) % 256, (y * 255 // (height - 1) + phase[1]) % 256,
                         ((x + y) // 4 + phase[2]) % 256], axis=-1)
        pixels = np.clip(base + rng.normal(0, 12, size=(height, width, 3)), 0, 255).astype(np.uint8)
        path = os.path.join(folder, f"{kind}-{index:04d}.{'jpg' if kind == 'jpeg' else 'png'}")
        Image.fromarray(pixels).save(path, **({"quality": 90} if kind == "jpeg" else {}))
        paths.append(path)
    return paths


def reference_one(path: str, size: int = 224) -> np.ndarray:
    """The authors' transform, PIL + numpy: `(3, size, size)` float32."""
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    image = image.resize((new_width, new_height), Image.BICUBIC)
    top, left = int(round((new_height - size) / 2.0)), int(round((new_width - size) / 2.0))
    pixels = np.asarray(image.crop((left, top, left + size, top + size)))  # (size, size, 3) uint8
    values = pixels.astype(np.float32) / np.float32(255)
    return ((values - MEAN) / STD).transpose(2, 0, 1)


def reference_batch(paths: list[str]) -> torch.Tensor:
    return torch.from_numpy(np.stack([reference_one(path) for path in paths]))


def hspnet_batch(paths: list[str], processor) -> torch.Tensor:
    return processor([open_image(path) for path in paths], return_tensors="pt")["pixel_values"]


def open_draft(path: str, size: int = 224):
    """`Image.draft` before decoding: libjpeg decodes at 1/2, 1/4 or 1/8 scale, the largest that keeps both sides
    >= `size` (not the pixels of a full decode + bicubic)."""
    with Image.open(path) as opened:
        opened.draft("RGB", (size, size))
        return opened.convert("RGB")


def draft_batch(paths: list[str], processor) -> torch.Tensor:
    return processor([open_draft(path) for path in paths], return_tensors="pt")["pixel_values"]


class Paths(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return self.paths[index]


def chunks(paths: list[str], size: int) -> list[list[str]]:
    return [paths[i:i + size] for i in range(0, len(paths), size)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="files of each format")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best is reported")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="DataLoader worker counts")
    parser.add_argument("--formats", nargs="+", choices=["jpeg", "png"], default=["jpeg", "png"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the pipeline is single-threaded PIL / numpy; keep torch out of the way

    with tempfile.TemporaryDirectory() as folder:
        HSPNetImageProcessor().save_pretrained(os.path.join(folder, "processor"))
        processor = HSPNetImageProcessor.from_pretrained(os.path.join(folder, "processor"))
        per_image = HSPNetImageProcessor.from_pretrained(os.path.join(folder, "processor"))
        per_image.fast_pil_path = False
        print(f"{args.images} files per format, {args.width}x{args.height}, batch {args.batch_size}, "
              f"{os.cpu_count()} CPUs, best of {args.rounds} interleaved rounds")
        rows = []
        for kind in args.formats:
            paths = write_images(folder, args.images, args.width, args.height, kind)
            pipelines = {"reference (PIL + numpy)": reference_batch,
                         "hspnet": partial(hspnet_batch, processor=processor),
                         "hspnet, per-image path": partial(hspnet_batch, processor=per_image)}
            if kind == "jpeg":
                pipelines["JPEG draft (not identical)"] = partial(draft_batch, processor=processor)
            # the same pixels, bit for bit
            expected = reference_batch(paths)
            for name, run in pipelines.items():
                got = torch.cat([run(batch) for batch in chunks(paths, args.batch_size)])
                difference = float((got - expected).abs().max())
                if "draft" in name:
                    print(f"{kind}: {name}: max |pixel difference| vs the reference {difference:.3f} "
                          f"(in normalised units; 1/255/std ~ 0.015 is one grey level)")
                elif difference != 0.0:
                    raise SystemExit(f"{kind}: {name} differs from the reference by {difference}")
            print(f"{kind}: hspnet and its per-image path are bit-identical to the reference")

            best = {name: 0.0 for name in pipelines}
            for _ in range(args.rounds):
                for name, run in pipelines.items():
                    start = time.perf_counter()
                    for batch in chunks(paths, args.batch_size):
                        run(batch)
                    best[name] = max(best[name], len(paths) / (time.perf_counter() - start))
            rows += [(kind, "1 process", name, speed) for name, speed in best.items()]

            for workers in args.workers:
                loaders = {name: torch.utils.data.DataLoader(Paths(paths), batch_size=args.batch_size,
                                                             num_workers=workers, collate_fn=run,
                                                             persistent_workers=True, prefetch_factor=2)
                           for name, run in pipelines.items() if "per-image" not in name}
                for loader in loaders.values():
                    for _ in loader:  # workers started, files cached
                        pass
                best = {name: 0.0 for name in loaders}
                for _ in range(args.rounds):
                    for name, loader in loaders.items():
                        start = time.perf_counter()
                        for _ in loader:
                            pass
                        best[name] = max(best[name], len(paths) / (time.perf_counter() - start))
                rows += [(kind, f"DataLoader, {workers} worker{'s' if workers > 1 else ''}", name, speed)
                         for name, speed in best.items()]
                del loaders

    print()
    print("| format | how | pipeline | images/s | vs reference |")
    print("|---|---|---|---:|---:|")
    reference = {(kind, how): speed for kind, how, name, speed in rows if name.startswith("reference")}
    for kind, how, name, speed in rows:
        print(f"| {kind} | {how} | {name} | {speed:.1f} | {speed / reference[(kind, how)]:.2f}x |")
    return rows


if __name__ == "__main__":
    main()
