"""`python -m hspnet <command>`: the same as the `hspnet` command."""

import sys

from hspnet.cli import main

sys.exit(main())
