"""TuSimple reading and writing, and the built-in rendered lane set."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tvc.data.lanes import (
    H_SAMPLES,
    LaneSet,
    is_lanes_spec,
    load_lanes,
    misnamed_label_files,
    read_tusimple,
    write_tusimple,
)
from tvc.data.lanes_synth import make_synthetic
from tvc.errors import DataError


def test_synthetic_set_is_deterministic_and_tusimple_shaped(scenes):
    again = make_synthetic("test", 3)
    for i in range(3):
        np.testing.assert_array_equal(scenes.images[i], again.images[i])
        np.testing.assert_array_equal(scenes.lanes[i], again.lanes[i])
    other = make_synthetic("test", 3, seed=1)
    assert not np.array_equal(other.images[0], scenes.images[0])
    assert not np.array_equal(make_synthetic("val", 1).images[0], scenes.images[0])
    assert scenes.images[0].shape == (72, 128, 3) and scenes.images[0].dtype == np.uint8
    for lanes, hs in zip(scenes.lanes, scenes.h_samples, strict=True):
        np.testing.assert_array_equal(hs, H_SAMPLES)  # TuSimple's 160..710 at a tenth
        assert 1 <= len(lanes) <= 4
        for lane in lanes:
            valid = np.flatnonzero(lane >= 0)
            assert len(valid) >= 6
            assert (np.diff(valid) == 1).all()  # one contiguous stretch
            assert ((lane[valid] >= 0) & (lane[valid] <= 127)).all()
            assert (lane[lane < 0] == -2).all()


def test_markings_are_drawn_where_labelled(scenes):
    """Labelled lane pixels are brighter than the road a few pixels beside them, on average
    (markings are dashed, shadowed or occluded in places)."""
    diffs = []
    for img, lanes, hs in zip(scenes.images, scenes.lanes, scenes.h_samples, strict=True):
        grey = img.astype(np.float64).mean(-1)
        for lane in lanes:
            for x, y in zip(lane, hs, strict=True):
                xi, yi = round(x), int(y)
                if x >= 0 and 5 <= xi <= 122 and yi >= 50:
                    beside = (grey[yi, xi - 5] + grey[yi, xi + 5]) / 2
                    diffs.append(grey[yi, xi] - beside)
    assert np.mean(diffs) > 15


def test_tusimple_round_trip(tmp_path, scenes):
    path = write_tusimple(scenes.subset(4), tmp_path)
    assert path == tmp_path / "test.json"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 4 and set(records[0]) == {"lanes", "h_samples", "raw_file"}
    assert all(isinstance(x, int) for x in records[0]["lanes"][0])
    back = read_tusimple(path)
    for i in range(4):
        np.testing.assert_array_equal(back.images[i], scenes.images[i])  # PNG is lossless
        want = np.where(scenes.lanes[i] >= 0, np.round(scenes.lanes[i]), -2)
        np.testing.assert_array_equal(back.lanes[i], want)
        np.testing.assert_array_equal(back.h_samples[i], scenes.h_samples[i])
    assert back.raw_files == scenes.raw_files[:4]
    # a directory holding the file is the same data; so is lanes-synth's own cache
    assert is_lanes_spec(str(tmp_path)) and is_lanes_spec(str(path))
    assert len(load_lanes(str(tmp_path), "test")) == 4


def test_reads_tusimple_own_layout(tmp_path, scenes):
    write_tusimple(scenes.subset(2), tmp_path)
    (tmp_path / "test.json").rename(tmp_path / "label_data_0313.json")
    train = load_lanes(str(tmp_path), "train")
    assert len(train) == 2 and train.name == tmp_path.name
    with pytest.raises(DataError, match=r"no test\.json"):
        load_lanes(str(tmp_path), "test")


def test_builtin_cache_directory(tmp_path):
    a = load_lanes(f"lanes-synth:{tmp_path}", "val", limit=3)
    assert (tmp_path / "val.json").is_file()
    b = load_lanes(f"lanes-synth:{tmp_path}", "val", limit=2)  # read back, not re-rendered
    np.testing.assert_array_equal(a.images[1], b.images[1])
    assert len(b) == 2


def test_targets_and_batches_are_normalised(scenes):
    t = scenes.target(0)
    lanes = scenes.lanes[0]
    assert t["xs"].shape == lanes.shape
    np.testing.assert_allclose(t["xs"][t["valid"]], lanes[lanes >= 0] / 128, rtol=1e-6)
    np.testing.assert_allclose(t["lower"], [scenes.h_samples[0][lane >= 0].min() / 72
                                            for lane in lanes], rtol=1e-6)  # fmt: skip
    x, _targets, pos = next(scenes.batches(5, input_size=(3, 36, 64), mean=(0.5,) * 3,
                                          std=(0.5,) * 3))  # fmt: skip
    assert x.shape == (5, 3, 36, 64) and x.dtype == np.float32 and pos == [0, 1, 2, 3, 4]
    # flips mirror images and x labels together
    flipped = next(iter(scenes.batches(12, input_size=(3, 72, 128), mean=(0,) * 3, std=(1,) * 3,
                                  shuffle_seed=0, augment=True)))  # fmt: skip
    xs, tg, order = flipped
    for j, i in enumerate(order):
        if not np.allclose(xs[j], scenes.images[i].transpose(2, 0, 1) / 255, atol=1e-6):
            np.testing.assert_allclose(xs[j], scenes.images[i][:, ::-1].transpose(2, 0, 1) / 255,
                                       atol=1e-6)  # fmt: skip
            v = tg[j]["valid"]
            np.testing.assert_allclose(tg[j]["xs"][v], (127 - scenes.lanes[i][v]) / 128,
                                       rtol=1e-5)  # fmt: skip
            break
    else:
        pytest.fail("no image was flipped")


def test_spec_recognition_and_errors(tmp_path):
    assert is_lanes_spec("lanes-synth") and is_lanes_spec("lanes-synth:/x")
    assert not is_lanes_spec("fashion-mnist") and not is_lanes_spec("fashion-mnist-det")
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    assert not is_lanes_spec(str(coco))
    with pytest.raises(DataError, match="unknown split"):
        load_lanes("lanes-synth", "dev")
    with pytest.raises(DataError, match="not found"):
        load_lanes(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"lanes": [[1, 2]], "h_samples": [1, 2]}\n')
    with pytest.raises(DataError, match="raw_file"):
        read_tusimple(bad)
    missing = tmp_path / "missing.json"
    missing.write_text('{"lanes": [], "h_samples": [1], "raw_file": "a.png"}\n')
    with pytest.raises(DataError, match=r"a\.png not found"):
        read_tusimple(missing)


def test_laneset_subset():
    d = LaneSet("x", "test", [np.zeros((4, 4, 3), np.uint8)] * 3, [np.zeros((0, 2))] * 3,
                [np.array([1.0, 2.0])] * 3)  # fmt: skip
    assert len(d.subset(2)) == 2 and d.raw_files[2] == "clips/test/000002.png"
    assert d.target(0)["xs"].shape == (0, 2)


def test_misnamed_tusimple_files_are_named_with_the_fix(tmp_path, scenes):
    from tvc.errors import ConfigError
    from tvc.stages.common import check_data_task
    from tvc.tasks.lanes import LanesTask

    write_tusimple(scenes.subset(2), tmp_path)
    assert misnamed_label_files(str(tmp_path)) == []  # test.json: read as the test split
    (tmp_path / "test.json").rename(tmp_path / "labels.json")
    (tmp_path / "other.json").write_text(json.dumps({"images": []}))  # not TuSimple: not named
    assert misnamed_label_files(str(tmp_path)) == ["labels.json"]
    assert not is_lanes_spec(str(tmp_path))  # another task takes it (detection: any .json) ...
    with pytest.raises(ConfigError) as info:  # ... but a lane model says what is wrong
        check_data_task(LanesTask(), "lstr_pico", str(tmp_path))
    assert "not laid out as lanes data" in info.value.problem
    assert "(labels.json) need the names train.json" in info.value.fix
    assert f"--data {tmp_path / 'labels.json'}" in info.value.fix


def test_builtin_cache_never_overwrites_a_users_labels(tmp_path):
    """lanes-synth:DIR writes the built-in set only where tvc wrote it before: a user's own
    test.json there (here shorter than the set, which used to trigger a rewrite) is refused
    and left byte for byte as it was."""
    own = tmp_path / "test.json"
    own.write_text('{"lanes": [[1, 2]], "h_samples": [10, 20], "raw_file": "clips/a/1.jpg"}\n')
    before = own.read_bytes()
    with pytest.raises(DataError, match=r"tvc did not write") as err:
        load_lanes(f"lanes-synth:{tmp_path}", "test", limit=3)
    assert f"--data {tmp_path}" in err.value.fix
    assert own.read_bytes() == before and not (tmp_path / "clips").exists()
    afile = tmp_path / "f.txt"
    afile.write_text("x")
    with pytest.raises(DataError, match=r"is not a directory"):
        load_lanes(f"lanes-synth:{afile}", "test", limit=3)


def test_builtin_cache_rewrites_its_own_directory_when_more_is_asked(tmp_path):
    load_lanes(f"lanes-synth:{tmp_path}", "test", limit=2)
    assert len(load_lanes(f"lanes-synth:{tmp_path}", "test", limit=4)) == 4
    assert len((tmp_path / "test.json").read_text().splitlines()) == 4


def test_labels_that_are_not_finite_and_damaged_images_are_refused_by_line(tmp_path, scenes):
    write_tusimple(scenes.subset(2), tmp_path)
    good = (tmp_path / "test.json").read_text().splitlines()
    rec = json.loads(good[1])
    rec["lanes"][0][0] = float("nan")
    (tmp_path / "test.json").write_text(good[0] + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(DataError, match=r"test\.json:2: its lanes or h_samples hold NaN"):
        load_lanes(str(tmp_path), "test")
    (tmp_path / "test.json").write_text("\n".join(good) + "\n")
    (tmp_path / json.loads(good[0])["raw_file"]).write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"test\.json:1: cannot read image"):
        load_lanes(str(tmp_path), "test")
