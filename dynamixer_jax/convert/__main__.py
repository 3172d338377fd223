"""Convert DynaMixer weights between the authors' PyTorch files and Flax checkpoints.

    python -m dynamixer_jax.convert dynamixer_s.pth.tar dynamixer_s_flax        # PyTorch -> Orbax directory
    python -m dynamixer_jax.convert dynamixer_s.pth.tar dynamixer_s.msgpack     # PyTorch -> msgpack file
    python -m dynamixer_jax.convert --ema checkpoint.pth.tar ema_flax           # the EMA weights
    python -m dynamixer_jax.convert dynamixer_s_flax dynamixer_s.pth            # Flax -> PyTorch state_dict
    python -m dynamixer_jax.convert dynamixer_s.pth dynamixer_s.safetensors     # -> safetensors
    python -m dynamixer_jax.convert --image-size 288 dynamixer_s.pth s_288.msgpack  # for 288x288
    python -m dynamixer_jax.convert --trust-pickle old.pth.tar old.safetensors   # see below
    python -m dynamixer_jax.convert --image-size 224,112 s.pth s_224x112.msgpack   # for H,W
    python -m dynamixer_jax.convert --ema workdirs/run run_ema.safetensors         # a training workdir

Each format follows from the path: a .pth/.pth.tar/.pt/.bin file is PyTorch, a
.safetensors file holds the same state_dict (the authors' key names; no torch needed), a
.msgpack file or a name without a suffix (a directory) is Flax; any other suffix
is refused. A training workdir of ours (or its checkpoints/ directory, or one step in it) is
read too: its latest checkpoint, with the architecture its config.json records. Any format
converts to any other; every key is checked.

A PyTorch file is read without running code from it: a file that pickles Python objects
other than tensors and timm's training arguments is refused with their names.
--trust-pickle reads such a file anyway (its code runs): only for a file whose source you
trust, and once, to write a .safetensors file that is safe to read from then on.
"""

from __future__ import annotations

import argparse
import os
import sys

from dynamixer_jax.convert import flax_to_torch, torch_to_flax
from dynamixer_jax.convert.architecture import architecture_from_params
from dynamixer_jax.convert.flax_io import load_flax, save_flax
from dynamixer_jax.convert.safetensors_io import (
    SAFETENSORS_SUFFIX,
    is_safetensors_file,
    load_safetensors,
    save_safetensors,
)
from dynamixer_jax.convert.torch_io import (
    TORCH_SUFFIXES,
    is_torch_file,
    load_torch_file,
    save_torch,
)
from dynamixer_jax.errors import ConversionError, DynaMixerError
from dynamixer_jax.loading import is_our_checkpoint, load
from dynamixer_jax.model.network import DynaMixer, as_hw
from dynamixer_jax.model.resolution import transfer_params
from dynamixer_jax.model.variants import abstract_variables, create_model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dynamixer_jax.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source",
        help="a .pth/.pth.tar or .safetensors file, a Flax checkpoint (Orbax directory or "
        ".msgpack), or a training workdir of ours",
    )
    parser.add_argument("destination", help="where to write the converted weights")
    parser.add_argument(
        "--ema",
        action="store_true",
        help="take 'state_dict_ema' from a timm checkpoint, or a workdir's EMA parameters",
    )
    parser.add_argument(
        "--model", help="check against this variant (e.g. dynamixer_s) instead of the file's shapes"
    )
    parser.add_argument("--num-classes", type=int, default=1000, help="with --model: the head size")
    parser.add_argument(
        "--image-size",
        type=image_size_arg,
        help="the input size to write the weights for, N or H,W: at another size than the "
        "source's, the generate layers are resampled to it (with --model: default 224)",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="read a PyTorch file that pickles arbitrary Python objects (this runs code from "
        "the file: only for a file whose source you trust)",
    )
    args = parser.parse_args(argv)
    try:
        output_format = _output_format(args.destination)
        variables = _read(
            args.source, None, args.ema, trust_pickle=args.trust_pickle
        )  # checked against its own shapes
        if args.image_size is not None:
            variables = _at_image_size(variables, args.image_size)
        if args.model:  # the same key and shape check against the named variant
            model = create_model(
                args.model, num_classes=args.num_classes, image_size=args.image_size or 224
            )
            torch_to_flax(flax_to_torch(variables), model=model)
        if output_format == "torch":
            save_torch(flax_to_torch(variables), args.destination)
        elif output_format == "safetensors":
            save_safetensors(flax_to_torch(variables), args.destination)
        else:
            save_flax(variables, args.destination)
    except (DynaMixerError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.destination}")
    return 0


def image_size_arg(text: str) -> int | tuple[int, int]:
    """``--image-size``: ``N`` for N x N, or ``H,W`` (also ``HxW``)."""
    parts = text.replace("x", ",").split(",")
    try:
        sides = tuple(int(part) for part in parts)
    except ValueError:
        sides = ()
    if len(sides) not in (1, 2) or min(sides) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not an image size: give N or H,W")
    return sides[0] if len(sides) == 1 or sides[0] == sides[1] else sides


def _read(source: str, model, ema: bool, trust_pickle: bool = False) -> dict:
    """``{'params': ...}`` from ``source`` in whichever format its path names, checked against
    ``model`` where one is given (else against the architecture its shapes describe, or a
    workdir's config.json)."""
    if os.path.isdir(source) and is_our_checkpoint(source):
        _, variables = load(source, ema=ema)  # checked against the run's config.json
        if model is not None:
            torch_to_flax(flax_to_torch(variables), model=model)
        return variables
    if is_torch_file(source):
        checkpoint = load_torch_file(source, trust_pickle=trust_pickle)
        return torch_to_flax(checkpoint, model=model, ema=ema)
    if is_safetensors_file(source):
        if ema:
            raise ConversionError(
                f"{source} holds one state_dict, no EMA copy; drop --ema (or convert the "
                ".pth.tar that has 'state_dict_ema')"
            )
        return torch_to_flax(load_safetensors(source), model=model)
    variables = load_flax(source)
    if model is not None:  # the same key and shape check as for a PyTorch file
        torch_to_flax(flax_to_torch(variables), model=model)
    return variables


def _at_image_size(variables: dict, image_size: int | tuple[int, int]) -> dict:
    """The weights with their generate layers resampled for ``image_size``
    (``dynamixer_jax.model.resolution``); unchanged at the size they were trained at."""
    params = variables["params"]
    target = DynaMixer(**{**architecture_from_params(params), "image_size": image_size})
    moved, resampled = transfer_params(params, abstract_variables(target)["params"])
    if resampled:
        height, width = as_hw(image_size)
        print(f"resampled {len(resampled)} generate tensors to {height}x{width}")
    return {"params": moved}


def _output_format(destination: str) -> str:
    """'torch', 'safetensors' or 'flax', from the suffix of ``destination``; ConversionError
    for a suffix that names none of them."""
    if is_torch_file(destination):
        return "torch"
    if is_safetensors_file(destination):
        return "safetensors"
    suffix = os.path.splitext(destination.rstrip("/"))[1]
    if suffix in ("", ".msgpack"):
        return "flax"
    raise ConversionError(
        f"cannot tell which format to write from the suffix of {destination}: use "
        f"{'/'.join(TORCH_SUFFIXES)} (PyTorch), {SAFETENSORS_SUFFIX}, .msgpack, or a name "
        "without a suffix (an Orbax checkpoint directory)"
    )


if __name__ == "__main__":
    sys.exit(main())
