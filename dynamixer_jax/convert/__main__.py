"""Convert DynaMixer weights between the authors' PyTorch files and Flax checkpoints.

    python -m dynamixer_jax.convert dynamixer_s.pth.tar dynamixer_s_flax        # PyTorch -> Orbax directory
    python -m dynamixer_jax.convert dynamixer_s.pth.tar dynamixer_s.msgpack     # PyTorch -> msgpack file
    python -m dynamixer_jax.convert --ema checkpoint.pth.tar ema_flax           # the EMA weights
    python -m dynamixer_jax.convert dynamixer_s_flax dynamixer_s.pth            # Flax -> PyTorch state_dict

Each format follows from the path: a .pth/.pth.tar/.pt/.bin file is PyTorch, a
.msgpack file or a name without a suffix (a directory) is Flax; any other suffix
is refused. Every key is checked.
"""

from __future__ import annotations

import argparse
import os
import sys

from dynamixer_jax.convert import flax_to_torch, torch_to_flax
from dynamixer_jax.convert.flax_io import load_flax, save_flax
from dynamixer_jax.convert.torch_io import TORCH_SUFFIXES, is_torch_file, save_torch
from dynamixer_jax.errors import ConversionError
from dynamixer_jax.model.variants import create_model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dynamixer_jax.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source", help="a .pth/.pth.tar file, or a Flax checkpoint (Orbax directory or .msgpack)"
    )
    parser.add_argument("destination", help="where to write the converted weights")
    parser.add_argument(
        "--ema", action="store_true", help="take 'state_dict_ema' from a timm checkpoint"
    )
    parser.add_argument(
        "--model", help="check against this variant (e.g. dynamixer_s) instead of the file's shapes"
    )
    parser.add_argument("--num-classes", type=int, default=1000, help="with --model: the head size")
    parser.add_argument("--image-size", type=int, default=224, help="with --model: the input size")
    args = parser.parse_args(argv)
    try:
        writes_torch = _writes_torch(args.destination)
        model = (
            create_model(args.model, num_classes=args.num_classes, image_size=args.image_size)
            if args.model
            else None
        )
        if is_torch_file(args.source):
            variables = torch_to_flax(args.source, model=model, ema=args.ema)
        else:
            variables = load_flax(args.source)
            if model is not None:  # the same key and shape check as for a PyTorch file
                torch_to_flax(flax_to_torch(variables), model=model)
        if writes_torch:
            save_torch(flax_to_torch(variables), args.destination)
        else:
            save_flax(variables, args.destination)
    except (ConversionError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.destination}")
    return 0


def _writes_torch(destination: str) -> bool:
    """Whether ``destination`` names a PyTorch file (else a Flax one); ConversionError for a
    suffix that names neither."""
    if is_torch_file(destination):
        return True
    suffix = os.path.splitext(destination.rstrip("/"))[1]
    if suffix in ("", ".msgpack"):
        return False
    raise ConversionError(
        f"cannot tell which format to write from the suffix of {destination}: use "
        f"{'/'.join(TORCH_SUFFIXES)} (PyTorch), .msgpack, or a name without a suffix (an Orbax "
        "checkpoint directory)"
    )


if __name__ == "__main__":
    sys.exit(main())
