"""The can-tf entry point: --version, --help, an example in every subcommand's help, and errors as
one line instead of a traceback."""

import errno
import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

import can_tf
from can_tf_cli.main import COMMANDS, DEBUG_ENV, main, package_version


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert can_tf.__version__ in result.output
    assert package_version() == can_tf.__version__


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


def test_help_and_version_import_neither_tensorflow_nor_can_tf():
    # `can-tf --help` and `--version` must stay fast; `import can_tf` loads TensorFlow (it registers
    # the Keras classes), so the entry point reads the version without importing the package.
    code = (
        "import sys\n"
        "from can_tf_cli.main import main\n"
        "for args in (['--help'], ['--version']):\n"
        "    try:\n"
        "        main(args, prog_name='can-tf')\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (args, e.code)\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'can_tf') if m in sys.modules))\n"
    )
    out = _run_python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    # and as a module, the way `python -m` users run it
    out = subprocess.run([sys.executable, "-m", "can_tf_cli.main", "--version"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"can-tf, version {can_tf.__version__}", out.stderr


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_subcommand_help_does_not_import_tensorflow(name):
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from can_tf_cli.main import main\n"
        f"assert CliRunner().invoke(main, [{name!r}, '--help']).exit_code == 0\n"
        "print('tensorflow' in sys.modules)\n"
    )
    out = _run_python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False", f"`can-tf {name} --help` imported TensorFlow"


def test_quantize_choices_are_the_libraries():
    from can_tf.export.tflite import QUANTIZE_MODES
    from can_tf_cli.export import export

    quantize = next(p for p in export.params if p.name == "quantize")
    assert tuple(quantize.type.choices) == tuple(QUANTIZE_MODES)


def test_unknown_command_is_refused():
    result = CliRunner().invoke(main, ["train"])
    assert result.exit_code == 2
    assert "No such command" in result.output


# ---- errors no subcommand anticipated -----------------------------------------------------------
class ResourceExhaustedError(Exception):
    """Stands in for TensorFlow's error type, which carries the errno only in its text."""


def _full_disk_wrapped():
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as e:
        raise RuntimeError("saving the checkpoint failed") from e


def _invoke_raising(monkeypatch, raise_it, **env):
    """Runs `can-tf fit` with its body replaced by ``raise_it()``."""
    from can_tf_cli.fit import fit

    def body(**kwargs):
        raise_it()

    monkeypatch.setattr(fit, "callback", body)
    return CliRunner().invoke(main, ["fit"], env={DEBUG_ENV: None, **env})


def _raiser(error):
    def raise_it():
        raise error

    return raise_it


@pytest.mark.parametrize("raise_it, expected", [
    (_raiser(OSError(errno.ENOSPC, "No space left on device", "runs/x/best.keras")),
     "Error: no space left on device writing runs/x/best.keras\n"),
    (_full_disk_wrapped, "Error: no space left on device\n"),
    (_raiser(ResourceExhaustedError("runs/x/ckpt.tmp; No space left on device")),
     "Error: no space left on device\n"),
    (_raiser(ValueError("bad value\n  over two lines")),
     "Error: internal error: ValueError: bad value over two lines\n"
     "The full traceback is in {traceback}; please report it.\n"),
    (_raiser(KeyError("fused")),
     "Error: internal error: KeyError: 'fused'\nThe full traceback is in {traceback}; please report it.\n"),
], ids=["enospc-with-file", "enospc-as-cause", "enospc-in-text", "unexpected", "keyerror"])
def test_unexpected_errors_are_one_line_and_exit_1(monkeypatch, tmp_path, raise_it, expected):
    result = _invoke_raising(monkeypatch, raise_it, XDG_CACHE_HOME=str(tmp_path))
    assert result.exit_code == 1
    saved = sorted((tmp_path / "can-tf" / "errors").glob("*.txt")) if "{traceback}" in expected else []
    assert len(saved) == ("{traceback}" in expected)
    assert result.output == expected.format(traceback=saved[0] if saved else "")
    assert isinstance(result.exception, SystemExit)  # handled: no traceback reached the user


def test_debug_env_shows_the_traceback(monkeypatch):
    error = ValueError("boom")
    result = _invoke_raising(monkeypatch, _raiser(error), **{DEBUG_ENV: "1"})
    assert result.exception is error and result.exc_info[2] is not None
    assert "Error:" not in result.output


@pytest.mark.parametrize("raise_it, code, shown", [
    (_raiser(click.UsageError("--epochs must be positive")), 2, "Error: --epochs must be positive"),
    (_raiser(click.ClickException("data set not found")), 1, "Error: data set not found"),
    (_raiser(click.exceptions.Exit(3)), 3, ""),
    (_raiser(click.Abort()), 1, "Aborted!"),
    (_raiser(KeyboardInterrupt()), 1, "Aborted!"),
    (_raiser(OSError(errno.EPIPE, "Broken pipe")), 1, ""),
], ids=["usage", "click-exception", "exit", "abort", "ctrl-c", "broken-pipe"])
def test_click_and_interrupts_keep_their_behaviour(monkeypatch, raise_it, code, shown):
    result = _invoke_raising(monkeypatch, raise_it)
    assert result.exit_code == code, result.output
    assert shown in result.output
    assert "internal error" not in result.output and "Traceback" not in result.output


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_full_disk_in_a_real_process_is_one_line():
    # /dev/full answers every write with ENOSPC, as a full disk does.
    code = (
        "from pathlib import Path\n"
        "from can_tf_cli.fit import fit\n"
        "from can_tf_cli.main import main\n"
        "fit.callback = lambda **kw: Path('/dev/full').write_text('metrics')\n"
        "main(['fit'], prog_name='can-tf')\n"
    )
    out = _run_python(code)
    assert out.returncode == 1
    assert out.stderr == "Error: no space left on device\n"
