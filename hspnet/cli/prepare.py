"""`hspnet prepare DATASET ...` (= `datasets_scripts/prepare.py`): prepare a dataset, print its statistics, optionally
write it (`--output_dir`) or push it to the Hub (`--push_to_hub --hub_dataset_id`).

    hspnet prepare voc --dataset_root /data/voc2012 [--protocol authors] [--output_dir out/voc]
    hspnet prepare demo

The loaders are :mod:`hspnet.data`'s; bad input (a missing or malformed file, a bad option value, an output folder that
may not be replaced) ends with ONE line ``hspnet prepare: error: <file>, line <n>, field <f>: <what>`` and exit status
1 (:func:`hspnet.utils.command_line.run_command`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os

from hspnet.utils.command_line import CommandParser, run_command

DATASETS = ("coco", "voc", "nuswide", "cub", "openimages", "folder", "hf", "demo")


def _common(parser: CommandParser, needs_root: bool) -> None:
    if needs_root:
        parser.add_argument("--dataset_root", "--root", dest="root", required=True,
                            help="the dataset folder, in its official layout (see docs/datasets.md)")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the single-positive choice and of the validation split (0); a held-out test split of custom "
        "data uses --test_seed instead",
    )
    parser.add_argument(
        "--protocol",
        choices=("heldout", "authors"),
        default="heldout",
        help="heldout: hold out --validation_fraction of train as 'validation' (Cole et al.); authors: train on all "
        "training images, evaluate on test (no validation split)",
    )
    parser.add_argument("--validation_fraction", type=float, default=0.2, help="held-out share of train (0.2)")
    parser.add_argument("--cache_dir", help="datasets cache folder (default: the Hugging Face datasets cache)")
    parser.add_flag("--force_rebuild", help="ignore the cache")
    parser.add_argument(
        "--output_dir",
        dest="output",
        help="also write the prepared dataset to this folder; it replaces an earlier build there as a whole (the new "
        "build is swapped in only when complete)",
    )
    parser.add_flag(
        "--overwrite",
        help="with --output_dir: replace the folder even if it holds files that no earlier build wrote (they are "
        "deleted)",
    )
    parser.add_argument(
        "--output_format",
        choices=("arrow", "parquet"),
        default="arrow",
        help="arrow: save_to_disk, self-contained (image bytes embedded); parquet: one file per split with image paths",
    )
    parser.add_argument(
        "--shards",
        type=int,
        metavar="N",
        default=None,
        help="write the prepared dataset as N Parquet shards of train (the other splits proportionally fewer) with the "
        "images embedded and a dataset card: what `hspnet train --streaming true` streams; --push_to_hub then uploads "
        "this folder as a Hub dataset (see docs/large-datasets.md)",
    )
    parser.add_flag("--push_to_hub", help="push the prepared dataset to the Hub dataset repository --hub_dataset_id")
    parser.add_argument("--hub_dataset_id", metavar="REPO_ID", help="the Hub dataset repository to push to")
    parser.add_flag("--hub_private_repo", "--private", help="with --push_to_hub: create the repository private")
    parser.add_argument("--hub_token", default=None,
                        help="Hub token (default: `hf auth login` / HF_TOKEN); never printed or saved")
    parser.add_flag("--json", help="print the statistics as JSON instead of a table")
    parser.add_flag("--quiet", help="less logging")
    parser.add_argument("-q", dest="quiet", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="on error, show the full traceback")


def _image_options(parser: CommandParser, missing_default: str = "error") -> None:
    parser.add_argument(
        "--on_missing_image",
        choices=("error", "skip"),
        default=missing_default,
        help="missing / unreadable images (not regular files; with --check_images open also truncated, corrupt or "
        f"oversized ones): stop with the list, or skip them (always counted) ({missing_default})",
    )
    parser.add_argument(
        "--check_images",
        choices=("exists", "open", "none"),
        default="exists",
        help="exists: each image is a regular file; open: also decode every image fully; none: no check (exists)",
    )
    parser.add_argument("--num_proc", type=int, default=1, help="threads for the image checks (1)")


def _benchmark_options(parser: CommandParser, missing_default: str = "error") -> None:
    parser.add_argument(
        "--observed_labels",
        metavar="FILE",
        help="the authors' single-positive list (coco_train_singlelabel.txt, voc_train.txt, cub_train.txt format) to "
        "use instead of generated single positives",
    )
    parser.add_argument("--hierarchy", metavar="FILE", help="override the built-in hierarchy (JSON or label,group CSV)")
    _image_options(parser, missing_default)


def _custom_options(parser: CommandParser) -> None:
    parser.add_argument("--label_names", help="a text file of label names, one per line (needed for index labels)")
    parser.add_argument(
        "--label_separator",
        choices=(";", "|", ",", "space"),
        metavar="SEP",
        help="what separates labels in a label string: ';' (the default), '|', ',' or 'space'; label names may "
        "contain spaces. Without this option a file that never uses ';' but has '|', ',' or spaces in a label "
        "field is refused (its reading would be a guess): choose one explicitly",
    )
    parser.add_argument("--hierarchy", metavar="FILE", help="label -> group file (JSON or label,group CSV)")
    parser.add_flag("--no_auto_hierarchy", help="fail instead of building a hierarchy")
    parser.add_argument("--clip_model", default=None, help="CLIP model (Hub id or folder) for the automatic hierarchy")
    parser.add_argument("--num_groups", type=int, help="groups of the automatic hierarchy (default round(sqrt(C)))")
    parser.add_argument("--cluster_method", choices=("kmeans", "agglomerative"), default="kmeans")
    parser.add_argument("--prompt_template", default=None, help="text template of the label embeddings")
    parser.add_argument(
        "--test_fraction", type=float, default=0.2, help="held-out test share when there is no test split"
    )
    parser.add_argument(
        "--test_seed",
        type=int,
        default=0,
        help="seed of the held-out test split (0); independent of --seed, so every --seed uses the same test images",
    )
    parser.add_argument(
        "--hierarchy_seed", type=int, default=0, help="seed of the automatic hierarchy's clustering (0), not --seed"
    )
    parser.add_argument("--observed_labels", metavar="FILE", help="a single-positive list 'file_name,index' to use")


def _openimages_options(parser: CommandParser) -> None:
    parser.add_argument("--version", choices=("auto", "v7", "v6"), default="auto",
                        help="the official file names to look for: oidv7-... or oidv6-... (auto: from the training "
                        "labels file present)")
    parser.add_argument("--test_split", choices=("test", "validation"), default="test",
                        help="the official split evaluated as 'test' (test)")
    parser.add_argument("--annotations_dir", help="folder of the CSV / TXT / JSON files, relative to --dataset_root "
                        "(default: --dataset_root)")
    for name, what in (("train_labels", "the human-verified training labels CSV"),
                       ("test_labels", "the human-verified labels CSV of --test_split"),
                       ("class_descriptions", "the class descriptions CSV (LabelName,DisplayName)"),
                       ("trainable_classes", "the trainable classes list (one MID per line)"),
                       ("hierarchy_file", "bbox_labels_600_hierarchy.json"),
                       ("train_image_list", "the training image list CSV"),
                       ("test_image_list", "the image list CSV of --test_split"),
                       ("machine_labels", "the machine-generated training labels CSV (with --machine_confidence)")):
        parser.add_argument(f"--{name}", metavar="FILE", help=f"{what}, instead of its official name (relative to "
                            "--dataset_root)")
    parser.add_flag("--image_lists", default=True,
                    help="read the image lists when present: they then define each split's images")
    parser.add_argument("--train_images", default="train", help="training image folder, relative to --dataset_root")
    parser.add_argument("--test_images", help="test image folder (default: the name of --test_split)")
    parser.add_argument("--machine_confidence", type=float, metavar="T",
                        help="keep machine-generated training labels with confidence >= T as positives (default: "
                        "ignore them)")
    parser.add_argument("--group_level", type=int, default=1,
                        help="depth of the official hierarchy whose classes are the groups (1: the root's children)")
    parser.add_flag("--follow_parts", help="also place classes reached only through 'Part' edges of the hierarchy")
    parser.add_argument("--outside_hierarchy", choices=("nearest", "cluster", "drop"), default="nearest",
                        help="classes the hierarchy does not place: the nearest group by CLIP text similarity, "
                        "automatic groups of their own, or left out (nearest)")
    parser.add_argument("--clip_model", default=None,
                        help="CLIP model (Hub id or folder) embedding the class names for nearest / cluster")
    parser.add_argument("--prompt_template", default=None, help="text template of the name embeddings")
    parser.add_argument("--num_groups", type=int, help="automatic groups with cluster (default round(sqrt(n)))")
    parser.add_argument("--cluster_method", choices=("kmeans", "agglomerative"), default="kmeans")
    parser.add_argument("--hierarchy_seed", type=int, default=0, help="seed of the automatic groups (0), not --seed")


def build_parser(prog: str | None = "hspnet prepare") -> CommandParser:
    parser = CommandParser(
        prog=prog,
        description="Prepare a single-positive multi-label dataset (HSPNet) as a Hugging Face DatasetDict, print its "
        "statistics, and optionally write it or push it to the Hub.",
    )
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    coco = sub.add_parser("coco", help="MS-COCO 2014: annotations/instances_{train,val}2014.json, train2014/, val2014/")
    _common(coco, True)
    _benchmark_options(coco)
    voc = sub.add_parser("voc", help="PASCAL VOC 2012: VOC2012/{Annotations,ImageSets/Main,JPEGImages}")
    _common(voc, True)
    _benchmark_options(voc)
    voc.add_argument(
        "--difficult",
        choices=("negative", "positive"),
        default="negative",
        help="whether difficult-only objects make their class positive (negative, like the authors)",
    )
    nus = sub.add_parser(
        "nuswide", help="NUS-WIDE: official files (Groundtruth/, ImageList/, Flickr/) or the flat layout"
    )
    _common(nus, True)
    _benchmark_options(nus, missing_default="skip")
    nus.add_argument("--layout", choices=("auto", "official", "flat"), default="auto")
    nus.add_argument("--image_dir",
                     help="image folder relative to --dataset_root (default Flickr/, images/ or Images/)")
    nus.add_argument("--train_list", help="flat layout: training list (default nus_train.txt)")
    nus.add_argument("--test_list", help="flat layout: test list (default nus_val.txt)")
    cub = sub.add_parser(
        "cub", help="CUB-200-2011 attributes: CUB_200_2011/{images.txt,train_test_split.txt,attributes/}"
    )
    _common(cub, True)
    _benchmark_options(cub)
    oi = sub.add_parser(
        "openimages", help="Open Images V6 / V7 image-level labels: the official CSV / TXT / JSON files, train/, test/"
    )
    _common(oi, True)
    oi.add_argument("--observed_labels", metavar="FILE",
                    help="a single-positive list ('ImageID,label index' lines) to use instead of generated single "
                    "positives")
    oi.add_argument("--hierarchy", metavar="FILE", help="your own groups instead of the official hierarchy (JSON or "
                    "display name,group CSV); the MIDs are kept")
    _image_options(oi)
    _openimages_options(oi)
    folder = sub.add_parser("folder", help="custom: a folder of images with metadata.csv / metadata.jsonl")
    _common(folder, True)
    _custom_options(folder)
    folder.add_argument("--metadata",
                        help="metadata file relative to --dataset_root (default metadata.csv / metadata.jsonl)")
    _image_options(folder)
    folder.add_argument("--on_duplicate", choices=("error", "merge"), default="error")
    hf = sub.add_parser("hf", help="custom: a Hugging Face dataset (Hub id or save_to_disk folder)")
    _common(hf, False)
    _custom_options(hf)
    hf.add_argument("--dataset_path", required=True, help="Hub dataset id or save_to_disk folder")
    hf.add_argument("--image_column", default="image")
    hf.add_argument("--labels_column", default="labels")
    hf.add_argument("--id_column")
    hf.add_argument("--test_split")
    demo = sub.add_parser("demo", help="the built-in demo dataset (coloured shapes, no download)")
    _common(demo, False)
    demo.add_argument("--num_train", type=int, default=1600)
    demo.add_argument("--num_test", type=int, default=400)
    demo.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--debug", action="store_true", help="on error, show the full traceback")
    return parser


def _build_options(args):
    """The one :class:`~hspnet.data.core.BuildOptions` of a command (options a subcommand lacks keep their defaults)."""
    from hspnet.data.core import BuildOptions

    given = {
        "seed": args.seed,
        "validation_fraction": 0.0 if args.protocol == "authors" else args.validation_fraction,
        "observed_labels_file": getattr(args, "observed_labels", None),
        "on_missing_image": getattr(args, "on_missing_image", None),
        "check_images": getattr(args, "check_images", None),
        "num_proc": getattr(args, "num_proc", None),
        "cache_dir": args.cache_dir,
        "force_rebuild": args.force_rebuild,
    }
    return BuildOptions(**{name: value for name, value in given.items() if value is not None})


def _load(args):
    from hspnet.data import (
        load_coco,
        load_cub,
        load_custom_dataset,
        load_demo_dataset,
        load_image_folder,
        load_nuswide,
        load_openimages,
        load_voc,
    )
    from hspnet.data.clustering import DEFAULT_CLIP_MODEL, DEFAULT_PROMPT_TEMPLATE

    options = _build_options(args)
    if args.dataset == "demo":
        return load_demo_dataset(options, num_train=args.num_train, num_test=args.num_test, image_size=args.image_size)
    if args.dataset in ("coco", "voc", "nuswide", "cub"):
        kwargs = dict(hierarchy=args.hierarchy)
        if args.dataset == "voc":
            kwargs["difficult"] = args.difficult
        if args.dataset == "nuswide":
            kwargs.update(
                layout=args.layout, image_dir=args.image_dir, train_list=args.train_list, test_list=args.test_list
            )
        loader = {"coco": load_coco, "voc": load_voc, "nuswide": load_nuswide, "cub": load_cub}[args.dataset]
        return loader(args.root, options, **kwargs)
    if args.dataset == "openimages":
        names = ("version", "test_split", "annotations_dir", "train_labels", "test_labels", "class_descriptions",
                 "trainable_classes", "hierarchy_file", "train_image_list", "test_image_list", "train_images",
                 "test_images", "machine_confidence", "machine_labels", "group_level", "follow_parts",
                 "outside_hierarchy", "num_groups", "cluster_method", "hierarchy_seed")
        return load_openimages(
            args.root, options, hierarchy=args.hierarchy, use_image_lists=args.image_lists,
            clip_model=args.clip_model or DEFAULT_CLIP_MODEL, prompt_template=args.prompt_template or
            DEFAULT_PROMPT_TEMPLATE, **{name: getattr(args, name) for name in names},
        )
    custom = dict(
        label_names=args.label_names,
        label_separator=args.label_separator,
        hierarchy=args.hierarchy,
        auto_hierarchy=not args.no_auto_hierarchy,
        clip_model=args.clip_model or DEFAULT_CLIP_MODEL,
        num_groups=args.num_groups,
        cluster_method=args.cluster_method,
        prompt_template=args.prompt_template or DEFAULT_PROMPT_TEMPLATE,
        test_fraction=args.test_fraction,
        test_seed=args.test_seed,
        hierarchy_seed=args.hierarchy_seed,
    )
    if args.dataset == "folder":
        return load_image_folder(args.root, options, metadata=args.metadata, on_duplicate=args.on_duplicate, **custom)
    return load_custom_dataset(
        args.dataset_path,
        options,
        image_column=args.image_column,
        labels_column=args.labels_column,
        id_column=args.id_column,
        test_split=args.test_split,
        **custom,
    )


def _inputs(args) -> list[str]:
    """The paths the command reads: an --output folder may not be, or contain, any of them."""
    from hspnet.data.core import cache_root

    names = ("root", "observed_labels", "hierarchy", "label_names", "metadata")
    found = [getattr(args, name, None) for name in names] + [cache_root(args.cache_dir)]
    path = getattr(args, "dataset_path", None)
    if path and os.path.exists(path):
        found.append(path)
    if getattr(args, "root", None) and getattr(args, "metadata", None):
        found.append(os.path.join(args.root, args.metadata))
    return [item for item in found if item]


def run(args) -> None:
    """Build the dataset named by ``args``, print its statistics, then write (``--output``) and push it."""
    from hspnet.data.export import check_image_paths, check_output_folder, save_prepared_dataset
    from hspnet.data.stats import dataset_statistics, format_statistics

    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.quiet:
        import datasets

        datasets.disable_progress_bars()
    if args.overwrite and not args.output:
        raise ValueError("--overwrite needs --output_dir")
    if args.push_to_hub and not args.hub_dataset_id:
        raise ValueError("--push_to_hub needs --hub_dataset_id (e.g. your-name/my-dataset)")
    if args.shards is not None and args.shards < 1:
        raise ValueError(f"--shards must be >= 1, got {args.shards}")
    if args.shards is not None and args.output_format == "parquet":
        raise ValueError("--shards writes Parquet shards with the images embedded; --output_format parquet (image "
                         "paths) does not apply to it")
    if args.output:  # refused before the (long) build, and checked again when writing
        check_output_folder(args.output, args.overwrite, _inputs(args))
    dataset = _load(args)
    stats = dataset_statistics(dataset)
    print(json.dumps(stats, indent=1) if args.json else format_statistics(stats))
    if args.shards is not None:
        _write_shards(args, dataset)
        return
    if args.output:
        path = save_prepared_dataset(
            dataset,
            args.output,
            embed_images=args.output_format == "arrow",
            overwrite=args.overwrite,
            inputs=_inputs(args),
        )
        print(f"\nWrote the prepared dataset to {path} ({args.output_format})")
    else:
        files = next(iter(dataset.values())).cache_files
        if files:
            print(f"\nPrepared dataset cached in {os.path.dirname(files[0]['filename'])} (and its sibling splits)")
    if args.push_to_hub:
        check_image_paths(dataset)
        dataset.push_to_hub(args.hub_dataset_id, private=args.hub_private_repo, token=args.hub_token)
        print(f"Pushed to https://huggingface.co/datasets/{args.hub_dataset_id}")


def _write_shards(args, dataset) -> None:
    """``--shards N``: write the shards into --output_dir (or a temporary folder), then upload them (--push_to_hub)."""
    import tempfile

    from hspnet.data.shards import push_sharded_dataset, save_sharded_dataset

    with tempfile.TemporaryDirectory(prefix="hspnet-shards-") as scratch:
        folder = args.output or os.path.join(scratch, "shards")
        path = save_sharded_dataset(dataset, folder, args.shards, overwrite=args.overwrite, inputs=_inputs(args))
        if args.output:
            print(f"\nWrote the prepared dataset to {path} ({args.shards} training shards, images embedded)")
        if args.push_to_hub:
            repo = push_sharded_dataset(path, args.hub_dataset_id, token=args.hub_token,
                                        private=args.hub_private_repo)
            print(f"Pushed to https://huggingface.co/datasets/{repo}")


def main(argv: list[str] | None = None, prog: str | None = "hspnet prepare", before_run=None) -> int:
    """0 on success, 1 with a one-line ``error:`` on bad input (``--debug``: the traceback), 2 on a usage error."""
    return run_command(build_parser(prog), run, argv, before_run=before_run)
