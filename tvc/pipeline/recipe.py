"""Recipes: a whole pipeline (train / compress -> export -> bench -> report) as validated YAML.

A recipe (schema 1) looks like this::

    name: fmnist-demo                # letters, digits, '-' and '_'
    description: one line, shown by `tvc recipes`
    model: vit_fmnist                # MODEL as on the command line, or a mapping:
                                     #   {name: vit_b16, weights: vit_b16.safetensors}
    data: fashion-mnist              # default DATA for stages that take data (optional)
    output: runs/fmnist-demo         # run directory (optional; default runs/<name>)
    stages:                          # run in this order; one key per item: the stage kind
      - train:    {id: teacher, epochs: 2}
      - export:   {input: "@teacher", dynamic_batch: true}
      - compress: {id: student, input: "@teacher", prune: 0.5, distill: "@teacher"}
      - export:   {input: "@student", int8: static}
      - bench:    {batch: [1, 32]}
      - report:   {}

Stage keys are the options of the matching stage config (tvc.stages), which are also the long
options of the `tvc` command with '-' written '_' (`calib_size: 256` is `--calib-size 256`);
`true` turns a flag on; lists may also be written `1,8`. A key left out keeps the stage's
default. Besides those, a stage may have:

- `id`: its name, unique in the recipe (default: its kind, then kind-2, kind-3 ...). The stage's
  output is kept in `<run dir>/<id>`, and later stages refer to it as `"@<id>"`.
- `input` (train, compress, export): the model it starts from: `"@model"` (the recipe's model) or
  an earlier train/compress stage; default: the latest train/compress stage before it, else @model.
- `targets` (bench): export stages to measure; default: every export stage before it.
- `records` (report): bench stages to report; default: every bench stage before it.
- `distill` (compress) takes a MODEL or a reference: `"@model"` or `"@<id>"` of a model stage.

`data` fills in `--data` of train, of compress when distilling or ranking channels by taylor
importance, and of bench (accuracy), and `--calib` of a static INT8 export, unless the stage sets
its own (`data: null` in bench turns accuracy off). A train stage that was interrupted continues
from the checkpoint it left on the next run (`tvc train --resume`); detector training keeps no
checkpoint, so an interrupted detector stage runs again from the start.

Mistakes (unknown keys, wrong types, references to later stages, a bench before any export) are
reported with their line number before any stage runs.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from tvc.errors import ConfigError

SLUG = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
Ref = Annotated[str, Field(pattern=r"^@[A-Za-z0-9][A-Za-z0-9_.-]*$")]
KINDS = ("train", "compress", "export", "bench", "report")
MODEL_KINDS = ("train", "compress")  # stages whose output is a PyTorch model artifact
RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"

PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]


class _Strict(BaseModel):
    # strict: `epochs: "2"` or `fp16: "yes"` are type errors, not silently converted
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


def _comma_list(value: Any) -> Any:
    """Accept `1,8` / `ort,torch` (as on the command line) as well as YAML lists."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
        return [int(v) if v.isdigit() else v for v in items]
    if isinstance(value, (int, str)):
        return [value]
    return value


class ModelSpec(_Strict):
    name: str = Field(min_length=1)
    weights: str | None = None
    num_classes: PositiveInt | None = None


class _Stage(_Strict):
    """Keys every stage has; the rest are generated from the stage's config (see below)."""

    id: str | None = Field(None, pattern=SLUG)


class _ModelStage(_Stage):
    input: Ref | None = None


class _BenchStage(_Stage):
    targets: list[Ref] | None = Field(None, min_length=1)


class _ReportStage(_Stage):
    records: list[Ref] | None = Field(None, min_length=1)
    formats: list[Literal["html", "md"]] = Field(
        default_factory=lambda: ["html", "md"], min_length=1
    )

    _lists = field_validator("formats", mode="before")(_comma_list)


# keys that shape the pipeline rather than becoming stage options
STRUCTURAL = {"id", "input", "targets", "records", "formats"}
# stage config fields the runner fills in itself: what to read and where to write
RUNNER_OWNED = {"model", "output", "force", "resume", "target", "targets", "records", "json_out",
                "command"}  # fmt: skip
_BASES: dict[str, type[_Stage]] = {"train": _ModelStage, "compress": _ModelStage,
                                   "export": _ModelStage, "bench": _BenchStage,
                                   "report": _ReportStage}  # fmt: skip


