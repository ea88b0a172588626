"""The checks that need a fresh interpreter, run as a script by the `fresh_runs` fixture of tests/conftest.py; it
prints one JSON report and the tests assert on their part of it.

`python tests/scripts/fresh_interpreter_checks.py package CLIP_DIR OUT_DIR` (with the installed `hspnet`):
  1. which optional packages (gradio, onnx, onnxruntime, onnxscript) importing the core pulls in;
  2. whether importing `hspnet`, training steps, inference, save and `AutoModel...from_pretrained` change torch's
     process-wide hook registries or the classes of torch and transformers;
  3. last, that the same snapshot does see one global hook registered on purpose.

`python -I -S tests/scripts/fresh_interpreter_checks.py remote SITE_PACKAGES JOBS_JSON` (without `hspnet`: only the
site-packages folder is put on `sys.path`, so no .pth file installs the editable `hspnet`):
  1. each saved folder of JOBS_JSON loads and runs as remote code (outputs written for the parent to compare);
  2. all of that leaves torch and transformers untouched (the same snapshot as above);
  3. last, with site-packages processed as in a plain interpreter (the editable `hspnet` now importable), a written
     Space's app.py builds its page with the hspnet copy next to it.
Each check records its error instead of stopping the run, so one failure shows in its own test only.
"""

import json
import sys
import time
import traceback


def snapshot():
    """Torch's global hook registries and the attributes of the classes a library could patch."""
    import torch
    import torch.nn.modules.module as M
    import torch.optim.optimizer as O
    import transformers

    hooks = {m.__name__ + "." + n: sorted(map(str, getattr(m, n))) for m in (M, O) for n in dir(m)
             if n.startswith("_global_") and isinstance(getattr(m, n), dict)}
    classes = {c.__name__: sorted((k, id(v)) for k, v in vars(c).items() if not k.startswith("__"))
               for c in (torch.nn.Module, torch.Tensor, torch.optim.Optimizer, transformers.PreTrainedModel,
                         transformers.CLIPModel, transformers.CLIPTextModel)}
    return {"hooks": hooks, "classes": {k: [list(map(str, x)) for x in v] for k, v in classes.items()}}


def snapshot_after_a_clip_model(clip_dir):
    """transformers sets a few class attributes the first time it builds a model (e.g. nn.Module.smart_apply): let it
    do so before the snapshot, so that what is left to see is what hspnet changes."""
    import torch
    import transformers

    clip = transformers.CLIPModel.from_pretrained(clip_dir)
    with torch.no_grad():
        clip(input_ids=torch.tensor([[1, 2]]), pixel_values=torch.zeros(1, 3, 32, 32))
    return snapshot()


def changed_since(before):
    after = snapshot()
    changed = [k for k in before["hooks"] if before["hooks"][k] != after["hooks"].get(k)]
    changed += [k for k in after["hooks"] if k not in before["hooks"]]
    changed += [k for k in before["classes"] if before["classes"][k] != after["classes"][k]]
    return changed


def exercise(model):
    """Two training steps and two inference passes."""
    import torch

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


def checked(report, name, check, *args):
    """Run one check; its result, or its traceback, goes to report[name] (and its time to report["seconds"])."""
    start = time.perf_counter()
    try:
        report[name] = check(*args)
    except BaseException:  # noqa: B036 - reported to the test that owns the check
        report[name] = {"error": traceback.format_exc()}
    report.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 2)


# --- package: the installed hspnet ------------------------------------------------------------------------------------

OPTIONAL = ("gradio", "onnx", "onnxruntime", "onnxscript")


def package_run(clip_dir, out_dir):
    started = time.perf_counter()
    before = snapshot_after_a_clip_model(clip_dir)
    optional_before = sorted(m for m in sys.modules if m.split(".")[0] in OPTIONAL)

    import hspnet  # noqa: F401
    import hspnet.apps.demo.page  # noqa: F401
    import hspnet.apps.onnx_export  # noqa: F401
    import hspnet.apps.predict  # noqa: F401
    import hspnet.cli  # noqa: F401

    report = {"core_modules": sorted(m for m in sys.modules if m.split(".")[0] == "hspnet"),
              "optional_before": optional_before,
              "optional_after_core": sorted(m for m in sys.modules if m.split(".")[0] in OPTIONAL)}

    def train_save_load():
        from transformers import AutoModelForImageClassification

        from hspnet import HSPNetForImageClassification

        model = HSPNetForImageClassification.from_clip(clip_dir, labels=["a", "b", "c"], groups=["x", "y"],
                                                       label_to_group=[0, 0, 1])
        exercise(model)
        model.save_pretrained(out_dir)
        loaded = AutoModelForImageClassification.from_pretrained(out_dir)
        exercise(loaded)
        return {"loaded": type(loaded).__module__ + "." + type(loaded).__name__}

    report["seconds"] = {"torch_transformers_clip_hspnet": round(time.perf_counter() - started, 2)}
    checked(report, "train_save_load", train_save_load)
    report["changed"] = changed_since(before)

    import torch

    torch.nn.modules.module.register_module_parameter_registration_hook(lambda *a: None)
    report["changed_after_a_global_hook"] = changed_since(before)
    return report


