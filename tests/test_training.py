"""Training (`hspnet.training`, scripts/train.py): the recipe's pieces (docs/method.md, sections 4.1-4.3), the
options (defaults, YAML file, command line; one line naming the culprit), a tiny run end to end (its output folder,
docs/method.md section 7.2; its model loads with the Auto classes and as remote code; the metrics it selected on), 2
processes, the stateful losses, and a diverging loss (section 4.5). The output folder is tests/test_run_folder.py,
checkpoints and resuming tests/test_resume.py, the Hub tests/test_hub.py, the EMA tests/test_ema.py."""

import gc
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from hspnet.training.arguments import TrainingConfig, load_config
from hspnet.training.data_and_model import build_model
from hspnet.training.loop import TrainingDivergedError, train
from hspnet.training.optimization import one_cycle_scheduler, parameter_groups
from tests.helpers import REPO, as_argv, error_line, load_train_main, poison, run_main, tiny_options

# ----------------------------------------------------------------------------------------------------------------------
# The recipe's pieces
# ----------------------------------------------------------------------------------------------------------------------


def test_parameter_groups_follow_the_reference(make_model):
    model = make_model()
    groups = {g["name"]: g for g in parameter_groups(model, lr=1e-4, gcn_lr=5e-4, weight_decay=1e-4)}
    assert set(groups) == {"decay", "no_decay", "gcn_decay", "gcn_no_decay"}
    ids = lambda group: {id(p) for p in groups[group]["params"]}  # noqa: E731
    base = model.hspnet
    assert ids("gcn_decay") == {id(base.gcn.gc1.weight), id(base.gcn.gc2.weight), id(base.gcn.gc3.weight)}
    assert ids("gcn_no_decay") == {id(base.gcn.gamma)}
    assert id(base.meta_net.linear1.weight) in ids("decay") and id(base.meta_net.linear1.bias) in ids("no_decay")
    assert id(base.clip.visual_projection.weight) in ids("decay")
    assert id(base.clip.vision_model.post_layernorm.weight) in ids("no_decay")
    assert groups["decay"]["lr"] == 1e-4 and groups["gcn_decay"]["lr"] == 5e-4
    assert groups["decay"]["weight_decay"] == 1e-4 and groups["no_decay"]["weight_decay"] == 0.0
    assert groups["gcn_no_decay"]["weight_decay"] == 0.0
    everything = set().union(*(ids(g) for g in groups))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert everything == trainable  # the frozen text tower is in no group, every trainable tensor in exactly one
    assert sum(len(g["params"]) for g in groups.values()) == len(trainable)


def test_one_cycle_schedule():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.Adam([{"params": [params[0]], "lr": 1e-4}, {"params": [params[1]], "lr": 5e-4}])
    scheduler = one_cycle_scheduler(optimizer, steps_per_epoch=10, schedule_epochs=80, pct_start=0.2)
    assert scheduler.total_steps == 800
    lrs = []
    for _ in range(800):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    peak = max(range(800), key=lambda i: lrs[i][0])
    assert abs(peak - 0.2 * 800) <= 2  # pct_start 0.2
    assert max(l[0] for l in lrs) == pytest.approx(1e-4) and max(l[1] for l in lrs) == pytest.approx(5e-4)
    # training stops at epoch 60 of the 80-epoch schedule: the lr there is still well above the final value
    assert lrs[600][0] > lrs[799][0] * 10