def _recipe_stage(kind: str) -> type[_Stage]:
    """The recipe model of one stage kind: its stage config's options, each optional (a key
    left out keeps the stage's default), plus the structural keys of that kind."""
    from pydantic import create_model
    from pydantic.fields import FieldInfo

    from tvc.stages import get_stage

    config = get_stage(kind).config
    fields: dict[str, Any] = {}
    lists = []
    for name, f in config.model_fields.items():
        if name in RUNNER_OWNED or name in _BASES[kind].model_fields:
            continue
        optional = FieldInfo.merge_field_infos(f, default=None)
        optional.default_factory = None
        fields[name] = (f.annotation | None, optional)
        if typing.get_origin(f.annotation) is list:
            lists.append(name)
    validators = {"_lists": field_validator(*lists, mode="before")(_comma_list)} if lists else {}
    return create_model(f"{kind.title()}Stage", __base__=_BASES[kind], __validators__=validators,
                        **fields)  # fmt: skip


STAGE_MODELS: dict[str, type[_Stage]] = {k: _recipe_stage(k) for k in KINDS}
TrainStage, CompressStage, ExportStage, BenchStage, ReportStage = (STAGE_MODELS[k] for k in KINDS)


class StageEntry(_Strict):
    """One item of `stages`: a mapping with exactly one key, the stage kind."""

    train: TrainStage | None = None
    compress: CompressStage | None = None
    export: ExportStage | None = None
    bench: BenchStage | None = None
    report: ReportStage | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_kind(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(f"a stage is a mapping with one key, one of: {', '.join(KINDS)}")
        if len(data) > 1 and all(k in KINDS for k in data):
            raise ValueError(
                f"one stage has several kinds ({', '.join(data)}); give each its own list item"
            )
        # `- bench:` with nothing after it means "all defaults"
        return {k: ({} if v is None and k in KINDS else v) for k, v in data.items()}

    @model_validator(mode="after")
    def _not_empty(self) -> StageEntry:
        if self.kind is None:
            raise ValueError(f"a stage needs one key, one of: {', '.join(KINDS)}")
        return self

    @property
    def kind(self) -> str | None:
        return next((k for k in KINDS if getattr(self, k) is not None), None)

    @property
    def options(self) -> _Stage:
        return getattr(self, self.kind)


class Recipe(_Strict):
    schema_version: Literal[1] = 1
    name: str = Field(pattern=SLUG)
    description: str = ""
    model: ModelSpec
    data: str | None = None
    output: str | None = None
    stages: list[StageEntry] = Field(min_length=1)

    _origin: str = PrivateAttr("recipe")
    _root: Any = PrivateAttr(None)

    @field_validator("model", mode="before")
    @classmethod
    def _model_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def origin(self) -> str:
        """The file the recipe was read from."""
        return self._origin

    def where(self, *loc: str | int) -> str:
        """'FILE line N' for a location such as ('stages', 2, 'export', 'calib')."""
        return _where(self._origin, self._root, loc)


# ---------------------------------------------------------------------------------- loading


def recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file: the path given, or the shipped recipe of that name."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = RECIPES_DIR / f"{name_or_path}.yaml"
    if shipped.is_file() and p.suffix not in (".yaml", ".yml"):
        return shipped
    names = shipped_recipes()
    close = difflib.get_close_matches(str(name_or_path), list(names), n=3)
    hint = f"did you mean: {', '.join(close)}?" if close else "run 'tvc recipes' to list them"
    raise ConfigError(f"no recipe file or shipped recipe named '{name_or_path}'", hint)


def shipped_recipes() -> dict[str, str]:
    """Shipped recipe name -> one-line description."""
    out = {}
    for p in sorted(RECIPES_DIR.glob("*.yaml")):
        try:
            out[p.stem] = str(yaml.safe_load(p.read_text()).get("description", "")).strip()
        except (yaml.YAMLError, AttributeError):
            out[p.stem] = "(unreadable)"
    return out


def load_recipe(name_or_path: str | Path) -> Recipe:
    path = recipe_path(name_or_path)
    return parse_recipe(path.read_text(), origin=str(path))


def parse_recipe(text: str, origin: str = "recipe") -> Recipe:
    """Validate recipe YAML; every error names the key and its line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{origin} line {mark.line + 1}" if mark else origin
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem})", "fix the YAML syntax") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"{origin}: a recipe is a YAML mapping (name, model, stages, ...)",
            "see a shipped one: tvc recipes --show fmnist-demo",
        )
    _check_duplicate_keys(root, origin)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise _recipe_error(exc, origin, root) from exc
    recipe._origin, recipe._root = origin, root
    return recipe


def _check_duplicate_keys(node: Any, origin: str) -> None:
    # PyYAML keeps the last of two equal keys silently; a recipe should not
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.value in seen:
                raise ConfigError(
                    f"{origin} line {key.start_mark.line + 1}: key '{key.value}' appears twice",
                    "keep one of them",
                )
            seen.add(key.value)
            _check_duplicate_keys(value, origin)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicate_keys(item, origin)


def _node_at(root: Any, loc: tuple) -> tuple[Any, list[str | int]]:
    """The deepest YAML node along `loc`, and the loc parts that were followed."""
    node, path = root, []
    for n, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == str(part)]
            if not match:
                continue  # pydantic's own loc parts (e.g. union tags) have no node
            key, value = match[0]
            node = key if n == len(loc) - 1 else value  # a bad key is shown at the key
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
        else:
            continue
        path.append(part)
    return node, path


def _where(origin: str, root: Any, loc: tuple) -> str:
    if root is None:
        return origin
    node, _ = _node_at(root, loc)
    return f"{origin} line {node.start_mark.line + 1}"


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_class_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model a location points into, for listing its valid keys."""
    cls: type[BaseModel] | None = Recipe
    for part in loc:
        if isinstance(part, int) or cls is None:
            continue
        fields = {f.alias or n: f for n, f in cls.model_fields.items()}
        if part not in fields:
            return cls if part == loc[-1] else None
        cls = _find_model(fields[part].annotation)
    return cls


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, (types.UnionType,)) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            found = _find_model(arg)
            if found:
                return found
    return None


