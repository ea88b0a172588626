"""`python tests/scripts/umask_writers.py FOLDER UMASK CLIP_DIR`: under the umask UMASK (octal, set here, in this
interpreter only), write files with every writer of hspnet (`write_text`, `write_output`, `atomic_write` over a file
of mode 0640, `save_model_files` of an HSPNet built on the CLIP folder CLIP_DIR: transformers writes its weights
through a 0600 temporary file) and print one JSON object {relative path: permission bits} of what is under FOLDER
(tests/test_files_and_images.py). `os.umask` is replaced first by a function that fails: the library must never call
it (it changes the mask of every thread of the process)."""

import json
import os
import stat
import sys

folder, mask, clip_dir = sys.argv[1], int(sys.argv[2], 8), sys.argv[3]
os.umask(mask)


def no_umask(*args):
    raise AssertionError("library code called os.umask")


os.umask = no_umask

import torch  # noqa: E402

from hspnet import HSPNetForImageClassification  # noqa: E402
from hspnet.training.run_folder import save_model_files  # noqa: E402
from hspnet.utils.files import atomic_write, write_output, write_text  # noqa: E402

os.makedirs(os.path.join(folder, "model"))
write_text(os.path.join(folder, "text.txt"), "new")
write_output(os.path.join(folder, "sub", "output.bin"), b"\x00")
existing = os.path.join(folder, "existing.txt")
with open(existing, "w") as handle:
    handle.write("old")
os.chmod(existing, 0o640)
with atomic_write(existing) as stream:
    stream.write("replaced")
torch.manual_seed(0)
model = HSPNetForImageClassification.from_clip(clip_dir, labels=["a", "b"], groups=["g"], label_to_group=[0, 0])
save_model_files(model, os.path.join(folder, "model"))
modes = {}
for root, folders, files in os.walk(folder):
    for name in folders + files:
        path = os.path.join(root, name)
        modes[os.path.relpath(path, folder)] = stat.S_IMODE(os.lstat(path).st_mode)
print(json.dumps(modes))
