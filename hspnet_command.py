"""The `hspnet` console command (setup.cfg's entry point), made to answer at once.

`import hspnet` registers the HSPNet classes with transformers' auto classes, which loads torch and transformers
(seconds). The command needs them only to run: `hspnet --help`, `hspnet <command> --help`, `hspnet --version` and
usage errors need only the command-line layer (`hspnet.cli`, which imports the standard library and
`hspnet.utils.command_line`). So this module creates the `hspnet` package module from its import spec without running
its `__init__.py`, lets `hspnet.cli` parse the command line, and runs the package's `__init__.py` (the normal
`import hspnet`, the auto-class registration included) once the command line is known to be good, before the command
runs. Nothing else differs from `python -m hspnet`.
"""

from __future__ import annotations

import importlib.util
import sys


def main(argv: list[str] | None = None) -> int:
    if "hspnet" in sys.modules:  # already imported (e.g. called from Python): nothing to defer
        from hspnet.cli import main as run_cli

        return run_cli(argv)
    spec = importlib.util.find_spec("hspnet")
    package = importlib.util.module_from_spec(spec)
    sys.modules["hspnet"] = package  # its submodules import without running hspnet/__init__.py
    loaded = False

    def load_package() -> None:
        nonlocal loaded
        if not loaded:
            loaded = True
            spec.loader.exec_module(package)  # = the rest of `import hspnet`

    from hspnet.cli import main as run_cli

    try:
        return run_cli(argv, before_run=load_package)
    finally:
        if not loaded:  # only the command line was parsed: leave no half-initialised package behind
            for name in [name for name in sys.modules if name == "hspnet" or name.startswith("hspnet.")]:
                del sys.modules[name]


if __name__ == "__main__":
    sys.exit(main())
