"""Every `can-tf` command's output is can-tf's own: no TensorFlow / absl / CUDA / converter log lines.

Each command runs in a fresh process (the lines come at TensorFlow's import, from C++ straight to
stderr), without the TF_CPP_MIN_LOG_LEVEL the test session sets, on one phantom data set and one
tiny trained run shared by the module.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # nine fresh processes that each import TensorFlow: over a minute

# One log line of TensorFlow's, absl's, CUDA's or the TFLite converter's.
NOISE = re.compile("|".join([
    r"^[IWEF]\d{4} ",  # absl/glog prefix: I0000 00:00:... file.cc:N]
    r"cuInit", r"absl::InitializeLog", r"oneDNN", r"tensorflow/", r"fully_quantize", r"cuda",
    r"TF-TRT", r"XLA", r"This TensorFlow binary is optimized", r"XNNPACK", r"cpu_feature_guard",
]), re.MULTILINE)
QUICK_FIT = ["--epochs", "1", "--batch-size", "8", "--set", "train.steps_per_epoch=2",
             "--set", "data.augment=false", "--set", "train.verbose=2"]


def can_tf(*args, cwd, timeout=600) -> subprocess.CompletedProcess:
    """``can-tf ARGS`` in a fresh process, stdout and stderr together, as a user's shell runs it."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "ABSL_MIN_LOG_LEVEL", "CAN_TF_VERBOSE", "CAN_TF_DEBUG")}
    env["XDG_CACHE_HOME"] = str(cwd / "cache")
    return subprocess.run([sys.executable, "-m", "can_tf_cli.main", *map(str, args)], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


def assert_quiet(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stdout[-3000:]
    noise = [m.group(0) for m in NOISE.finditer(result.stdout)]
    lines = [line for line in result.stdout.splitlines() if NOISE.search(line)]
    assert not noise, "log lines in can-tf's output:\n" + "\n".join(lines[:20])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("quiet")


@pytest.fixture(scope="module")
def synth(work):
    """`can-tf data synth`: the phantom data set the other commands use."""
    return can_tf("data", "synth", work / "phantom", "--patients", 60, "--image-size", 64, cwd=work)


@pytest.fixture(scope="module")
def fit(work, synth):
    assert synth.returncode == 0, synth.stdout
    return can_tf("fit", "--data", work / "phantom", "--run-dir", work / "run", *QUICK_FIT, cwd=work)


@pytest.fixture(scope="module")
def run_dir(work, fit):
    assert fit.returncode == 0, fit.stdout[-3000:]
    return work / "run"


def test_data_synth_is_quiet(synth):
    assert_quiet(synth)
    assert "wrote phantom data set" in synth.stdout


def test_data_check_is_quiet(work, synth):
    assert_quiet(can_tf("data", "check", work / "phantom", cwd=work))


def test_fit_is_quiet_and_names_the_device_once(fit):
    assert_quiet(fit)
    devices = [line for line in fit.stdout.splitlines() if line.startswith("device: ")]
    assert len(devices) == 1, fit.stdout[-3000:]
    assert re.fullmatch(r"device: (CPU \(no GPU found.*\)|\d+ GPUs? \(.+\))", devices[0]), devices[0]
    assert "Mean " in fit.stdout


def test_evaluate_is_quiet(work, run_dir):
    assert_quiet(can_tf("evaluate", run_dir, "--bootstrap", 10, cwd=work))


def test_predict_is_quiet(work, run_dir):
    assert_quiet(can_tf("predict", run_dir, work / "phantom" / "images", "--out", work / "p.csv", cwd=work))


def test_explain_is_quiet(work, run_dir):
    image = sorted((work / "phantom" / "images").glob("*.png"))[0]
    assert_quiet(can_tf("explain", run_dir, image, "--class", "Cardiomegaly", "--out", work / "heat", cwd=work))


def test_export_saved_model_is_quiet(work, run_dir):
    assert_quiet(can_tf("export", run_dir, "--out", work / "serving", cwd=work))


def test_export_tflite_int8_is_quiet(work, run_dir):
    result = can_tf("export", run_dir, "--format", "tflite", "--quantize", "int8", "--uint8-input",
                    "--out", work / "tflite", cwd=work)
    assert_quiet(result)
    assert "input uint8" in result.stdout  # what the user asked for, said once and rightly


def test_verbose_lets_tensorflow_lines_through(work, synth):
    # Proves the checks above can fail: the same kind of command, with -v, shows TensorFlow's lines.
    result = can_tf("-v", "data", "synth", work / "phantom-v", "--patients", 10, "--image-size", 32, cwd=work)
    assert result.returncode == 0, result.stdout[-3000:]
    assert NOISE.search(result.stdout), result.stdout[-3000:]
