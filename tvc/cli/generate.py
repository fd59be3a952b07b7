"""`tvc generate`: complete test images from their top rows with an Image GPT model."""

from __future__ import annotations

import click


@click.command()
@click.argument("target")
@click.option("--prefix-rows", type=int, required=True, help="Rows of each image given.")
@click.option(
    "-o",
    "--out",
    default="completions.png",
    show_default=True,
    help="Where to save the picture grid (PNG).",
)
@click.option(
    "-n",
    "--images",
    type=int,
    default=8,
    show_default=True,
    help="How many test images to complete.",
)
@click.option(
    "--data",
    default="fashion-mnist-pixels",
    show_default=True,
    help="Pixel DATA the test images come from.",
)
@click.option(
    "--decoder",
    default="decoder.onnx",
    show_default=True,
    help="Which decoder graph of an exported TARGET runs (decoder.int8.onnx after --int8).",
)
@click.option("--threads", type=int, default=None, help="ONNX Runtime threads.")
@click.option("--seed", type=int, default=0, show_default=True, help="Which test images.")
@click.option("--force", is_flag=True, help="Replace an existing picture at --out.")
def generate(
    target: str,
    prefix_rows: int,
    out: str,
    images: int,
    data: str,
    decoder: str,
    threads: int | None,
    seed: int,
    force: bool,
) -> None:
    """Complete test images from their top --prefix-rows rows (greedy decoding with the KV
    cache) and save a grid: given rows, completion, original. TARGET is an exported iGPT
    artifact (its decoder.onnx runs under ONNX Runtime) or an iGPT model artifact / name."""
    from tvc.errors import ConfigError
    from tvc.tasks.pixels import complete_images

    if images < 1:
        raise ConfigError(f"--images must be >= 1, got {images}", "e.g. -n 8")
    r = complete_images(
        target,
        out,
        prefix_rows=prefix_rows,
        n=images,
        data=data,
        threads=threads,
        seed=seed,
        decoder=decoder,
        force=force,
    )
    click.echo(
        f"completed {r['images']} images from {r['prefix_rows']} rows [{r['backend']}]: "
        f"{r['pixel_match']:.1%} of generated pixels equal the original; grid in {r['out']}"
    )


COMMANDS = [generate]
