"""`once_per_session`: an expensive fixture value made once per test session, also under pytest-xdist."""

import os
import pickle
import shutil


def once_per_session(tmp_path_factory, name, make):
    """``make(folder)`` once per test session, in a new folder: under pytest-xdist the first worker that needs it
    makes it in the session's shared temporary folder, the others wait for it and read it (a picklable result; the
    folder is read-only for the tests)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return make(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / name
    with FileLock(str(shared) + ".lock"):
        done = shared / "made.pickle"
        if not done.is_file():
            if shared.exists():  # a worker that failed before: start again
                shutil.rmtree(shared)
            shared.mkdir()
            done.write_bytes(pickle.dumps(make(shared)))
        return pickle.loads(done.read_bytes())
