"""`tvc run`."""

from __future__ import annotations

import logging
from pathlib import Path

import click

log = logging.getLogger("tvc")

# ---------------------------------------------------------------------------------------- run


@click.command("run")
@click.argument("recipe")
@click.option(
    "-o",
    "--output",
    "out",
    default=None,
    type=click.Path(file_okay=False),
    help="Run directory (default: the recipe's output, else runs/<name>).",
)
@click.option("--data", default=None, help="Data for every stage that takes data.")
@click.option(
    "--weights",
    type=click.Path(dir_okay=False),
    default=None,
    help="Weights for the recipe's model (instead of the recipe's).",
)
@click.option("--force", is_flag=True, help="Run every stage again, even unchanged ones.")
@click.option("--dry-run", is_flag=True, help="Check the recipe and print the commands only.")
def run_cmd(recipe, out, data, weights, force, dry_run) -> None:
    """Run RECIPE (a YAML file or a shipped recipe name): every stage, skipping unchanged ones."""
    from tvc.pipeline.recipe import load_recipe
    from tvc.pipeline.runner import Runner

    rec = load_recipe(recipe)
    if weights:
        rec.model.weights = weights
    run_dir = Path(out or rec.output or Path("runs") / rec.name)
    runner = Runner(rec, run_dir, data=data, force=force, echo=lambda s: click.echo(s, err=True))
    if dry_run:
        click.echo("\n".join(runner.plan_text()))
        return
    results = runner.run()
    ran = sum(r.status == "ran" for r in results)
    click.echo(f"{rec.name}: {ran} stage(s) ran, {len(results) - ran} unchanged; in {run_dir}")
    for r in results:
        if r.step.kind == "report":
            for fmt in r.step.formats:
                click.echo(f"report: {r.output / f'report.{fmt}'}")


@click.command()
@click.option("--show", "show", default=None, metavar="NAME", help="Print one recipe's YAML.")
def recipes(show) -> None:
    """Recipes that ship with tvc (run one with 'tvc run NAME')."""
    from tvc.pipeline.recipe import recipe_path, shipped_recipes

    if show:
        click.echo(recipe_path(show).read_text(), nl=False)
        return
    for name, description in shipped_recipes().items():
        click.echo(f"{name:<24} {description}")


# --------------------------------------------------------------------------------------- demo


@click.command()
@click.option(
    "-o",
    "--output",
    "out",
    default=None,
    type=click.Path(file_okay=False),
    help="Run directory, reused on a re-run [default: runs/demo; runs/demo-det with --detection, "
    "runs/demo-lanes with --lanes].",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads for the benchmarks (default: the recipe's, 1).",
)
@click.option(
    "--detection",
    is_flag=True,
    help="The detection story instead: DETR on the built-in Fashion-MNIST scenes (fmnist-det).",
)
@click.option(
    "--lanes",
    is_flag=True,
    help="The lane story instead: LSTR on the built-in rendered roads (lanes-synth), with a "
    "picture of the lanes the teacher and the INT8 student predict.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Run every stage again and replace the previous run's artifacts, bench records and "
    "report (re-measure); without it, unchanged stages are skipped.",
)
def demo(out, threads, detection, lanes, force) -> None:
    """The main job on the built-in default: Fashion-MNIST ViT, pruned, distilled, INT8, report."""
    from tvc.demo import run_demo

    if out is None:
        out = "runs/demo-lanes" if lanes else "runs/demo-det" if detection else "runs/demo"
    run_demo(
        Path(out),
        threads=threads,
        detection=detection,
        lanes=lanes,
        force=force,
        echo=click.echo,
        progress=lambda s: click.echo(s, err=True),
    )


COMMANDS = [run_cmd, recipes, demo]
