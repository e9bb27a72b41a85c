"""``import can_tf`` is all a saved model needs: every custom Keras class is registered by it."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import can_tf

PACKAGE_DIR = Path(can_tf.__file__).resolve().parent


def _run_fresh(code: str, cwd) -> str:
    """Runs ``code`` in a new interpreter (nothing imported yet) and returns its stdout."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _registered_in_source() -> set:
    """``can_tf>ClassName`` for every class decorated with ``register_keras_serializable`` in can_tf/."""
    names = set()
    for path in PACKAGE_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                "register_keras_serializable" in ast.unparse(d) for d in node.decorator_list
            ):
                names.add(f"can_tf>{node.name}")
    return names


def test_import_can_tf_registers_every_custom_class(tmp_path):
    expected = _registered_in_source()
    assert {"can_tf>CANModel", "can_tf>BaselineModel", "can_tf>CrossAttention"} <= expected
    code = ("import json, can_tf, keras\n"
            "names = [k for k in keras.saving.get_custom_objects() if k.startswith('can_tf>')]\n"
            "print(json.dumps(sorted(names)))\n")
    assert set(json.loads(_run_fresh(code, tmp_path).splitlines()[-1])) == expected


def test_import_can_tf_is_enough_to_load_saved_models(tmp_path):
    import keras
    import numpy as np

    from can_tf.config import LossConfig, RunConfig
    from can_tf.losses import build_loss
    from can_tf.models import build_model
    from can_tf.training.optimizers import build_optimizer

    cfg = RunConfig.from_preset("small")
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model, num_classes=cfg.num_classes, image_size=cfg.data.image_size)
    model.save(tmp_path / "best.keras")  # as training leaves it: no optimizer, no loss
    # compiled too, so the losses and the learning-rate schedule must load back as well
    losses, weights = build_loss(LossConfig(name="can"), "can", [0.1] * cfg.num_classes)
    optimizer, _ = build_optimizer(cfg.train, steps_per_epoch=10)
    model.compile(optimizer=optimizer, loss=losses, loss_weights=weights)
    model.save(tmp_path / "compiled.keras")
    image = np.full((1, cfg.data.image_size, cfg.data.image_size, 1), 128.0, "float32")
    np.save(tmp_path / "image.npy", image)
    expected = keras.ops.convert_to_numpy(model(image)["fused"])

    code = (
        "import json, sys, numpy as np\n"
        "import can_tf, keras\n"
        "best = keras.saving.load_model('best.keras')\n"
        "compiled = keras.saving.load_model('compiled.keras', compile=True)\n"
        "fused = keras.ops.convert_to_numpy(best(np.load('image.npy'))['fused'])\n"
        "print(json.dumps({'best': type(best).__name__, 'fused': fused.tolist(),\n"
        "                  'schedule': compiled.optimizer.get_config()['learning_rate']['class_name'],\n"
        "                  'losses': sorted({type(l).__name__ for l in compiled.loss.values()})}))\n"
    )
    result = json.loads(_run_fresh(code, tmp_path).splitlines()[-1])
    assert result["best"] == "CANModel"
    np.testing.assert_allclose(result["fused"], expected, rtol=1e-5, atol=1e-5)
    assert result["schedule"] == "OncePerStep"
    assert result["losses"] == sorted({type(loss).__name__ for loss in losses.values()})
