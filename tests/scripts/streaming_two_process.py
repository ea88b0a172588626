"""What each process of tests/test_streaming.py's two-process launches runs under `accelerate launch --num_processes 2`
on CPU (gloo): `hspnet train` (the `main` of hspnet.cli.train) with the given options, streamed, in one of three ways
(one launch each: a run ends its process group):

- `full`: uninterrupted, recording the `index` of every row each process trains on (per epoch);
- `killed`: killed (SIGKILL, each process itself) in the training step after STOP applied steps: no report;
- `resumed`: the same options with `--resume_from_checkpoint latest`.

`python tests/scripts/streaming_two_process.py REPORT MODE TRAIN_ARGV STOP`: the report file (REPORT-RANK.json is
written), the mode, the train arguments (a JSON list), the step to stop at. Needs the repository root on
PYTHONPATH."""

import json
import os
import signal
import sys

import datasets

from hspnet.cli import train as training
from hspnet.training.loop import TrainingRun
from hspnet.training.streaming import StreamedLoader

report_path, mode, argv, stop = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0  # as in tests/test_streaming.py: 5 s at the end of every stream
report = {"seen": []}

if mode == "full":
    original_iter = StreamedLoader.__iter__

    def recording(self):
        for batch in original_iter(self):
            report["seen"].append([self.batches.epoch, batch["index"].tolist()])
            yield batch

    StreamedLoader.__iter__ = recording
elif mode == "killed":
    original_step = TrainingRun.training_step

    def killing_step(self, batch, epoch):
        if self.state.global_step == stop:
            os.kill(os.getpid(), signal.SIGKILL)
        return original_step(self, batch, epoch)

    TrainingRun.training_step = killing_step
else:
    argv = argv + ["--resume_from_checkpoint", "latest"]
report["status"] = training.main(argv)

with open(f"{report_path}-{os.environ['RANK']}.json", "w") as file:
    json.dump(report, file)
# leave without the interpreter's teardown, where a gloo group's
# destructor can wait forever for a peer that has already gone (tests/scripts/two_process_run.py)
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
