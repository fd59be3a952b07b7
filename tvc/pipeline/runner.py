"""`tvc run`: run a recipe's stages in order, each as its own `tvc` command, skipping what is done.

Layout of a run directory::

    runs/fmnist-demo/
      run.json            state: per stage its settings hash, status, commands, output id
      teacher/            a train/compress/export stage's artifact (written atomically by tvc)
      bench/records.json  a bench stage's records (all its targets timed together, interleaved,
                          in one `tvc bench A B C`; its raw output bench.json beside it)
      report/report.html  a report stage's output

Each stage runs as `python -m tvc.stages KIND CONFIG` (the library's stage, in a child process,
never through the command line), so stages are isolated from each other, the equivalent `tvc`
command behind every number is known (it is stored in run.json and in the bench records), and a
killed run leaves finished stages intact. A stage counts as done only once its command exited
cleanly and its output is complete; then run.json records a hash of the stage's settings and of
its inputs' content ids. On the next run a stage is skipped when that hash is unchanged and its
output is still the one recorded; anything else (a changed option, a changed upstream artifact, an
interrupted or failed stage) runs again. Files named inside options (a calibration directory, a
timing cache) are identified by name, not content: use `--force` after changing them.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tvc.artifact import is_artifact, load_artifact, sha256_file, swap_in_dir
from tvc.errors import ConfigError, TvcError, storage_error
from tvc.pipeline.recipe import Recipe, Step, plan
from tvc.safe_io import clean_stale, pid_alive

if TYPE_CHECKING:
    from tvc.records import BenchRecord

STATE_FILE = "run.json"
RECORDS_FILE = "records.json"
BENCH_FILE = "bench.json"  # what the bench stage's one `tvc bench` wrote, before merging
NOT_HASHED = {"no_progress"}  # options that do not change a stage's result
TOGGLES = {"augment"}  # flags with a --no-<name> form: false is written out

Echo = Callable[[str], None]


class StageFailedError(TvcError):
    """A stage's command exited with an error; finished stages stay done."""

    def __init__(self, problem: str, fix: str, exit_code: int) -> None:
        super().__init__(problem, fix)
        self.exit_code = exit_code


@dataclass
class StageResult:
    step: Step
    status: str  # "ran" | "skipped" | "planned"
    seconds: float
    output: Path
    commands: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------- commands


@dataclass
class Invocation:
    """One run of a stage: its config values and the equivalent `tvc` command (for records)."""

    kind: str
    values: dict[str, Any]

    @property
    def text(self) -> str:
        from tvc.stages import get_stage
        from tvc.stages.config import command_text

        return command_text(self.kind, get_stage(self.kind).config, self.values)

    def with_options(self, **options: Any) -> Invocation:
        return Invocation(self.kind, {**self.values, **options})


def _model_options(recipe: Recipe) -> dict[str, Any]:
    m = recipe.model
    return {k: v for k, v in (("weights", m.weights), ("num_classes", m.num_classes)) if v}


class _Commands:
    """Builds each stage's invocations, with references turned into paths."""

    def __init__(self, recipe: Recipe, run_dir: Path, steps: list[Step]) -> None:
        self.recipe, self.run_dir = recipe, run_dir
        self.by_id = {s.id: s for s in steps}

    def bench_labels(self, step: Step) -> list[str]:
        """Each bench target's name: the model stage it was exported from, or the recipe's
        model; two exports of one model are told apart by their stage ids."""
        labels = [self._label(self.by_id[t[1:]]) for t in step.inputs]
        return [t[1:] if labels.count(label) > 1 else label
                for t, label in zip(step.inputs, labels, strict=True)]  # fmt: skip

    def _label(self, export: Step) -> str:
        src = export.inputs[0]
        # a model given as a path (an artifact, a HF directory) is named by its last part
        return Path(self.recipe.model.name).name if src == "@model" else src[1:]

    def path(self, ref: str) -> str:
        return self.recipe.model.name if ref == "@model" else _shown(self.run_dir / ref[1:])

    def for_step(self, step: Step, out: Path | None = None) -> list[Invocation]:
        """The stage's invocations, writing to `out` (default: the stage's own directory)."""
        from tvc.stages import get_stage
        from tvc.stages.config import argument_fields, field_with_flag

        config = get_stage(step.kind).config
        out = out or self.run_dir / step.id
        options = {k: (self.path(v) if k in step.refs else v) for k, v in step.options.items()}
        (arg,) = argument_fields(config)  # MODEL, TARGET or RECORDS
        if step.kind in ("train", "compress", "export"):
            src = step.inputs[0]
            extra = _model_options(self.recipe) if src == "@model" else {}
            values = {arg: self.path(src), "output": _shown(out), **options, **extra}
            return [Invocation(step.kind, values)]
        if step.kind == "bench":
            # every variant in one interleaved run: compared under the same conditions, and
            # evaluated on the same data set
            json_out = field_with_flag(config, "--json")
            targets = [self.path(t) for t in step.inputs]
            values = {arg: targets, "names": self.bench_labels(step), json_out:
                      _shown(out / BENCH_FILE), **options}  # fmt: skip
            return [Invocation("bench", values)]
        records = [_shown(self.run_dir / b[1:] / RECORDS_FILE) for b in step.inputs]
        return [
            Invocation("report", {arg: records, "output": _shown(out / f"report.{fmt}"), **options})
            for fmt in step.formats
        ]


