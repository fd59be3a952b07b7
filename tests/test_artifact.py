import json
import os
import shutil
from pathlib import Path

import pytest

from tvc.artifact import is_artifact, load_artifact, update_metrics, write_artifact
from tvc.errors import ArtifactError


def _write(out, text="payload", **kw):
    with write_artifact(out, "model", **kw) as w:
        w.path_for("weights.bin").write_text(text)
        w.meta["metrics"]["x"] = 1
    return load_artifact(out)


def test_write_and_load_records_hashes_and_environment(tmp_path):
    art = _write(tmp_path / "a")
    assert art.kind == "model"
    assert set(art.meta["files"]) == {"weights.bin"}
    assert len(art.meta["files"]["weights.bin"]["sha256"]) == 64
    assert art.meta["environment"]["python"]
    assert art.meta["metrics"] == {"x": 1}
    # no staging directories are left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_lineage_points_at_parent(tmp_path):
    parent = _write(tmp_path / "p")
    child = _write(tmp_path / "c", text="other", parent=parent, spec={"stage": "s"})
    assert child.meta["parent"]["id"] == parent.id
    assert child.meta["lineage"][-1]["path"] == "../p"  # relative: the tree can move
    assert child.meta["spec"] == {"stage": "s"}


def test_lineage_paths_survive_moving_the_tree(tmp_path):
    from tvc.artifact import parent_path

    parent = _write(tmp_path / "runs" / "p")
    child = _write(tmp_path / "runs" / "deep" / "c", text="other", parent=parent)
    grandchild = _write(tmp_path / "g", text="third", parent=child)
    assert [e["path"] for e in grandchild.meta["lineage"]] == ["../runs/p", "../runs/deep/c"]
    assert not any(os.path.isabs(e["path"]) for e in grandchild.meta["lineage"])
    shutil.move(tmp_path / "runs", tmp_path / "moved")
    moved = load_artifact(tmp_path / "moved" / "deep" / "c")
    assert parent_path(moved.path, moved.meta).resolve() == (tmp_path / "moved" / "p").resolve()
    # an artifact written before paths were relative still names its parent whole
    assert parent_path("/x", {"parent": {"path": "/abs/p"}}) == Path("/abs/p")
    assert parent_path("/x", {"parent": None}) is None


def test_same_payload_same_id(tmp_path):
    assert _write(tmp_path / "a").id == _write(tmp_path / "b").id
    assert _write(tmp_path / "c", text="x").id != _write(tmp_path / "d").id


def test_failed_write_leaves_previous_artifact_intact(tmp_path):
    out = tmp_path / "a"
    before = _write(out, text="old")
    with pytest.raises(RuntimeError), write_artifact(out, "model", force=True) as w:
        w.path_for("weights.bin").write_text("half-written")
        raise RuntimeError("interrupted")
    after = load_artifact(out)
    assert after.id == before.id
    assert (out / "weights.bin").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_overwrite_needs_force_and_replaces_artifact(tmp_path):
    out = tmp_path / "a"
    _write(out, text="old")
    with pytest.raises(ArtifactError, match="pass --force"):
        _write(out, text="new")
    assert (out / "weights.bin").read_text() == "old"
    _write(out, text="new", force=True)
    assert (out / "weights.bin").read_text() == "new"
    assert not list(tmp_path.glob(".a.*"))  # no staging or old directory left


def test_input_artifact_is_never_replaced_even_with_force(tmp_path):
    out = tmp_path / "a"
    src = _write(out, text="trained")
    with pytest.raises(ArtifactError, match="would overwrite the input"):
        _write(out, text="x", parent=src, force=True)
    assert (out / "weights.bin").read_text() == "trained"


def test_tampered_payload_is_detected(tmp_path):
    out = tmp_path / "a"
    _write(out)
    (out / "weights.bin").write_text("payloaX")
    with pytest.raises(ArtifactError, match="changed after it was written"):
        load_artifact(out)


def test_missing_payload_is_detected(tmp_path):
    out = tmp_path / "a"
    _write(out)
    (out / "weights.bin").unlink()
    with pytest.raises(ArtifactError, match="missing its payload"):
        load_artifact(out)


def test_not_an_artifact(tmp_path):
    (tmp_path / "d").mkdir()
    assert not is_artifact(tmp_path / "d")
    with pytest.raises(ArtifactError, match="not a tvc artifact"):
        load_artifact(tmp_path / "d")
    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact(tmp_path / "nope")


def test_corrupt_json(tmp_path):
    out = tmp_path / "a"
    _write(out)
    (out / "artifact.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(out)


def test_refuses_to_overwrite_foreign_directory(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "precious.txt").write_text("keep me")
    with (
        pytest.raises(ArtifactError, match="not a tvc artifact"),
        write_artifact(tmp_path / "a", "model"),
    ):
        pass
    assert (tmp_path / "a" / "precious.txt").read_text() == "keep me"


def test_update_metrics_keeps_payload_valid(tmp_path):
    art = _write(tmp_path / "a")
    update_metrics(art, accuracy=91.5)
    again = load_artifact(tmp_path / "a")
    assert again.meta["metrics"]["accuracy"] == 91.5
    assert json.loads((tmp_path / "a" / "artifact.json").read_text())["id"] == art.id
