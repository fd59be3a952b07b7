"""The comparison behind a report: lineage order, names the user gave, one baseline row per
board and batch, and speed-up intervals taken conservatively from the medians' intervals."""

from __future__ import annotations

import pytest

from tvc.errors import ConfigError
from tvc.report.analysis import analyse, ratio_interval

ORDER = ["teacher-onnx fp32", "student-onnx fp32", "student-onnx int8-qdq"]


def _rows(a):
    return [(r.n, r.rec.variant, r.rec.backend) for r in a.rows]


def test_rows_come_in_lineage_order_named_by_their_directories(noisy_records):
    a = analyse(noisy_records)
    assert a.variants == ORDER and a.baseline == "teacher-onnx fp32"
    assert _rows(a) == [
        (1, "teacher-onnx fp32", "ort"),
        (2, "teacher-onnx fp32", "torch"),
        (3, "student-onnx fp32", "ort"),
        (4, "student-onnx fp32", "torch"),
        (5, "student-onnx int8-qdq", "ort"),
    ]
    assert a.renamed["student-onnx int8-qdq"] == "vit_fmnist int8-qdq"
    # the order does not depend on the order of the files or records given
    assert _rows(analyse(noisy_records[::-1])) == _rows(a)
    assert _rows(analyse(noisy_records[2:] + noisy_records[:2])) == _rows(a)


def test_labels_that_tell_models_apart_are_kept(records):
    a = analyse(records)
    assert a.renamed == {} and a.variants == ["teacher fp32", "student fp32", "student int8-qdq"]


def test_the_baseline_can_be_named_as_shown_but_not_by_an_ambiguous_old_label(noisy_records):
    assert analyse(noisy_records, "student-onnx fp32").baseline == "student-onnx fp32"
    assert analyse(noisy_records, "vit_fmnist int8-qdq").baseline == "student-onnx int8-qdq"
    with pytest.raises(ConfigError, match="is not a variant"):
        analyse(noisy_records, "vit_fmnist fp32")  # the teacher's and the student's old label


def test_only_the_baselines_own_backend_is_the_baseline(noisy_records):
    a = analyse(noisy_records)
    assert [r.is_baseline for r in a.rows] == [True, False, False, False, False]
    torch_teacher, torch_student = a.row(2), a.row(4)
    # the teacher on torch is compared with the baseline (the teacher on ort): 3 ms / 4 ms
    assert torch_teacher.base_n == 1 and torch_teacher.speedup == pytest.approx(0.75)
    # the student on torch with the teacher on torch: 4.0 / 3.9, intervals 3.8-4.2 and 3.7-4.1
    assert torch_student.base_n == 2 and torch_student.speedup == pytest.approx(4.0 / 3.9)
    assert torch_student.overlaps and not a.row(3).overlaps


def test_speedup_interval_is_taken_conservatively(noisy_records):
    a = analyse(noisy_records)
    int8 = a.row(5)
    assert int8.speedup == pytest.approx(3.0)
    assert int8.speedup_ci == pytest.approx((2.9 / 1.0, 3.1 / 0.95))  # slow base / fast variant
    assert int8.together is True and int8.noisy == [
        "load average 4.5 on 2 CPU(s): other work competed"
    ]
    assert a.row(1).speedup_ci is None  # the baseline is not compared with itself
    old = noisy_records[2].model_copy(
        update={"latency_ms": noisy_records[2].latency_ms.model_copy(update={"ci_low": None})}
    )
    assert ratio_interval(old, noisy_records[0]) is None  # a record without an interval


def test_every_board_has_its_own_baseline_row(records):
    # the teacher ran on ort on the CPU and on TensorRT on the Orins: each is its board's baseline
    a = analyse(records)
    for board in a.boards:
        base = [r for r in a.rows_for(board) if r.is_baseline]
        assert base and all(r.rec.variant == "teacher fp32" for r in base), board
        assert all(r.speedup == pytest.approx(1.0) for r in base)
    nano = [r for r in a.rows if r.rec.backend == "trt" and r.is_baseline]
    assert [r.n for r in nano] == [6, 8]