def test_the_model_owns_the_loss_and_role_starts_from_the_observed_labels():
    from types import SimpleNamespace

    from datasets import ClassLabel, Dataset, Features, List

    from hspnet.training.data_and_model import setup_loss_for_training

    names = ["a", "b", "c"]
    hierarchy = SimpleNamespace(labels=names, groups=["g", "h"], label_to_group=[0, 0, 1])
    train_set = Dataset.from_dict(
        {"observed_labels": [[0], [2], [1], [2]]},
        features=Features({"observed_labels": List(ClassLabel(names=names))}),
    )
    model = build_model(TrainingConfig(clip_model="tiny-random", loss="role", loss_kwargs={"expected_num_pos": 1.5}),
                        hierarchy)
    assert model.config.loss == "role" and model.config.loss_kwargs == {"expected_num_pos": 1.5}
    loss = setup_loss_for_training(model, train_set)
    assert loss is model.loss_module and loss.label_logits.shape == (4, 3)  # one estimate per training image
    estimates = loss.estimated_labels
    assert estimates[0, 0] == pytest.approx(0.995, abs=1e-4) and estimates[1, 2] == pytest.approx(0.995, abs=1e-4)
    assert estimates[0, 1] < 0.9  # unobserved entries keep their random initialisation
    # the run's label sampling reaches the model, which samples in its own forward pass
    sampled = build_model(TrainingConfig(clip_model="tiny-random", label_sample_size=2), hierarchy)
    assert sampled.config.label_sample_size == 2 and sampled.loss_module.change_epoch == 1  # SPLC's default
    with pytest.raises(ValueError, match="label_sample_size is set but the loss 'role' couples the labels"):
        TrainingConfig(loss="role", label_sample_size=2)  # checked once, with the options


def test_benchmark_configs_carry_the_reference_recipe():
    expected = {"coco": (1e-4, 5e-4, 1), "voc": (1e-4, 7e-4, 2), "nuswide": (1e-4, 5e-4, 3), "cub": (1e-3, 5e-3, 1)}
    for name, (lr, gcn_lr, change_epoch) in expected.items():
        config = load_config(["--config", str(REPO / "configs" / f"hspnet-{name}.yaml")])
        assert (config.lr, config.gcn_lr, config.loss_kwargs["change_epoch"]) == (lr, gcn_lr, change_epoch), name
        assert config.loss == "splc" and config.loss_kwargs.get("reduction", "sum") == "sum"
        assert (config.epochs, config.schedule_epochs, config.batch_size) == (60, 80, 128)
        assert config.weight_decay == 1e-4 and config.pct_start == 0.2 and config.ema_keep_per_epoch == 0.82
        assert config.dataset == name
    load_config(["--config", str(REPO / "configs" / "demo.yaml")])


# ----------------------------------------------------------------------------------------------------------------------
# Options: defaults, the YAML file, the command line
# ----------------------------------------------------------------------------------------------------------------------


