"""The demo page's logic without a browser (hspnet.apps.demo.page): label groups, the highlight rule, the HTML, uploads scored
by predict's code, bad uploads as messages, the model card summary, the Space folder and the command line. The page
itself in a real browser: tests/test_demo_browser.py."""

import json
import os
import shutil
import sys

import pytest

from hspnet.cli.demo import main
from hspnet.apps.demo.page import (
    DemoModel,
    grouped_scores,
    is_demo_model,
    render_image_result,
    render_results,
    selected_labels,
    status_message,
)
from hspnet.apps.demo.space import write_space
from hspnet.apps.demo.summary import LabelGroups, read_model_summary, summary_markdown
from hspnet.apps.predict import predict_images, select_labels
from hspnet.data.demo import demo_hierarchy, draw_demo_image
from hspnet.models.loading import load_model
from tests.helpers import GROUPS, LABEL_TO_GROUP, LABELS, check_result

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model_dir(tiny_demo_model_dir):
    """A saved tiny HSPNet on the demo data's hierarchy (12 labels, 3 groups), shared by the session (conftest.py)."""
    return tiny_demo_model_dir


@pytest.fixture(scope="module")
def demo_model(model_dir):
    return DemoModel.load(model_dir, device="cpu")


def _png(path, seed=0, index=0):
    image, labels = draw_demo_image(seed, "test", index)
    image.save(path)
    return str(path)


# ---------------------------------------------------------------------------------------------------------------------
# Labels, groups, the highlight rule, the HTML
# ---------------------------------------------------------------------------------------------------------------------


def test_label_groups_follow_the_config(make_model):
    groups = LabelGroups.from_config(make_model().config)
    assert groups.names == tuple(LABELS)
    assert [name for name, _ in groups.groups] == GROUPS
    for group_index, (_, members) in enumerate(groups.groups):
        assert list(members) == [i for i, g in enumerate(LABEL_TO_GROUP) if g == group_index]
    assert not is_demo_model(groups)


def test_label_groups_without_hierarchy_is_one_group():
    from types import SimpleNamespace

    config = SimpleNamespace(id2label={0: "a", 1: "b"}, num_labels=2)
    assert LabelGroups.from_config(config).groups == (("labels", (0, 1)),)
    broken = SimpleNamespace(id2label={0: "a", 1: "b"}, num_labels=2, group_names=["g"], label_to_group=[0, 5])
    assert LabelGroups.from_config(broken).groups == (("labels", (0, 1)),)


def test_selection_is_predicts_rule():
    names = ["a", "b", "c", "d", "e"]
    scores = [0.9, 0.2, 0.7, 0.55, 0.7]
    for threshold in (0.0, 0.5, 0.69, 0.95):
        for top_k in (None, 0, 1, 2, 5, 9):
            expected = select_labels(scores, names, threshold, min(top_k, 5) if top_k else None)
            assert [names[i] for i in selected_labels(scores, names, threshold, top_k)] == [n for n, _ in expected]
    assert selected_labels(scores, names, None, 2) == [0, 2]  # top-k only: ties by label order
    assert selected_labels(scores, names, None, 0) == []  # neither rule: nothing highlighted
    with pytest.raises(ValueError, match="top-k"):
        selected_labels(scores, names, 0.5, -1)


def test_grouped_scores_sort_within_groups(make_model):
    groups = LabelGroups.from_config(make_model().config)
    scores = [0.1, 0.8, 0.3, 0.6, 0.9, 0.05]  # cat dog | traffic_light | car bus | person
    data = grouped_scores(scores, groups, threshold=0.5, top_k=2)
    assert [g["group"] for g in data] == GROUPS
    assert [item["label"] for item in data[0]["labels"]] == ["dog", "cat"]
    assert [item["label"] for item in data[2]["labels"]] == ["bus", "car"]
    chosen = {item["label"] for g in data for item in g["labels"] if item["selected"]}
    assert chosen == {"bus", "dog"}  # above 0.5 and in the top 2 (car 0.6 is third)
    assert [g["num_selected"] for g in data] == [1, 0, 1, 0]
    with pytest.raises(ValueError, match="6 labels"):
        grouped_scores(scores[:5], groups)


