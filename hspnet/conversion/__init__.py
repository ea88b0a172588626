"""Converting weights from outside the Hugging Face format.

- :mod:`hspnet.conversion.openai_clip`: OpenAI CLIP weight files (`RN50.pt`, `ViT-B-32.pt`, state dicts) -> CLIP in
  this package's layout, read without running any code from the file;
- :mod:`hspnet.conversion.official`: the HSPNet authors' released checkpoints -> an HSPNet model (reading, layout
  checks, EOS positions, the key mapping);
- :mod:`hspnet.conversion.verify`: the one re-implementation of the official forward, for `--verify`;
- :mod:`hspnet.conversion.folder`: the Hugging Face folder and its model card (through :mod:`hspnet.hub`), and
  :func:`run_conversion` end to end;
- :mod:`hspnet.conversion.cli`: `hspnet convert` (= `scripts/convert_official_checkpoint.py`).
"""

from .folder import *  # noqa: F401,F403
from .folder import __all__ as _folder_all
from .official import *  # noqa: F401,F403
from .official import __all__ as _official_all
from .openai_clip import *  # noqa: F401,F403
from .openai_clip import __all__ as _openai_all
from .verify import *  # noqa: F401,F403
from .verify import __all__ as _verify_all

__all__ = sorted(set(_official_all) | set(_openai_all) | set(_verify_all) | set(_folder_all))
