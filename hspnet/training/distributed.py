"""Several processes, one outcome: a failure on any process of a distributed run stops all of them.

Without this, a process that fails (a full disk on the main process, a bad file) leaves the others waiting forever in
the next collective call. :func:`on_main` runs an action on the main process only, :func:`on_all` on every process;
both end with one collective call (:func:`share_failure`) after which every process raises if any failed: the
failing one its own error, the others one naming it. With one process they only run the action.
"""

from __future__ import annotations

from hspnet.utils.errors import one_line, user_error_types


def share_failure(accelerator, error: BaseException | None) -> None:
    """Raise on every process if `error` happened on any of them (one collective call; nothing with one process).
    The failing process re-raises its own error; the others raise one naming it, so that no process waits forever
    for one that has stopped."""
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        report = None
        if error is not None:
            report = (accelerator.process_index, isinstance(error, user_error_types()), one_line(error))
        reports = gather_object([report])
        if error is None:
            failed = next((r for r in reports if r is not None), None)
            if failed is not None:
                kind = ValueError if failed[1] else RuntimeError
                raise kind(f"process {failed[0]} stopped: {failed[2]}")
    if error is not None:
        raise error


def on_main(accelerator, action):
    """`action()` on the main process only (None elsewhere); if it fails, every process raises."""
    return on_all(accelerator, action if accelerator.is_main_process else lambda: None)


def on_all(accelerator, action):
    """`action()` on every process; if it fails on any, every process raises."""
    result, error = None, None
    try:
        result = action()
    except Exception as caught:  # noqa: BLE001 - shared with the other processes, then re-raised
        error = caught
    share_failure(accelerator, error)
    return result
