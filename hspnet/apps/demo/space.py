"""A Hugging Face Space for a model: ``hspnet demo --model M --write_space DIR`` (:func:`write_space`).

The folder holds ``app.py`` (:data:`APP_TEMPLATE`), ``requirements.txt``, ``README.md`` (the Space card: ``sdk:
gradio``), ``examples/`` (the example images), a copy of this ``hspnet`` package (``hspnet/``, pure Python, so the
Space runs exactly this code without a package index) and the model: a local model folder is copied into
``model/``; a Hub id (or ``--space_model_id``) is referenced by its id and downloaded by the Space when it starts.
The folder is written whole or not at all. Needs no gradio.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Sequence

from hspnet.apps.demo.page import (
    DEFAULT_THRESHOLD,
    SPACE_MARKER,
    collect_examples,
    is_demo_model,
    write_demo_examples,
)
from hspnet.apps.demo.summary import SUMMARY_FILES, LabelGroups
from hspnet.hub.transfer import model_files
from hspnet.utils.files import give_default_mode, is_hub_id, new_file_mode, new_folder_mode

APP_TEMPLATE = '''"""A Gradio demo of an HSPNet model (a Hugging Face Space runs `python app.py`).

Written by `hspnet demo --write_space`. The hspnet package next to this file is the code that wrote it; the model
is {model_note}.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the copy of the hspnet package in this folder

from hspnet.apps.demo.page import build_demo, launch_demo  # noqa: E402

MODEL = {model_expr}
EXAMPLES = os.path.join(HERE, "examples")

demo = build_demo(MODEL, examples=[EXAMPLES] if os.path.isdir(EXAMPLES) else [], title={title!r},
                  model_name={model_name!r}, threshold={threshold!r}, top_k={top_k!r})

if __name__ == "__main__":
    launch_demo(demo)
