"""``python -m hspnet.data DATASET --root ...``: see :mod:`hspnet.data.cli`."""

import sys

from hspnet.data.cli import main

sys.exit(main())