def _shown(path: Path) -> str:
    """A stage's path as its command records it: relative to the working directory when inside
    it (the stage runs there), so records and run.json name no machine's absolute paths."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def check_configs(recipe: Recipe, steps: list[Step], commands: _Commands) -> None:
    """Every stage's options make a valid stage config, before any stage runs: the checks
    between options (e.g. `global` only with `prune`) are the command line's own."""
    from tvc.stages import get_stage

    for step in steps:
        config = get_stage(step.kind).config
        for inv in commands.for_step(step):
            try:
                config.parse(inv.values, origin="key")
            except ConfigError as exc:
                where = recipe.where("stages", step.index, step.kind)
                raise ConfigError(f"{where}: {step.title}: {exc.problem}", exc.fix) from exc


def as_text(inv: Invocation) -> str:
    """A stage's command as a person would type it."""
    return inv.text


# ---------------------------------------------------------------------------------- state


class RunState:
    """run.json: what each stage last did. Rewritten atomically after every change."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / STATE_FILE
        self.data: dict[str, Any] = {"stages": {}}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                self.data = {"stages": {}}  # unreadable state: everything runs again
            self.data.setdefault("stages", {})

    def stage(self, sid: str) -> dict[str, Any]:
        return self.data["stages"].get(sid, {})

    def set_stage(self, sid: str, **values: Any) -> None:
        self.data["stages"][sid] = values
        self.save()

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(json.dumps(self.data, indent=2) + "\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            err = storage_error(exc, self.path)
            if err is None:
                raise
            raise err from exc
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()  # still there only when the write failed (disk full)


def _sha_text(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def output_id(step: Step, out: Path) -> str | None:
    """The content id of a stage's finished output, or None when it is missing, incomplete, or
    its payload no longer matches its hashes (deleted or edited files): then the stage runs
    again instead of being trusted."""
    if step.kind in ("train", "compress", "export"):
        if not is_artifact(out):
            return None
        try:
            return load_artifact(out, verify=True).id
        except TvcError:
            return None
    names = [RECORDS_FILE] if step.kind == "bench" else [f"report.{f}" for f in step.formats]
    if not all((out / n).is_file() for n in names):
        return None
    return _sha_text({n: sha256_file(out / n) for n in names})


# ----------------------------------------------------------------------------------- runner


@dataclass
class Runner:
    """Runs one recipe in one run directory. See the module docstring."""

    recipe: Recipe
    run_dir: Path
    data: str | None = None
    force: bool = False
    echo: Echo = print
    steps: list[Step] = field(init=False)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir).absolute()
        # every check that can fail happens here, before any stage runs
        self.steps = plan(self.recipe, data=self.data)
        self.commands = _Commands(self.recipe, self.run_dir, self.steps)
        check_configs(self.recipe, self.steps, self.commands)
        weights = self.recipe.model.weights
        if weights and not Path(weights).is_file():
            raise ConfigError(
                f"{self.recipe.where('model')}: weights file {weights} does not exist",
                "fix the path in the recipe or pass tvc run --weights FILE",
            )
        self._weights_id: str | None = None

    # -- what a stage depends on

    def _identity(self, ref: str, state: RunState) -> Any:
        if ref == "@model":
            m = self.recipe.model
            if m.weights and self._weights_id is None:
                self._weights_id = sha256_file(Path(m.weights))
            return {"model": m.name, "weights": self._weights_id, "num_classes": m.num_classes}
        return state.stage(ref[1:]).get("output_id")

    def stage_hash(self, step: Step, state: RunState) -> str:
        return _sha_text(
            {
                "kind": step.kind,
                "options": {k: v for k, v in step.options.items() if k not in NOT_HASHED},
                "formats": step.formats,
                "inputs": [self._identity(r, state) for r in step.inputs],
                "refs": {k: self._identity(v, state) for k, v in step.refs.items()},
            }
        )

    def upstream(self, step: Step) -> list[Step]:
        """The stages whose outputs went into `step`, in run order."""
        by_id = {s.id: s for s in self.steps}
        seen: dict[str, Step] = {}
        todo = [step]
        while todo:
            s = todo.pop()
            for ref in [*s.inputs, *s.refs.values()]:
                if ref != "@model" and ref[1:] not in seen:
                    seen[ref[1:]] = by_id[ref[1:]]
                    todo.append(by_id[ref[1:]])
        return sorted(seen.values(), key=lambda s: s.index)

    # -- running

    def plan_text(self) -> list[str]:
        lines = []
        for n, step in enumerate(self.steps, 1):
            lines.append(f"[{n}/{len(self.steps)}] {step.title} -> {self.run_dir / step.id}")
            lines += [f"    {inv.text}" for inv in self.commands.for_step(step)]
        return lines

    def run(self) -> list[StageResult]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        results = []
        with _run_lock(self.run_dir), _sigterm_as_interrupt():
            clean_stale(self.run_dir, STATE_FILE)  # a run.json temp file of a killed run
            state = RunState(self.run_dir)
            state.data.update(recipe=self.recipe.name, recipe_file=self.recipe.origin)
            for n, step in enumerate(self.steps, 1):
                results.append(self._run_step(step, state, f"[{n}/{len(self.steps)}]"))
        return results

    def _run_step(self, step: Step, state: RunState, counter: str) -> StageResult:
        out = self.run_dir / step.id
        digest = self.stage_hash(step, state)
        before = state.stage(step.id)
        if not self.force and _still_done(before, digest, step, out):
            self.echo(f"{counter} {step.title}: unchanged, skipped ({out})")
            return StageResult(step, "skipped", 0.0, out, before.get("commands", []))
        invocations = self.commands.for_step(step)
        if before.get("status") in ("running", "failed") and before.get("hash") == digest:
            if step.kind == "train" and checkpoint_left(out):
                # same settings: continue from the checkpoint the last attempt left
                invocations = [invocations[0].with_options(resume=True)]
                self.echo(f"{counter} {step.title}: interrupted last time, resuming it")
            elif before["status"] == "running":
                self.echo(f"{counter} {step.title}: interrupted last time, running it again")
        if step.kind in ("train", "compress", "export") and out.exists():
            # the run directory is the runner's own: a stage that runs again replaces its output
            invocations = [invocations[0].with_options(force=True)]
        texts = [inv.text for inv in invocations]
        for p in _clear_leftovers(self.run_dir, step, out):
            self.echo(f"{counter} {step.title}: removed {p.name}, left by a killed attempt")
        staging = None
        if step.kind in ("bench", "report"):
            # measured and rendered into a staging directory, swapped in whole when done: a
            # failed or interrupted re-run leaves the previous records and report as they were.
            # The commands recorded (texts, and the records' own) name the stage's directory.
            staging = self.run_dir / f".{step.id}.staging-{os.getpid()}"
            staging.mkdir()
            invocations = [
                inv.with_options(command=text) if step.kind == "bench" else inv
                for inv, text in zip(self.commands.for_step(step, out=staging), texts, strict=True)
            ]
        try:
            return self._run_invocations(step, state, counter, digest, invocations, texts, staging)
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)

    def _run_invocations(
        self,
        step: Step,
        state: RunState,
        counter: str,
        digest: str,
        invocations: list[Invocation],
        texts: list[str],
        staging: Path | None,
    ) -> StageResult:
        """Run a stage's commands (into `staging` when given, then swapped into its directory),
        recording its state before and after."""
        out = self.run_dir / step.id
        started = time.time()
        state.set_stage(
            step.id,
            kind=step.kind,
            status="running",
            hash=digest,
            commands=texts,
            output=step.id,
            started=_now(),
        )
        for i, (inv, text) in enumerate(zip(invocations, texts, strict=True)):
            part = f" ({i + 1}/{len(invocations)})" if len(invocations) > 1 else ""
            self.echo(f"{counter} {step.title}{part}: {text}")
            # the stage runs in a child process of its own, through the library, not the CLI
            code = _call([sys.executable, "-m", "tvc.stages", inv.kind, json.dumps(inv.values),
                          text])  # fmt: skip
            if code != 0:
                state.set_stage(step.id, **{**state.stage(step.id), "status": "failed"})
                raise StageFailedError(
                    f"stage {step.title} failed (exit {code}) running: {text}",
                    "see its error above; fix it and re-run 'tvc run': finished stages are skipped",
                    exit_code=code if code > 0 else 128 - code,  # killed by signal N: 128 + N
                )
        if step.kind == "bench":
            from tvc.runtime.compare import summary_lines

            # each variant's p50 with its interval, the evaluation set, the speed-ups
            for line in summary_lines(self._merge_records(step, staging or out, texts)):
                self.echo(f"    {line}")
        if staging is not None:
            swap_in_dir(staging, out)
        oid = output_id(step, out)
        if oid is None:
            raise StageFailedError(
                f"stage {step.title} exited cleanly but left no complete output in {out}",
                "this is a bug in tvc; re-run with --force and report it",
                exit_code=70,
            )
        seconds = time.time() - started
        state.set_stage(
            step.id,
            **{
                **state.stage(step.id),
                "status": "done",
                "output_id": oid,
                "finished": _now(),
                "seconds": round(seconds, 2),
            },
        )
        self.echo(f"{counter} {step.title}: done in {seconds:.1f} s -> {out}")
        return StageResult(step, "ran", seconds, out, texts)

    def _merge_records(self, step: Step, out: Path, texts: list[str]) -> list[BenchRecord]:
        """One records.json for the stage: the variants, already named after the stage they
        came from, each carrying the commands of the stages upstream of it."""
        from tvc.records import read_records, write_records

        (bench_cmd,) = texts
        by_id = {s.id: s for s in self.steps}
        by_path = {self.commands.path(t): t for t in step.inputs}
        merged = []
        for rec in read_records(out / BENCH_FILE):
            export = by_id[by_path[rec.extra["target"]][1:]]
            chain = [*self.upstream(export), export]
            pipeline = [c for s in chain for c in as_texts(self.commands.for_step(s))]
            rec.extra = {
                **rec.extra,
                "bench_variant": rec.variant,
                "recipe": self.recipe.name,
                "stage": export.id,
                "pipeline": [*pipeline, bench_cmd],
            }
            merged.append(rec)
        write_records(merged, out / RECORDS_FILE)
        return merged


def checkpoint_left(out: Path) -> bool:
    """An interrupted `tvc train` left a checkpoint to resume from (OUT.ckpt/last.pt). Only
    classifier training writes one, so a detector, or a classifier stopped before its first
    epoch ended, simply runs again (`tvc train` refuses --resume for detectors)."""
    return (out.with_name(out.name + ".ckpt") / "last.pt").is_file()


def _still_done(before: dict[str, Any], digest: str, step: Step, out: Path) -> bool:
    """Finished with the same settings and inputs, and its output is the one it made."""
    if before.get("status") != "done" or before.get("hash") != digest:
        return False
    return bool(before.get("output_id")) and output_id(step, out) == before["output_id"]


def as_texts(invocations: list[Invocation]) -> list[str]:
    return [inv.text for inv in invocations]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A preexec_fn: the stage child gets SIGTERM when the runner dies, even by SIGKILL (Linux
    PR_SET_PDEATHSIG), so a killed run leaves no orphan writing the output a re-run writes."""

    def arm() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return  # not Linux: the interrupt handling in _call still stops the child
        if os.getppid() != parent:  # the runner died before the signal was armed
            os._exit(1)

    return arm


