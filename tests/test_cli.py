"""The `hspnet` command: every subcommand is reachable, errors follow one convention."""

import argparse
import ast
from pathlib import Path

import pytest

from hspnet.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert main([]) == 2


def test_unknown_command(capsys):
    assert main(["trian"]) == 2
    assert capsys.readouterr().err == "hspnet: error: unknown command 'trian'; did you mean 'train'? (see hspnet --help)\n"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as stop:
        main([name, "--help"])
    assert stop.value.code == 0
    assert f"hspnet {name}" in capsys.readouterr().out


def test_bad_input_is_one_line_and_python_dash_m_works(fresh_python_dash_m):
    """`python -m hspnet` in a fresh interpreter (started with the suite's other fresh runs): a bad input is one
    line on stderr and exit status 1."""
    assert fresh_python_dash_m["args"][:3] == ["-m", "hspnet", "predict"]
    assert fresh_python_dash_m["returncode"] == 1, fresh_python_dash_m["stderr"][-3000:]
    lines = fresh_python_dash_m["stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hspnet predict: error:") and "missing" in lines[0], lines


REPO = Path(__file__).resolve().parents[1]
# each script -> the subcommand whose function it must be a shell over
SCRIPTS = {"train.py": "train", "evaluate.py": "evaluate", "predict.py": "predict",
           "convert_official_checkpoint.py": "convert", "../datasets_scripts/prepare.py": "prepare",
           "../datasets_scripts/custom.py": "prepare"}


def imported_mains(path: Path) -> list[str]:
    """`module:main` for every `from module import main` of a script (read, not run)."""
    tree = ast.parse(path.read_text())
    return [f"{node.module}:main" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and any(alias.name == "main" for alias in node.names)]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_scripts_are_shells_over_the_subcommand_functions(script):
    path = REPO / "scripts" / script
    assert imported_mains(path) == [f"{COMMANDS[SCRIPTS[script]][0]}:main"]
    assert "sys.path" not in path.read_text()  # the package is installed (pip install -e .), never patched in
    body = ast.parse(path.read_text()).body  # a docstring, imports and `if __name__ == "__main__":`, nothing else
    assert all(isinstance(node, (ast.Expr, ast.Import, ast.ImportFrom, ast.If)) for node in body), path
    (guard,) = [node for node in body if isinstance(node, ast.If)]
    assert ast.unparse(guard.test) == "__name__ == '__main__'" and len(guard.body) <= 2


def test_every_script_folder_holds_only_shells():
    scripts = {p.name for p in (REPO / "scripts").glob("*.py")}
    assert scripts == {"train.py", "evaluate.py", "predict.py", "convert_official_checkpoint.py"}
    # the per-dataset copies of prepare.py are gone: `prepare.py NAME` / `hspnet prepare NAME`
    assert {p.name for p in (REPO / "datasets_scripts").glob("*.py")} == {
        "prepare.py", "custom.py", "check_hierarchies_against_reference.py"}
    for path in (REPO / "datasets_scripts").glob("*.py"):
        assert "sys.path" not in path.read_text(), path


