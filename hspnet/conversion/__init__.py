"""Converting the HSPNet authors' released checkpoints into HSPNet folders.

- :mod:`hspnet.conversion.official`: reading the authors' checkpoints, layout checks, EOS positions, the key mapping
  (OpenAI CLIP weight files are read by :mod:`hspnet.models.openai_clip`);
- :mod:`hspnet.conversion.verify`: the one re-implementation of the official forward, for `--verify`;
- :mod:`hspnet.conversion.folder`: the Hugging Face folder and its model card, and :func:`run_conversion` end to end;
- `hspnet convert` (= `scripts/convert_official_checkpoint.py`) is :mod:`hspnet.cli.convert`.
"""

from hspnet.conversion.folder import run_conversion

__all__ = ["run_conversion"]