def _recipe_error(exc: ValidationError, origin: str, root: Any) -> ConfigError:
    # an unknown key first: a misspelt key also shows up as a missing one
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err = errors[0]
    loc = tuple(err["loc"])
    node, path = _node_at(root, loc)
    where = f"{origin} line {node.start_mark.line + 1}"
    key = _dotted(tuple(path)) or "recipe"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    if err["type"] == "extra_forbidden":
        cls = _model_class_at(loc[:-1]) if loc else None
        valid = sorted(f.alias or n for n, f in cls.model_fields.items()) if cls else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return ConfigError(
            f"{where}: {key}: unknown key{more}",
            f"{hint}valid keys here: {', '.join(valid)}",
        )
    if err["type"] == "missing":
        return ConfigError(f"{where}: {_dotted(loc)}: required key is missing{more}", "add it")
    msg = err["msg"].removeprefix("Value error, ")
    got = repr(err.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    return ConfigError(
        f"{where}: {key}: {msg} (got {got}){more}",
        "fix the value; the module docstring of tvc.pipeline.recipe describes every key",
    )


# ---------------------------------------------------------------------------------- planning


@dataclass
class Step:
    """One stage, checked and with its references and defaults filled in."""

    index: int  # 0-based position in `stages`
    kind: str
    id: str
    inputs: list[str]  # "@model" or "@<id>": the model, export targets or bench records it reads
    options: dict[str, Any]  # command-line options (field name -> value), references kept as "@x"
    refs: dict[str, str] = field(default_factory=dict)  # option name -> "@x" resolved at run time
    formats: list[str] = field(default_factory=list)  # report only

    @property
    def title(self) -> str:
        return f"{self.kind} '{self.id}'" if self.id != self.kind else self.kind


def plan(recipe: Recipe, *, data: str | None = None) -> list[Step]:
    """Check stage order and references, assign ids and fill in defaults. No work is done here.

    `data` overrides the recipe's default data (`tvc run --data`).
    """
    data = data or recipe.data
    ids = _stage_ids(recipe)
    steps: list[Step] = []
    for i, entry in enumerate(recipe.stages):
        kind, opts, sid = entry.kind, entry.options, ids[i]
        where = recipe.where("stages", i, kind)
        check = _RefCheck(recipe, steps, ids, i, kind)
        options = opts.model_dump(exclude_none=True, exclude=STRUCTURAL, by_alias=True)
        refs: dict[str, str] = {}

        if kind in ("train", "compress", "export"):
            latest = next((s for s in reversed(steps) if s.kind in MODEL_KINDS), None)
            default = f"@{latest.id}" if latest else "@model"
            inputs = [check(opts.input, "input", MODEL_KINDS) if opts.input else default]
        elif kind == "bench":
            inputs = [check(t, "targets", ("export",)) for t in opts.targets or []]
            inputs = inputs or [f"@{s.id}" for s in steps if s.kind == "export"]
            if not inputs:
                raise ConfigError(
                    f"{where}: bench needs an export stage before it (it measures exported "
                    "variants)",
                    "add an `- export: {}` stage above it",
                )
        else:  # report
            inputs = [check(r, "records", ("bench",)) for r in opts.records or []]
            inputs = inputs or [f"@{s.id}" for s in steps if s.kind == "bench"]
            if not inputs:
                raise ConfigError(
                    f"{where}: report needs a bench stage before it (it renders bench records)",
                    "add a `- bench: {}` stage above it",
                )

        if kind == "compress":
            if not set(options) & {"prune", "prune_params", "lowrank", "lowrank_rank",
                                   "merge_tokens", "distill"}:  # fmt: skip
                raise ConfigError(
                    f"{where}: compress has nothing to do",
                    "set prune, prune_params, lowrank, lowrank_rank, merge_tokens or distill",
                )
            teacher = options.get("distill", "")
            if teacher.startswith("@"):
                refs["distill"] = check(teacher, "distill", MODEL_KINDS)
                if teacher == "@model" and recipe.model.weights:
                    options.setdefault("teacher_weights", recipe.model.weights)

        # the recipe's data, where a stage needs data and does not name its own
        wanted = {
            "train": "data",
            "compress": "data"
            if "distill" in options or options.get("importance") in ("taylor", "data")
            else None,
            "export": "calib" if options.get("int8") == "static" else None,
        }.get(kind)
        if wanted and wanted not in options:
            if not data:
                raise ConfigError(
                    f"{where}: {kind} needs `{wanted}:` and the recipe sets no `data:`",
                    f"add `data:` to the recipe or `{wanted}:` to the stage, or pass "
                    "`tvc run ... --data DATA`",
                )
            options[wanted] = data
        if kind == "bench" and data and "data" not in opts.model_fields_set:
            options["data"] = data  # accuracy in the records (`data: null` turns it off)

        formats = list(opts.formats) if kind == "report" else []
        steps.append(Step(i, kind, sid, inputs, options, refs, formats))
    return steps


def _stage_ids(recipe: Recipe) -> list[str]:
    """Each stage's id: its own `id`, else its kind, numbered from the second of a kind on."""
    ids: list[str] = []
    counts: dict[str, int] = {}
    for i, entry in enumerate(recipe.stages):
        kind = entry.kind
        counts[kind] = counts.get(kind, 0) + 1
        sid = entry.options.id or (kind if counts[kind] == 1 else f"{kind}-{counts[kind]}")
        if sid == "model" or sid in ids:
            raise ConfigError(
                f"{recipe.where('stages', i, kind)}: stage id '{sid}' is "
                + ("reserved for the recipe's model" if sid == "model" else "used twice"),
                "give the stage a unique `id:`",
            )
        ids.append(sid)
    return ids


class _RefCheck:
    """Checks that "@name" refers to the recipe's model or an earlier stage of the right kind."""

    def __init__(
        self, recipe: Recipe, steps: list[Step], ids: list[str], index: int, kind: str
    ) -> None:
        self.recipe, self.steps, self.ids, self.index, self.kind = recipe, steps, ids, index, kind

    def __call__(self, value: str, key: str, kinds: tuple[str, ...]) -> str:
        name = value[1:]
        if name == "model" and kinds == MODEL_KINDS:
            return value
        earlier = next((s for s in self.steps if s.id == name), None)
        if earlier is not None and earlier.kind in kinds:
            return value
        if earlier is not None:
            what = f"the {earlier.kind} stage '{name}'"
        else:
            what = "a later stage" if name in self.ids[self.index :] else "no stage"
        want = " or ".join(("@model", *kinds) if kinds == MODEL_KINDS else kinds)
        raise ConfigError(
            f"{self.recipe.where('stages', self.index, self.kind, key)}: {key} '{value}' names "
            f"{what}; it must name an earlier {want} stage",
            "stages run top to bottom: refer to an earlier stage's id",
        )
