"""A library, and above all remote code, changes nothing outside itself: importing `hspnet`, loading a saved folder
(also as remote code where `hspnet` cannot be imported), training steps and inference leave torch's process-wide hook
registries and the classes of torch and transformers untouched. Each case runs in a fresh interpreter, since a
hook registered once stays for the life of the process."""

import json
import subprocess
import sys
import textwrap

import pytest

SNAPSHOT = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.nn.modules.module as M
    import torch.optim.optimizer as O
    import transformers

    def snapshot():
        hooks = {m.__name__ + "." + n: sorted(map(str, getattr(m, n))) for m in (M, O) for n in dir(m)
                 if n.startswith("_global_") and isinstance(getattr(m, n), dict)}
        classes = {c.__name__: sorted((k, id(v)) for k, v in vars(c).items() if not k.startswith("__"))
                   for c in (torch.nn.Module, torch.Tensor, torch.optim.Optimizer, transformers.PreTrainedModel,
                             transformers.CLIPModel, transformers.CLIPTextModel)}
        return {"hooks": hooks, "classes": {k: [list(map(str, x)) for x in v] for k, v in classes.items()}}

    # transformers itself sets a few class attributes the first time it builds a model (e.g. nn.Module.smart_apply):
    # let it do so before the snapshot, so that what is left to see is what hspnet changes
    clip = transformers.CLIPModel.from_pretrained(sys.argv[1])
    with torch.no_grad():
        clip(input_ids=torch.tensor([[1, 2]]), pixel_values=torch.zeros(1, 3, 32, 32))
    before = snapshot()
    """
)

EXERCISE = textwrap.dedent(
    """
    def exercise(model):
        pixels = torch.randn(2, 3, 32, 32)
        labels = torch.zeros(2, model.config.num_labels)
        labels[:, 0] = 1
        model.train()
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        for _ in range(2):
            model(pixel_values=pixels, labels=labels, epoch=0).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
        with torch.no_grad():
            model(pixel_values=pixels)
            model(pixel_values=pixels)

    def report():
        after = snapshot()
        changed = [k for k in before["hooks"] if before["hooks"][k] != after["hooks"].get(k)]
        changed += [k for k in after["hooks"] if k not in before["hooks"]]
        changed += [k for k in before["classes"] if before["classes"][k] != after["classes"][k]]
        print(json.dumps({"changed": changed, "hooks": after["hooks"]}))
    """
)

IN_PACKAGE = SNAPSHOT + EXERCISE + textwrap.dedent(
    """
    import hspnet
    from hspnet import HSPNetForImageClassification
    from transformers import AutoModelForImageClassification
    clip_dir, out = sys.argv[1], sys.argv[2]
    model = HSPNetForImageClassification.from_clip(clip_dir, labels=["a", "b", "c"], groups=["x", "y"],
                                                   label_to_group=[0, 0, 1])
    exercise(model)
    model.save_pretrained(out)
    exercise(AutoModelForImageClassification.from_pretrained(out))
    report()
    """
)

REMOTE = SNAPSHOT + EXERCISE + textwrap.dedent(
    """
    sys.modules["hspnet"] = None  # as on a machine without the package
    from transformers import AutoModelForImageClassification, pipeline
    folder = sys.argv[2]
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    exercise(model)
    from PIL import Image
    pipeline("image-classification", model=folder, trust_remote_code=True)(Image.new("RGB", (40, 30)))
    report()
    """
)


def _run(script, *args):
    result = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def saved_folder(tiny_clip_dir, tmp_path_factory):
    from hspnet import HSPNetForImageClassification

    folder = tmp_path_factory.mktemp("saved")
    HSPNetForImageClassification.from_clip(tiny_clip_dir, labels=["a", "b", "c"], groups=["x", "y"],
                                           label_to_group=[0, 0, 1]).save_pretrained(folder)
    return folder


def test_import_training_and_inference_leave_torch_untouched(tiny_clip_dir, tmp_path):
    out = _run(IN_PACKAGE, tiny_clip_dir, tmp_path / "model")
    assert out["changed"] == [], out


def test_remote_code_leaves_torch_untouched(tiny_clip_dir, saved_folder):
    out = _run(REMOTE, tiny_clip_dir, saved_folder)
    assert out["changed"] == [], out


def test_the_check_sees_a_global_hook(tiny_clip_dir):
    # the snapshot is not blind: registering one global hook is reported
    script = SNAPSHOT + EXERCISE + textwrap.dedent(
        """
        torch.nn.modules.module.register_module_parameter_registration_hook(lambda *a: None)
        report()
        """
    )
    assert _run(script, tiny_clip_dir)["changed"] == ["torch.nn.modules.module._global_parameter_registration_hooks"]
