#!/usr/bin/env python
"""Prepare a dataset for HSPNet (= `hspnet prepare`):

    python datasets_scripts/prepare.py {coco,voc,nuswide,cub,folder,hf,demo} --dataset_root ...

Prints a statistics table (images per split, labels per image, positives per label), caches the prepared
DatasetDict, and with --output_dir / --push_to_hub writes it. See `--help` and the README for the folder layouts. A shell
over `hspnet.cli.prepare.main` (the package must be installed: `pip install -e .`).
"""

from hspnet.cli.prepare import main

if __name__ == "__main__":
    raise SystemExit(main(prog="prepare.py"))
