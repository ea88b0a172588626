"""The `hspnet` command: every subcommand is reachable, errors follow one convention."""

import subprocess
import sys

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


def test_bad_input_is_one_line_and_python_dash_m_works(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not checked: the model is looked at first")
    result = subprocess.run([sys.executable, "-m", "hspnet", "predict", "--model", str(tmp_path / "missing"),
                             str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hspnet predict: error:") and "missing" in lines[0], lines
