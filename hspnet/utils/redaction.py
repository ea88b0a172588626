"""Hub tokens never reach a log, a file or a terminal: whatever token is in effect is replaced by ``***``.

A token can come from ``--hub_token``, from the ``HF_TOKEN`` (or ``HUGGING_FACE_HUB_TOKEN``) environment variable or
from ``hf auth login``'s token file; error texts of HTTP libraries may quote it. :func:`redact` replaces all of them
(:func:`tokens_in_effect`); :class:`RedactTokens` does it for every record a logging handler writes.
"""

from __future__ import annotations

import logging
import os

MASK = "***"
_MIN_LENGTH = 4  # shorter strings are not tokens, and replacing them would garble ordinary words


def tokens_in_effect(*explicit: str | None) -> list[str]:
    """The tokens a Hub call of this process may use: `explicit` ones (``--hub_token``), the environment's and the
    stored login's (``huggingface_hub.get_token()``). Longest first, so that a token containing another is masked
    whole."""
    found = {token for token in explicit if token}
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(name):
            found.add(os.environ[name])
    for read in (_token_in_use, _active_login, _stored_logins):
        try:
            found.update(read())
        except Exception:  # noqa: BLE001 - an unreadable token file: nothing more to mask from it
            pass
    return sorted((token.strip() for token in found if len(token.strip()) >= _MIN_LENGTH), key=len, reverse=True)


def _token_in_use() -> list[str]:
    from huggingface_hub import get_token

    return [get_token() or ""]


def _active_login() -> list[str]:
    """`hf auth login`'s active token, also while ``HF_TOKEN`` overrides it."""
    from huggingface_hub import constants

    if not os.path.isfile(constants.HF_TOKEN_PATH):
        return []
    with open(constants.HF_TOKEN_PATH, encoding="utf-8") as handle:
        return [handle.read(4096).strip()]


def _stored_logins() -> list[str]:
    """Every token `hf auth login` stored (``stored_tokens``, an INI file: one section per token)."""
    import configparser

    from huggingface_hub import constants

    if not os.path.isfile(constants.HF_STORED_TOKENS_PATH):
        return []
    parser = configparser.ConfigParser()
    parser.read(constants.HF_STORED_TOKENS_PATH, encoding="utf-8")
    return [parser[section].get("hf_token", "") for section in parser.sections()]


def redact(text: object, *explicit: str | None, tokens: list[str] | None = None) -> str:
    """`text` with every token in effect (or the given `tokens`) replaced by ``***``."""
    text = str(text)
    for token in tokens if tokens is not None else tokens_in_effect(*explicit):
        text = text.replace(token, MASK)
    return text


class RedactTokens(logging.Filter):
    """A logging filter (for handlers) that masks the tokens in effect when it was made, and any given later, in the
    formatted message of every record (the message and its arguments, exception texts included)."""

    def __init__(self, *explicit: str | None):
        super().__init__()
        self.tokens = tokens_in_effect(*explicit)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.tokens:
            return True
        message = record.getMessage()
        cleaned = redact(message, tokens=self.tokens)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            if redact(str(error), tokens=self.tokens) != str(error):  # the traceback would quote it: keep the type
                record.exc_text = f"{type(error).__name__}: {redact(str(error), tokens=self.tokens)}"
                record.exc_info = None
        return True
