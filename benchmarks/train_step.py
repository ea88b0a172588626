"""Training-step throughput of HSPNet on a random real-size CLIP (no download), against the authors' step.

One step = forward (image tower + the full text side: group GCN, meta-net, 80 label prompts through the frozen text
tower, label GCN) + SPLC loss + backward + Adam step with the reference parameter groups, on the COCO hierarchy (80
labels, 12 groups). The runners, timed step by step in interleaved rounds after warm-up (so background load hits
them alike), each with its own optimizer state:

- `eager`: the project's model as it trains (`hspnet train`);
- `compiled` (`--compile`): `torch.compile(model)` (inductor) of the same model; its warm-up compiles (steps at
  epoch 0, then one at epoch 1: the first new epoch compiles the small loss graph once more, with the epoch as a
  symbolic int) and the frames compiled during the timed steps are counted (0 expected: the timed steps run at
  epochs 2, 3, ..., every step a new epoch);
- `authors` (`--baseline authors`, RN50 only): the authors' training step re-implemented on the same weights: their
  module layout (`tests/official_reference.py`) with OpenAI CLIP's attention pool, all 12 group prompts and 80 label
  prompts through the text tower at full length (77) on every step, the same SPLC loss and Adam groups. The
  project's model is converted from its state dict (`hspnet.conversion`), so both start from the same weights (their
  logits are compared before timing);
- `eager, NCHW` (`--compare_layouts`, RN50): the project's model with the ResNet tower's channels-last layout off;
- `eager, image tower only` (`--breakdown`): the image tower's forward and backward alone (no text side, loss or
  optimizer): the part of the step that the authors' step runs too;
- `compiled, fused Adam` (`--fused_adam`): the compiled step with `torch.optim.Adam(..., fused=True)`, which
  `hspnet train` does not use (yet): what it would gain.

Prompts are tokenized by the offline test tokenizers (one token per character or byte), so the project's truncated
label prompts are longer than with CLIP's BPE (~20 instead of ~9 tokens): its text side is, if anything, overcharged.

    python benchmarks/train_step.py --backbone rn50 --compile --baseline authors --steps 2 --warmup 1
    python benchmarks/train_step.py --backbone vit-b16 --compile
    python benchmarks/train_step.py --device cuda --batch_size 128 --mixed_precision bf16 --compile
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # tests.official_reference: the authors' layout, re-implemented independently of hspnet

from inference import vit_b16_config  # noqa: E402

from hspnet import HSPNetForImageClassification  # noqa: E402
from hspnet.data.hierarchy import builtin_hierarchy  # noqa: E402
from hspnet.models.hspnet.losses import build_loss  # noqa: E402
from hspnet.training.optimization import parameter_groups  # noqa: E402
from hspnet.utils.tiny_clip import byte_level_clip_tokenizer  # noqa: E402

# the reference recipe's learning rates (the values do not change the cost of a step)
LR, GCN_LR, WEIGHT_DECAY = 1e-4, 5e-4, 1e-4
RN50 = dict(embed_dim=1024, resnet_layers=(3, 4, 6, 3), resnet_width=64, image_size=224, vocab_size=49408,
            text_width=512, text_layers=12)


def openai_attention_pool(self, x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's `AttentionPool2d.forward` (clip/model.py, the `query=x[:1]` version the authors' `clip` package
    runs), for the reference's attention pool (whose own forward loops over images and heads for clarity)."""
    x = x.flatten(start_dim=2).permute(2, 0, 1)  # NCHW -> (HW)NC
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
    x = x + self.positional_embedding[:, None, :].to(x.dtype)
    x, _ = F.multi_head_attention_forward(
        query=x[:1], key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=self.heads,
        q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight, v_proj_weight=self.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=self.c_proj.weight,
        out_proj_bias=self.c_proj.bias, use_separate_proj_weight=True, training=self.training, need_weights=False,
    )
    return x.squeeze(0)


def openai_text_encoder(self, prompts: torch.Tensor, tokenized_prompts: torch.Tensor) -> torch.Tensor:
    """The authors' `TextEncoder.forward` (their model.py) with OpenAI CLIP's causal mask made on the prompts' device
    and dtype (the reference builds it on the CPU)."""
    x = prompts + self.positional_embedding.to(prompts.dtype)
    length = x.shape[1]
    mask = torch.full((length, length), float("-inf"), device=x.device).triu(1).to(x.dtype)
    x = self.transformer(x.permute(1, 0, 2), mask).permute(1, 0, 2)
    x = self.ln_final(x)
    eos = tokenized_prompts.to(x.device).argmax(dim=-1)
    return x[torch.arange(x.shape[0], device=x.device), eos] @ self.text_projection