def test_config_from_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 5\nlr: 0.001\nloss_kwargs: {change_epoch: 2}\nprotocol: authors\n")
    config = load_config(["--config", str(path), "--lr", "0.01", "--patience", "3", "--push_to_hub", "false"])
    assert config.epochs == 5 and config.lr == 0.01 and config.loss_kwargs == {"change_epoch": 2}
    assert config.protocol == "authors" and config.patience == 3 and config.push_to_hub is False
    path.write_text("epochz: 5\n")
    with pytest.raises(ValueError, match=r"c.yaml: unknown option\(s\) \['epochz'\]"):
        load_config(["--config", str(path)])
    with pytest.raises(ValueError, match="protocol"):
        load_config(["--protocol", "mine"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(["--config", str(tmp_path / "nope.yaml")])


def test_yaml_values_are_typed_like_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-4\ngcn_lr: 5e-4\nepochs: '3'\nschedule_epochs: 4\nema: 'no'\npatience: null\n")
    config = load_config(["--config", str(path)])  # PyYAML reads 1e-4 as a string
    assert config.lr == 1e-4 and isinstance(config.lr, float) and config.gcn_lr == 5e-4
    assert config.epochs == 3 and config.ema is False and config.patience is None
    path.write_text("epochs: many\n")
    with pytest.raises(ValueError, match=r"c.yaml: epochs: 'many' is not a valid INT"):
        load_config(["--config", str(path)])
    path.write_text("ema: [1]\n")
    with pytest.raises(ValueError, match=r"c.yaml: ema: expected BOOL"):
        load_config(["--config", str(path)])
    with pytest.raises(ValueError, match="hub_model_id"):  # checked before any training, not after
        load_config(["--push_to_hub", "true"])
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        load_config(["--loss", "nope"])


def test_help_describes_every_option():
    import dataclasses

    from hspnet.training.arguments import build_argument_parser

    parser = build_argument_parser()
    text = parser.format_help()
    assert "select the model on the validation split" in text and "(default: heldout)" in text
    helps = {}
    for action in parser._actions:  # the option itself, not its --no_ form
        helps.setdefault(action.dest, action.help)
    for option in dataclasses.fields(TrainingConfig):
        assert f"--{option.name}" in text, option.name
        assert option.metadata["help"] and helps[option.name] == option.metadata["help"], option.name


def test_command_line_wins_over_the_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ema: false\ncheckpointing_steps: '5'\ndataset_options: {num_train: 10}\npatience: 2\n")
    config = load_config(["--config", str(path)])
    assert config.ema is False and config.checkpointing_steps == "5" and config.dataset_options == {"num_train": 10}
    config = load_config(["--ema", "true", "--checkpointing_steps", "None", "--patience", "null",
                          "--dataset_options", '{"num_train": 20}', "--config", str(path)])
    assert config.ema is True and config.checkpointing_steps is None and config.patience is None
    assert config.dataset_options == {"num_train": 20}
    assert load_config(["--config", str(path), "--no_ema"]).ema is False
    assert load_config([]).patience is None and load_config([]).ema is True  # the dataclass defaults


def test_compile_backend_and_mode_imply_torch_compile_and_are_checked():
    import pytest

    from hspnet.training.arguments import TrainingConfig

    assert TrainingConfig(torch_compile_backend="aot_eager").torch_compile is True
    assert TrainingConfig(torch_compile_mode="max-autotune").torch_compile is True
    assert TrainingConfig().torch_compile is False
    with pytest.raises(ValueError, match="torch_compile_backend must be one of .* got 'inductr'"):
        TrainingConfig(torch_compile_backend="inductr")
    with pytest.raises(ValueError, match="torch_compile_mode must be one of .* got 'fast'"):
        TrainingConfig(torch_compile_mode="fast")


@pytest.mark.parametrize("option, value, expected", [
    ("checkpointing_steps", "0", "checkpointing_steps must be 'epoch', a number of steps >= 1 or null"),
    ("logging_steps", "0", "logging_steps must be >= 1, got 0"),
    ("max_train_steps", "0", "max_train_steps must be >= 1 (or null: no limit but the epochs), got 0"),
    ("max_train_steps", "-1", "max_train_steps must be >= 1 (or null: no limit but the epochs), got -1"),
])
def test_step_options_are_validated(tmp_path, capsys, option, value, expected):
    options = tiny_options(tmp_path)
    status, lines = run_main(as_argv(options) + [f"--{option}", value], capsys)
    assert status == 1 and expected in error_line(lines)
    assert not Path(options["output_dir"]).exists()


@pytest.mark.parametrize("text, expected", [
    # "seed: 1: 2": the second ':' (line 3, column 8) starts a mapping where none is allowed
    ("epochs: 5\nlr: 0.1\nseed: 1: 2\n", "c.yaml, line 3, column 8: not valid YAML: mapping values are not allowed"),
    ("epochs: 5\nlr: 0.1\nepochs: 6\n", "c.yaml, line 3: option 'epochs' is given twice (first on line 1)"),
    ("epochs: many\n", "c.yaml: epochs: 'many' is not a valid INT"),
    ("epochz: 5\n", "c.yaml: unknown option(s) ['epochz'] (did you mean 'epochz' -> 'epochs'?)"),
    ("labels: [cat, dog]\n", "c.yaml: unknown option(s) ['labels']"),
    ("- epochs\n", "c.yaml: expected a mapping of option: value, got list"),
])
def test_bad_config_file_is_one_line(tmp_path, capsys, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    status, lines = run_main(["--config", str(path), "--output_dir", str(tmp_path / "out")], capsys)
    assert status == 1
    assert expected in error_line(lines)
    assert not (tmp_path / "out").exists()


def test_debug_flag_shows_the_traceback(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: many\n")
    with pytest.raises(ValueError, match="epochs: 'many' is not a valid INT"):
        load_train_main()(["--config", str(path), "--debug"])


def test_missing_model_sources_are_named(tmp_path, capsys, make_model):
    missing = str(tmp_path / "no-such-clip")
    status, lines = run_main(as_argv(tiny_options(tmp_path, clip_model=missing)), capsys)
    assert status == 1 and f"--clip_model '{missing}': no such file or folder" in error_line(lines)
    status, lines = run_main(as_argv(tiny_options(tmp_path, clip_model="someone/no-such-clip",
                                                  output_dir=str(tmp_path / "o2"))), capsys)
    assert status == 1 and error_line(lines) == (  # HF_HUB_OFFLINE=1: the Hub is not asked, and it is not cached
        "hspnet train: error: --clip_model 'someone/no-such-clip': no such local folder, and the Hub model is not in "
        "the local cache (HF_HUB_OFFLINE is set, so the Hub was not asked)")

    # a model trained on the 6 labels of the test hierarchy, fine-tuned on the 12-label demo data
    six = tmp_path / "six-labels"
    make_model().save_pretrained(six)
    status, lines = run_main(as_argv(tiny_options(tmp_path, model_name_or_path=str(six),
                                                  output_dir=str(tmp_path / "o3"))), capsys)
    line = error_line(lines)
    assert status == 1 and f"--model_name_or_path '{six}' was trained on other labels than the dataset 'demo'" in line
    assert "6 labels in the model, 12 in the dataset; only in the model: ['cat', 'dog'," in line


def test_a_truncated_model_to_fine_tune_is_named_by_file(tmp_path, capsys, make_model):
    """--model_name_or_path with a model.safetensors cut short: one line naming the file, nothing trained."""
    folder = tmp_path / "cut"
    make_model().save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    status, lines = run_main(as_argv(tiny_options(tmp_path, model_name_or_path=str(folder))), capsys)
    line = error_line(lines)
    assert status == 1 and line.startswith(f"hspnet train: error: {weights}: not a complete safetensors file (1,000 "
                                           "bytes"), line
    assert not (tmp_path / "out" / "model.safetensors").exists()


# ----------------------------------------------------------------------------------------------------------------------
# A tiny run end to end
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def trained(trained_with_checkpoints):
    """The session's tiny run with checkpoints and tracking (`trained_with_checkpoints`): (folder, results)."""
    return trained_with_checkpoints


def test_end_to_end_outputs(trained):
    out, results = trained
    files = {p.name for p in out.iterdir()}
    for name in ("config.json", "model.safetensors", "modeling_hspnet.py", "configuration_hspnet.py", "losses.py",
                 "preprocessor_config.json", "README.md", "all_results.json", "train.log", "checkpoints", "runs"):
        assert name in files, name
    written = json.loads((out / "all_results.json").read_text())
    assert written["selection_split"] == "validation" and written["world_size"] == 1
    for key in ("mAP", "mAP_tie_aware", "CP", "CR", "CF1", "mean_class_F1", "OP", "OR", "OF1", "mAP"):
        assert key in written["test"] and key in written["test_before_training"]
    assert len(written["test_per_class_AP"]) == 12
    assert [h["epoch"] for h in written["history"]] == [0, 1]
    assert "model selection on the 'validation' split" in (out / "train.log").read_text()
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "runs").rglob("*"))
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints and not any(name.endswith(".partial") for name in checkpoints)
    card = (out / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["library_name"] == "transformers" and "hspnet" in metadata["tags"]
    assert metadata["model-index"][0]["results"][0]["metrics"][0]["type"] == "mAP"


def test_trained_folder_loads_with_auto_classes_and_remote_code(trained, fresh_training_runs):
    """In this process through the registered auto classes; in a fresh interpreter (step 1 of the session's
    `fresh_training_runs`) through the folder's remote code alone, `import hspnet` made to fail."""
    from transformers import AutoModelForImageClassification

    out, _ = trained
    model = AutoModelForImageClassification.from_pretrained(out)
    assert type(model).__name__ == "HSPNetForImageClassification" and model.config.num_labels == 12
    report = fresh_training_runs["report"]
    stdout, stderr = fresh_training_runs["outputs"].get("remote_code", ("", ""))
    assert report is not None, fresh_training_runs["result"].stderr[-2000:]
    assert report["hspnet_imported_before"] == [] and report["remote_code"] == "ok", stderr[-2000:]
    assert "torch.Size([1, 12]) transformers_modules" in stdout


def test_selection_metrics_equal_a_fresh_evaluation(trained):
    """The saved model's validation metrics, recomputed in this process, equal the ones the run selected on."""
    from hspnet import HSPNetForImageClassification, compute_all_metrics
    from hspnet.data import get_hierarchy, load_demo_dataset, to_multi_hot

    out, results = trained
    model = HSPNetForImageClassification.from_pretrained(out).eval()
    data = load_demo_dataset(cache_dir=str(out.parent / "cache"), num_train=60, num_test=23, image_size=32,
                             validation_fraction=0.25)
    split = data["validation"]
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(out)
    with torch.no_grad():
        logits = model(pixel_values=processor(images=[x.convert("RGB") for x in split["image"]],
                                               return_tensors="pt")["pixel_values"]).logits
    targets = to_multi_hot(split["labels"], len(get_hierarchy(data).labels))
    expected = compute_all_metrics(logits.numpy(), targets, from_logits=True)
    got = results["best"]["validation_metrics"]
    for key in ("mAP", "CF1", "OF1", "mean_class_F1"):
        assert got[key] == pytest.approx(expected[key], abs=1e-4), key
    assert got["num_samples"] == len(split)


def test_two_process_ddp_on_cpu(two_process_runs):
    """train.py's `main` under `accelerate launch --num_processes 2` (step 3 of the session's `two_process_runs`,
    which also pushes to a fake Hub for tests/test_hub.py) finishes, records its world size and evaluates the uneven
    validation split exactly once per image."""
    result, folder = two_process_runs["result"], two_process_runs["folder"]
    assert result.returncode == 0, result.stderr[-4000:]
    assert [two_process_runs["reports"][rank]["hub_run"]["status"] for rank in ("0", "1")] == [0, 0]
    out = folder / "out"
    results = json.loads((out / "all_results.json").read_text())
    assert results["world_size"] == 2
    assert "processes: 2" in (out / "train.log").read_text()

    # the validation metrics of the 2-process run (15 images: an uneven split) equal a one-process evaluation
    from transformers import AutoImageProcessor

    from hspnet import HSPNetForImageClassification, compute_all_metrics
    from hspnet.data import load_demo_dataset, to_multi_hot

    model = HSPNetForImageClassification.from_pretrained(out).eval()
    processor = AutoImageProcessor.from_pretrained(out)
    data = load_demo_dataset(cache_dir=str(folder / "cache"), num_train=60, num_test=23, image_size=32,
                             validation_fraction=0.25)
    split = data["validation"]
    assert len(split) % 2 == 1
    with torch.no_grad():
        logits = model(pixel_values=processor(images=[x.convert("RGB") for x in split["image"]],
                                               return_tensors="pt")["pixel_values"]).logits
    expected = compute_all_metrics(logits.numpy(), to_multi_hot(split["labels"], 12), from_logits=True)
    got = results["best"]["validation_metrics"]
    assert got["num_samples"] == len(split)
    for key in ("mAP", "mAP_tie_aware", "CF1", "OF1"):
        assert got[key] == pytest.approx(expected[key], abs=1e-4), key


@pytest.mark.parametrize("loss", ["role", "ll_r"])
def test_stateful_losses_train_end_to_end_and_push(loss, tmp_path, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoUrl

    from hspnet.training.loop import train

    committed = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(HfApi, "create_commit",
                        lambda self, repo_id, operations, **kw: committed.update(
                            files=[o.path_in_repo for o in operations]))
    options = tiny_options(tmp_path, loss=loss, loss_kwargs={}, epochs=1, schedule_epochs=1,
                           evaluate_before_training=False, push_to_hub=True, hub_model_id="me/demo")
    results = train(TrainingConfig(**options))
    assert math.isfinite(results["test"]["mAP"])
    assert "model.safetensors" in committed["files"] and "README.md" in committed["files"]
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["loss"] == loss and "num_train_images" not in saved["loss_kwargs"]  # run state is not model config


# ----------------------------------------------------------------------------------------------------------------------
# A diverging loss stops the run (docs/method.md, section 4.5)
# ----------------------------------------------------------------------------------------------------------------------


def test_nan_loss_stops_with_the_step_and_keeps_the_best_model(tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file

    from hspnet import HSPNetForImageClassification

    saved_as_best = []
    original_save = HSPNetForImageClassification.save_pretrained

    def spy(self, folder, *args, **kwargs):  # remember every model saved as the best one
        saved_as_best.append({k: v.detach().clone() for k, v in self.state_dict().items()})
        return original_save(self, folder, *args, **kwargs)

    monkeypatch.setattr(HSPNetForImageClassification, "save_pretrained", spy)
    poison(monkeypatch, at=8, mode="nan")
    status, lines = run_main(as_argv(tiny_options(tmp_path, epochs=2)), capsys)
    assert status == 1
    # step 8 = the 2nd batch of epoch 1 (6 steps per epoch)
    assert error_line(lines).startswith(
        "hspnet train: error: training diverged at global step 8 (epoch 1, batch 2 of 6): the loss is nan; this step was "
        "not applied, the best model so far (epoch 0, validation mAP "
    )
    out = tmp_path / "out"
    assert not (out / "all_results.json").exists()
    assert len(saved_as_best) == 1  # after epoch 0
    on_disk = load_file(out / "model.safetensors")
    for key, value in on_disk.items():  # the model on disk is the last one saved as best, whole and finite
        torch.testing.assert_close(value, saved_as_best[-1][key], atol=0, rtol=0, msg=key)
        assert torch.isfinite(value).all(), key


@pytest.mark.parametrize("mode, at, expected", [
    ("inf", 2, "global step 2 (epoch 0, batch 2 of 6): the loss is inf"),
    ("grad", 1, "global step 1 (epoch 0, batch 1 of 6): the gradients are not finite"),
])
def test_inf_loss_or_gradients_stop_before_any_model_is_saved(tmp_path, monkeypatch, mode, at, expected):
    poison(monkeypatch, at=at, mode=mode)
    with pytest.raises(TrainingDivergedError) as caught:
        train(TrainingConfig(**tiny_options(tmp_path, evaluate_before_training=False)))
    assert f"training diverged at {expected}" in str(caught.value)
    assert "no model was saved yet" in str(caught.value)
    assert not (tmp_path / "out" / "model.safetensors").exists()


# ----------------------------------------------------------------------------------------------------------------------
# Short schedules (OneCycleLR) and unreadable training images, through the `hspnet` command
# ----------------------------------------------------------------------------------------------------------------------


def _one_cycle_steps(scheduler_class, total_steps, pct_start, lrs=(1e-3, 5e-3)):
    """(lr, beta1) of each group at every step 0..total_steps (the last one: after the final step) of a schedule."""
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in lrs]
    optimizer = torch.optim.Adam([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)])
    if scheduler_class is None:
        scheduler = one_cycle_scheduler(optimizer, steps_per_epoch=total_steps, schedule_epochs=1, pct_start=pct_start)
    else:
        scheduler = scheduler_class(optimizer, max_lr=list(lrs), total_steps=total_steps, pct_start=pct_start)
    seen = []
    for _ in range(total_steps):
        seen.append([(g["lr"], g["betas"][0]) for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    seen.append([(g["lr"], g["betas"][0]) for g in optimizer.param_groups])
    return seen


@pytest.mark.parametrize("total_steps, pct_start", [(800, 0.2), (6, 0.2), (7, 0.2), (37, 0.3), (3, 0.2), (1, 0.2),
                                                    (11, 0.0), (9, 0.5)])
def test_one_cycle_schedule_is_torchs_step_for_step(total_steps, pct_start):
    # every length torch can schedule keeps torch's own learning rates and momenta, exactly (the authors' recipe)
    ours = _one_cycle_steps(None, total_steps, pct_start)
    assert ours == _one_cycle_steps(torch.optim.lr_scheduler.OneCycleLR, total_steps, pct_start)


def _cos(start, end, fraction):
    return end + (start - end) / 2 * (math.cos(math.pi * fraction) + 1)


# the (total steps, pct_start) where torch 2.13's OneCycleLR divides by zero: pct_start * total_steps == 1 exactly
# (the warm-up ends at step 0), or pct_start == 1 (the annealing phase is empty: at the step after the last one)
@pytest.mark.parametrize("total_steps, pct_start", [(5, 0.2), (4, 0.25), (2, 0.5), (10, 0.1), (20, 0.05), (3, 1 / 3),
                                                    (100, 0.01), (1, 1.0), (3, 1.0), (12, 1.0)])
def test_short_one_cycle_schedules_work(total_steps, pct_start):
    seen = _one_cycle_steps(None, total_steps, pct_start)
    for index, peak in enumerate((1e-3, 5e-3)):
        initial, final = peak / 25, peak / 25 / 1e4  # torch's div_factor 25, final_div_factor 1e4
        warm_end = pct_start * total_steps - 1  # the warm-up phase ends there, the annealing one at total_steps - 1
        expected = []
        for step in range(total_steps + 1):
            if step <= warm_end:  # warm-up: initial -> peak, momentum 0.95 -> 0.85
                fraction = step / warm_end if warm_end > 0 else 1.0
                expected.append((_cos(initial, peak, fraction), _cos(0.95, 0.85, fraction)))
            else:  # annealing: peak -> final, momentum 0.85 -> 0.95; an empty phase is at its end
                length = total_steps - 1 - warm_end
                fraction = (step - warm_end) / length if length else 1.0
                expected.append((_cos(peak, final, fraction), _cos(0.85, 0.95, fraction)))
        got = [step[index] for step in seen]
        assert [v for pair in got for v in pair] == pytest.approx([v for pair in expected for v in pair], rel=1e-12,
                                                                  abs=1e-15)
        assert all(math.isfinite(lr) and 0 < lr <= peak for lr, _ in got)
    if pct_start < 1:
        assert seen[0][0][0] == pytest.approx(1e-3)  # the warm-up is one step: the schedule starts at the peak


def test_pct_start_outside_zero_one_is_named():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    with pytest.raises(ValueError, match=r"^pct_start must be a number in \[0, 1\] .*got 1\.5$"):
        one_cycle_scheduler(optimizer, steps_per_epoch=5, schedule_epochs=1, pct_start=1.5)


def test_a_one_epoch_run_of_five_steps_finishes(tmp_path, capsys):
    """38 training images (48 demo images, 20 % held out), batch 8: 5 steps, and pct_start 0.2 x 5 = 1."""
    from hspnet.cli import main

    options = tiny_options(tmp_path, dataset_options={"num_train": 48, "num_test": 16, "image_size": 32,
                                                      "validation_fraction": 0.2}, epochs=1, schedule_epochs=1)
    status = main(["train", *as_argv(options)])
    err = capsys.readouterr().err
    assert status == 0, err[-3000:]
    assert "train images: 38, steps per epoch: 5" in err and "total steps: 5" in err
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_decompression_bomb_in_the_training_data_is_one_line_naming_it(tmp_path, capsys, num_workers):
    """An image whose header claims 30000 x 30000 pixels (more than PIL reads at all, 2 x 89,478,485): `hspnet prepare`
    with --check-images open names it; a dataset prepared without that check trains until the image is read, then
    one line names it (also when a DataLoader worker process read it) and says how to leave such images out."""
    from PIL import Image

    from hspnet.cli import main
    from tests.helpers import folder_with, write_png_bomb

    rows = ["file_name,labels,split"] + [f"img/{i:02d}.png,{('cat', 'dog', 'car', 'bus')[i % 4]},"
                                         f"{'test' if i >= 16 else 'train'}" for i in range(24)]
    root = folder_with(tmp_path, rows)
    bomb = write_png_bomb(root / "img" / "05.png", 30000, 30000)  # a training image
    hierarchy = tmp_path / "groups.csv"
    hierarchy.write_text("cat,animal\ndog,animal\ncar,vehicle\nbus,vehicle\n")
    prepare = ["prepare", "folder", "--root", str(root), "--hierarchy", str(hierarchy), "--cache-dir",
               str(tmp_path / "cache")]
    capsys.readouterr()
    assert main([*prepare, "--check-images", "open", "--output_dir", str(tmp_path / "checked")]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(lines) == 1 and bomb in lines[0] and "decompression bomb" in lines[0], lines
    assert not (tmp_path / "checked").exists()

    assert main([*prepare, "--output_dir", str(tmp_path / "prepared")]) == 0  # only checked to exist
    options = tiny_options(tmp_path, dataset=str(tmp_path / "prepared"), dataset_options={}, epochs=1,
                           schedule_epochs=1, num_workers=num_workers, evaluate_before_training=False)
    capsys.readouterr()
    assert main(["train", *as_argv(options)]) == 1
    gc.collect()  # the failed run's loader (and its worker process) end now, not when the interpreter exits
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("hspnet train: error:")]
    pixels, limit = 30000 * 30000, 2 * Image.MAX_IMAGE_PIXELS  # PIL's own hard limit, twice its warning limit
    # the prepared copy embeds the image bytes (with the file name only): named by its image_id, the path in root
    assert line.startswith("hspnet train: error: 05.png (image_id 'img/05.png', embedded in the dataset): cannot read "
                           f"this file as an image ({pixels:,} pixels, more than the {limit:,} PIL reads at all: a "
                           "decompression bomb); "), line
    assert "--check_images open --on_missing_image skip" in line

    # trained from the folder itself (no prepared copy): the image's path
    options = dict(options, dataset="folder", dataset_root=str(root), dataset_options={"hierarchy": str(hierarchy)},
                   output_dir=str(tmp_path / "out2"))
    assert main(["train", *as_argv(options)]) == 1
    gc.collect()
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("hspnet train: error:")]
    assert "Traceback" not in err and line.startswith(f"hspnet train: error: {bomb}: cannot read this file as an "
                                                      f"image ({pixels:,} pixels, more than the {limit:,}"), line


def test_the_dataset_name_comes_from_the_prepared_data(tmp_path):
    """The model card names the dataset as its loader recorded it, or images of your own by their folder."""
    from datasets import Dataset, DatasetDict

    from hspnet.training.data_and_model import dataset_name

    def prepared(name):
        split = Dataset.from_dict({"image_id": ["a"]})
        split.info.description = json.dumps({"hspnet": {"dataset": name}})
        return DatasetDict(train=split)

    folder = tmp_path / "prepared" / "voc-copy"
    folder.mkdir(parents=True)
    assert dataset_name(TrainingConfig(dataset="coco", dataset_root="/data/coco"), prepared("coco")) == "coco"
    assert dataset_name(TrainingConfig(dataset=str(folder)), prepared("voc")) == "voc"
    assert dataset_name(TrainingConfig(dataset="folder", dataset_root="/data/my_photos/"), prepared("custom")) == \
        "my_photos"
    assert dataset_name(TrainingConfig(dataset=str(folder)), prepared("custom")) == "voc-copy"


# ----------------------------------------------------------------------------------------------------------------------
# The same model however the run is launched
# ----------------------------------------------------------------------------------------------------------------------


def test_the_callers_thread_count_does_not_change_the_trained_model(tmp_path):
    """`accelerate launch` starts the script with OMP_NUM_THREADS=1 (when the variable is not set), `hspnet train`
    gets torch's default (a thread per core), and float sums are split differently with more threads (this tiny run's
    weights differed by ~1e-4 after one epoch, the demo's test mAP by more than a point after 30). A run on the CPU
    fixes its own count (one thread), records it and the launcher under "run" in training_args.json, and gives the
    caller's count back."""
    from safetensors.torch import load_file

    before, weights = torch.get_num_threads(), []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            options = tiny_options(tmp_path, output_dir=str(tmp_path / f"threads-{threads}"), epochs=1,
                                   schedule_epochs=1, checkpointing_steps=None, evaluate_before_training=False)
            train(TrainingConfig(**options))
            assert torch.get_num_threads() == threads
            weights.append(load_file(tmp_path / f"threads-{threads}" / "model.safetensors"))
    finally:
        torch.set_num_threads(before)
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], atol=0, rtol=0, msg=key)
    for threads in (1, 2):
        run = json.loads((tmp_path / f"threads-{threads}" / "training_args.json").read_text())["run"]
        assert (run["torch_num_threads"], run["launcher"]) == (1, "python")


def test_the_launcher_is_recorded(monkeypatch):
    from hspnet.training.resume import launcher

    for name in ("ACCELERATE_DYNAMO_BACKEND", "ACCELERATE_MIXED_PRECISION", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    assert launcher() == "python"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    assert launcher() == "torchrun"
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")  # what `accelerate launch` exports, with the precision
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert launcher() == "accelerate launch"