def _call(argv: list[str]) -> int:
    """Run one stage command, its output going straight to the terminal (progress included)."""
    proc = subprocess.Popen(argv, preexec_fn=_die_with_parent(os.getpid()))
    try:
        return proc.wait()
    except BaseException:
        # interrupted (Ctrl-C, SIGTERM): stop the stage; its artifact is never half-written
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise


def _clear_leftovers(run_dir: Path, step: Step, out: Path) -> list[Path]:
    """Remove what a killed attempt of this stage left: staging and old directories, temporary
    files. The run lock guarantees that no other run is writing them. Returns the staging
    leftovers removed, so the run can say so."""
    removed = clean_stale(run_dir, step.id)
    if step.kind not in ("bench", "report") and out.is_dir() and not is_artifact(out):
        # the stage's own output lost its artifact.json: a remnant no command would replace
        shutil.rmtree(out, ignore_errors=True)
        removed.append(out)
    return removed


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    """One `tvc run` per run directory at a time; a lock left by a killed run is taken over."""
    lock = run_dir / ".lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and pid_alive(pid):
                raise ConfigError(
                    f"another 'tvc run' (pid {pid}) is using {run_dir}",
                    "wait for it to finish, or choose another run directory with -o",
                ) from None
            lock.unlink(missing_ok=True)
    else:
        raise ConfigError(f"cannot lock {run_dir}", "check that the directory is writable")
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """`kill PID` stops the run like Ctrl-C does: the running stage is stopped, state kept."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. inside some test runners)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
