"""`python tests/scripts/hold_lock.py FOLDER LOCK_NAME`: hold the output-folder lock of FOLDER as a training run does
(`flock` on FOLDER/LOCK_NAME, which holds the PID, host and start time), print "locked", then sleep until killed
(`tests.helpers.hold_lock`). It imports nothing of hspnet: a second of interpreter start instead of five of imports."""

import fcntl
import json
import os
import socket
import sys
import time

folder, lock_name = sys.argv[1], sys.argv[2]
os.makedirs(folder, exist_ok=True)
handle = open(os.path.join(folder, lock_name), "a+")
fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
handle.seek(0)
handle.truncate()
handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "2026-01-01 00:00:00"}))
handle.flush()
print("locked", flush=True)
time.sleep(600)
