"""Open Images fixtures in the exact official formats: the human-verified labels CSV (``ImageID,Source,LabelName,
Confidence``), the class descriptions (V7: with the ``LabelName,DisplayName`` header; older: none), the trainable
classes (one MID per line), the image lists and the nested ``bbox_labels_600_hierarchy.json``; 8x8 JPEG images under
``train/``, ``test/``, ``validation/`` as ``<ImageID>.jpg``.

:func:`write_openimages` writes a small, hand-checked tree (:data:`TRAIN_ROWS`, :data:`TEST_ROWS`: duplicates,
machine-generated rows, a conflicting pair, a class outside the trainable list, an image listed but missing);
:func:`write_large_openimages` a generated one with thousands of classes."""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np

from tests.helpers import write_image, write_text

ENTITY = "/m/0bl9f"
DESCRIPTIONS = {  # MID -> display name (real MIDs and names of Open Images)
    ENTITY: "Entity",
    "/m/0jbk": "Animal",
    "/m/01yrx": "Cat",
    "/m/0bt9lr": "Dog",
    "/m/015p6": "Bird",
    "/m/03qrc": "Hamster",
    "/m/07yv9": "Vehicle",
    "/m/01prls": "Land vehicle",
    "/m/0k4j": "Car",
    "/m/0199g": "Bicycle",
    "/m/083wq": "Wheel",
    "/m/02wbm": "Food",
    "/m/02xwb": "Fruit",
    "/m/014j1m": "Apple",
    "/m/01g317": "Person",
    "/m/0dzct": "Human face",
    "/m/01t032": "Golden retriever",
    "/m/016wkx": "Pug",
    "/m/09f_2": "Tulip",
    "/m/06z37_": "Poster, print",  # a display name with a comma: quoted in the CSV
}
TRAINABLE = [  # the label order; Hamster is described but not trainable
    "/m/01yrx", "/m/0bt9lr", "/m/015p6", "/m/0jbk", "/m/0k4j", "/m/0199g", "/m/083wq", "/m/014j1m", "/m/01g317",
    "/m/0dzct", "/m/01t032", "/m/016wkx", "/m/09f_2", "/m/06z37_",
]


def node(mid, sub=(), part=()):
    out = {"LabelName": mid}
    if sub:
        out["Subcategory"] = list(sub)
    if part:
        out["Part"] = list(part)
    return out


HIERARCHY = node(ENTITY, sub=[
    node("/m/0jbk", sub=[node("/m/01yrx"), node("/m/0bt9lr"), node("/m/015p6"), node("/m/03qrc")]),
    node("/m/07yv9", sub=[node("/m/01prls", sub=[node("/m/0k4j", part=[node("/m/083wq")]),
                                                 node("/m/0199g", part=[node("/m/083wq")])])]),
    node("/m/02wbm", sub=[node("/m/02xwb", sub=[node("/m/014j1m")])]),
    node("/m/01g317", part=[node("/m/0dzct")]),
    node("/m/014j1m"),  # a second, later path to Apple: the first one (Food > Fruit > Apple) wins
])
# level 1, Part edges not followed: the groups of the classes the hierarchy places
LEVEL1 = {"Cat": "Animal", "Dog": "Animal", "Bird": "Animal", "Animal": "Animal", "Car": "Vehicle",
          "Bicycle": "Vehicle", "Apple": "Food", "Person": "Person"}
LEVEL2 = {"Cat": "Cat", "Dog": "Dog", "Bird": "Bird", "Animal": "Animal", "Car": "Land vehicle",
          "Bicycle": "Land vehicle", "Apple": "Fruit", "Person": "Person"}
PARTS = {"Wheel": "Vehicle", "Human face": "Person"}  # level 1 with follow_parts=True
OUTSIDE = ["Golden retriever", "Pug", "Tulip", "Poster, print"]  # + Wheel and Human face without follow_parts

IDS = {name: f"{index:016x}" for index, name in enumerate(
    ["a", "b", "c", "d", "e", "f", "g", "h", "t1", "t2", "t3", "t4", "t5"], start=0xF00D0000)}