def test_html_shows_every_score_grouped_and_escaped():
    groups = LabelGroups(("<b>x</b>", "y & z", "w"), (("g<1>", (0, 1)), ("g2", (2,))))
    result = {"name": "<img src=x onerror=alert(1)>.png", "scores": [0.91234, 0.5, 0.00049]}
    page = render_image_result(result, groups, threshold=0.5, top_k=None)
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page and "y &amp; z" in page
    assert "<img src=x" not in page and "g&lt;1&gt;" in page
    assert page.count('class="hsp-row') == 3
    assert ">0.912<" in page and ">0.500<" in page and ">0.000<" in page
    assert 'data-score="0.91234"' in page
    assert page.count("hsp-row hsp-on") == 1  # 0.5 is not above the threshold 0.5
    assert page.index('data-group="g&lt;1&gt;"') < page.index('data-group="g2"')


def test_html_error_card_and_status():
    groups = LabelGroups(("a",), (("labels", (0,)),))
    results = [{"name": "a.png", "scores": [0.7]}, {"name": "notes.txt", "error": "notes.txt: cannot read <this>"}]
    page = render_results(results, groups, 0.5, None)
    assert 'class="hsp-image hsp-error" data-file="notes.txt"' in page and "cannot read &lt;this&gt;" in page
    assert status_message(results).startswith("1 image scored; **1 file could not be used**")
    assert "Upload" in render_results([], groups)


# ---------------------------------------------------------------------------------------------------------------------
# Uploads: predict's scores, bad files as messages
# ---------------------------------------------------------------------------------------------------------------------


def test_uploads_are_scored_like_predict(model_dir, demo_model, tmp_path):
    paths = [_png(tmp_path / f"img{i}.png", index=i) for i in range(3)]
    results, notes = demo_model.predict_files(paths)
    assert notes == []
    model, processor = load_model(model_dir, device="cpu")
    expected = predict_images(model, processor, paths, threshold=None, top_k=12, all_scores=True, progress=False)
    names = list(demo_hierarchy().labels)
    for result, prediction, path in zip(results, expected, paths):
        assert result["name"] == os.path.basename(path) and "error" not in result
        assert result["scores"] == pytest.approx([prediction.scores[n] for n in names], abs=1e-6)
        assert result["thumbnail"].startswith("data:image/jpeg;base64,")
    assert demo_model.label_groups.names == tuple(names) and is_demo_model(demo_model.label_groups)


def test_bad_uploads_give_messages_not_exceptions(demo_model, tmp_path):
    from PIL import Image

    good = _png(tmp_path / "good.png")
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(open(good, "rb").read()[:60])
    big = tmp_path / "big.png"
    Image.new("L", (4000, 3000)).save(big)  # 12 M pixels: over the limit set below
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    limited = DemoModel(demo_model.model, demo_model.processor, demo_model.label_groups, max_image_pixels=10_000_000)
    results, notes = limited.predict_files([str(text), good, str(truncated), str(big), str(fifo), {"bad": 1}])
    by_name = {r["name"]: r for r in results}
    assert "scores" in by_name["good.png"]
    assert by_name["notes.txt"]["error"] == ("notes.txt: cannot read this file as an image (not a recognised image "
                                             "format)")
    assert by_name["cut.png"]["error"].startswith("cut.png: cannot read this file as an image")
    assert "decompression bomb" in by_name["big.png"]["error"] and "4000x3000" in by_name["big.png"]["error"]
    assert "a FIFO" in by_name["pipe.png"]["error"]
    assert by_name["?"]["error"].startswith("not an uploaded file")
    assert all(str(tmp_path) not in r.get("error", "") for r in results)  # the server's paths stay private
    small = DemoModel(demo_model.model, demo_model.processor, demo_model.label_groups, max_upload_bytes=100,
                      max_images=2)
    results, notes = small.predict_files([good, good, good])
    assert notes == ["Only the first 2 of 3 files were scored."] and len(results) == 2
    assert results[0]["error"] == f"good.png: {os.path.getsize(good)} bytes, more than the 100 bytes allowed per file"


