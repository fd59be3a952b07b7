"""`tvc info` (what runs here) and `tvc models` (the names tvc understands)."""

from __future__ import annotations

import click


@click.command()
def info() -> None:
    """Which backends and devices are available here, and why not."""
    from tvc.runtime.availability import backend_report

    for name, ok, detail in backend_report():
        mark = "yes" if ok else "no "
        click.echo(f"{mark}  {name:<22} {detail}")


@click.command()
@click.option("--all", "show_all", is_flag=True, help="Also list every timm architecture.")
def models(show_all: bool) -> None:
    """Model names tvc understands: aliases, small configs, timm names."""
    from tvc.models import registry

    click.echo("tvc small configs (train on a CPU in minutes):")
    for name, cfg in registry.SMALL_CONFIGS.items():
        click.echo(f"  {name:<24} {cfg.description}")
    try:
        from tvc.models.detection import DETECTION_CONFIGS
    except ImportError:  # detection needs the 'hf' extra (transformers)
        DETECTION_CONFIGS = {}
    if DETECTION_CONFIGS:
        click.echo("tvc detection configs (96x96 Fashion-MNIST scenes):")
    for name, det in DETECTION_CONFIGS.items():
        click.echo(f"  {name:<24} {det.description}")
    click.echo("aliases:")
    for alias, arch in registry.ALIASES.items():
        click.echo(f"  {alias:<24} {arch}")
    if show_all:
        click.echo("timm architectures:")
        for n in registry.timm_names():
            click.echo(f"  {n}")
    else:
        click.echo("(any timm architecture name also works; --all lists them)")


COMMANDS = [info, models]
