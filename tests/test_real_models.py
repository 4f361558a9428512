"""The five trained third-party models of ../shared/data/real-models (Paddle2ONNX, ultralytics, a
third-party PyTorch export), each pruned with no option but `--ratio 0.5` (issue 13's acceptance):
pruned and verified, more than 15 % of the parameters removed, the frozen groups and the
verification shape as expected, the written model no larger than its input, every plan weight an
exact slice of an input tensor (checked independently), and `onnxprune check` passing.

Each model is pruned once per session (module fixture); skipped when ../shared is missing."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from plan_checks import independent_plan_check

import onnxprune
from onnxprune.verify.check import check_pruned

#: model -> (verification shape, where it came from, {frozen group name: start of its reason})
EXPECTED = {
    "320n.onnx": (
        {"images": [2, 3, 320, 320]},
        "hint: metadata imgsz",
        {
            "/model.0/conv/Conv": "reaches graph input 'images'",
            "/model.22/cv2.0/cv2.0.2/Conv": "axis 1 of '/model.22/Reshape_7_output_0' is not mapped through Reshape",
            "/model.22/dfl/conv/Conv": "axis 1 of '/model.22/dfl/Softmax_output_0' is not mapped through Softmax",
        },
    ),
    "ch_PP-OCRv4_det_infer.onnx": (
        {"x": [2, 3, 64, 64]},
        "probe",
        {
            "p2o.Conv.0": "reaches graph input 'x'",
        },
    ),
    "ch_PP-OCRv4_rec_infer.onnx": (
        {"x": [2, 3, 64, 64]},
        "probe",
        {
            "p2o.Conv.0": "reaches graph input 'x'",
            "p2o.Conv.34": "its size is read by Shape",
            "p2o.MatMul.0": "normalized by a LayerNorm (decomposed: ReduceMean…Div)",
            "p2o.MatMul.8": "normalized by a LayerNorm (decomposed: ReduceMean…Div)",
            "p2o.MatMul.12": "normalized by a LayerNorm (decomposed: ReduceMean…Div)",
            "p2o.MatMul.20": "normalized by a LayerNorm (decomposed: ReduceMean…Div)",
            "p2o.Transpose.7": "axis 3 of 'reshape2_29.tmp_0' is not mapped through Reshape",
            "p2o.MatMul.24": "axis 2 of 'p2o.Add.277' is not mapped through Softmax",
        },
    ),
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": (
        {"x": [2, 3, 64, 64]},
        "probe",
        {
            "Conv@0": "reaches graph input 'x'",
            "Conv@52": "its size is read by Shape",
        },
    ),
    "common_det.onnx": (
        {"images": [1, 3, 416, 416]},
        "static",
        {
            "Slice_4": "reaches graph input 'images'",
            "Conv_261": "reaches graph output 'output'",
        },
    ),
}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def pruned(request, shared_dir, tmp_path_factory):
    """(model file, PruneResult, written output path) for one shared model at ratio 0.5."""
    source = shared_dir / "data" / "real-models" / request.param
    if not source.is_file():
        pytest.skip(f"{source} not found")
    result = onnxprune.prune(source, ratio=0.5)
    output = result.save(tmp_path_factory.mktemp("real") / source.name.replace(".onnx", ".pruned.onnx"))
    return source, result, output


def test_pruned_and_verified_with_more_than_15_percent_removed(pruned):
    _, result, _ = pruned
    report = result.report
    assert report["verification"]["ok"] and report["verification"]["failed_groups"] == []
    assert report["verification"]["max_relative"] <= report["verification"]["tolerance"]
    assert report["params_ratio"] < 0.85 and report["macs_ratio"] < 0.85
    assert report["after"]["macs"] > 1_000_000  # counted at the verification shape, not at size 1


def test_frozen_groups_and_verification_shape(pruned):
    source, result, _ = pruned
    shapes, origin, frozen = EXPECTED[source.name]
    chosen = result.report["verification"]["shapes"]
    assert {name: entry["shape"] for name, entry in chosen.items()} == shapes
    assert all(entry["source"].startswith(origin) for entry in chosen.values())
    found = {g["name"]: g["frozen"] for g in result.report["groups"] if g["frozen"]}
    assert sorted(found) == sorted(frozen)
    for name, reason in frozen.items():
        assert found[name].startswith(reason), (name, found[name])


def test_output_smaller_than_input_and_plan_checked_independently(pruned):
    source, result, output = pruned
    assert output.stat().st_size < 0.85 * source.stat().st_size
    checked = independent_plan_check(onnx.load(str(source)), onnx.load(str(output)), result.plan)
    assert checked > 10 and not result.plan.get("derived")


def test_onnxprune_check_passes(pruned):
    source, _, output = pruned
    check = check_pruned(output, source, Path(str(output).replace(".onnx", ".plan.json")), runs=1)
    assert check.ok and not check.bad_weights
