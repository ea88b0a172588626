"""The built-in demo dataset: procedurally drawn coloured shapes, no download.

Each image is a small RGB picture (64x64 by default) on a dark background, divided into a 2x2 grid; 1 to 4 of
the 12 objects below are drawn, each in its own cell and covering most of it (20-28 px at 64 px), so they survive
a resize to 32x32. Every object has its own shape AND its own colour, so a tiny ViT trained from scratch can learn
them; the 3 groups are shape families::

    round shape : red circle, orange ring, pink ellipse, brown semicircle
    polygon     : blue square, green triangle, cyan diamond, purple hexagon
    line        : yellow horizontal bar, white vertical bar, lime cross, magenta diagonal line

Everything is determined by the seed: image ``i`` of a split is drawn from ``numpy.random.default_rng((seed,
split, i))``, so the images do not depend on the number of worker processes. The PNG files are written once to
``<cache>/hspnet_demo/<version>-<options>/`` and the prepared dataset is cached like the other loaders.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from hspnet.data.core import TEST, TRAIN, BuildOptions, ParsedSource, Record, build_dataset_dict, cache_root
from hspnet.data.hierarchy import Hierarchy, builtin_hierarchy
from hspnet.utils.files import read_json_file

DEMO_VERSION = 1
DEMO_OBJECTS = [  # (label, group, RGB colour, shape); labels and groups as in hspnet/data/hierarchies/demo.json
    ("red circle", "round shape", (220, 30, 30), "circle"),
    ("orange ring", "round shape", (255, 140, 0), "ring"),
    ("pink ellipse", "round shape", (255, 150, 200), "ellipse"),
    ("brown semicircle", "round shape", (140, 80, 30), "semicircle"),
    ("blue square", "polygon", (30, 70, 235), "square"),
    ("green triangle", "polygon", (20, 160, 40), "triangle"),
    ("cyan diamond", "polygon", (0, 215, 215), "diamond"),
    ("purple hexagon", "polygon", (130, 40, 190), "hexagon"),
    ("yellow horizontal bar", "line", (250, 230, 30), "hbar"),
    ("white vertical bar", "line", (245, 245, 245), "vbar"),
    ("lime cross", "line", (150, 255, 60), "cross"),
    ("magenta diagonal line", "line", (230, 0, 200), "diagonal"),
]
_SPLIT_CODES = {TRAIN: 0, TEST: 1}


def demo_hierarchy() -> Hierarchy:
    """12 labels in 3 groups (round shape, polygon, line): the built-in hierarchy ``"demo"``, label ``i`` being
    ``DEMO_OBJECTS[i]``."""
    return builtin_hierarchy("demo")


def _draw(draw, shape: str, colour, x0: float, y0: float, size: float) -> None:
    x1, y1 = x0 + size, y0 + size
    cx, cy = x0 + size / 2, y0 + size / 2
    thick = max(4, int(round(size / 3.2)))
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=colour)
    elif shape == "ring":
        draw.ellipse([x0, y0, x1, y1], outline=colour, width=max(3, int(round(size / 5))))
    elif shape == "ellipse":
        draw.ellipse([x0, cy - size * 0.3, x1, cy + size * 0.3], fill=colour)
    elif shape == "semicircle":
        draw.pieslice([x0, y0 + size * 0.25, x1, y1 + size * 0.25], 180, 360, fill=colour)
    elif shape == "square":
        margin = size * 0.08
        draw.rectangle([x0 + margin, y0 + margin, x1 - margin, y1 - margin], fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=colour)
    elif shape == "hexagon":
        radius = size / 2
        draw.polygon(
            [(cx + radius * math.cos(math.pi / 3 * k), cy + radius * math.sin(math.pi / 3 * k)) for k in range(6)],
            fill=colour,
        )
    elif shape == "hbar":
        draw.rectangle([x0, cy - thick / 2, x1, cy + thick / 2], fill=colour)
    elif shape == "vbar":
        draw.rectangle([cx - thick / 2, y0, cx + thick / 2, y1], fill=colour)
    elif shape == "cross":
        draw.rectangle([x0, cy - thick / 2, x1, cy + thick / 2], fill=colour)
        draw.rectangle([cx - thick / 2, y0, cx + thick / 2, y1], fill=colour)
    elif shape == "diagonal":
        draw.line([(x0, y1), (x1, y0)], fill=colour, width=thick)
    else:  # pragma: no cover
        raise ValueError(shape)


def draw_demo_image(seed: int, split: str, index: int, image_size: int = 64):
    """``(PIL image, sorted label indices)`` of one demo image, fixed by ``(seed, split, index)``."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng((seed, _SPLIT_CODES[split], index))
    count = int(rng.integers(1, 5))
    labels = sorted(int(x) for x in rng.choice(len(DEMO_OBJECTS), size=count, replace=False))
    cells = rng.permutation(4)[:count]
    level = int(rng.integers(5, 60))
    tint = rng.integers(-5, 6, size=3)
    background = tuple(int(np.clip(level + t, 0, 255)) for t in tint)
    image = Image.new("RGB", (image_size, image_size), background)
    draw = ImageDraw.Draw(image)
    cell = image_size / 2
    order = rng.permutation(count)
    sizes = rng.uniform(0.62, 0.88, size=count) * cell
    offsets = rng.uniform(0.0, 1.0, size=(count, 2))
    for slot in order:
        label = labels[slot]
        row, col = divmod(int(cells[slot]), 2)
        size = float(sizes[slot])
        x0 = col * cell + offsets[slot, 0] * (cell - size)
        y0 = row * cell + offsets[slot, 1] * (cell - size)
        _, _, colour, shape = DEMO_OBJECTS[label]
        _draw(draw, shape, colour, x0, y0, size)
    return image, labels