TRAIN_ROWS = [  # ImageID, Source, LabelName, Confidence
    (IDS["a"], "verification", "/m/01yrx", "1"),
    (IDS["a"], "verification", "/m/0bt9lr", "1"),
    (IDS["a"], "crowdsource-verification", "/m/0k4j", "0"),
    (IDS["a"], "verification", "/m/01yrx", "1"),  # duplicate row
    (IDS["b"], "verification", "/m/0k4j", "1"),
    (IDS["b"], "verification", "/m/0199g", "1"),
    (IDS["b"], "verification", "/m/083wq", "1"),
    (IDS["b"], "machine", "/m/01g317", "0.7"),  # machine-generated: ignored by default, kept at threshold 0.5
    (IDS["b"], "machine", "/m/014j1m", "0.3"),  # machine-generated below 0.5: always ignored
    (IDS["b"], "verification", "/m/01yrx", "0"),
    (IDS["c"], "verification", "/m/014j1m", "1"),
    (IDS["c"], "verification", "/m/03qrc", "1"),  # Hamster: not a trainable class, ignored
    (IDS["d"], "verification", "/m/01g317", "1"),
    (IDS["d"], "verification", "/m/0dzct", "1"),
    (IDS["d"], "verification", "/m/01t032", "1"),
    (IDS["d"], "verification", "/m/0bt9lr", "1"),
    (IDS["d"], "crowdsource-verification", "/m/0bt9lr", "0"),  # conflicts with the row above: unknown
    (IDS["e"], "verification", "/m/016wkx", "1"),
    (IDS["e"], "verification", "/m/09f_2", "0"),
    (IDS["f"], "verification", "/m/09f_2", "1"),
    (IDS["f"], "verification", "/m/06z37_", "1"),
    (IDS["g"], "verification", "/m/01yrx", "0"),  # only a negative: no positive, left out
    (IDS["g"], "machine", "/m/0jbk", "0.9"),  # ... unless machine labels at 0.5 are kept: then Animal
    (IDS["h"], "verification", "/m/015p6", "1"),  # its image file is missing
    (IDS["h"], "verification", "/m/0jbk", "1"),
]
TEST_ROWS = [
    (IDS["t1"], "verification", "/m/01yrx", "1"),
    (IDS["t1"], "verification", "/m/0bt9lr", "0"),
    (IDS["t1"], "verification", "/m/0k4j", "0"),
    (IDS["t2"], "verification", "/m/0bt9lr", "1"),
    (IDS["t2"], "verification", "/m/01yrx", "0"),
    (IDS["t2"], "machine", "/m/0k4j", "0.95"),  # never a test label
    (IDS["t3"], "verification", "/m/0k4j", "1"),
    (IDS["t3"], "verification", "/m/0199g", "1"),
    (IDS["t3"], "verification", "/m/0k4j", "1"),  # duplicate
    (IDS["t4"], "verification", "/m/014j1m", "0"),  # negatives only: left out
    (IDS["t5"], "verification", "/m/09f_2", "1"),
]
VALIDATION_ROWS = [
    (IDS["t1"][:-1] + "9", "verification", "/m/01yrx", "1"),
]
MISSING = {IDS["h"]}


def label_csv(rows, header=True, newline="\n") -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=newline)
    if header:
        writer.writerow(["ImageID", "Source", "LabelName", "Confidence"])
    writer.writerows(rows)
    return out.getvalue()


