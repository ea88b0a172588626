"""How long the `hspnet` command takes to answer when nothing heavy is needed: `--help`, each subcommand's `--help`,
`--version`, a usage error and a mistyped model path, each in a fresh process (median of --rounds runs), next to
`python -c "import hspnet"` (what every answer cost when the command imported the package first) measured in the same
process.

    python benchmarks/cli_startup.py                    # the installed `hspnet` console command
    python benchmarks/cli_startup.py --command "python -c 'import sys; from hspnet.cli import main; sys.exit(main())'"

`--command` runs another entry point (the word `python` stands for this interpreter), e.g. an older checkout with
PYTHONPATH pointing at it, to compare before and after.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ARGVS = [
    ["--help"],
    ["--version"],
    ["train", "--help"],
    ["predict", "--help"],
    ["evaluate", "--help"],
    ["prepare", "--help"],
    ["train", "--epoch", "3"],
    ["trian"],
    ["predict", "photo.jpg", "--model", "outputs/dem"],
]


def entry_command(command: str | None) -> list[str]:
    if command is None:
        script = shutil.which("hspnet", path=os.path.dirname(sys.executable)) or shutil.which("hspnet")
        if script is None:
            raise SystemExit("no `hspnet` command found: pip install -e . first")
        return [script]
    return [sys.executable if word == "python" else word for word in shlex.split(command)]


def median_seconds(command: list[str], rounds: int, cwd: str) -> tuple[float, int]:
    times, status = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        done = subprocess.run(command, cwd=cwd, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        times.append(time.perf_counter() - start)
        status = done.returncode
    return statistics.median(times), status


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--command", default=None, help="the entry point to time (default: the `hspnet` command)")
    parser.add_argument("--rounds", type=int, default=5, help="runs per command line (median reported)")
    args = parser.parse_args(argv)
    entry = entry_command(args.command)
    with tempfile.TemporaryDirectory() as cwd:
        os.mkdir(os.path.join(cwd, "outputs"))  # so that outputs/dem is a mistyped local path
        baseline, _ = median_seconds([sys.executable, "-c", "import hspnet"], args.rounds, cwd)
        print(f"entry point: {' '.join(entry)}")
        print(f"python -c 'import hspnet': {baseline:.3f} s (median of {args.rounds})\n")
        print(f"{'command line':<52} {'status':>6} {'seconds':>8} {'/ import':>9}")
        for words in ARGVS:
            seconds, status = median_seconds(entry + words, args.rounds, cwd)
            print(f"{'hspnet ' + ' '.join(words):<52} {status:>6} {seconds:>8.3f} {seconds / baseline:>8.2f}x")


if __name__ == "__main__":
    main()
