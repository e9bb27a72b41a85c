"""The can-tf entry point: --version, --help, and an example in every subcommand's help."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

import can_tf
from can_tf_cli.main import COMMANDS, main


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert can_tf.__version__ in result.output


def test_help_lists_every_command():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_help_has_an_example(name):
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "can-tf " + name in result.output, f"`can-tf {name} --help` shows no example"


def test_help_does_not_import_tensorflow():
    # `can-tf --help` must stay fast: the subcommands import TensorFlow only when they run.
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from can_tf_cli.main import main, COMMANDS\n"
        "for name in [None, *COMMANDS]:\n"
        "    args = ['--help'] if name is None else [name, '--help']\n"
        "    assert CliRunner().invoke(main, args).exit_code == 0\n"
        "print('tensorflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_command_is_refused():
    result = CliRunner().invoke(main, ["train"])
    assert result.exit_code == 2
    assert "No such command" in result.output