def test_accelerate_launch_dash_m_runs_the_hspnet_command(capsys):
    """`accelerate launch -m hspnet train ...` is `python -m hspnet train ...` in each process (the command accelerate
    builds is checked, then run in this process with --help)."""
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils.launch import prepare_simple_launcher_cmd_env

    args = launch_command_parser().parse_args(["--cpu", "--num_processes", "1", "--num_machines", "1",
                                               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hspnet",
                                               "train", "--config", "configs/demo.yaml"])
    command, _ = prepare_simple_launcher_cmd_env(args)
    assert command[1:] == ["-m", "hspnet", "train", "--config", "configs/demo.yaml"]
    with pytest.raises(SystemExit) as stop:
        main([*command[3:], "--help"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("usage: hspnet train")


# ---------------------------------------------------------------------------------------------------------------------
# One convention for every subcommand (issue 22): spellings, no abbreviations, suggestions, exit statuses, speed
# ---------------------------------------------------------------------------------------------------------------------

from hspnet.cli import build_parser  # noqa: E402
from hspnet.utils.command_line import CommandParser  # noqa: E402


def _parsers():
    """(command, parser) for every subcommand, and for every dataset of `prepare`."""
    for name in COMMANDS:
        parser = build_parser(name)
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                yield from ((f"{name} {sub}", subparser) for sub, subparser in action.choices.items())


def _long_options(parser):
    parser.format_help()  # the parser registers the other spellings before parsing or help
    return {option: action for option, action in parser._option_string_actions.items() if option.startswith("--")}


@pytest.mark.parametrize("name,parser", list(_parsers()), ids=lambda value: value if isinstance(value, str) else "")
def test_every_option_has_both_spellings_and_no_abbreviation(name, parser):
    assert isinstance(parser, CommandParser) and parser.allow_abbrev is False, name
    options = _long_options(parser)
    for option, action in options.items():
        for other in (option.replace("_", "-"), "--" + option[2:].replace("-", "_")):
            assert options.get(other) is action, (name, option, other)
    # a prefix of an option is not that option (argparse's prefix matching is off): `--epoch` is not `--epochs`
    for option, action in options.items():
        prefix = option[:-1]
        if len(prefix) > 3 and prefix not in options:
            found = parser._parse_optional(prefix)  # (action, ...) or, in newer Pythons, [(action, ...)] / None
            matched = found[0] if isinstance(found, tuple) else (found[0][0] if found else None)
            assert matched is None, (name, prefix)


def test_the_same_thing_has_the_same_name_in_every_command():
    options = {name: set(_long_options(parser)) for name, parser in _parsers()}
    same = {  # option -> the commands where it must exist (meaning the same thing)
        "--model_name_or_path": ["train", "evaluate", "predict", "demo"],
        "--output_dir": ["train", "evaluate", "prepare coco", "prepare demo"],
        "--cache_dir": ["train", "evaluate", "prepare demo", "prepare folder"],
        "--dataset_root": ["train", "evaluate", "prepare coco", "prepare folder"],
        "--push_to_hub": ["train", "convert", "prepare demo"],
        "--hub_model_id": ["train", "convert"],
        "--hub_private_repo": ["train", "convert", "push", "prepare demo"],
        "--hub_token": ["train", "convert", "push", "prepare demo"],
        "--trust_remote_code": ["train", "evaluate", "predict", "export-onnx", "demo"],
        "--clip_model": ["train", "prepare folder", "prepare hf"],
        "--seed": ["train", "prepare demo"],
        "--protocol": ["train", "prepare demo"],
        "--batch_size": ["train", "evaluate", "predict"],
        "--torch_compile": ["train", "evaluate", "predict"],
        "--debug": list(COMMANDS),
    }
    for option, commands in same.items():
        for command in commands:
            if option == "--debug":
                from hspnet.utils.command_line import add_debug_flag

                parser = build_parser(command)
                add_debug_flag(parser)  # run_command adds it
                assert option in _long_options(parser), command
                continue
            assert option in options[command], (option, command)


@pytest.mark.parametrize("argv,expected", [
    (["train", "--epoch", "3"], "hspnet train: error: unknown option --epoch; did you mean --epochs? "
                                "(see hspnet train --help)"),
    (["train", "--learning_rate", "1e-3"], "hspnet train: error: unknown option --learning_rate; did you mean --lr? "
                                           "(see hspnet train --help)"),
    (["predict", "a.png", "--model", "m", "--topk", "3"], "hspnet predict: error: unknown option --topk; did you mean "
                                                            "--top_k? (see hspnet predict --help)"),
    (["predict", "a.png", "--model", "m", "--format", "tabel"], "hspnet predict: error: argument --format: invalid "
     "choice: 'tabel' (choose from 'table', 'jsonl'); did you mean 'table'? (see hspnet predict --help)"),
    (["prepare", "cocoo"], "hspnet prepare: error: argument DATASET: invalid choice: 'cocoo' (choose from 'coco', "
     "'voc', 'nuswide', 'cub', 'openimages', 'folder', 'hf', 'demo'); did you mean 'coco'? (see hspnet prepare --help)"),
    (["prepare", "coco", "--dataset_root", "x", "--rot", "y"], "hspnet prepare: error: unknown option --rot; did you "
     "mean --root? (see hspnet prepare --help)"),
    (["predict"], "hspnet predict: error: the following arguments are required: images, --model_name_or_path "
                  "(see hspnet predict --help)"),
    (["evaluate", "--model", "m", "--dataset_options", "{no"], None),
])
def test_usage_errors_are_one_line_with_a_suggestion_and_exit_2(argv, expected, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.splitlines()) == 1, err
    if expected is not None:
        assert err.strip() == expected


def test_version_and_exit_statuses_are_documented(capsys):
    from importlib.metadata import version

    import hspnet

    assert main(["--version"]) == 0 and capsys.readouterr().out == f"hspnet {version('hspnet')}\n"
    assert version("hspnet") == hspnet.__version__
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "1 bad input or a failed run" in out and "2 usage error" in out and "130 interrupted" in out
    assert main(["--verbose"]) == 2 and "unknown option '--verbose'" in capsys.readouterr().err


def test_ctrl_c_exits_130_and_bad_input_1(monkeypatch, tmp_path, capsys):
    from hspnet.cli import push

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(push, "run", interrupted)
    assert main(["push", str(tmp_path), "me/x"]) == 130
    monkeypatch.setattr(push, "run", lambda args: (_ for _ in ()).throw(ValueError("a bad value")))
    assert main(["push", str(tmp_path), "me/x"]) == 1
    assert capsys.readouterr().err == "hspnet push: error: a bad value\n"


# what a fresh `hspnet` process imports before it answers: no torch, transformers, accelerate or datasets
FRESH_COMMAND_CHECK = r"""
import contextlib, io, json, sys, time
import hspnet_command
results = {}
for argv in ARGVS:
    start = time.perf_counter()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = hspnet_command.main(argv)
        except SystemExit as stop:
            status = stop.code
    results[" ".join(argv)] = {"status": status, "out": out.getvalue(), "err": err.getvalue(),
                               "seconds": time.perf_counter() - start}
heavy = sorted(name for name in ("torch", "transformers", "accelerate", "datasets") if name in sys.modules)
print(json.dumps({"results": results, "heavy": heavy}))
"""


def _fresh_command(argvs, tmp_path):
    import json
    import subprocess
    import sys

    script = FRESH_COMMAND_CHECK.replace("ARGVS", repr(argvs))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_help_version_usage_errors_and_mistyped_paths_load_no_heavy_library(tmp_path):
    """`hspnet --help`, every `--help`, `--version`, usage errors and a mistyped model path answer without importing
    torch, transformers, accelerate or datasets (the time is benchmarks/cli_startup.py's to measure)."""
    argvs = [["--help"], ["--version"], ["trian"], *[[name, "--help"] for name in COMMANDS],
             ["train", "--epoch", "3"],
             ["evaluate", "--model_name_or_path", "./nowhere"], ["export-onnx", "no/such/folder", "x.onnx"]]
    report = _fresh_command(argvs, tmp_path)
    assert report["heavy"] == [], report["heavy"]
    results = report["results"]
    assert all(results[f"{name} --help"]["status"] == 0 for name in COMMANDS)
    assert results["--version"]["status"] == 0 and results["train --epoch 3"]["status"] == 2
    (tmp_path / "outputs").mkdir()
    report = _fresh_command([["predict", "a.png", "--model", "outputs/dem"]], tmp_path)
    result = report["results"]["predict a.png --model outputs/dem"]
    assert report["heavy"] == [] and result["status"] == 1
    assert result["err"] == "hspnet predict: error: outputs/dem: model folder does not exist\n"
    assert results["evaluate --model_name_or_path ./nowhere"]["err"] == (
        "hspnet evaluate: error: ./nowhere: model folder does not exist\n")


def test_import_hspnet_loads_the_model_layer_only(tmp_path):
    """`import hspnet` registers the model classes (torch and transformers, which imports accelerate itself) and
    imports nothing of the training stack: no hspnet.training / data / evaluation / apps module, no datasets."""
    import json
    import subprocess
    import sys

    code = ("import sys, json, hspnet; print(json.dumps(sorted(m for m in sys.modules if m == 'datasets' or "
            "m.split('.')[:2] in (['hspnet', 'training'], ['hspnet', 'data'], ['hspnet', 'evaluation'], "
            "['hspnet', 'apps'], ['hspnet', 'cli']))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []
