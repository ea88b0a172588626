"""Writers of tiny dataset trees in the exact official layouts (COCO-2014, VOC-2012, NUS-WIDE, CUB-200-2011) and
of custom data, into a test's tmp_path. Images are 8x8 pictures; nothing binary is committed."""

from __future__ import annotations

import json
import os

from PIL import Image

from hspnet.data.hierarchy import builtin_hierarchy, coco_category_ids


def write_image(path, seed: int = 0, size: int = 8) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    colour = ((seed * 53) % 256, (seed * 97) % 256, (seed * 193) % 256)
    image = Image.new("RGB", (size, size), colour)
    image.save(path, format="PNG" if str(path).endswith(".png") else "JPEG")
    return str(path)


def write_text(path, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return str(path)


# ------------------------------------------------------------------------------------------------------------
# COCO-2014

COCO_TRAIN = {  # image id -> category ids (repeats = several instances)
    9: [1, 1, 18],  # person, dog
    25: [24],  # zebra
    30: [1, 3, 3, 8],  # person, car, truck
    34: [2, 27],  # bicycle, backpack
    36: [1, 44, 90],  # person, bottle, toothbrush
    42: [],  # no annotation -> excluded from training
    49: [17, 18],  # cat, dog
    61: [62, 67],  # chair, dining table
}
COCO_VAL = {
    139: [1, 64],
    285: [23],
    632: [],  # no annotation -> not a test image
    724: [13, 3],
}


def coco_file_name(split: str, image_id: int) -> str:
    return f"COCO_{split}2014_{image_id:012d}.jpg"


def coco_json(split: str, images: dict[int, list[int]]) -> dict:
    hierarchy = builtin_hierarchy("coco")
    categories = [
        {"supercategory": hierarchy.groups[group], "id": cid, "name": name}
        for cid, name, group in zip(coco_category_ids(), hierarchy.labels, hierarchy.label_to_group)
    ]
    image_entries, annotations = [], []
    next_id = 1
    for image_id, cats in images.items():
        image_entries.append(
            {
                "license": 1,
                "file_name": coco_file_name(split, image_id),
                "coco_url": "",
                "height": 8,
                "width": 8,
                "date_captured": "2013-11-14 16:28:13",
                "flickr_url": "",
                "id": image_id,
            }
        )
        for cid in cats:
            annotations.append(
                {
                    "segmentation": [[1.0, 1.0, 6.0, 1.0, 6.0, 6.0]],
                    "area": 12.5,
                    "iscrowd": 0,
                    "image_id": image_id,
                    "bbox": [1.0, 1.0, 5.0, 5.0],
                    "category_id": cid,
                    "id": next_id,
                }
            )
            next_id += 1
    return {
        "info": {"description": "COCO 2014 Dataset (test fixture)", "year": 2014},
        "images": image_entries,
        "licenses": [{"url": "", "id": 1, "name": "test"}],
        "annotations": annotations,
        "categories": categories,
    }


def make_coco_tree(root, train=None, val=None, images: bool = True) -> str:
    root = str(root)
    for split, content in (("train", train or COCO_TRAIN), ("val", val or COCO_VAL)):
        write_text(
            os.path.join(root, "annotations", f"instances_{split}2014.json"), json.dumps(coco_json(split, content))
        )
        if images:
            for image_id in content:
                write_image(os.path.join(root, f"{split}2014", coco_file_name(split, image_id)), seed=image_id)
    return root


def coco_expected_labels(split: str, content: dict[int, list[int]]) -> dict[str, list[int]]:
    index = {cid: i for i, cid in enumerate(coco_category_ids())}
    return {coco_file_name(split, image_id): sorted({index[c] for c in cats}) for image_id, cats in content.items()}


# ------------------------------------------------------------------------------------------------------------
# VOC-2012

VOC_TRAIN = {  # image id -> [(class, difficult)]
    "2008_000008": [("horse", 0), ("person", 0)],
    "2008_000015": [("bottle", 0), ("bottle", 1)],
    "2008_000019": [("dog", 0)],
    "2008_000023": [("bottle", 0), ("diningtable", 0), ("person", 0), ("tvmonitor", 1)],
    "2008_000028": [("car", 0)],
    "2008_000033": [("aeroplane", 0), ("aeroplane", 0)],
    "2008_000036": [("bicycle", 0), ("person", 1)],
    "2008_000037": [("boat", 0)],
    "2008_000041": [("cat", 1)],  # only a difficult object: no positive with difficult="negative"
    "2008_000045": [("sheep", 0), ("cow", 0)],
}
VOC_VAL = {
    "2008_000002": [("tvmonitor", 0)],
    "2008_000003": [("person", 0), ("train", 0)],
    "2008_000007": [("bus", 0), ("car", 1)],
    "2008_000009": [("cow", 0)],
}


def voc_xml(image_id: str, objects: list[tuple[str, int]]) -> str:
    parts = [
        "<annotation>",
        "\t<folder>VOC2012</folder>",
        f"\t<filename>{image_id}.jpg</filename>",
        "\t<source>",
        "\t\t<database>The VOC2008 Database</database>",
        "\t\t<annotation>PASCAL VOC2008</annotation>",
        "\t\t<image>flickr</image>",
        "\t</source>",
        "\t<size>",
        "\t\t<width>8</width>",
        "\t\t<height>8</height>",
        "\t\t<depth>3</depth>",
        "\t</size>",
        "\t<segmented>0</segmented>",
    ]
    for name, difficult in objects:
        parts += [
            "\t<object>",
            f"\t\t<name>{name}</name>",
            "\t\t<pose>Unspecified</pose>",
            "\t\t<truncated>0</truncated>",
            "\t\t<occluded>0</occluded>",
            "\t\t<bndbox>",
            "\t\t\t<xmin>1</xmin>",
            "\t\t\t<ymin>1</ymin>",
            "\t\t\t<xmax>7</xmax>",
            "\t\t\t<ymax>7</ymax>",
            "\t\t</bndbox>",
            f"\t\t<difficult>{difficult}</difficult>",
            "\t</object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def make_voc_tree(root, train=None, val=None, images: bool = True, devkit: bool = True) -> str:
    root = str(root)
    voc = os.path.join(root, "VOCdevkit", "VOC2012") if devkit else os.path.join(root, "VOC2012")
    train, val = train or VOC_TRAIN, val or VOC_VAL
    for split, content in (("train", train), ("val", val)):
        write_text(os.path.join(voc, "ImageSets", "Main", f"{split}.txt"), "".join(f"{i}\n" for i in content))
        for seed, (image_id, objects) in enumerate(content.items()):
            write_text(os.path.join(voc, "Annotations", f"{image_id}.xml"), voc_xml(image_id, objects))
            if images:
                write_image(os.path.join(voc, "JPEGImages", f"{image_id}.jpg"), seed=seed)
    return root


def voc_expected(content, difficult="negative") -> dict[str, list[int]]:
    labels = builtin_hierarchy("voc").labels
    out = {}
    for image_id, objects in content.items():
        out[f"{image_id}.jpg"] = sorted(
            {labels.index(name) for name, flag in objects if difficult == "positive" or not flag}
        )
    return out


# ------------------------------------------------------------------------------------------------------------
# NUS-WIDE

NUS_TRAIN = {  # official relative path (as in TrainImagelist.txt, with a backslash) -> concept names
    "actor\\0001_2124494179.jpg": ["person", "dancing"],
    "airport\\0002_174174086.jpg": ["airport", "plane", "sky"],
    "animal\\0003_1235324612.jpg": ["animal", "dog", "grass"],
    "beach\\0004_2341343221.jpg": ["beach", "sand", "water", "ocean"],
    "beach\\0005_2342341212.jpg": [],  # no concept -> excluded
    "bear\\0006_2224356785.jpg": ["bear", "animal"],
    "cars\\0007_1241341234.jpg": ["cars", "street", "vehicle"],
    "sunset\\0008_234234234.jpg": ["sunset", "sky", "sun", "clouds"],
}
NUS_TEST = {
    "castle\\0101_324234234.jpg": ["castle", "buildings"],
    "cat\\0102_234234123.jpg": ["cat"],
    "clouds\\0103_765765765.jpg": [],
    "zebra\\0104_987987987.jpg": ["zebra", "animal", "grass"],
}


def make_nuswide_official(root, train=None, test=None, missing=(), images: bool = True, image_dir="Flickr") -> str:
    """The official NUS-WIDE files: Concepts81.txt, ImageList/, Groundtruth/TrainTestLabels/, images under Flickr/."""
    root = str(root)
    concepts = builtin_hierarchy("nuswide").labels
    train, test = train or NUS_TRAIN, test or NUS_TEST
    write_text(os.path.join(root, "ConceptsList", "Concepts81.txt"), "\n".join(concepts) + "\n")
    all_images = {**train, **test}
    write_text(os.path.join(root, "ImageList", "Imagelist.txt"), "".join(f"C:\\ImageData\\{p}\n" for p in all_images))
    for split, content in (("Train", train), ("Test", test)):
        write_text(os.path.join(root, "ImageList", f"{split}Imagelist.txt"), "".join(f"{p}\r\n" for p in content))
        for concept in concepts:
            values = "".join(f"{1 if concept in names else 0}\n" for names in content.values())
            write_text(os.path.join(root, "Groundtruth", "TrainTestLabels", f"Labels_{concept}_{split}.txt"), values)
    if images:
        for seed, relative in enumerate(all_images):
            if relative in missing:
                continue
            write_image(os.path.join(root, image_dir, *relative.split("\\")), seed=seed)
    return root


def nus_expected(content) -> dict[str, list[int]]:
    concepts = builtin_hierarchy("nuswide").labels
    return {p.replace("\\", "/"): sorted(concepts.index(n) for n in names) for p, names in content.items()}


def make_nuswide_flat(root, train=None, test=None, train_list="nus_train.txt", test_list="nus_val.txt") -> str:
    """The authors' flat layout: images/ and 'file,idx idx' lists (nus_val.txt format)."""
    root = str(root)
    concepts = builtin_hierarchy("nuswide").labels
    train, test = train or NUS_TRAIN, test or NUS_TEST
    for list_name, content in ((train_list, train), (test_list, test)):
        lines = []
        for seed, (relative, names) in enumerate(content.items()):
            flat = relative.split("\\")[-1].replace(".jpg", "_m.jpg")
            lines.append(f"{flat},{' '.join(str(concepts.index(n)) for n in names)}")
            write_image(os.path.join(root, "images", flat), seed=seed)
        write_text(os.path.join(root, list_name), "\n".join(lines))
    return root


# ------------------------------------------------------------------------------------------------------------
# CUB-200-2011

CUB_IMAGES = [  # (relative path, is_train, positive attribute ids 1..312)
    ("001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg", 1, [5, 10, 213]),
    ("001.Black_footed_Albatross/Black_Footed_Albatross_0074_59.jpg", 1, [1, 306]),
    ("001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg", 0, [5, 98, 135]),
    ("002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg", 1, [2, 3, 4, 199]),
    ("002.Laysan_Albatross/Laysan_Albatross_0003_1033.jpg", 0, [312]),
    ("200.Common_Yellowthroat/Common_Yellowthroat_0037_190698.jpg", 1, []),
    ("200.Common_Yellowthroat/Common_Yellowthroat_0049_190708.jpg", 1, [164, 295]),
    ("200.Common_Yellowthroat/Common_Yellowthroat_0008_190703.jpg", 0, [7, 16, 17]),
]


def make_cub_tree(
    root, images_spec=None, images: bool = True, attributes_txt: bool = True, extra_column_line=True
) -> str:
    root = str(root)
    spec = images_spec or CUB_IMAGES
    cub = os.path.join(root, "CUB_200_2011")
    write_text(os.path.join(cub, "images.txt"), "".join(f"{i} {p}\n" for i, (p, _, _) in enumerate(spec, start=1)))
    write_text(
        os.path.join(cub, "train_test_split.txt"), "".join(f"{i} {t}\n" for i, (_, t, _) in enumerate(spec, start=1))
    )
    lines = []
    for image_id, (_, _, positives) in enumerate(spec, start=1):
        for attribute in range(1, 313):
            present = 1 if attribute in positives else 0
            certainty = 3 if present else 1
            lines.append(f"{image_id} {attribute} {present} {certainty} 2.5")
    if extra_column_line:  # the real file has a few lines with an extra column; they must still parse
        lines[3] = lines[3] + " 0"
    write_text(os.path.join(cub, "attributes", "image_attribute_labels.txt"), "\n".join(lines) + "\n")
    if attributes_txt:
        names = [f"{i} has_attribute_{i}::value" for i in range(1, 313)]
        write_text(os.path.join(root, "attributes.txt"), "\n".join(names) + "\n")
    if images:
        for seed, (relative, _, _) in enumerate(spec):
            write_image(os.path.join(cub, "images", relative), seed=seed)
    return root


def cub_expected(spec=None) -> dict[str, tuple[int, list[int]]]:
    return {p: (t, sorted(a - 1 for a in attrs)) for p, t, attrs in (spec or CUB_IMAGES)}
