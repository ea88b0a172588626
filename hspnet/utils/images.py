"""Reading images one way everywhere: prediction, training, evaluation and the dataset checks.

- :func:`to_rgb`: any decoded ``PIL.Image`` -> 8-bit RGB, the way the model expects it: EXIF orientation applied
  (as ``datasets`` does when it decodes an ``Image`` feature), 16-bit and 32-bit integer images scaled from their
  full range (``convert("RGB")`` would clip them to white), float images scaled from ``[0, 1]`` (or their own range
  when it lies outside), then ``convert("RGB")`` (alpha dropped, palette and CMYK converted).
- :func:`open_image`: a path -> :func:`to_rgb` of the fully decoded image, or :class:`ImageReadError` naming the file
  (not an image, truncated, a decompression bomb, not a regular file). It never blocks on a FIFO or a device.
"""

from __future__ import annotations

import io
import os
import re
import warnings

import numpy as np

from hspnet.utils.files import special_kind

MAX_IMAGE_PIXELS = 89_478_485
"""Images with more pixels than this (PIL's own warning limit, ~9459x9459) are refused as decompression bombs."""

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


_MESSAGE = ": cannot read this file as an image ("


class ImageReadError(ValueError):
    """A file that cannot be used as an image (not an image, truncated, too many pixels, not a regular file): its
    message is ``"PATH: cannot read this file as an image (REASON)"``, then ``"; HINT"`` when a hint is given.

    Built from one message only (``ImageReadError(text)``), it is the same error rebuilt from the report of another
    process: torch's DataLoader re-raises an error of a worker process as ``type(error)(report)``, the report being
    the worker's whole traceback; the message is then the last ``ImageReadError: ...`` line of that report (or the
    report on one line), so a command still ends with the one line naming the file."""

    def __init__(self, path: str, reason: str | None = None, hint: str | None = None):
        if reason is None:  # one message: a worker's report
            text = str(path)
            found = re.findall(r"ImageReadError: (.+)", text)
            message = found[-1].strip() if found else " ".join(text.split())
            self.path, _, rest = message.partition(_MESSAGE)
            self.reason, self.hint = (rest[:-1] if rest.endswith(")") else rest) or message, None
            super().__init__(message)
            return
        self.path = os.fspath(path)
        self.reason = reason
        self.hint = hint
        super().__init__(f"{self.path}{_MESSAGE}{reason})" + (f"; {hint}" if hint else ""))


def _scaled_to_uint8(array: np.ndarray, full_range: float | None) -> np.ndarray:
    """Map `array` to 0..255: divide by `full_range / 255` when the range is known, else by the array's own span."""
    array = array.astype(np.float64)
    array[~np.isfinite(array)] = 0.0
    if full_range is None:
        low, high = float(array.min(initial=0.0)), float(array.max(initial=0.0))
        if low >= 0.0 and high <= 1.0:  # float images in [0, 1], the common convention
            low, high = 0.0, 1.0
        elif low >= 0.0 and high <= 255.0:
            low, high = 0.0, 255.0
        elif low >= 0.0 and high <= 65535.0:
            low, high = 0.0, 65535.0
        array = (array - low) / max(high - low, 1e-12) * 255.0
    else:
        array = array / full_range * 255.0
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def to_rgb(image):
    """An 8-bit RGB copy of a decoded ``PIL.Image`` (see the module docstring for what is converted and how)."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        image = Image.fromarray(_scaled_to_uint8(np.asarray(image), 65535.0), mode="L")
    elif image.mode == "I":  # 32-bit signed integers: PNG/TIFF 16-bit grey is read as "I" by some PIL versions
        array = np.asarray(image)
        full = 65535.0 if array.min(initial=0) >= 0 and array.max(initial=0) <= 65535 else None
        image = Image.fromarray(_scaled_to_uint8(array, full), mode="L")
    elif image.mode == "F":
        image = Image.fromarray(_scaled_to_uint8(np.asarray(image), None), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")


def check_regular_file(path: str | os.PathLike) -> str:
    """`path` as a string if it is a regular file; :class:`ImageReadError` (FIFO, device, folder) or
    ``FileNotFoundError`` otherwise. Opening a FIFO would block forever, so this is asked before any ``open``."""
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    kind = special_kind(mode)
    if kind is not None:
        raise ImageReadError(path, f"{kind}, not a regular file")
    return path


def open_image(source: str | os.PathLike | bytes, max_pixels: int | None = MAX_IMAGE_PIXELS, name: str | None = None):
    """Open an image file (or an image's encoded ``bytes``, e.g. embedded in a dataset) as an 8-bit RGB
    ``PIL.Image``, fully decoded (a truncated file fails here, not later).

    Raises :class:`ImageReadError` naming the file (or ``name``) for anything that is not a usable image, including
    images of more than ``max_pixels`` pixels (decompression bombs; ``None`` leaves only PIL's own limit of twice
    :data:`MAX_IMAGE_PIXELS`), and ``FileNotFoundError``. PIL's ``DecompressionBombWarning`` is silenced: the limit
    is ``max_pixels``, and a refusal is an error.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, (bytes, bytearray, memoryview)):
        name, stream = name or "<image bytes>", io.BytesIO(source)
    else:
        stream = check_regular_file(source)
        name = name or stream
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream) as image:  # reads the header only
                if max_pixels is not None and image.width * image.height > max_pixels:
                    raise ImageReadError(
                        name, f"{image.width}x{image.height} pixels, more than the {max_pixels:,} allowed: "
                        "a decompression bomb or an image far larger than the model needs"
                    )
                image.load()
                return to_rgb(image)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(name, "not a recognised image format") from None
    except Image.DecompressionBombError as error:  # more than PIL's own limit (twice MAX_IMAGE_PIXELS): no size
        numbers = [f"{int(n):,}" for n in re.findall(r"\d+", str(error))]
        reason = (f"{numbers[0]} pixels, more than the {numbers[1]} PIL reads at all: a decompression bomb"
                  if len(numbers) == 2 else f"decompression bomb: {' '.join(str(error).split())}")
        raise ImageReadError(name, reason) from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:  # truncated / corrupt files, PIL's decoders
        raise ImageReadError(name, " ".join(str(error).split()) or type(error).__name__) from None
