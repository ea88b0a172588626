#!/usr/bin/env python
"""Predict labels for image files or folders with a trained HSPNet model.

    python scripts/predict.py --model_name_or_path outputs/demo photos/ cat.jpg                  # labels with score > 0.5
    python scripts/predict.py --model_name_or_path outputs/demo photos/ --top_k 3 --format jsonl --output preds.jsonl
    python scripts/predict.py --model_name_or_path outputs/demo photos/ --on_error skip          # skip unreadable files

Folders are searched recursively for common image extensions (FIFOs, sockets and devices in them are skipped); URLs
are refused. Images are read as in training and evaluation (EXIF orientation, 16-bit and float images, full decode,
decompression bombs refused). `--output` is written atomically and never replaces an input. Bad input exits with
status 1 and a one-line message naming the path (`--debug`: the traceback). All options: `--help`; the logic lives in
hspnet/apps/predict.py.
"""

from hspnet.cli.predict import main

if __name__ == "__main__":
    raise SystemExit(main(prog="predict.py"))
