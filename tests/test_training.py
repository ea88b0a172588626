import contextlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hspnet.training.ema import ModelEMA, ema_decay, select_source
from hspnet.training.arguments import TrainingConfig, load_config
from hspnet.training.data_and_model import build_model
from hspnet.training.optimization import one_cycle_scheduler, parameter_groups
from hspnet.hub.transfer import push_folder_to_hub
from hspnet.training.resume import resolve_checkpoint

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "scripts" / "train.py")


def tiny_options(tmp_path, **overrides):
    """A few seconds of training on a small demo set with the tiny random CLIP."""
    options = dict(
        clip_model="tiny-random",
        dataset="demo",
        dataset_options={"num_train": 60, "num_test": 23, "image_size": 32, "validation_fraction": 0.25},
        cache_dir=str(tmp_path / "cache"),
        output_dir=str(tmp_path / "out"),
        epochs=2,
        schedule_epochs=3,
        batch_size=8,
        lr=1e-3,
        gcn_lr=5e-3,
        loss_kwargs={"change_epoch": 1},
        with_tracking=False,
        logging_steps=1,
        seed=0,
    )
    options.update(overrides)
    return options


def as_argv(options):
    argv = []
    for key, value in options.items():
        argv += [f"--{key}", json.dumps(value) if isinstance(value, dict) else str(value)]
    return argv


def free_port() -> int:
    """A free loopback port for a multi-process run's rendezvous (not accelerate's fixed 29500, which another run on
    the machine may hold)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def one_thread():
    """torch on one thread, as in the interpreters `run_script` starts (OMP_NUM_THREADS=1), so that a run in this
    process and one in a subprocess add floats in the same order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_script(args, env_extra=None, timeout=600, launcher=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env.update(env_extra or {})
    command = (launcher or [sys.executable]) + args
    # a session of its own, so that a timeout takes every process down (the launcher and the ranks it started)
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


# --- recipe pieces ----------------------------------------------------------------------------------------------------


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


def test_ema_decay_keeps_082_per_epoch():
    decay = ema_decay(641)
    assert decay ** 641 == pytest.approx(0.82)
    assert decay == pytest.approx(0.9996904, abs=1e-7)  # the released log's 0.9997 ** 641 ~= 0.82


def test_model_ema_update_by_hand():
    model = torch.nn.Linear(2, 1)
    model.register_buffer("count", torch.tensor(3))
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.fill_(0.0)
    ema = ModelEMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 0.0]]))
        model.bias.fill_(1.0)
        model.count.fill_(7)
    ema.update(model)
    # 0.9 * old + 0.1 * new: [0.9*1 + 0.1*3, 0.9*2 + 0.1*0] = [1.2, 1.8]; bias 0.1; integer buffers are copied
    torch.testing.assert_close(ema.module.weight, torch.tensor([[1.2, 1.8]]))
    torch.testing.assert_close(ema.module.bias, torch.tensor([0.1]))
    assert int(ema.module.count) == 7
    # tensors that cannot change in training (frozen parameters, named constants) are left alone
    frozen = torch.nn.Linear(2, 1)
    frozen.weight.requires_grad_(False)
    keep = ModelEMA(frozen, decay=0.5, constant={"bias"})
    with torch.no_grad():
        frozen.weight.add_(1.0)
        frozen.bias.add_(1.0)
    keep.update(frozen)
    torch.testing.assert_close(keep.module.weight, frozen.weight - 1.0)
    torch.testing.assert_close(keep.module.bias, frozen.bias - 1.0)
    state = ema.trained_state()
    other = ModelEMA(torch.nn.Linear(2, 1), decay=0.5)
    other.module.register_buffer("count", torch.tensor(0))
    other.load_trained_state(state, ema.decay)
    assert other.decay == 0.9
    torch.testing.assert_close(other.module.weight, ema.module.weight)


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
    helps = {action.dest: action.help for action in parser._actions}
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


def test_ema_wins_ties_like_the_reference():
    assert select_source({"regular": {"mAP": 50.0}, "ema": {"mAP": 50.0}}) == "ema"
    assert select_source({"regular": {"mAP": 50.1}, "ema": {"mAP": 50.0}}) == "regular"
    assert select_source({"regular": {"mAP": 50.0}}) == "regular"


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


# --- end to end -------------------------------------------------------------------------------------------------------


@pytest.fixture
def trained(trained_with_checkpoints):
    """The session's tiny run with checkpoints and tracking (tests/plugin_training_runs.py): (folder, results)."""
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


def test_output_dir_is_never_overwritten_silently(trained):
    from hspnet.training.loop import train

    out, _ = trained
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a model"):
        train(TrainingConfig(**tiny_options(out.parent, output_dir=str(out))))
    assert (out / "model.safetensors").read_bytes() == before