'''


def _requirements() -> list[str]:
    """What the Space installs: hspnet's own requirements and gradio (from the installed package's metadata)."""
    fallback = ["torch>=2.4", "transformers>=5.0,<6", "datasets>=5.0,<6", "accelerate>=1.10", "huggingface_hub>=1.0",
                "safetensors", "numpy", "pillow", "pyyaml", "tqdm", "gradio>=5"]
    try:
        from importlib.metadata import PackageNotFoundError, requires

        declared = requires("hspnet") or []
    except (ImportError, PackageNotFoundError):
        return fallback
    out = []
    for requirement in declared:
        spec, _, marker = requirement.partition(";")
        if not marker.strip() or re.search(r"""extra\s*==\s*["']demo["']""", marker):
            out.append(spec.strip().replace(" ", ""))
    return out if any(r.startswith("gradio") for r in out) else fallback


def _space_card(title: str) -> str:
    try:
        from importlib.metadata import version

        gradio_version = version("gradio")
    except Exception:  # noqa: BLE001 (no gradio installed: the Space picks its default)
        gradio_version = None
    lines = ["---", f"title: {json.dumps(title[:60])}", "emoji: 🏷️", "colorFrom: green", "colorTo: blue",
             "sdk: gradio"]
    if gradio_version:
        lines.append(f"sdk_version: {gradio_version}")
    lines += ["app_file: app.py", "pinned: false", "---", "",
              f"# {title}", "",
              "A Gradio demo of an HSPNet multi-label image classifier, written by `hspnet demo --write_space`.",
              "Upload images; every label's score is shown, grouped by the model's label hierarchy.", ""]
    return "\n".join(lines)


def _copy_package(target: str) -> None:
    """Copy the installed ``hspnet`` package (Python files and package data, no caches) to ``target``."""
    from importlib.resources import files

    source = str(files("hspnet"))
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))


def _model_copy_files(folder: str) -> list[str]:
    """What the Space copies of a local model folder: its model files (:func:`hspnet.hub.transfer.model_files`) and
    the files its summary reads (:data:`hspnet.apps.demo.summary.SUMMARY_FILES`, e.g. ``all_results.json``)."""
    names = model_files(folder)
    summary = [name for name in SUMMARY_FILES if name not in names and os.path.isfile(os.path.join(folder, name))]
    return sorted(names + summary)


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def write_space(model_name_or_path: str | os.PathLike, folder: str | os.PathLike,
                examples: Sequence[str | os.PathLike] | None = None, *, title: str | None = None,
                space_model_id: str | None = None, overwrite: bool = False, check: bool = True,
                threshold: float = DEFAULT_THRESHOLD, top_k: int = 0) -> str:
    """Write a Hugging Face Space for the model into ``folder`` (see the module docstring for what it holds); returns
    ``folder``. A local model folder is copied into ``model/`` unless ``space_model_id`` names the Hub id to load
    instead; a Hub id is referenced. ``examples``: image files / folders (``None``: demo test images for a model
    with the demo data's labels). ``threshold`` / ``top_k``: the page's initial controls (top-k 0: no limit).
    ``check`` loads the model first, so a broken model fails here and not on the Space. The folder is written whole
    or not at all; an existing non-empty folder is replaced only with ``overwrite`` and only if an earlier
    ``write_space`` wrote it."""
    from hspnet.models.loading import ModelLoadError, load_model
    from hspnet.utils.validation import check_positive_int, check_probability

    threshold = check_probability(threshold, "threshold", allow_none=False)
    top_k = check_positive_int(top_k, "top_k", minimum=0)

    model = os.fspath(model_name_or_path)
    folder = os.fspath(folder)
    local = os.path.isdir(model)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(f"{folder}: --write_space must be a folder, this is a file")
    if os.path.isdir(folder) and os.listdir(folder):
        if not overwrite:
            raise FileExistsError(f"{folder}: the folder exists and is not empty; pass --overwrite to replace a Space "
                                  "folder written earlier, or choose a new folder")
        if not os.path.isfile(os.path.join(folder, SPACE_MARKER)):
            raise FileExistsError(f"{folder}: not a Space folder written by hspnet demo (no {SPACE_MARKER}); "
                                  "refusing to replace it")
    if local and (_inside(folder, model) or _inside(model, folder)):
        raise ValueError(f"{folder}: the Space folder must not be inside the model folder {model} or contain it")
    if space_model_id is not None and not is_hub_id(space_model_id):
        raise ValueError(f"--space_model_id must be a Hub id like user/model, got {space_model_id!r}")
    if not local and os.path.exists(model):
        raise ModelLoadError(f"{model}: the model must be a folder (or a Hub id), not a file")
    if not local and not is_hub_id(model):
        raise ModelLoadError(f"{model}: no such model folder, and not a Hub id like user/model")
    if check:
        loaded, _ = load_model(model)
        label_groups = LabelGroups.from_config(loaded.config)
        del loaded
        if top_k > label_groups.num_labels:
            raise ValueError(f"top_k must be in [0, {label_groups.num_labels}] (the model has "
                             f"{label_groups.num_labels} labels), got {top_k}")
    else:
        label_groups = None
    if examples is None:
        example_paths = None  # demo images, drawn below when the model has the demo labels
    else:
        example_paths = collect_examples(examples) if examples else []
    heading = title or "HSPNet demo"
    shown_name = space_model_id or (os.path.basename(os.path.normpath(os.path.abspath(model))) if local else model)

    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(folder))}.", suffix=".partial", dir=parent)
    os.chmod(staging, new_folder_mode(parent))  # the user's umask, not mkdtemp's 0700
    try:
        _copy_package(os.path.join(staging, "hspnet"))
        if space_model_id is not None:
            model_expr, note = repr(space_model_id), f"loaded from the Hugging Face Hub: {space_model_id}"
        elif local:
            os.makedirs(os.path.join(staging, "model"))
            copies = [os.path.join(staging, "model", name) for name in _model_copy_files(model)]
            for name, copy in zip(_model_copy_files(model), copies):
                shutil.copy2(os.path.join(model, name), copy)
            give_default_mode(copies, new_file_mode(staging))  # save_pretrained's weights are 0600
            model_expr, note = 'os.path.join(HERE, "model")', "the copy in model/"
        else:
            model_expr, note = repr(model), f"loaded from the Hugging Face Hub: {model}"
        example_dir = os.path.join(staging, "examples")
        if example_paths is None:
            if label_groups is not None and is_demo_model(label_groups):
                write_demo_examples(example_dir)
        elif example_paths:
            os.makedirs(example_dir)
            used = set()
            for index, path in enumerate(example_paths):
                name = os.path.basename(path)
                if name in used or name.startswith("."):
                    name = f"{index:02d}-{name.lstrip('.')}"
                used.add(name)
                shutil.copyfile(path, os.path.join(example_dir, name))
        with open(os.path.join(staging, "app.py"), "w", encoding="utf-8") as handle:
            handle.write(APP_TEMPLATE.format(title=title, model_note=note, model_expr=model_expr,
                                             model_name=shown_name, threshold=float(threshold), top_k=int(top_k)))
        with open(os.path.join(staging, "requirements.txt"), "w", encoding="utf-8") as handle:
            handle.write("\n".join(_requirements()) + "\n")
        with open(os.path.join(staging, "README.md"), "w", encoding="utf-8") as handle:
            handle.write(_space_card(heading))
        with open(os.path.join(staging, SPACE_MARKER), "w", encoding="utf-8") as handle:
            handle.write("written by hspnet demo --write_space\n")
        if os.path.isdir(folder):
            old = folder.rstrip(os.sep) + f".replaced-{os.getpid()}"
            os.replace(folder, old)
            os.replace(staging, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder
