"""Runs ``can-tf`` and interrupts it at one named moment of an epoch's commit (for tests).

    python tests/interrupt_at.py ACTION MOMENT EPOCH fit --run-dir D ...

ACTION is ``kill`` (the process SIGKILLs itself, as a user's ``kill -9`` would end it) or ``enospc``
(the write fails with "No space left on device", as on a full disk). MOMENT is where it lands while
epoch EPOCH (1-based) is being committed to the run directory:

- ``weights``: half-way through writing the epoch's checkpoint (``epoch-N.weights.h5``);
- ``best``: half-way through writing the staged best model (``best-epoch-N.keras``);
- ``publish``: after the checkpoint state is committed, before the best model and history are published;
- ``history``: after the best model is published, before ``history.csv`` is rewritten.

Nothing here changes what is written: the real functions run, and the interruption leaves a
partial temporary file where the moment is inside a write.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from pathlib import Path

ACTION = "kill"


def _die(path=""):
    if ACTION == "enospc":
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _half_written(write_fn):
    def write(tmp):
        write_fn(tmp)
        size = Path(tmp).stat().st_size
        with open(tmp, "r+b") as f:
            f.truncate(size // 2)
        _die(tmp)

    return write


def install(moment: str, epoch: int) -> None:
    import can_tf.files as files
    import can_tf.run as run

    if moment in ("weights", "best"):
        # the checkpoint is written through can_tf.run's import, the best model through can_tf.files'
        if moment == "weights":
            module, target = run, f"epoch-{epoch}.weights.h5"
        else:
            module, target = files, f"best-epoch-{epoch}.keras"
        original = module.atomic_write

        def atomic_write(path, write_fn, **kwargs):
            if Path(path).name == target:
                write_fn = _half_written(write_fn)
            return original(path, write_fn, **kwargs)

        module.atomic_write = atomic_write
    elif moment == "publish":
        original = run.Run._finish_publish

        def finish_publish(self, checkpoint, resumed):
            if resumed.epoch == epoch and run.best_row(resumed.rows) is not None:
                _die(self.best_model)
            return original(self, checkpoint, resumed)

        run.Run._finish_publish = finish_publish
    elif moment == "history":
        original = run.atomic_write_text

        def atomic_write_text(path, text, **kwargs):
            if Path(path).name == "history.csv" and len(text.splitlines()) == epoch + 1:
                _die(path)
            return original(path, text, **kwargs)

        run.atomic_write_text = atomic_write_text
    else:
        raise SystemExit(f"unknown moment {moment!r}")


if __name__ == "__main__":
    ACTION = sys.argv[1]
    install(sys.argv[2], int(sys.argv[3]))
    from can_tf_cli.main import main

    sys.exit(main(sys.argv[4:]))