def authors_to(authors, device: str):
    """The authors' model on `device`, with the tensors the reference keeps as plain attributes (the adjacencies, the
    label -> group index) moved too, as their `.cuda()` calls do."""
    authors = authors.to(device)
    for name in ("label_adj", "group_adj", "label_to_group"):
        setattr(authors, name, getattr(authors, name).to(device))
    return authors


def build_rn50(seed: int = 0, tiny: bool = False):
    """(project model, authors' model) on the same random RN50 CLIP weights, COCO hierarchy (`tiny`: the reduced
    ResNet of the tests, 64-pixel images)."""
    from hspnet.conversion.official import convert_official_state_dict
    from tests.official_reference import build_official

    hierarchy = builtin_hierarchy("coco").model_kwargs()
    _, authors, relation = build_official(hierarchy["labels"], hierarchy["groups"], hierarchy["label_to_group"],
                                          seed=seed, **({} if tiny else RN50))
    model, _ = convert_official_state_dict(authors.state_dict(), relation, hierarchy=hierarchy)
    authors.image_encoder.attnpool.forward = types.MethodType(openai_attention_pool, authors.image_encoder.attnpool)
    authors.text_encoder.forward = types.MethodType(openai_text_encoder, authors.text_encoder)
    authors.text_encoder.requires_grad_(False)  # "Turning off gradients in the text encoder" (the authors' trainer)
    return model, authors


def build_vit(seed: int = 0, tiny: bool = False):
    from transformers import CLIPModel

    from hspnet.utils.tiny_clip import tiny_clip_config

    torch.manual_seed(seed)
    hierarchy = builtin_hierarchy("coco").model_kwargs()
    config = tiny_clip_config() if tiny else vit_b16_config()
    return HSPNetForImageClassification.from_clip(CLIPModel(config), tokenizer=byte_level_clip_tokenizer(),
                                                  **hierarchy)


def image_size(model) -> int:
    config = model.config
    return config.resnet_image_size if config.vision_backbone == "clip_resnet" else \
        config.clip_config.vision_config.image_size


def frames_compiled() -> int:
    from torch._dynamo.utils import counters

    return int(counters["frames"]["ok"])


