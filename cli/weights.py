"""``can-tf weights``: import PyTorch checkpoints into can-tf backbones, show a weights file's origin."""

from __future__ import annotations

import click

# can_tf.models.backbones.PREPROCESSING_MODES, written out: importing can_tf loads TensorFlow, and
# `can-tf weights --help` must not.
PREPROCESSING_MODES = ("torch", "caffe", "tf", "unit", "xrv", "none")


@click.group("weights")
def weights():
    """Import PyTorch (torchvision, torchxrayvision, CheXNet) weights into can-tf backbones.

    \b
    Examples:
      can-tf weights import densenet121-res224-all --backbone densenet121 --out xrv-all.weights.h5
      can-tf weights import chexnet.pth.tar --backbone densenet121 --out chexnet.weights.h5
      can-tf weights info xrv-all.weights.h5
    """


@weights.command("import", short_help="Map a PyTorch checkpoint onto a backbone; write a .weights.h5 file.")
@click.argument("source")
@click.option("--backbone", required=True, metavar="NAME",
              help="densenet121, densenet169, densenet201, resnet50_tv or resnet101_tv.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), metavar="FILE.weights.h5",
              help="The Keras weights file to write (replaced atomically if it exists).")
@click.option("--preprocessing", type=click.Choice(PREPROCESSING_MODES), default=None,
              help="The input scaling the weights expect; default xrv for torchxrayvision checkpoints, "
                   "torch (ImageNet mean/std) for others.")
@click.option("--image-size", type=click.IntRange(min=1), default=None,
              help="The input size the checkpoint was trained at, recorded in the file (default: known for "
                   "named weights, else 224).")
@click.option("--trust-pickle", is_flag=True,
              help="Allow a checkpoint that pickles Python objects (a whole nn.Module); unpickling can run "
                   "code from the file, so only for a file from a source you trust.")
@click.option("--check", "check", multiple=True, type=click.Path(exists=True), metavar="IMAGES",
              help="After writing, run the PyTorch model and the Keras backbone on these images (a PNG, JPEG "
                   "or DICOM file or a folder; repeatable; the first 8 files) and compare them; exit 1 if "
                   "any max |diff| exceeds --tolerance.")
@click.option("--tolerance", type=click.FloatRange(min=0), default=1e-4, show_default=True,
              help="The largest max |diff| --check accepts (feature map, pooled features, logits, probabilities); "
                   "outputs larger than 1 get it times their largest |value|.")
def import_(source, backbone, out, preprocessing, image_size, trust_pickle, check, tolerance):
    """Import SOURCE (a .pth/.pth.tar/.pt checkpoint, or a torchxrayvision weights name such as
    densenet121-res224-all or resnet50-res512-all) into backbone NAME, written to FILE.weights.h5
    with its origin and input scaling. Needs PyTorch: pip install "can-tf[torch]".

    \b
    Examples:
      can-tf weights import densenet121-res224-nih --backbone densenet121 --out nih.weights.h5
      can-tf weights import resnet50.pth --backbone resnet50_tv --out r50.weights.h5
      can-tf weights import densenet121-res224-all --backbone densenet121 --out xrv.weights.h5 --check scans/
    Named weights are downloaded into $CAN_TF_CACHE/weights (default ~/.cache/can-tf/weights).
    --check also needs torchvision (checkpoint files) or torchxrayvision (weights names).
    """
    from can_tf.models import torch_import

    # A ModelFileError becomes one `Error:` line in can_tf_cli.main.
    result = torch_import.import_checkpoint(source, backbone, out, image_size=image_size,
                                            preprocessing=preprocessing, trust_pickle=trust_pickle)
    click.echo(result.summary())
    if check:
        verified = torch_import.verify_import(source, result.out, check, tolerance=tolerance,
                                              trust_pickle=trust_pickle)
        click.echo(verified.summary())
        verified.check()


@weights.command("info", short_help="Show where a weights file came from and the scaling it expects.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def info(file):
    """Show the origin (source, framework, sha256) and input scaling stored in FILE.

    \b
    Example:
      can-tf weights info xrv-all.weights.h5
    """
    from can_tf.errors import ModelFileError
    from can_tf.models.weights_info import read_weights_info

    found = read_weights_info(file)
    if found is None:
        raise ModelFileError(f"{file} carries no can-tf weights info (not written by can-tf weights import, "
                             f"or not an HDF5 weights file)")
    for key, value in found.to_dict().items():
        click.echo(f"{key}: {'' if value is None else value}")
