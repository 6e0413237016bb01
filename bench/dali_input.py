"""A DALI input pipeline for the overlap benchmark: synthetic JPEGs, decoded and augmented as training would.

On a GPU the JPEGs are decoded by nvJPEG (``device="mixed"``: the encoded bytes cross PCIe,
the pixels stay on the device) and cropped, mirrored and normalized there, so the input
pipeline's host-to-device copies and kernels compete with an asynchronous save's
device-to-host DMA as in a real job. Without a GPU the same pipeline runs on the CPU.
The pipeline is built with ``enable_checkpointing=True`` and saved in the checkpoint.

    python bench/dali_input.py [--gpu]     # a smoke run: a few batches, their shapes and rate
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

SIDE = 256  # each synthetic image is SIDE x SIDE RGB noise (about 190 KiB as JPEG, like a photo)
CROP = 224


def write_jpegs(root: str, count: int, seed: int = 0) -> str:
    """``count`` noise JPEGs under ``root/0/`` (the file reader's one-class layout); returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "0"), exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(root, "0", f"{i:05d}.jpg"), quality=90)
    return root


def image_pipeline(file_root: str, *, gpu: bool, batch_size: int, threads: int = 2, checkpoint: bytes | None = None):
    """A built pipeline: shuffled JPEGs, decoded, randomly cropped and mirrored, normalized (NCHW float);
    ``checkpoint`` is a DALI state to resume from."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=0 if gpu else None, seed=1234,
                  enable_checkpointing=True)
    def images():
        jpegs, labels = fn.readers.file(file_root=file_root, random_shuffle=True, name="Reader")
        decoded = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
        cropped = fn.random_resized_crop(decoded, size=(CROP, CROP))
        return fn.crop_mirror_normalize(cropped, mirror=fn.random.coin_flip(), dtype=types.FLOAT,
                                        output_layout="CHW", mean=[124.0, 117.0, 104.0], std=[58.0, 57.0, 57.0]), labels

    pipe = images(checkpoint=checkpoint)
    pipe.build()
    return pipe


def next_batch(pipe, xp) -> float:
    """Run one iteration and use its images (a reduction where they live), as a training step would."""
    images, _ = pipe.run()
    tensor = images.as_tensor()
    array = xp.asarray(tensor) if xp is not np else np.asarray(tensor)
    return float(array.sum())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args(argv)
    import tempfile

    xp = np
    if args.gpu:
        import cupy as xp
    with tempfile.TemporaryDirectory() as root:
        pipe = image_pipeline(write_jpegs(root, 4 * args.batch_size), gpu=args.gpu, batch_size=args.batch_size)
        next_batch(pipe, xp)
        start = time.perf_counter()
        for _ in range(args.batches):
            next_batch(pipe, xp)
        took = time.perf_counter() - start
        print(f"{args.batches} batches of {args.batch_size} {CROP}x{CROP} images on the {'GPU' if args.gpu else 'CPU'}: "
              f"{args.batches * args.batch_size / took:.0f} images/s; state {len(pipe.checkpoint())} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
