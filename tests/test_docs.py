"""The README and docs/ say only what exists (issue 22): every command line they show names a real command, script,
make target or benchmark, with options that command accepts; every relative link leads to a file (and heading) of
the repository; every measured number names the command that measured it."""

import re
import shlex
from pathlib import Path

import pytest

from hspnet.cli import COMMANDS, build_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SCRIPTS = {"scripts/train.py": "train", "scripts/evaluate.py": "evaluate", "scripts/predict.py": "predict",
           "scripts/convert_official_checkpoint.py": "convert", "datasets_scripts/prepare.py": "prepare",
           "datasets_scripts/custom.py": "prepare folder"}
STARTS = ("hspnet ", "python ", "python3 ", "accelerate launch ", "make ", ".venv/bin/python ")


def _code_lines(text: str):
    """(line number, command line) for each shell line of a fenced block (continuations joined) and each inline code
    span that starts like a command."""
    fenced = re.compile(r"^```([a-z]*)\n(.*?)^```", re.S | re.M)
    for block in fenced.finditer(text):
        if block.group(1) not in ("", "bash", "sh", "console", "shell"):
            continue
        first = text[:block.start()].count("\n") + 2
        joined, start = "", None
        for offset, line in enumerate(block.group(2).splitlines()):
            start = first + offset if start is None else start
            if line.rstrip().endswith("\\"):
                joined += line.rstrip()[:-1] + " "
                continue
            yield start, joined + line
            joined, start = "", None
    outside = fenced.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for span in re.finditer(r"`([^`\n]+)`", outside):
        if span.group(1).startswith(STARTS):
            yield outside[:span.start()].count("\n") + 1, span.group(1)


