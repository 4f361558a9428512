"""Iterative pruning (`--steps K`): schedules, plan composition, and the rounds end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from plan_checks import independent_plan_check, input_tensors

from onnxprune.cli import main
from onnxprune.recover.iterative import epochs_per_round, kept_fractions
from onnxprune.select.compose import compose_kept, compose_plans

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits"
MODEL = EXAMPLE / "digits_cnn.onnx"


def test_geometric_schedule_cuts_the_same_share_of_what_remains():
    kept = kept_fractions(0.5, 3, "geometric")
    assert kept[-1] == pytest.approx(0.5)
    shares = [kept[0]] + [b / a for a, b in zip(kept, kept[1:])]
    assert shares == pytest.approx([0.5 ** (1 / 3)] * 3)


def test_cubic_schedule_cuts_most_first_and_ends_on_target():
    cubic, geometric = kept_fractions(0.4, 4, "cubic"), kept_fractions(0.4, 4, "geometric")
    assert cubic[-1] == pytest.approx(0.4) and cubic[0] < geometric[0]
    cuts = [1 - cubic[0]] + [a - b for a, b in zip(cubic, cubic[1:])]
    assert cuts == sorted(cuts, reverse=True)


def test_epochs_are_shared_with_the_remainder_last():
    assert epochs_per_round(7, 3) == [2, 2, 3] and epochs_per_round(2, 3) == [0, 1, 1]


def test_compose_indices_and_plans():
    assert compose_kept([0, 2, 5, 7], [1, 3]) == [2, 7] and compose_kept(None, [1]) == [1]
    first = {
        "input_sha256": "a",
        "weights": {"w": {"shape": [8, 4], "kept": {"0": [0, 2, 5, 7]}}},
        "groups": [{"id": "g0", "channels": 8, "kept": [0, 2, 5, 7], "members": ["w:0"], "frozen": None}],
    }
    second = {
        "input_sha256": "b",
        "weights": {
            "w": {"shape": [4, 4], "kept": {"0": [1, 3], "1": [0, 1]}},
            "v": {"shape": [3], "kept": {"0": [2]}},
        },
        "groups": [{"id": "g0", "channels": 4, "kept": [1, 3], "members": ["w:0"], "frozen": None}],
    }
    plan = compose_plans(first, second)
    assert plan["input_sha256"] == "a"
    assert plan["weights"]["w"] == {"shape": [8, 4], "kept": {"0": [2, 7], "1": [0, 1]}}
    assert plan["weights"]["v"] == {"shape": [3], "kept": {"0": [2]}}
    assert plan["groups"][0]["channels"] == 8 and plan["groups"][0]["kept"] == [2, 7]


def _run(tmp_path, *extra) -> tuple[int, dict, dict, onnx.ModelProto]:
    out = tmp_path / "it.onnx"
    code = main([str(MODEL), "--target-flops", "0.5", "-o", str(out), "--report", str(tmp_path / "r.json"), *extra])
    plan = json.loads((tmp_path / "it.plan.json").read_text())
    return code, json.loads((tmp_path / "r.json").read_text()), plan, onnx.load(out)


def test_three_rounds_reach_the_target_and_the_plan_replays_on_the_input(tmp_path):
    code, report, plan, model = _run(tmp_path, "--steps", "3")
    assert code == 0
    rounds = report["iterative"]["rounds"]
    assert len(rounds) == 3 and [r["macs"] for r in rounds] == sorted((r["macs"] for r in rounds), reverse=True)
    assert report["macs_ratio"] == pytest.approx(0.5, abs=0.05)
    assert rounds[0]["macs_of_input"] == pytest.approx(0.5 ** (1 / 3), abs=0.06)
    source = onnx.load(MODEL)
    assert independent_plan_check(source, model, plan) > 0  # exact slices of the *input* model
    first_group = next(g for g in plan["groups"] if g["frozen"] is None)
    assert len(first_group["kept"]) < first_group["channels"]
    # the report's group table speaks of the input: its channels → what all rounds kept
    rows = {r["id"]: r for r in report["groups"]}
    for group in plan["groups"]:
        assert rows[group["id"]]["channels"] == group["channels"]
        if group["kept"] is not None:
            assert rows[group["id"]]["kept"] == len(group["kept"])
    assert sum(r.get("macs_after", r["macs"]) for r in rows.values()) < sum(r["macs"] for r in rows.values())


def test_rounds_with_finetuning_keep_the_graph_names(tmp_path):
    pytest.importorskip("torch")
    sys.path.insert(0, str(EXAMPLE))
    from data import load_digits_split

    x_train, y_train, _, _ = load_digits_split()
    np.savez(tmp_path / "train.npz", input=x_train[:256], y=y_train[:256])
    extra = ("--steps", "2", "--finetune-data", str(tmp_path / "train.npz"), "--finetune-epochs", "2")
    code, report, plan, model = _run(tmp_path, *extra, "--no-augment", "--no-teacher")
    assert code == 0 and len(report["iterative"]["rounds"]) == 2
    stored = input_tensors(model)
    source = input_tensors(onnx.load(MODEL))
    changed = 0
    for name, entry in plan["weights"].items():  # every planned tensor is in the output, sliced as planned
        assert name in stored and entry["exact"] is False
        shape = [len(entry["kept"].get(str(a), range(n))) for a, n in enumerate(entry["shape"])]
        assert list(stored[name].shape) == shape
        index = np.ix_(*[np.asarray(entry["kept"].get(str(a), range(n))) for a, n in enumerate(entry["shape"])])
        changed += not np.allclose(stored[name], source[name][index])
    assert changed > 0  # trained values written back under the same names


def test_written_back_keeps_names_shapes_and_scalar_constants():
    torch = pytest.importorskip("torch")
    from onnx import TensorProto, helper, numpy_helper

    from onnxprune.torch import to_torch
    from onnxprune.torch.writeback import written_back

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array(0.5, dtype=np.float32), "s"),  # a 0-d constant stays 0-d
    ]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Mul", ["c", "s"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 4, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    module = to_torch(model)
    with torch.no_grad():
        module.onnx_parameters["w"].mul_(2)
    result = written_back(model, module)
    onnx.checker.check_model(result, full_check=True)
    stored = {t.name: numpy_helper.to_array(t) for t in result.graph.initializer}
    np.testing.assert_allclose(stored["w"], 2 * numpy_helper.to_array(inits[0]))
    assert stored["s"].shape == () and [n.op_type for n in result.graph.node] == ["Conv", "Mul"]


def test_rounds_export_nothing_and_load_the_teacher_once(tmp_path, monkeypatch):
    """--steps with fine-tuning: each round's trained weights are written back into its graph (no
    torch export), and the teacher is the input loaded once for all rounds (the chain's fine-tuning
    does not load and analyze it again per round)."""
    pytest.importorskip("torch")
    import importlib

    chain = importlib.import_module("onnxprune.recover.chain")
    finetune = importlib.import_module("onnxprune.recover.finetune")  # the module, not the function

    sys.path.insert(0, str(EXAMPLE))
    from data import load_digits_split

    x_train, y_train, _, _ = load_digits_split()
    np.savez(tmp_path / "train.npz", input=x_train[:128], y=y_train[:128])
    calls = {"export": 0, "chain load": 0}

    def counted(function, key):
        def wrapper(*args, **kwargs):
            calls[key] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(finetune, "_export", counted(finetune._export, "export"))
    monkeypatch.setattr(chain, "load_and_analyze", counted(chain.load_and_analyze, "chain load"))
    extra = ("--steps", "3", "--finetune-data", str(tmp_path / "train.npz"), "--finetune-epochs", "3")
    code, report, _, _ = _run(tmp_path, *extra, "--no-augment")
    assert code == 0 and [len(r) > 0 for r in report["iterative"]["rounds"]] == [True] * 3
    assert report["finetune"]["teacher"] is True and len(report["finetune"]["history"]) == 1
    assert calls == {"export": 0, "chain load": 0}