def descriptions_csv(descriptions=None, header=True, newline="\r\n") -> str:
    """V7's file: the header and CRLF line ends; ``header=False``: an older file (no header)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=newline)
    if header:
        writer.writerow(["LabelName", "DisplayName"])
    writer.writerows(sorted((descriptions or DESCRIPTIONS).items()))
    return out.getvalue()


def image_list_csv(image_ids, subset) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["ImageID", "Subset", "OriginalURL", "OriginalLandingURL", "License", "AuthorProfileURL", "Author",
                     "Title", "OriginalSize", "OriginalMD5", "Thumbnail300KURL", "Rotation"])
    for image_id in image_ids:
        writer.writerow([image_id, subset, f"https://farm.example/{image_id}.jpg", "https://example/", "cc-by",
                         "https://example/author", "Someone", "A title, with a comma", "12345", "md5==",
                         "https://thumb.example/", ""])
    return out.getvalue()


def file_names(version: str) -> dict[str, str]:
    if version == "v7":
        return {"train": "oidv7-train-annotations-human-imagelabels.csv",
                "validation": "oidv7-val-annotations-human-imagelabels.csv",
                "test": "oidv7-test-annotations-human-imagelabels.csv",
                "descriptions": "oidv7-class-descriptions.csv", "trainable": "oidv7-classes-trainable.txt",
                "machine": "oidv7-train-annotations-machine-imagelabels.csv"}
    return {"train": "oidv6-train-annotations-human-imagelabels.csv",
            "validation": "validation-annotations-human-imagelabels.csv",
            "test": "test-annotations-human-imagelabels.csv",
            "descriptions": "oidv6-class-descriptions.csv", "trainable": "oidv6-classes-trainable.txt",
            "machine": "train-annotations-machine-imagelabels.csv"}


def write_openimages(root, *, version="v7", train_rows=TRAIN_ROWS, test_rows=TEST_ROWS,
                     validation_rows=VALIDATION_ROWS, descriptions=None, description_header=True, trainable=TRAINABLE,
                     hierarchy=HIERARCHY, missing=MISSING, image_lists=False, machine_rows=None) -> str:
    """The official files of ``version`` under ``root`` and an image for every ImageID of the rows except ``missing``;
    ``trainable=None`` writes no trainable classes file, ``hierarchy=None`` no hierarchy file."""
    root = str(root)
    names = file_names(version)
    write_text(os.path.join(root, names["train"]), label_csv(train_rows))
    write_text(os.path.join(root, names["test"]), label_csv(test_rows))
    if validation_rows is not None:
        write_text(os.path.join(root, names["validation"]), label_csv(validation_rows))
    write_text(os.path.join(root, names["descriptions"]), descriptions_csv(descriptions, description_header))
    if trainable is not None:
        write_text(os.path.join(root, names["trainable"]), "".join(f"{mid}\n" for mid in trainable))
    if hierarchy is not None:
        write_text(os.path.join(root, "bbox_labels_600_hierarchy.json"), json.dumps(hierarchy, indent=2) + "\n")
    if machine_rows is not None:
        write_text(os.path.join(root, names["machine"]), label_csv(machine_rows))
    seed = 0
    for split, rows in (("train", train_rows), ("test", test_rows), ("validation", validation_rows or [])):
        ids = sorted({row[0] for row in rows})
        for image_id in ids:
            if image_id not in missing:
                write_image(os.path.join(root, split, f"{image_id}.jpg"), seed=seed)
                seed += 1
        if image_lists:
            name = {"train": "oidv6-train-images-with-labels-with-rotation.csv",
                    "test": "test-images-with-rotation.csv",
                    "validation": "validation-images-with-rotation.csv"}[split]
            write_text(os.path.join(root, name), image_list_csv(ids, split))
    return root


# --- thousands of classes


def large_mid(index: int) -> str:
    return f"/m/0{index:05x}"


def large_spec(num_classes=3000, num_in_hierarchy=600, num_top=12, num_images=2000, rows_per_image=5, seed=0):
    """A generated Open Images: ``num_classes`` trainable classes, the first ``num_in_hierarchy`` in a 3-level
    hierarchy under ``num_top`` top-level classes (also trainable), ``num_images`` training and ``num_images // 4`` test
    images with about ``rows_per_image`` verified rows each (2/3 positive), some duplicated. Returns a dict with
    ``descriptions``, ``trainable``, ``hierarchy``, ``train_rows``, ``test_rows``."""
    rng = np.random.default_rng(seed)
    words = ["red", "small", "wild", "old", "round", "striped", "wooden", "metal", "green", "tall", "soft", "bright"]
    things = ["fox", "cup", "bridge", "lamp", "boat", "hat", "tree", "clock", "drum", "kite", "shell", "train", "leaf"]
    mids = [large_mid(i) for i in range(num_classes)]
    descriptions = {ENTITY: "Entity"}
    for i, mid in enumerate(mids):
        descriptions[mid] = f"{words[i % len(words)]} {things[(i // len(words)) % len(things)]} {i}"
    top = list(range(num_top))
    middle = list(range(num_top, num_top * 4))  # 3 second-level classes per top-level class
    leaves = list(range(num_top * 4, num_in_hierarchy))
    children = {i: [] for i in top + middle}
    for position, index in enumerate(middle):
        children[top[position % num_top]].append(index)
    for position, index in enumerate(leaves):
        children[middle[position % len(middle)]].append(index)

    def build(index):
        return node(mids[index], sub=[build(child) for child in children.get(index, [])])

    hierarchy = node(ENTITY, sub=[build(index) for index in top])

    def rows_for(prefix, count):
        rows = []
        for image in range(count):
            image_id = f"{prefix}{image:012x}"
            classes = rng.choice(num_classes, size=rows_per_image, replace=False)
            for k, cls in enumerate(classes):
                rows.append((image_id, "verification", mids[int(cls)], "1" if k % 3 != 2 else "0"))
            if image % 10 == 0:
                rows.append(rows[-1])  # a duplicate row
        return rows

    return {"descriptions": descriptions, "trainable": mids, "hierarchy": hierarchy,
            "train_rows": rows_for("aaaa", num_images), "test_rows": rows_for("bbbb", max(1, num_images // 4))}


def write_large_openimages(root, **spec_options) -> tuple[str, dict]:
    spec = large_spec(**spec_options)
    write_openimages(root, train_rows=spec["train_rows"], test_rows=spec["test_rows"], validation_rows=None,
                     descriptions=spec["descriptions"], trainable=spec["trainable"], hierarchy=spec["hierarchy"],
                     missing=set())
    return str(root), spec