# --- remote: hspnet absent --------------------------------------------------------------------------------------------


def load_hspnet_folder(job):
    """An HSPNet folder through the three Auto classes, then trained, run and used by a pipeline; then the
    remote-code example of docs/zero-shot-pipeline.md (`zero_shot_code`) on the same image."""
    import torch
    from PIL import Image
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, pipeline

    folder = job["folder"]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)
    base = AutoModel.from_pretrained(folder, trust_remote_code=True)
    x = torch.load(job["pixels"])
    with torch.no_grad():
        logits = model(pixel_values=x).logits
        base_logits = base(pixel_values=x).logits
    frozen = not any(p.requires_grad for p in model.hspnet.clip.text_model.parameters())
    exercise(model)
    scored = pipeline("image-classification", model=folder, trust_remote_code=True)(Image.new("RGB", (40, 30)))
    example = {"folder": folder, "image": Image.new("RGB", (40, 30))}
    exec(job["zero_shot_code"], example)  # the documented example, as written
    zero_shot = example["classifier"]
    return {"config": type(config).__name__, "model": type(model).__name__, "base": type(base).__name__,
            "module": type(model).__module__, "base_module": type(base).__module__, "logits": logits.tolist(),
            "base_logits": base_logits.tolist(), "frozen": frozen, "pipeline_labels": len(scored),
            "zero_shot": example["scores"], "zero_shot_pipeline": type(zero_shot).__module__ + "." +
            type(zero_shot).__name__, "zero_shot_model_module": type(zero_shot.model).__module__}


def load_resnet_folder(job):
    import torch
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(job["folder"], trust_remote_code=True)
    with torch.no_grad():
        logits = model(pixel_values=torch.load(job["pixels"])).logits
    return {"module": type(model).__module__, "backbone": model.config.vision_backbone, "logits": logits.tolist()}


def load_processor_folder(job):
    """The image processor of a (ViT) folder as remote code: its pixels are saved for the parent to compare."""
    import numpy as np
    from PIL import Image
    from transformers import AutoImageProcessor, pipeline

    folder = job["folder"]
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    pixels = processor([Image.open(p) for p in job["images"]], return_tensors="pt")["pixel_values"]
    np.save(job["pixels_out"], pixels.numpy())
    classifier = pipeline("image-classification", model=folder, trust_remote_code=True)
    result = classifier(Image.open(job["images"][0]), top_k=3)
    return {"module": type(processor).__module__, "name": type(processor).__name__,
            "pipeline_processor": type(classifier.image_processor).__name__,
            "labels": sorted(r["label"] for r in result)}


def run_space_app(job, site_packages):
    """A plain interpreter's view (site-packages with its .pth files: the editable hspnet is importable), then the
    Space's app.py run from elsewhere: the page is built with the hspnet copy next to app.py."""
    import importlib
    import importlib.util
    import runpy
    import site

    site.addsitedir(site_packages)
    importlib.invalidate_caches()
    installed = importlib.util.find_spec("hspnet")
    namespace = runpy.run_path(job["app"], run_name="space_check")
    import hspnet

    return {"installed_hspnet": installed.origin if installed else None, "used_hspnet": hspnet.__file__,
            "demo_type": type(namespace["demo"]).__name__}


REMOTE_CHECKS = {"hspnet": load_hspnet_folder, "resnet": load_resnet_folder, "processor": load_processor_folder}


def remote_run(site_packages, jobs_file):
    sys.path.append(site_packages)
    with open(jobs_file, encoding="utf-8") as handle:
        jobs = json.load(handle)
    report = {}
    try:
        import hspnet  # noqa: F401

        report["hspnet_import"] = "imported"
    except ModuleNotFoundError:
        report["hspnet_import"] = "ModuleNotFoundError"
    started = time.perf_counter()
    before = snapshot_after_a_clip_model(jobs["clip_dir"])
    report["seconds"] = {"torch_transformers_clip": round(time.perf_counter() - started, 2)}
    for name, job in jobs["folders"].items():
        checked(report, name, REMOTE_CHECKS[job["kind"]], job)
    report["hspnet_imported_by_remote_code"] = "hspnet" in sys.modules
    report["changed"] = changed_since(before)
    if "space" in jobs:
        checked(report, "space", run_space_app, jobs["space"], site_packages)
    return report


if __name__ == "__main__":
    mode, first, second = sys.argv[1:4]
    result = package_run(first, second) if mode == "package" else remote_run(first, second)
    print(json.dumps(result))