def test_resume_after_kill_matches_uninterrupted_run(uninterrupted_ten_step_run, fresh_training_runs, tmp_path):
    """Kill -9 during step 9, in the second epoch (6 steps per epoch; checkpoints at step 4, at the end of epoch 0 and
    at step 8; step 3 of the session's `fresh_training_runs`), resume a copy of its folder from 'latest' (step 8,
    mid-epoch): the final weights equal those of an uninterrupted run (the session's `uninterrupted_ten_step_run`,
    same options), and so does all_results.json (also the metrics before training, which the resumed run does not
    recompute)."""
    import shutil

    from safetensors.torch import load_file

    from hspnet.training.loop import train

    full, full_out = uninterrupted_ten_step_run
    result = fresh_training_runs["result"]
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr[-2000:])
    shutil.copytree(fresh_training_runs["killed_options"]["output_dir"], tmp_path / "killed")
    killed = dict(fresh_training_runs["killed_options"], output_dir=str(tmp_path / "killed"),
                  cache_dir=str(tmp_path / "cache"))
    saved = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert saved == ["epoch_0-step_6", "step_8"]  # checkpoints_total_limit 2 dropped step_4
    assert resolve_checkpoint(str(tmp_path / "killed"), "latest").endswith("step_8")
    with one_thread():
        train(TrainingConfig(**dict(killed, resume_from_checkpoint="latest")))
    assert "resumed from" in (tmp_path / "killed" / "train.log").read_text()

    final = lambda out: sorted((out / "checkpoints").glob("epoch_*-step_10"))[0]  # noqa: E731
    a = load_file(final(full_out) / "model.safetensors")
    b = load_file(final(tmp_path / "killed") / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)
    ja = json.loads((full_out / "all_results.json").read_text())
    jb = json.loads((tmp_path / "killed" / "all_results.json").read_text())
    assert ja["test"]["mAP"] == jb["test"]["mAP"]
    assert jb["resumed_from"].endswith("step_8") and ja["resumed_from"] is None
    for key in ("test_before_training", "test", "test_per_class_AP", "best", "history", "selection_split",
                "protocol", "world_size"):
        assert ja[key] == jb[key], key
    assert set(ja) == set(jb)
    assert resolve_checkpoint(str(tmp_path / "killed"), "latest").endswith("epoch_1-step_10")


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


def test_push_to_hub_commits_exactly_the_model_files(trained, monkeypatch, tmp_path):
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoUrl

    out, _ = trained
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["repo"] = repo_id
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, **kwargs):
        calls["files"] = sorted(op.path_in_repo for op in operations)
        calls["card"] = next(op for op in operations if op.path_in_repo == "README.md").path_or_fileobj
        return None

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    push_folder_to_hub(str(out), "someone/hspnet-demo")
    assert calls["repo"] == "someone/hspnet-demo"
    # exactly what save_pretrained writes (config, weights, every remote-code file, image processor) plus the card:
    # a remote-code file left out would break `trust_remote_code` loading from the Hub
    from hspnet import HSPNetForImageClassification

    saved = tmp_path / "saved"
    HSPNetForImageClassification.from_pretrained(out).save_pretrained(saved)
    expected = sorted([p.name for p in saved.iterdir()] + ["README.md", "training_args.json"])
    assert {"config.json", "model.safetensors", "modeling_hspnet.py", "configuration_hspnet.py",
            "preprocessor_config.json"} <= set(expected)
    assert calls["files"] == expected
    assert not {"all_results.json", "train.log", ".hspnet-best.json"} & set(calls["files"])
    # the run's options travel with the model (evaluation reads the base CLIP and the seed there); no secret
    args = json.loads((out / "training_args.json").read_text())
    assert args["clip_model"] == "tiny-random" and args["seed"] == 0 and args["batch_size"] == 8
    assert "hub_token" not in args and args["run"]["world_size"] == 1
    card = Path(calls["card"]).read_text() if not isinstance(calls["card"], bytes) else calls["card"].decode()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["pipeline_tag"] == "image-classification" and metadata["datasets"] == ["demo"]
    with pytest.raises(ValueError, match="hub_model_id"):
        push_folder_to_hub(str(out), None)


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


def test_resume_restores_the_loss_state_kept_by_the_model(tmp_path):
    """ROLE's label estimates live in the model's loss (`model.loss_module`, outside the weights): a run resumed from
    the end of epoch 0 ends with the weights and estimates of the uninterrupted run only if the checkpoint restored
    them (a fresh loss would restart from its initialisation)."""
    import shutil

    from safetensors.torch import load_file

    from hspnet.training.loop import train

    options = tiny_options(tmp_path, loss="role", loss_kwargs={}, epochs=2, max_train_steps=8,
                           checkpointing_steps="4", checkpoints_total_limit=None, evaluate_before_training=False)
    train(TrainingConfig(**options))
    full = tmp_path / "out"
    shutil.copytree(full, tmp_path / "resumed")
    for name in ("step_8", "epoch_1-step_8"):  # back to the state at the end of epoch 0
        shutil.rmtree(tmp_path / "resumed" / "checkpoints" / name)
    checkpoint = tmp_path / "resumed" / "checkpoints" / "epoch_0-step_6"
    train(TrainingConfig(**dict(options, output_dir=str(tmp_path / "resumed"), resume_from_checkpoint=str(checkpoint))))

    def estimates(folder):  # the loss's state, stored beside the weights
        return load_file(folder / "loss_state.safetensors")["label_logits"]

    start = estimates(checkpoint)
    assert start.shape == (45, 12)  # one estimate per training image and label
    runs = (full, tmp_path / "resumed")
    a, b = (load_file(run / "checkpoints" / "epoch_1-step_8" / "model.safetensors") for run in runs)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)
    end_a, end_b = (estimates(run / "checkpoints" / "epoch_1-step_8") for run in runs)
    torch.testing.assert_close(end_a, end_b, atol=0, rtol=0)
    assert not torch.equal(end_a, start)  # the estimates trained in epoch 1
