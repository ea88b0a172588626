#!/usr/bin/env python
"""One-off check: the built-in hierarchies equal the HSPNet authors' files.

    python datasets_scripts/check_hierarchies_against_reference.py REFERENCE_DIR

REFERENCE_DIR holds the authors' files (as in their repository): ``super_labels.txt`` /
``super_labels_index.npy`` (COCO), ``{voc,nuswide,cub}_labels.txt``, ``{voc,nuswide,cub}_super_labels.txt``,
``{voc,nuswide,cub}_super_labels_index.npy`` and the ``relation+*.npy`` matrices; optionally a ``splits/`` folder
(or ``--splits DIR``) with ``coco_train_singlelabel.txt``, ``voc_{train,val}.txt``, ``nus_val.txt``,
``cub_{train,val}.txt``, whose label indices are checked against the label counts. A mismatch ends with one line `error: ...` and
exit status 1 (`hspnet.utils.errors.run_cli`, as every command of the package).
Never used by the tests or at run time.
"""

import argparse
import os

import numpy as np

from hspnet.utils.errors import run_cli
from hspnet.data import builtin_hierarchy, read_label_list

FILES = {  # name: (labels file or None, groups file, label->group index file, relation matrix)
    "coco": (None, "super_labels.txt", "super_labels_index.npy", "relation+super+rn50.npy"),
    "voc": ("voc_labels.txt", "voc_super_labels.txt", "voc_super_labels_index.npy", "relation+voc+super.npy"),
    "nuswide": (
        "nuswide_labels.txt",
        "nuswide_super_labels.txt",
        "nuswide_super_labels_index.npy",
        "relation+nuswide+super.npy",
    ),
    "cub": ("cub_labels.txt", "cub_super_labels.txt", "cub_super_labels_index.npy", "relation+cub+super.npy"),
}
SPLITS = {
    "coco_train_singlelabel.txt": "coco",
    "voc_train.txt": "voc",
    "voc_val.txt": "voc",
    "nus_val.txt": "nuswide",
    "cub_train.txt": "cub",
    "cub_val.txt": "cub",
}


def read_lines(path):
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def find(reference, name):
    for folder in (reference, os.path.join(reference, "hierarchies")):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def check(reference, splits_dir):
    failures = 0
    print(f"{'dataset':<9}{'check':<52}result")
    for name, (labels_file, groups_file, index_file, relation_file) in FILES.items():
        hierarchy = builtin_hierarchy(name)
        results = []
        if labels_file:
            path = find(reference, labels_file)
            results.append((f"labels == {labels_file}", None if path is None else read_lines(path) == hierarchy.labels))
        else:
            results.append(("labels (no authors' file)", f"{hierarchy.num_labels} COCO category names, id order"))
        path = find(reference, groups_file)
        results.append((f"groups == {groups_file}", None if path is None else read_lines(path) == hierarchy.groups))
        path = find(reference, index_file)
        if path is None:
            results.append((f"label_to_group == {index_file}", None))
        else:
            index = np.load(path)
            same = index.shape == (hierarchy.num_labels,) and np.array_equal(
                index.astype(np.int64), hierarchy.label_to_group
            )
            results.append((f"label_to_group == {index_file}", bool(same and np.all(index == np.round(index)))))
        path = find(reference, relation_file)
        if path is not None:
            size = hierarchy.num_labels + hierarchy.num_groups
            results.append((f"{relation_file} is (C+G)^2", np.load(path).shape == (size, size)))
        for what, ok in results:
            shown = "missing file" if ok is None else ("OK" if ok is True else ("MISMATCH" if ok is False else ok))
            failures += ok is False
            print(f"{name:<9}{what:<52}{shown}")
    if splits_dir and os.path.isdir(splits_dir):
        for file_name, name in SPLITS.items():
            path = os.path.join(splits_dir, file_name)
            if not os.path.isfile(path):
                continue
            try:
                entries = read_label_list(path, builtin_hierarchy(name).num_labels)
                print(f"{name:<9}{file_name + ' indices in range':<52}OK ({len(entries)} images)")
            except ValueError as error:
                failures += 1
                print(f"{name:<9}{file_name + ' indices in range':<52}FAILED: {error}")
    return failures


def run(args):
    if not os.path.isdir(args.reference):
        raise NotADirectoryError(f"{args.reference} is not a folder")
    failures = check(args.reference, args.splits or os.path.join(args.reference, "splits"))
    if failures:
        raise ValueError(f"{failures} mismatch(es) between the built-in hierarchies and {args.reference} (table above)")
    print("\nAll built-in hierarchies equal the reference.")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="check_hierarchies_against_reference.py",
                                     description=__doc__.splitlines()[1])
    parser.add_argument("reference", help="folder with the authors' hierarchy files (or with hierarchies/ and splits/)")
    parser.add_argument("--splits", help="folder with the authors' split lists (default: REFERENCE/splits)")
    return run_cli(parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
