"""The `hspnet` command: every subcommand is reachable, errors follow one convention."""

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
    assert "unknown command 'trian'" in capsys.readouterr().err


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
    assert imported_mains(path) == [COMMANDS[SCRIPTS[script]][0]]
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
