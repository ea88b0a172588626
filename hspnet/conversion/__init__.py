"""Converting weights from outside the Hugging Face format.

- :mod:`hspnet.conversion.openai_clip`: OpenAI CLIP weight files (`RN50.pt`, `ViT-B-32.pt`, state dicts) -> CLIP in
  this package's layout, read without running any code from the file;
- :mod:`hspnet.conversion.official`: the HSPNet authors' released checkpoints -> complete HSPNet model folders
  (`scripts/convert_official_checkpoint.py`), with `--verify` against a re-implementation of the official forward.
"""

from .official import *  # noqa: F401,F403
from .official import __all__ as _official_all
from .openai_clip import *  # noqa: F401,F403
from .openai_clip import __all__ as _openai_all

__all__ = sorted(set(_official_all) | set(_openai_all))