def test_model_failure_is_a_note(demo_model, tmp_path):
    class Broken:
        config = demo_model.model.config

        def __getattr__(self, name):
            return getattr(demo_model.model, name)

        def __call__(self, **kwargs):
            raise RuntimeError("out of memory")

    broken = DemoModel(Broken(), demo_model.processor, demo_model.label_groups)
    results, notes = broken.predict_files([_png(tmp_path / "a.png")])
    assert notes == ["The model could not score these images: out of memory"]
    assert results[0]["error"] == "not scored (see the message above)"


# ---------------------------------------------------------------------------------------------------------------------
# Model card summary
# ---------------------------------------------------------------------------------------------------------------------


def test_summary_from_model_card(model_dir, demo_model, tmp_path):
    from hspnet.hub.cards import model_card

    folder = tmp_path / "m"
    folder.mkdir()
    card = model_card(demo_model.model.config, dataset="demo", metrics={"mAP": 91.234, "CF1": 80.5, "num_samples": 9},
                      recipe={"seed": 0}, base_model="tiny-random")
    (folder / "README.md").write_text(card)
    summary = read_model_summary(str(folder), demo_model.model.config)
    assert summary["metrics"] == {"mAP": 91.234, "CF1": 80.5} and summary["metrics_source"] == "model card"
    assert summary["base_model"] == "tiny-random" and summary["dataset"] == "demo" and summary["num_labels"] == 12
    assert [g for g, _ in summary["groups"]] == ["round shape", "polygon", "line"]
    text = summary_markdown(summary)
    assert "12 labels in 3 groups" in text and "mAP **91.23**" in text and "`tiny-random`" in text
    assert "- **polygon**: blue square, green triangle, cyan diamond, purple hexagon" in text


def test_summary_from_all_results_and_bad_files(demo_model, tmp_path):
    config = demo_model.model.config
    (tmp_path / "README.md").write_text("---\nmodel-index: [unclosed\n---\n# card\n")
    (tmp_path / "all_results.json").write_text(json.dumps({"test": {"mAP": 88.0, "OF1": "x", "CF1": float("nan")}}))
    (tmp_path / "training_args.json").write_text("{not json")
    summary = read_model_summary(str(tmp_path), config)
    assert summary["metrics"] == {"mAP": 88.0} and summary["metrics_source"].startswith("all_results.json")
    assert read_model_summary(str(tmp_path / "missing"), None)["metrics"] == {}
    assert read_model_summary("user/not-cached-anywhere", None)["metrics"] == {}  # offline Hub id: no card
    os.remove(tmp_path / "README.md")
    os.mkfifo(tmp_path / "README.md")  # never opened (it would block)
    assert read_model_summary(str(tmp_path), config)["metrics"] == {"mAP": 88.0}


# ---------------------------------------------------------------------------------------------------------------------
# Import boundaries, the command line
# ---------------------------------------------------------------------------------------------------------------------


def test_core_does_not_import_gradio(fresh_package_report):
    """A fresh interpreter (the shared run of `fresh_package_report`) imports hspnet, hspnet.apps.predict, hspnet.cli
    and hspnet.apps.demo.page (with hspnet.apps.onnx_export) without gradio."""
    assert not [m for m in fresh_package_report["optional_after_core"] if m.split(".")[0] == "gradio"]
    assert "hspnet.apps.demo.page" in fresh_package_report["core_modules"]