def _write_chunk(args) -> list[list[int]]:
    folder, seed, split, indices, image_size = args
    out = []
    for index in indices:
        image, labels = draw_demo_image(seed, split, index, image_size)
        path = os.path.join(folder, split, f"{index:05d}.png")
        temporary = f"{path}.{os.getpid()}.tmp"  # atomic: concurrent builders never expose a partial file
        image.save(temporary, format="PNG", optimize=False)
        os.replace(temporary, path)
        out.append(labels)
    return out


def generate_demo_images(
    folder: str | os.PathLike,
    seed: int = 0,
    num_train: int = 1600,
    num_test: int = 400,
    image_size: int = 64,
    num_proc: int = 1,
) -> str:
    """Draw the demo images into ``folder/{train,test}/NNNNN.png`` and write ``folder/labels.json`` (written last:
    its presence means the folder is complete). Returns the path of ``labels.json``."""
    folder = os.fspath(folder)
    manifest = os.path.join(folder, "labels.json")
    params = {
        "version": DEMO_VERSION,
        "seed": seed,
        "num_train": num_train,
        "num_test": num_test,
        "image_size": image_size,
    }
    if os.path.isfile(manifest):
        try:
            if read_json_file(manifest, "demo manifest").get("params") == params:
                return manifest
        except (OSError, ValueError, AttributeError):
            pass
    labels: dict[str, list[list[int]]] = {}
    for split, count in ((TRAIN, num_train), (TEST, num_test)):
        os.makedirs(os.path.join(folder, split), exist_ok=True)
        chunks = [list(range(start, min(count, start + 200))) for start in range(0, count, 200)]
        jobs = [(folder, seed, split, chunk, image_size) for chunk in chunks]
        if num_proc > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=num_proc) as pool:
                results = list(pool.map(_write_chunk, jobs))
        else:
            results = [_write_chunk(job) for job in jobs]
        labels[split] = [item for chunk in results for item in chunk]
    temporary = f"{manifest}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump({"params": params, "labels": labels}, handle)
    os.replace(temporary, manifest)
    return manifest


def load_demo_dataset(
    options: BuildOptions | None = None,
    *,
    num_train: int = 1600,
    num_test: int = 400,
    image_size: int = 64,
    **build_options,
):
    """The demo ``DatasetDict`` (``train``, ``validation``, ``test``; ``validation_fraction=0`` drops
    ``validation``): ``num_train`` training images (of which ``validation_fraction`` are held out) and ``num_test``
    fully labelled test images, with single positives generated with ``seed``. Fast when cached.

    ``options`` is a :class:`~hspnet.data.core.BuildOptions` (its fields may be passed as keywords instead, e.g.
    ``load_demo_dataset(cache_dir=..., seed=1)``); its ``seed`` also draws the images, its ``num_proc`` is the number
    of processes drawing them."""
    if num_train < 2 or num_test < 1:
        raise ValueError("The demo needs num_train >= 2 and num_test >= 1.")
    options = BuildOptions.resolve(load_demo_dataset, options, build_options)
    seed = options.seed
    folder = os.path.join(
        cache_root(options.cache_dir),
        "hspnet_demo",
        f"v{DEMO_VERSION}-seed{seed}-n{num_train}-{num_test}-px{image_size}",
    )
    manifest = generate_demo_images(folder, seed, num_train, num_test, image_size, options.num_proc)

    def parse() -> ParsedSource:
        labels = read_json_file(manifest, "demo manifest")["labels"]
        splits = {
            split: [
                Record(
                    image_id=f"{split}/{index:05d}.png",
                    path=os.path.join(folder, split, f"{index:05d}.png"),
                    labels=value,
                )
                for index, value in enumerate(labels[split])
            ]
            for split in (TRAIN, TEST)
        }
        return ParsedSource(hierarchy=demo_hierarchy(), splits=splits, report={"root": folder})

    return build_dataset_dict("demo", parse, options, annotation_files=[manifest], loader_options={"folder": folder})
