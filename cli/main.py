"""Entry point of the ``can-tf`` command: a click group whose subcommands load on demand."""

from __future__ import annotations

import importlib
import os
import sys

import click

from can_tf import __version__

# command name -> (module below can_tf_cli, attribute, one-line help shown by `can-tf --help`)
COMMANDS = {
    "fit": ("fit", "fit", "Train a CAN or baseline model (default: small preset on phantom data)."),
    "evaluate": ("evaluate", "evaluate", "Per-class AUROC/AUPRC with bootstrap CIs on a split or data set."),
    "predict": ("predict", "predict", "Predict findings for images, folders or a CSV."),
    "explain": ("explain", "explain", "Grad-CAM / Grad-CAM++ / Score-CAM heat maps and localisation scores."),
    "export": ("export", "export", "Export to SavedModel (TF Serving) or TFLite (LiteRT)."),
    "data": ("data", "data", "Check a data set, or write the built-in phantom data set."),
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that subcommand is used."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module_name, attr, _ = COMMANDS[name]
        module = importlib.import_module(f"{__package__}.{module_name}")
        return getattr(module, attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, short) for name, (_, _, short) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="can-tf")
def main():
    """can-tf: Cross-Attention Networks for multi-label chest X-ray classification.

    \b
    Quick start (trains the small preset on built-in phantom data):
      can-tf fit
    On ChestX-ray14:
      can-tf data check /data/ChestX-ray14
      can-tf fit --data /data/ChestX-ray14 --preset paper
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


if __name__ == "__main__":
    sys.exit(main())
