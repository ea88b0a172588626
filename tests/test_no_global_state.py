"""A library, and above all remote code, changes nothing outside itself: importing `hspnet`, loading a saved folder
(also as remote code where `hspnet` cannot be imported), training steps and inference leave torch's process-wide hook
registries and the classes of torch and transformers untouched. The checks run in fresh interpreters, since a hook
registered once stays for the life of the process: the two shared runs of `tests/scripts/fresh_interpreter_checks.py`
(the `fresh_runs` fixture of tests/conftest.py), each snapshotting torch after transformers built a plain CLIP model
and before anything of hspnet is imported or loaded."""

from tests.helpers import check_result


def test_import_training_and_inference_leave_torch_untouched(fresh_package_report):
    """Importing hspnet's core, two training steps and inference, save_pretrained, AutoModel...from_pretrained (the
    registered HSPNet class) and two more training steps and inference: nothing changed."""
    loaded = check_result(fresh_package_report["train_save_load"])["loaded"]
    assert loaded == "hspnet.models.hspnet.modeling_hspnet.HSPNetForImageClassification"
    assert fresh_package_report["changed"] == [], fresh_package_report


def test_remote_code_leaves_torch_untouched(fresh_remote_run):
    """Loading the saved folders as remote code, training and running the HSPNet one, and pipelines: nothing
    changed."""
    report = fresh_remote_run["report"]
    assert report["hspnet_import"] == "ModuleNotFoundError"
    vit = check_result(fresh_remote_run["hspnet_vit"])
    assert vit["module"].startswith("transformers_modules"), vit["module"]
    assert vit["pipeline_labels"] > 0  # the pipeline ran
    for name in ("clip_resnet", "processor"):
        check_result(fresh_remote_run[name])
    assert report["changed"] == [], report["changed"]


def test_the_check_sees_a_global_hook(fresh_package_report):
    # the snapshot is not blind: registering one global hook (after the checks above) is reported
    assert fresh_package_report["changed_after_a_global_hook"] == [
        "torch.nn.modules.module._global_parameter_registration_hooks"]
