"""The `hspnet prepare` command (`hspnet.cli.prepare`, datasets_scripts/prepare.py): its entry points, `--output`
(the new build replaces the previous one as a whole, foreign files are never deleted silently, an input is never the
output, a failed build leaves the previous one intact), and bad input as one line naming file, line and field
(the traceback with --debug)."""

import os

import datasets
import pytest
from datasets import Dataset

from hspnet.data import DatasetFormatError
from hspnet.cli.prepare import main
from tests.helpers import folder_with, make_coco_tree, make_cub_tree, make_voc_tree, voc_dir, write_text

datasets.disable_progress_bars()


def test_cli_entry_points(tmp_path, capsys):
    """`hspnet prepare` (the top-level command's dispatch, run in this process: `python -m hspnet` itself is proven
    in a fresh interpreter by tests/test_cli.py) and the data command's --json output."""
    import json

    from hspnet.cli import main as hspnet_main
    from hspnet.cli.prepare import main

    root = make_coco_tree(tmp_path / "coco")
    code = hspnet_main(["prepare", "coco", "--root", root, "--cache-dir", str(tmp_path / "cache"),
                        "--protocol", "authors", "-q"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Dataset coco: 80 labels in 12 groups; protocol authors" in out
    assert "toothbrush" in out and "train without positive: 1" in out

    cub = make_cub_tree(tmp_path / "cub")
    assert main(["cub", "--root", cub, "--cache-dir", str(tmp_path / "cache"), "--json", "-q"]) == 0
    stats = json.loads(capsys.readouterr().out.split("\nPrepared dataset")[0])
    assert {split: entry["num_images"] for split, entry in stats["splits"].items()} == {
        "train": 3,
        "validation": 1,
        "test": 3,
    }
    assert len(stats["labels"]) == 312 and stats["report"]["dataset"] == "cub"


# ----------------------------------------------------------------------------------------------------------------------
# --output: the new build replaces the previous one as a whole, foreign files are never deleted silently
# ----------------------------------------------------------------------------------------------------------------------


def _demo_cli(out, cache, *extra):
    return main(["demo", "--num-train", "10", "--num-test", "4", "--image-size", "8", "--cache-dir", str(cache),
                 "-q", "--output_dir", str(out), *extra])  # fmt: skip


def test_output_replaces_the_previous_build_as_a_whole(tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert _demo_cli(out, cache, "--output-format", "parquet") == 0
    assert "validation.parquet" in os.listdir(out)
    assert _demo_cli(out, cache, "--output-format", "parquet", "--protocol", "authors") == 0
    assert sorted(os.listdir(out)) == ["hierarchy.json", "hspnet_build.json", "report.json", "test.parquet",
                                       "train.parquet"]  # fmt: skip
    assert Dataset.from_parquet(str(out / "train.parquet")).num_rows == 10  # all training images, none held out
    assert _demo_cli(out, cache) == 0  # arrow
    assert "dataset_dict.json" in os.listdir(out) and not [n for n in os.listdir(out) if n.endswith(".parquet")]
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".out.")]  # no temporary left behind

    # a build of an earlier version (no hspnet_build.json) is recognised and replaced
    old = tmp_path / "old"
    old.mkdir()
    for name in ("hierarchy.json", "report.json", "train.parquet", "validation.parquet", "test.parquet"):
        write_text(old / name, "x")
    assert _demo_cli(old, cache, "--output-format", "parquet", "--protocol", "authors") == 0
    assert "validation.parquet" not in os.listdir(old)
    capsys.readouterr()


def test_output_with_foreign_files_is_refused_unless_overwrite(tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert _demo_cli(out, cache, "--output-format", "parquet") == 0
    write_text(out / "notes.txt", "mine")
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    capsys.readouterr()
    assert _demo_cli(out, cache, "--output-format", "parquet", "--protocol", "authors") == 1
    err = capsys.readouterr().err
    assert "'notes.txt'" in err and "--overwrite" in err and err.count("\n") == 1
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before  # untouched
    assert _demo_cli(out, cache, "--output-format", "parquet", "--protocol", "authors", "--overwrite") == 0
    assert "notes.txt" not in os.listdir(out) and "validation.parquet" not in os.listdir(out)

    plain = tmp_path / "plain.txt"
    write_text(plain, "a file")
    assert _demo_cli(plain, cache) == 1
    assert "not a folder" in capsys.readouterr().err and plain.read_text() == "a file"


def test_foreign_files_inside_a_saved_split_folder(tmp_path, capsys):
    from hspnet.data.export import foreign_entries

    out, cache = tmp_path / "out", tmp_path / "cache"
    assert _demo_cli(out, cache) == 0  # arrow: train/, validation/, test/ folders
    assert foreign_entries(out) == []
    write_text(out / "train" / "cache-0123.arrow", "a datasets cache made from the build")  # part of the build
    write_text(out / "test" / "mine.txt", "not part of the build")
    assert foreign_entries(out) == ["test/mine.txt"]
    assert _demo_cli(out, cache) == 1
    assert "'test/mine.txt'" in capsys.readouterr().err
    assert (out / "test" / "mine.txt").read_text() == "not part of the build"


def test_output_that_is_or_holds_an_input_is_refused(tmp_path, capsys):
    root = folder_with(tmp_path, ["file_name,labels", "a.png,cat", "b.png,dog", "c.png,cat", "d.png,dog"])
    hierarchy = write_text(tmp_path / "h.csv", "cat,pet\ndog,pet\n")
    base = ["folder", "--hierarchy", hierarchy, "--cache-dir", str(tmp_path / "cache"), "-q", "--protocol",
            "authors", "--test-fraction", "0.25", "--overwrite"]  # fmt: skip
    assert main([*base, "--root", str(root), "--output_dir", str(root)]) == 1
    assert "which this build reads" in capsys.readouterr().err
    assert main([*base, "--root", str(root), "--output_dir", str(tmp_path)]) == 1  # contains the root
    capsys.readouterr()
    assert sorted(os.listdir(root)) == ["a.png", "b.png", "c.png", "d.png", "metadata.csv"]
    assert main([*base, "--root", str(root), "--output_dir", str(tmp_path / "fine")]) == 0


def test_a_failed_build_leaves_the_previous_output_intact(tmp_path, monkeypatch, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert _demo_cli(out, cache, "--output-format", "parquet") == 0
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    calls = []

    def fail_on_second_split(self, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        with open(path, "wb") as handle:
            handle.write(b"partial")

    monkeypatch.setattr(Dataset, "to_parquet", fail_on_second_split)
    assert _demo_cli(out, cache, "--output-format", "parquet", "--protocol", "authors") == 1
    assert "No space left on device" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    assert sorted(os.listdir(tmp_path)) == ["cache", "out"]  # the temporary build was removed


# ----------------------------------------------------------------------------------------------------------------------
# One line naming file, line and field; --debug shows the traceback
# ----------------------------------------------------------------------------------------------------------------------


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    assert main(["voc", "--root", str(tmp_path / "nowhere"), "--cache-dir", str(tmp_path / "cache"), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hspnet prepare: error: ") and "Traceback" not in err and "nowhere" in err
    assert err.count("\n") == 1  # one line

    voc = make_voc_tree(tmp_path / "voc")
    os.remove(os.path.join(voc_dir(voc), "JPEGImages", "2008_000019.jpg"))
    assert main(["voc", "--root", voc, "--cache-dir", str(tmp_path / "cache"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "1 missing" in err and "--on_missing_image skip" in err and err.count("\n") == 1
    assert main(["voc", "--root", voc, "--cache-dir", str(tmp_path / "cache"), "-q", "--on-missing-image", "skip"]) == 0
    out = capsys.readouterr().out
    assert "Missing images: 1" in out


def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    root = folder_with(tmp_path, ["file_name,labels,split", "a.png,cat,train", "b.png,dog,later"])
    hierarchy = write_text(tmp_path / "h.csv", "cat,pet\ndog,pet\n")
    args = ["folder", "--root", str(root), "--hierarchy", hierarchy, "--cache-dir", str(tmp_path / "c"), "-q"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err == f"hspnet prepare: error: {root / 'metadata.csv'}, line 3, field 'split': split must be 'train' or " \
                  "'test', got 'later'\n"  # fmt: skip
    with pytest.raises(DatasetFormatError):
        main([*args, "--debug"])
    with pytest.raises(DatasetFormatError):
        main(["--debug", *args])
    assert main([*args, "--validation-fraction", "1.5"]) == 1
    assert "validation_fraction must be in [0, 1)" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 1
    assert "--overwrite needs --output_dir" in capsys.readouterr().err


def test_prepare_script_exits_1_with_one_line(tmp_path, monkeypatch, capsys):
    import runpy
    import sys

    # the script run as __main__ in this interpreter: `python -m hspnet prepare` already gets a fresh one
    # (`test_cli_entry_points` above), the script adds only its exit status
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "datasets_scripts", "prepare.py")
    coco = make_coco_tree(tmp_path / "coco", images=False)
    write_text(os.path.join(coco, "annotations", "instances_val2014.json"), '{"images": [\n  {"id": 1,}\n]}')
    monkeypatch.setattr(sys, "argv", [script, "coco", "--root", coco, "--cache-dir", str(tmp_path / "cache"), "-q"])
    with pytest.raises(SystemExit) as exit_status:
        runpy.run_path(script, run_name="__main__")
    assert exit_status.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"prepare.py: error: {os.path.join(coco, 'annotations', 'instances_val2014.json')}, line 2: "
                     "invalid JSON: Expecting property name enclosed in double quotes (column 12)"]  # fmt: skip