def best(values: list[float]) -> float:
    """The fastest of the timed steps: background load on a shared machine only ever adds time."""
    return min(values)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", choices=["rn50", "vit-b16"], default="vit-b16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per runner (interleaved rounds)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per runner first (compiled: compiles)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--mixed_precision", choices=["no", "bf16", "fp16"], default="no")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(model), interleaved")
    parser.add_argument("--compile_mode", default=None, help="torch.compile mode (default: torch's)")
    parser.add_argument("--compile_backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--baseline", choices=["none", "authors"], default="none",
                        help="also time the authors' step on the same weights (RN50)")
    parser.add_argument("--fused_adam", action="store_true",
                        help="also time the fastest project step with Adam(fused=True) (one kernel per parameter "
                             "group instead of ~10 operations per parameter; `hspnet train` uses the default Adam)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the image tower alone (forward + backward, eager): what the step's image "
                             "branch costs")
    parser.add_argument("--compare_layouts", action="store_true",
                        help="also time the eager step with the ResNet tower in NCHW (channels-last off)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--tiny", action="store_true", help="tiny towers (a smoke test of this script)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.baseline == "authors" and args.backbone != "rn50":
        parser.error("--baseline authors: the authors' step exists for RN50 (their code and checkpoints)")

    start = time.perf_counter()
    authors = None
    if args.backbone == "rn50":
        model, authors = build_rn50(tiny=args.tiny)
        if args.baseline != "authors":
            authors = None
    else:
        model = build_vit(tiny=args.tiny)
    model = model.to(args.device).train()
    num_labels = model.config.num_labels
    generator = torch.Generator().manual_seed(0)
    side = image_size(model)
    x = torch.randn(args.batch_size, 3, side, side, generator=generator).to(args.device)
    targets = torch.zeros(args.batch_size, num_labels)
    targets[torch.arange(args.batch_size), torch.randint(num_labels, (args.batch_size,), generator=generator)] = 1
    targets = targets.to(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision)
    device_type = torch.device(args.device).type
    if authors is not None:
        authors = authors_to(authors, args.device)
        with torch.no_grad():
            difference = (model.eval()(pixel_values=x[:2]).logits - authors.eval()(x[:2])).abs().max()
        print(f"authors' model vs project model, same weights: max |logit difference| {float(difference):.2e}")
        model.train(), authors.train()
    print(f"built in {time.perf_counter() - start:.1f} s", flush=True)

    def project_step(runner, optimizer):
        def step(epoch):
            with torch.autocast(device_type=device_type, dtype=dtype, enabled=dtype is not None):
                loss = runner(pixel_values=x, labels=targets, epoch=epoch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    runners = {}
    optimizer = torch.optim.Adam(parameter_groups(model, LR, GCN_LR, WEIGHT_DECAY), lr=LR)
    runners["eager"] = project_step(model, optimizer)
    tower = model.hspnet.clip.vision_model
    if args.compare_layouts and args.backbone == "rn50":
        def nchw(epoch, step=runners["eager"]):
            tower.channels_last = False
            try:
                step(epoch)
            finally:
                tower.channels_last = True
        runners["eager, NCHW"] = nchw
    if args.breakdown:
        def tower_only(epoch):
            with torch.autocast(device_type=device_type, dtype=dtype, enabled=dtype is not None):
                embeds = model.hspnet.get_image_features(x).pooler_output
            embeds.float().square().sum().backward()
            model.zero_grad(set_to_none=True)
        runners["eager, image tower only"] = tower_only
    if args.compile:
        compiled = torch.compile(model, mode=args.compile_mode, backend=args.compile_backend)
        runners["compiled"] = project_step(compiled, optimizer)  # shares the model and so its optimizer
    if args.fused_adam:  # an optimizer of its own on the same parameters: the same cost per step
        fused = torch.optim.Adam(parameter_groups(model, LR, GCN_LR, WEIGHT_DECAY), lr=LR, fused=True)
        runners["compiled, fused Adam" if args.compile else "eager, fused Adam"] = project_step(
            compiled if args.compile else model, fused)
    if authors is not None:
        loss_fn = build_loss("splc", num_labels).to(args.device)
        authors_optimizer = torch.optim.Adam(parameter_groups(authors, LR, GCN_LR, WEIGHT_DECAY), lr=LR)

        def authors_step(epoch):
            with torch.autocast(device_type=device_type, dtype=dtype, enabled=dtype is not None):
                logits = authors(x).float()
            loss = loss_fn(logits, targets, epoch=epoch)
            loss.backward()
            authors_optimizer.step()
            authors_optimizer.zero_grad(set_to_none=True)
        runners["authors"] = authors_step

    def synchronize():
        if device_type == "cuda":
            torch.cuda.synchronize()

    warmup_seconds = {}
    for name, step in runners.items():
        began = time.perf_counter()
        for _ in range(args.warmup):
            step(0)  # the first compiled step compiles
        if name.startswith("compiled"):  # the first new epoch recompiles the loss once (the epoch: a symbolic int)
            step(1)
        synchronize()
        warmup_seconds[name] = time.perf_counter() - began
        print(f"warm-up {name}: {warmup_seconds[name]:.1f} s", flush=True)
    frames_before = frames_compiled()
    times = {name: [] for name in runners}
    for round_index in range(args.steps):  # interleaved, so background load hits all alike; a new epoch each round
        for name, step in runners.items():
            synchronize()
            began = time.perf_counter()
            step(2 + round_index)
            synchronize()
            times[name].append(time.perf_counter() - began)
    recompiled = frames_compiled() - frames_before

    print()
    print(f"{args.backbone}, device={args.device}, threads={torch.get_num_threads()}, batch={args.batch_size}, "
          f"mixed_precision={args.mixed_precision}, {args.steps} timed steps per runner after {args.warmup} warm-up")
    print()
    print("| step | s/step (best) | s/step (each) | images/s | vs eager | vs authors |")
    print("|---|---:|---:|---:|---:|---:|")
    eager = best(times["eager"])
    results = {"backbone": args.backbone, "device": args.device, "threads": torch.get_num_threads(),
               "batch_size": args.batch_size, "mixed_precision": args.mixed_precision, "runners": {}}
    for name, values in times.items():
        seconds = best(values)
        versus_authors = f"{best(times['authors']) / seconds:.2f}x" if "authors" in times else "-"
        print(f"| {name} | {seconds:.2f} | {', '.join(f'{v:.2f}' for v in values)} | "
              f"{args.batch_size / seconds:.2f} | {eager / seconds:.2f}x | {versus_authors} |")
        results["runners"][name] = {"seconds": values, "best_seconds": seconds,
                                    "images_per_second": args.batch_size / seconds,
                                    "warmup_seconds": warmup_seconds[name]}
    print()
    print("(`vs eager` and `vs authors`: how many times faster than that step, best over best)")
    if args.compile:
        print(f"compile + first compiled step: {warmup_seconds['compiled']:.1f} s; frames compiled during the timed "
              f"steps (recompiles across steps and epochs): {recompiled}")
        results["recompiles_after_warmup"] = recompiled
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
