"""The masked-reference check catches wrong rewrites, and nothing is written then."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import conv_chain
from onnx import numpy_helper

import onnxprune
import onnxprune.api
from onnxprune.cli import main
from onnxprune.passes import apply_plan


def tampered_apply(model, plan, view=None):
    """apply_plan, then swap two kept filters of the first sliced conv weight."""
    applied = apply_plan(model, plan, view)
    for init in applied.model.graph.initializer:
        value = numpy_helper.to_array(init)
        if value.ndim == 4 and value.shape[0] > 1:
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value[::-1]), init.name))
            break
    return applied


@pytest.fixture()
def tiny(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(conv_chain(lambda g, t: g.op("Relu", t), c=8), path)
    return path


def test_wrong_rewrite_fails_verification(monkeypatch, tiny):
    monkeypatch.setattr(onnxprune.api, "apply_plan", tampered_apply)
    with pytest.raises(onnxprune.VerificationError, match="differs from the masked reference"):
        onnxprune.prune(tiny, ratio=0.5)


def test_cli_exit_3_and_no_output(monkeypatch, tiny, tmp_path, capsys):
    monkeypatch.setattr(onnxprune.api, "apply_plan", tampered_apply)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([str(tiny), "-o", str(tmp_path / "out.onnx")]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "verification failed" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_no_verify_skips_the_check(monkeypatch, tiny):
    monkeypatch.setattr(onnxprune.api, "apply_plan", tampered_apply)
    result = onnxprune.prune(tiny, ratio=0.5, verify=False)
    assert result.report["verification"] is None


def test_masked_reference_zeroes_pruned_slices(tiny):
    from onnxprune.analysis import ModelView
    from onnxprune.verify.reference import masked_reference

    analysis = onnxprune.api.load_and_analyze(tiny)
    from onnxprune.select.selection import SelectOptions, select

    scores = onnxprune.api.score_groups(analysis, "l1")
    plan = select(analysis.groups, scores, SelectOptions(0.5))
    masked = ModelView(masked_reference(analysis.model, plan)).consts
    (group,) = [g for g in analysis.groups if g.prunable]
    dropped = np.setdiff1d(np.arange(group.channels), plan.kept[group.id])
    for member in group.members:
        value = np.moveaxis(masked[member.space.tensor], member.space.axis, 0)
        assert np.all(value[dropped] == 0) and np.any(value[plan.kept[group.id]] != 0)
