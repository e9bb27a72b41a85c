"""can-tf's one error tree, and what the CLI makes of errors: a CanTfError is one `Error:` line
(exit 1); anything else is an internal error with its traceback saved to a file; --debug shows it."""

from __future__ import annotations

import errno
import pickle

import pytest
from click.testing import CliRunner

from can_tf import errors
from can_tf_cli.main import DEBUG_ENV, main


# ---- the tree ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls, builtin", [
    (errors.ConfigError, ValueError), (errors.DataError, ValueError), (errors.ImageError, ValueError),
    (errors.ModelFileError, ValueError), (errors.RunError, RuntimeError), (errors.RunInUseError, RuntimeError),
    (errors.ExportError, RuntimeError), (errors.EvaluationError, ValueError), (errors.DiskFullError, OSError),
])
def test_every_error_is_a_cantferror_and_keeps_its_builtin_base(cls, builtin):
    assert issubclass(cls, errors.CanTfError) and issubclass(cls, builtin)


def test_old_import_paths_are_the_same_classes():
    from can_tf.config import ConfigError
    from can_tf.data.errors import DataError
    from can_tf.evaluation.metrics import EvaluationError
    from can_tf.export.versioning import ExportError
    from can_tf.files import DiskFullError
    from can_tf.predictor import ModelFileError
    from can_tf.run import RunError, RunInUseError

    assert (ConfigError, DataError, EvaluationError, ExportError, DiskFullError, ModelFileError, RunError,
            RunInUseError) == (errors.ConfigError, errors.DataError, errors.EvaluationError, errors.ExportError,
                               errors.DiskFullError, errors.ModelFileError, errors.RunError, errors.RunInUseError)
    assert issubclass(errors.RunInUseError, errors.RunError) and issubclass(errors.ImageError, errors.DataError)


def test_image_error_names_the_file_and_reason():
    error = errors.ImageError("scans/a.png", "truncated PNG file")
    assert str(error) == "cannot read image scans/a.png: truncated PNG file"
    assert (error.path, error.reason) == ("scans/a.png", "truncated PNG file")
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), str(again), again.path) == (errors.ImageError, str(error), "scans/a.png")


def test_disk_full_error_is_still_an_enospc_oserror():
    error = errors.DiskFullError("/x/model.keras")
    assert error.errno == errno.ENOSPC and error.filename == "/x/model.keras"


def test_errors_module_imports_nothing_heavy():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(errors))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names} | {node.module.split(".")[0] for node in ast.walk(tree)
                                             if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "errno", "os", "annotations"}, imported


# ---- the CLI -------------------------------------------------------------------------------------
def _fit_raising(monkeypatch, error, *args, **env):
    """`can-tf [ARGS] fit` with the library's train() replaced by one that raises ``error``."""
    import can_tf.training

    def train(config, **kwargs):
        raise error

    monkeypatch.setattr(can_tf.training, "train", train)
    return CliRunner().invoke(main, [*args, "fit", "--set", "train.epochs=1"], env={DEBUG_ENV: None, **env})


def test_a_cantf_error_is_one_error_line_and_exit_1(monkeypatch, tmp_path):
    result = _fit_raising(monkeypatch, errors.RunInUseError("run directory runs/x is in use by process 42"),
                          XDG_CACHE_HOME=str(tmp_path))
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[-1] == "Error: run directory runs/x is in use by process 42"
    assert [line for line in result.output.splitlines() if line.startswith("Error")] == [
        "Error: run directory runs/x is in use by process 42"]
    assert "Traceback" not in result.output and not (tmp_path / "can-tf").exists()


def test_a_real_command_reports_a_cantf_error_as_one_line(tmp_path):
    result = CliRunner().invoke(main, ["predict", str(tmp_path), str(tmp_path)], env={DEBUG_ENV: None})
    assert result.exit_code == 1, result.output
    (line,) = result.output.splitlines()
    assert line.startswith("Error: ") and str(tmp_path) in line and "internal error" not in line


def test_an_unexpected_error_is_an_internal_error_with_a_traceback_file(monkeypatch, tmp_path):
    result = _fit_raising(monkeypatch, TypeError("unsupported operand type(s)"), XDG_CACHE_HOME=str(tmp_path))
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[-2] == "Error: internal error: TypeError: unsupported operand type(s)"
    (saved,) = (tmp_path / "can-tf" / "errors").glob("*.txt")
    assert lines[-1] == f"The full traceback is in {saved}; please report it."
    text = saved.read_text()
    assert "Traceback (most recent call last)" in text and "TypeError: unsupported operand type(s)" in text
    assert "in train" in text  # the frame that raised


def test_when_the_traceback_cannot_be_saved_it_says_so(monkeypatch, tmp_path):
    import can_tf_cli.main as cli_main

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(cli_main, "traceback_dirs", lambda: [blocker / "errors"])
    result = _fit_raising(monkeypatch, TypeError("boom"))
    assert result.exit_code == 1
    assert result.output.splitlines()[-2] == "Error: internal error: TypeError: boom"
    assert result.output.splitlines()[-1].startswith("The traceback could not be saved (")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(monkeypatch, how):
    error = TypeError("boom")
    args, env = (["--debug"], {}) if how == "flag" else ([], {DEBUG_ENV: "1"})
    result = _fit_raising(monkeypatch, error, *args, **env)
    assert result.exception is error and result.exc_info[2] is not None
    assert "Error:" not in result.output


def test_usage_errors_keep_exit_code_2(monkeypatch):
    result = CliRunner().invoke(main, ["fit", "--set", "train.epochs=0"])
    assert result.exit_code == 2 and "train.epochs must be at least 1" in result.output
