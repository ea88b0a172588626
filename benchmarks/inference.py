"""Inference throughput of HSPNetForImageClassification vs the bare CLIP image tower.

Builds a real-size ViT-B/16 CLIP from its config (random weights, no download) and a COCO-size hierarchy (80 labels,
12 groups), then measures images/s at batch 1 and 32 for:

- `clip image tower`: `vision_model` + `visual_projection` + normalisation of the same weights (the lower bound);
- `hspnet`: the HSPNet classifier with its exact speed-ups (cached label embeddings, cached group features,
  truncated prompts);
- `hspnet, speed-ups off`: the same model recomputing every prompt at full length on each call, as the released
  code does;
- with `--compile`: `torch.compile(model)` of the same model (cache on), timed in the same rounds;
- with `--onnx`: the model exported by `hspnet.apps.onnx_export.export_onnx` (image tower + constant label embeddings,
  float32) run by onnxruntime on the CPU with as many threads as torch, timed in the same rounds (needs
  `pip install -e ".[onnx]"`; the export of ViT-B/16 takes about a minute on 2 cores).

    python benchmarks/inference.py                      # CPU, float32
    python benchmarks/inference.py --compile            # + torch.compile
    python benchmarks/inference.py --onnx               # + onnxruntime (CPU)
    python benchmarks/inference.py --device cuda --dtype bfloat16 --iters 50
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from transformers import CLIPConfig

from hspnet import HSPNetForImageClassification
from hspnet.utils.tiny_clip import BOS_TOKEN_ID, EOS_TOKEN_ID, byte_level_clip_tokenizer


def vit_b16_config() -> CLIPConfig:
    text = dict(bos_token_id=BOS_TOKEN_ID, eos_token_id=EOS_TOKEN_ID, pad_token_id=EOS_TOKEN_ID)
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  patch_size=16, image_size=224)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)


def coco_like_hierarchy(num_labels: int = 80, num_groups: int = 12):
    labels = [f"object number {i}" for i in range(num_labels)]
    groups = [f"family {g}" for g in range(num_groups)]
    return labels, groups, [i % num_groups for i in range(num_labels)]


def measure(fn, batch: torch.Tensor, iters: int, warmup: int, device: str) -> float:
    for _ in range(warmup):
        fn(batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn(batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return iters * batch.shape[0] / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--iters", type=int, default=None, help="timed iterations per batch size (default: by device)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best round is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(model)")
    parser.add_argument("--onnx", action="store_true", help="also time the ONNX export with onnxruntime (CPU)")
    parser.add_argument("--tiny", action="store_true", help="a tiny CLIP (a smoke test of this script)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    from transformers import CLIPModel

    from hspnet.utils.tiny_clip import tiny_clip_config

    torch.manual_seed(0)
    clip = CLIPModel(tiny_clip_config() if args.tiny else vit_b16_config())
    side = clip.config.vision_config.image_size
    labels, groups, label_to_group = coco_like_hierarchy()
    model = HSPNetForImageClassification.from_clip(
        clip, labels=labels, groups=groups, label_to_group=label_to_group, tokenizer=byte_level_clip_tokenizer()
    )
    model = model.to(args.device, dtype).eval()
    base = model.hspnet

    def tower(x):
        output = base.clip.vision_model(pixel_values=x)
        return F.normalize(base.clip.visual_projection(output.pooler_output), dim=-1)

    fast = base.text_options
    plain = replace(fast, cache_label_embeddings=False, cache_group_features=False, truncate_prompts=False)

    def hspnet(x):
        base.text_options = fast
        return model(pixel_values=x).logits

    compiled = torch.compile(model) if args.compile else None

    def hspnet_compiled(x):
        base.text_options = fast
        return compiled(pixel_values=x).logits

    session = None
    if args.onnx:
        import os
        import tempfile

        from hspnet.apps.onnx_export import export_onnx, onnxruntime_session

        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            exported = export_onnx(model, os.path.join(folder, "model.onnx"), write_sidecar=False)
            print(f"onnx export: {time.perf_counter() - start:.1f} s, onnxruntime max |logit difference| "
                  f"{exported['max_abs_diff']:.2e}")
            session = onnxruntime_session(exported["onnx_path"], threads=torch.get_num_threads())

    def hspnet_onnx(x):
        return session.run(["logits"], {"pixel_values": x})[0]

    def hspnet_plain(x):
        base.text_options = plain
        return model(pixel_values=x).logits

    print(f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} "
          f"labels={len(labels)} groups={len(groups)} {'tiny ViT' if args.tiny else 'ViT-B/16'} random weights")
    rows = []
    with torch.inference_mode():
        for batch_size in args.batch_sizes:
            iters = args.iters or (50 if args.device.startswith("cuda") else (5 if batch_size == 1 else 2))
            x = torch.randn(batch_size, 3, side, side, device=args.device, dtype=dtype)
            # alternate the two in rounds and keep each one's best round, so background load hits both alike
            speed_tower = speed_hspnet = speed_compiled = speed_onnx = 0.0
            if compiled is not None:
                hspnet_compiled(x)  # compile outside the timed rounds
            x_numpy = x.float().cpu().numpy() if session is not None else None
            for _ in range(args.rounds):
                speed_tower = max(speed_tower, measure(tower, x, iters, args.warmup, args.device))
                speed_hspnet = max(speed_hspnet, measure(hspnet, x, iters, args.warmup, args.device))
                if compiled is not None:
                    speed_compiled = max(speed_compiled, measure(hspnet_compiled, x, iters, args.warmup, args.device))
                if session is not None:
                    speed_onnx = max(speed_onnx, measure(hspnet_onnx, x_numpy, iters, args.warmup, "cpu"))
            speed_plain = measure(hspnet_plain, x, max(1, iters // 5) if batch_size == 1 else iters, 1, args.device)
            rows.append((batch_size, speed_tower, speed_hspnet, speed_plain, speed_compiled, speed_onnx))
    print()
    header = "| batch | clip image tower (img/s) | hspnet (img/s) | hspnet / tower | hspnet, speed-ups off (img/s) |"
    rule = "|---:|---:|---:|---:|---:|"
    if compiled is not None:
        header += " hspnet compiled (img/s) | compiled / eager |"
        rule += "---:|---:|"
    if session is not None:
        header += " onnxruntime CPU (img/s) | onnxruntime / hspnet |"
        rule += "---:|---:|"
    print(header)
    print(rule)
    for batch_size, tower_speed, hspnet_speed, plain_speed, compiled_speed, onnx_speed in rows:
        line = (f"| {batch_size} | {tower_speed:.2f} | {hspnet_speed:.2f} | {hspnet_speed / tower_speed:.3f}x "
                f"| {plain_speed:.2f} |")
        if compiled is not None:
            line += f" {compiled_speed:.2f} | {compiled_speed / hspnet_speed:.3f}x |"
        if session is not None:
            line += f" {onnx_speed:.2f} | {onnx_speed / hspnet_speed:.3f}x |"
        print(line)
    return [dict(batch_size=b, tower=t, hspnet=h, plain=p, compiled=c or None, onnx=o or None)
            for b, t, h, p, c, o in rows]


if __name__ == "__main__":
    main()
