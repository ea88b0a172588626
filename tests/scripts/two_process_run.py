"""What each process of the `two_process_runs` fixture (tests/conftest.py) runs under
`accelerate launch --num_processes 2` on CPU (gloo), one step after the other (the process group of step 1 serves the
rest):

1. a `MultiLabelMetricAccumulator` fed through `add_from_accelerator` by a prepared loader of 7 samples, batch 2 (an
   uneven split, padded by accelerate); rank 0 reports what it gathered, and the inputs;
2. scripts/train.py's `main` on an output folder whose lock another process holds: every process must stop; each
   reports its exit status and how long it took;
3. `main` training one epoch while pushing to the fake Hub of `tests.helpers.FakeHub`; each process reports the Hub
   calls it made.

`python tests/scripts/two_process_run.py FOLDER LOCKED_ARGV HUB_ARGV`: the report folder, then the train.py arguments
of step 2 and of step 3 (JSON lists). Each process writes what it saw to FOLDER/report-RANK.json and exits with the
status of step 3. Needs the repository root on PYTHONPATH (it imports `tests.helpers`)."""

import json
import os
import sys
import time

import pytest
import torch
from accelerate import Accelerator

from hspnet.cli import train as training
from hspnet.evaluation.metrics import MultiLabelMetricAccumulator
from tests.helpers import FakeHub

folder, locked_argv, hub_argv = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
report = {}

# 1. the metric accumulator over 2 processes: 7 samples, batch 2 (an uneven split, padded by accelerate)
accelerator = Accelerator(cpu=True)
generator = torch.Generator().manual_seed(0)
logits = torch.randn(7, 4, generator=generator)
targets = (torch.rand(7, 4, generator=generator) < 0.4).long()
targets[0] = 1
loader = accelerator.prepare(
    torch.utils.data.DataLoader(torch.utils.data.TensorDataset(logits, targets), batch_size=2))
accumulator = MultiLabelMetricAccumulator(4, from_logits=True)
for batch_logits, batch_targets in loader:
    accumulator.add_from_accelerator(accelerator, batch_logits, batch_targets)
if accelerator.is_main_process:
    report["gather"] = {"world": accelerator.num_processes, "metrics": accumulator.compute(),
                        "scores": accumulator.scores.tolist(), "all_scores": logits.tolist(),
                        "all_targets": targets.tolist()}
accelerator.wait_for_everyone()
del accelerator, loader

# 2. train.py on an output folder whose lock another process holds: every process must stop
start = time.time()
report["locked"] = {"status": training.main(locked_argv), "seconds": time.time() - start}

# 3. train.py pushing to the fake Hub
patch = pytest.MonkeyPatch()
hub = FakeHub(os.path.join(folder, "hub")).install(patch)
status = training.main(hub_argv)
report["hub_run"] = {"status": status, "commits": hub.commits, "repos": hub.repos}
with open(os.path.join(folder, f"report-{os.environ['RANK']}.json"), "w") as file:
    json.dump(report, file)
# three runs shared one process group: leave without the interpreter's teardown, where a gloo group's destructor can
# wait forever for a peer that has already gone (seen once in ~8 runs); everything this process reports is written
sys.stdout.flush()
sys.stderr.flush()
os._exit(status)