def test_missing_gradio_is_a_one_line_error(model_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    assert main(["--model", model_dir], prog="hspnet demo") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("hspnet demo: error: the demo needs gradio") and 'pip install -e ".[demo]"' in err
    assert "\n" not in err


@pytest.mark.parametrize("argv, message", [
    (["--model", "{model}", "--top_k", "-1"], "--top_k must be >= 0"),
    (["--model", "{model}", "--examples", "x.png", "--no_examples"], "contradict"),
    (["--model", "{model}", "--overwrite"], "only apply with --write_space"),
    (["--model", "/nonexistent/model"], "/nonexistent/model: model folder does not exist"),
    (["--model", "{model}", "--top_k", "13"], "--top_k must be in [0, 12]"),
])
def test_cli_errors_are_one_line(model_dir, capsys, argv, message):
    argv = [a.replace("{model}", model_dir) for a in argv]
    assert main(argv, prog="hspnet demo") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("hspnet demo: error: ") and message in err and "\n" not in err


def test_cli_bad_port_is_an_argparse_error(model_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", model_dir, "--port", "70000"])
    assert exit_info.value.code == 2 and "expected a port number" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# A Space folder
# ---------------------------------------------------------------------------------------------------------------------


def test_write_space_copies_model_examples_and_package(model_dir, fresh_remote_run, tmp_path, capsys):
    """The Space folder `write_space_for_fresh_run` wrote, its app.py run in a fresh interpreter (`fresh_remote_run`),
    then --overwrite and a foreign folder on a copy of it."""
    case = fresh_remote_run["space"]
    space, written = case["space"], case["as_written"]
    assert written["exit_code"] == 0 and "wrote a Space to" in written["printed"]
    names = set(os.listdir(space))
    assert {"app.py", "requirements.txt", "README.md", "examples", "hspnet", "model", ".hspnet-space"} <= names
    assert sorted(os.listdir(space / "examples")) == [f"demo-test-{i:05d}.png" for i in range(6)]
    assert os.path.isfile(space / "model" / "model.safetensors") and os.path.isfile(space / "hspnet" / "apps" / "demo" / "page.py")
    assert written["pycache"] == []
    requirements = (space / "requirements.txt").read_text().split()
    assert any(r.startswith("gradio") for r in requirements) and any(r.startswith("transformers") for r in requirements)
    card = (space / "README.md").read_text()
    assert "sdk: gradio" in card and "app_file: app.py" in card
    app = (space / "app.py").read_text()
    assert 'os.path.join(HERE, "model")' in app and "title='Shapes'" in app
    assert f"model_name={os.path.basename(case['model_dir'])!r}, threshold=0.3, top_k=2)" in app

    # the Space runs as is: its app.py builds the page with the hspnet copy next to it, run from another folder in a
    # fresh interpreter where the installed (editable) hspnet is importable too
    ran = check_result(case)
    assert ran["installed_hspnet"] and not ran["installed_hspnet"].startswith(str(space)), ran
    assert ran["used_hspnet"].startswith(str(space)), ran
    assert ran["demo_type"] == "Blocks"

    # an existing Space is replaced only with --overwrite; a foreign folder never (on a copy: the one above is shared)
    space = tmp_path / "space"
    shutil.copytree(case["space"], space)
    assert main(["--model", model_dir, "--write_space", str(space)]) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["--model", model_dir, "--write_space", str(space), "--overwrite", "--no_examples"]) == 0
    assert "examples" not in os.listdir(space)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert main(["--model", model_dir, "--write_space", str(foreign), "--overwrite"]) == 1
    assert "refusing to replace it" in capsys.readouterr().err and (foreign / "keep.txt").read_text() == "mine"
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".partial")]
    assert not [n for n in os.listdir(case["space"].parent) if n.endswith(".partial")]


def test_write_space_references_a_hub_id(model_dir, tmp_path):
    space = write_space("someone/hspnet-demo", tmp_path / "s1", [], check=False)
    app = (tmp_path / "s1" / "app.py").read_text()
    assert "'someone/hspnet-demo'" in app and not os.path.exists(tmp_path / "s1" / "model")
    write_space(model_dir, tmp_path / "s2", [_png(tmp_path / "x.png")], space_model_id="me/shapes")
    assert "'me/shapes'" in (tmp_path / "s2" / "app.py").read_text()
    assert os.listdir(tmp_path / "s2" / "examples") == ["x.png"] and not os.path.exists(tmp_path / "s2" / "model")
    with pytest.raises(ValueError, match="must be a Hub id"):
        write_space(model_dir, tmp_path / "s3", [], space_model_id="../x")
    with pytest.raises(OSError, match="not a Hub id"):
        write_space("no/such/folder", tmp_path / "s3", [], check=False)
    assert not os.path.exists(tmp_path / "s3")
    with pytest.raises(ValueError, match="must not be inside the model folder"):
        write_space(model_dir, os.path.join(model_dir, "space"), [])
    assert space == str(tmp_path / "s1")
