"""Where a model name leads, found out in seconds rather than after the Hub client's retries:
:func:`resolve_model_source`.

A name that exists locally is a path. One that looks like a path (:func:`hspnet.utils.files.is_hub_id` says no) and
does not exist is named at once. A Hub id is asked about with one short request (:data:`PROBE_TIMEOUT` seconds, no
retries) before anything is downloaded; the answer says which of three things is wrong:

- the network (no connection, a timeout, the Hub failing): the model loads from the local Hub cache if it is there
  (with a warning), else one line saying the Hub cannot be reached;
- the id (no such repository): one line, with the hint that a private repository needs a login;
- the access (a gated or private repository, a refused token): one line saying how to get access.

With ``HF_HUB_OFFLINE=1`` the Hub is never asked: the local cache has the model, or the message says it does not.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from hspnet.utils.errors import one_line
from hspnet.utils.files import is_hub_id

logger = logging.getLogger(__name__)

PROBE_TIMEOUT = 5.0
"""Seconds the one request about a Hub id may take."""


class ModelSourceError(FileNotFoundError):
    """A model name that leads nowhere (the model is not found where the name says): a missing path, an unreachable
    Hub, an unknown repository, no access. ``kind`` is ``"path"``, ``"network"``, ``"id"``, ``"access"`` or
    ``"offline"``."""

    def __init__(self, name: str, reason: str, kind: str):
        super().__init__(f"{name}: {reason}")
        self.name, self.reason, self.kind = name, reason, kind


@dataclass(frozen=True)
class ModelSource:
    """What :func:`resolve_model_source` found: ``local`` (an existing path) and ``local_files_only`` (load without
    asking the Hub: a path, or a Hub model taken from the local cache because the Hub is offline or unreachable).
    ``path`` is what to load from: the name itself, or the cached copy's folder when the Hub is not to be asked."""

    name: str
    local: bool
    local_files_only: bool

    @property
    def path(self) -> str:
        if self.local or not self.local_files_only:
            return self.name
        from huggingface_hub import snapshot_download

        return snapshot_download(self.name, local_files_only=True)


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cached(repo_id: str) -> bool:
    """Whether the local Hub cache holds the repository's ``config.json``."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - a malformed id or cache: not cached
        return False


def _is_network_error(error: BaseException) -> bool:
    module = type(error).__module__.split(".")[0]
    return isinstance(error, (OSError, TimeoutError, ConnectionError)) or module in ("httpx", "httpx2", "requests",
                                                                                     "urllib3", "httpcore")


def check_model_name(name: str | os.PathLike, what: str = "model") -> bool:
    """Whether `name` is an existing local path (True) or a Hub id (False); a name that is neither (it looks like a
    path and does not exist) raises :class:`ModelSourceError` at once. Imports nothing: the command line asks it
    before loading torch."""
    text = os.fspath(name)
    if os.path.exists(os.path.expanduser(text)):
        return True
    if not is_hub_id(text):
        raise ModelSourceError(text, f"{what} folder does not exist", "path")
    return False


def check_model_argument(args) -> None:
    """The `check` of a command with a `--model_name_or_path` (parsed as `args.model`): a mistyped model path is named
    before torch is loaded (:func:`check_model_name`)."""
    check_model_name(args.model, "model")


def resolve_model_source(name: str | os.PathLike, what: str = "model", *, token: str | bool | None = None,
                         timeout: float = PROBE_TIMEOUT) -> ModelSource:
    """Find out, in at most `timeout` seconds, whether `name` is a local path, a reachable Hub model or a cached one.
    Raises :class:`ModelSourceError` (an `OSError`) with one line naming `name` and what is wrong: a missing
    ``<what> folder``, the network, the id, the access, or (offline) the local cache. `token`: the Hub token to ask
    with (default: the saved login / ``HF_TOKEN``)."""
    text = os.fspath(name)
    if check_model_name(text, what):
        return ModelSource(text, local=True, local_files_only=True)
    if _hub_offline():
        if _cached(text):
            return ModelSource(text, local=False, local_files_only=True)
        raise ModelSourceError(text, "no such local folder, and the Hub model is not in the local cache "
                               "(HF_HUB_OFFLINE is set, so the Hub was not asked)", "offline")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        HfApi().model_info(text, timeout=timeout, token=token)
    except GatedRepoError:
        raise ModelSourceError(text, "no such local folder, and the Hub model is gated: accept its conditions at "
                               f"https://huggingface.co/{text} and log in (`hf auth login` or HF_TOKEN)",
                               "access") from None
    except RepositoryNotFoundError:
        raise ModelSourceError(text, "no such local folder, and no such model repository on the Hub (a private "
                               "one needs a login: `hf auth login` or HF_TOKEN)", "id") from None
    except HfHubHTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            raise ModelSourceError(text, "no such local folder, and the Hub refused access to the model (HTTP "
                                   f"{status}): log in with an account that may read it (`hf auth login` or "
                                   "HF_TOKEN)", "access") from None
        return _unreachable(text, f"the Hub answered HTTP {status}")
    except Exception as error:  # noqa: BLE001 - classified below; anything else is re-raised
        if not _is_network_error(error):
            raise
        return _unreachable(text, one_line(error))
    return ModelSource(text, local=False, local_files_only=False)


def _unreachable(name: str, reason: str) -> ModelSource:
    """The Hub cannot be reached: the cached copy if there is one, else :class:`ModelSourceError`."""
    if _cached(name):
        logger.warning("%s: the Hub cannot be reached (%s); using the copy in the local Hub cache", name, reason)
        return ModelSource(name, local=False, local_files_only=True)
    raise ModelSourceError(name, "no such local folder, and the Hub cannot be reached to look for the model "
                           f"(network: {reason}); it is not in the local cache either", "network")