def _commands(line: str):
    """The simple commands of a shell line: comments dropped, split at && || ; | (None for lines shlex cannot
    read, e.g. a placeholder with an odd quote)."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    command: list[str] = []
    for word in words:
        if word in ("&&", "||", ";", "|"):
            yield command
            command = []
        else:
            command.append(word)
    yield command


def _hspnet_command(words: list[str]):
    """(subcommand, its arguments) when `words` runs hspnet (the command, a script, python -m, accelerate launch)."""
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value prefixes
        words = words[1:]
    if not words:
        return None
    if words[0] == "hspnet":
        return (words[1], words[2:]) if len(words) > 1 else ("--help", [])
    if words[0] in ("python", "python3", ".venv/bin/python") or words[:2] == ["accelerate", "launch"]:
        rest = words[1:] if words[0] != "accelerate" else words[2:]
        for index, word in enumerate(rest):
            if word == "-m" and index + 1 < len(rest) and rest[index + 1] == "hspnet":
                tail = rest[index + 2:]
                return (tail[0], tail[1:]) if tail else ("--help", [])
            if word in SCRIPTS:
                command = SCRIPTS[word].split()
                return command[0], command[1:] + rest[index + 1:]
    return None


def _options(parser) -> set[str]:
    parser.format_help()  # registers the other spellings
    return {option for option in parser._option_string_actions}


def _check_hspnet(command: str, args: list[str]) -> list[str]:
    if command in ("--help", "-h", "--version", "-V") or command.startswith("<") or command.isupper() \
            or command.endswith(":"):  # a placeholder, or a message the command prints (`hspnet train: error: ...`)
        return []
    if "|" in command:  # `hspnet train|evaluate|...`: each of them
        return [problem for name in command.split("|") for problem in _check_hspnet(name, args)]
    if command not in COMMANDS:
        return [f"unknown command {command!r}"]
    parser = build_parser(command)
    valid = _options(parser) | {"--debug"}
    for action in parser._actions:  # a dataset of `prepare`: its own options too
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            chosen = next((word for word in args if word in action.choices), None)
            if chosen:
                valid |= _options(action.choices[chosen])
            else:  # `hspnet prepare DATASET --x`: an option of any dataset
                for sub in action.choices.values():
                    valid |= _options(sub)
    problems = []
    for word in args:
        if word.startswith("--") and word != "--":
            name = word.split("=", 1)[0]
            if name not in valid and not re.fullmatch(r"--[A-Z_]+|--\.\.\.", name):
                problems.append(f"hspnet {command}: no option {name}")
    return problems


def _make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))


def _check_line(line: str) -> list[str]:
    problems = []
    commands = _commands(line)
    if commands is None:
        return []
    for words in commands:
        if not words:
            continue
        found = _hspnet_command(words)
        if found:
            problems += _check_hspnet(*found)
        elif words[0] == "make" and len(words) > 1:
            targets = [w for w in words[1:] if not re.fullmatch(r"\w+=.*", w) and not w.startswith("-")]
            problems += [f"no make target {t!r}" for t in targets if t not in _make_targets()]
        elif words[0] in ("python", "python3", ".venv/bin/python") and len(words) > 1 \
                and words[1].startswith("benchmarks/"):
            script = REPO / words[1]
            if not script.is_file():
                problems.append(f"no script {words[1]}")
                continue
            source = script.read_text()
            problems += [f"{words[1]}: no option {w}" for w in words[2:] if w.startswith("--")
                         and f'"{w.split("=", 1)[0]}"' not in source]
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_command_lines_of_the_docs_exist(page):
    text = page.read_text()
    problems = [f"{page.name}:{number}: {problem}  <- {line.strip()}"
                for number, line in _code_lines(text) for problem in _check_line(line)]
    assert not problems, "\n".join(problems)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {_slug(match) for match in re.findall(r"^#+\s+(.*)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_lead_somewhere(page):
    problems = []
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            problems.append(f"{target}: no heading #{anchor} in {file.name}")
    assert not problems, f"{page.name}: " + "; ".join(problems)


def test_the_checker_catches_what_it_should():
    """The checks above can fail: a wrong option, command, target and script are all reported."""
    assert _check_line("hspnet train --epoch 3") == ["hspnet train: no option --epoch"]
    assert _check_line("hspnet trian --config x") == ["unknown command 'trian'"]
    assert _check_line("accelerate launch --num_processes 2 scripts/train.py --lr 1 --nope 2") == [
        "hspnet train: no option --nope"]
    assert _check_line("make demo && make nonsense") == ["no make target 'nonsense'"]
    assert _check_line("python benchmarks/none.py") == ["no script benchmarks/none.py"]
    assert _check_line("hspnet prepare coco --dataset_root x --output_dir y") == []
    assert _check_line("python datasets_scripts/custom.py --dataset_root x --num_groups 3") == []
    assert _check_line("hspnet predict --model_name_or_path m x.png  # --not-checked in a comment") == []
    assert _check_line("hspnet train|predikt --help") == ["unknown command 'predikt'"]


def test_the_command_line_page_lists_every_option_of_every_command():
    """docs/command-line.md has a section per command naming each of its options (in the `_` spelling)."""
    text = (REPO / "docs" / "command-line.md").read_text()
    sections = dict(re.findall(r"^## `hspnet ([a-z-]+)`\n(.*?)(?=^## |\Z)", text, re.S | re.M))
    assert set(sections) == set(COMMANDS)
    for name in COMMANDS:
        parser = build_parser(name)
        parsers = [parser] + [sub for action in parser._actions if isinstance(getattr(action, "choices", None), dict)
                              for sub in action.choices.values()]
        for each in parsers:
            for action in each._actions:
                names = [o for o in action.option_strings if o.startswith("--") and "-" not in o[2:]]
                if names and action.help != "==SUPPRESS==" and names[0] not in ("--help", "--debug"):  # (conventions)
                    assert f"`{names[0]}`" in sections[name], (name, names[0])


def test_the_command_line_page_holds_the_generated_tables():
    """The option tables of docs/command-line.md are what tests/scripts/command_line_tables.py generates from the
    parsers today (run it with --write after changing an option)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("command_line_tables", REPO / "tests" / "scripts" /
                                                  "command_line_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (REPO / "docs" / "command-line.md").read_text()
    assert text[text.index(module.FIRST):] == module.generated()
