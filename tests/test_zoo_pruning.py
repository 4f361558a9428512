"""The torch model zoo, exported with both exporters, pruned with every weight criterion at 0.3
and 0.7 and with --round-to 8; every pruned model matches its masked reference."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from zoo import ZOO

import onnxprune
from onnxprune.api import load_and_analyze
from onnxprune.model.inputs import random_inputs
from onnxprune.model.runtime import run_model
from onnxprune.report.document import prunable_share

EXPORTERS = ("torchscript", "dynamo")
CRITERIA = ("l1", "l2", "fpgm", "random")
MODELS = sorted(ZOO)


def assert_every_group_shrinks(result, ratio):
    groups = [g for g in result.report["groups"] if g["frozen"] is None]
    assert groups
    for g in groups:
        assert g["kept"] < g["channels"], g
        assert g["kept"] >= 1
    assert any(g["kept"] == g["channels"] - int(ratio * g["channels"]) for g in groups)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", MODELS)
def test_only_the_io_groups_are_frozen(zoo_model, name, exporter):
    analysis = load_and_analyze(zoo_model(name, exporter))
    frozen = sorted(g.frozen for g in analysis.groups if g.frozen)
    assert frozen == ["reaches graph input 'input'", "reaches graph output 'output'"]
    assert prunable_share(analysis.groups, analysis.view) == pytest.approx(1.0)


@pytest.mark.parametrize("ratio", [0.3, 0.7])
@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", MODELS)
def test_prune_zoo_model(zoo_model, name, exporter, criterion, ratio):
    result = onnxprune.prune(zoo_model(name, exporter), criterion=criterion, ratio=ratio)
    assert result.report["verification"]["ok"]
    assert_every_group_shrinks(result, ratio)
    assert result.report["macs_ratio"] < 1 - ratio / 2


@pytest.mark.parametrize("name", MODELS)
def test_bn_scale_needs_batchnorm_nodes(zoo_model, name):
    with pytest.raises(onnxprune.InputError, match="bn_scale needs BatchNormalization"):
        onnxprune.prune(zoo_model(name, "torchscript"), criterion="bn_scale")
    result = onnxprune.prune(zoo_model(name, "torchscript_bn"), criterion="bn_scale", ratio=0.3)
    assert result.report["verification"]["ok"]
    assert_every_group_shrinks(result, 0.3)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", MODELS)
def test_round_to_8(zoo_model, name, exporter):
    result = onnxprune.prune(zoo_model(name, exporter), criterion="l1", ratio=0.5, round_to=8)
    assert result.report["verification"]["ok"]
    for g in result.report["groups"]:
        if g["frozen"] is None:
            assert g["kept"] % 8 == 0 or g["kept"] == g["channels"], g


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_pruned_model_keeps_a_dynamic_batch(zoo_model, exporter):
    result = onnxprune.prune(zoo_model("mobilenet_v2", exporter), ratio=0.5)
    onnx.checker.check_model(result.model, full_check=True)
    for batch in (1, 5):
        feeds = random_inputs(result.model, seed=batch, batch=batch)
        (logits,) = run_model(result.model, feeds).values()
        assert logits.shape == (batch, 10)
        assert np.all(np.isfinite(logits))
