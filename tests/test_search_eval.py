"""random-search --search-eval (issue 16 item 4) on a tiny CNN: raw stays the default and ranks as
before; reconstruct and kd-steps:N rank the same candidates by their score after a cheap recovery,
recorded next to the raw score; the winner is the argmin of the recorded scores; bad values are
one line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import run_cli
from graphs import GraphBuilder
from onnx import numpy_helper
from recovery_data import correlated_inputs

import onnxprune
from onnxprune import InputError
from onnxprune.api import PruneConfig, run_prune
from onnxprune.select.budgets import TOLERANCE
from onnxprune.select.search_eval import SearchEval, parse_search_eval

SAMPLES = 4


def tiny_cnn() -> onnx.ModelProto:
    """x[N,4,8,8] -> 3 x (Conv 3x3 + Relu, 16 channels) -> GAP -> Flatten -> Gemm(16->5), weights
    scaled by 1/sqrt(fan-in) so that the logits are of order one (softmax not saturated)."""
    g = GraphBuilder(seed=3)
    t = g.op("Relu", g.conv("x", 4, 16))
    t = g.op("Relu", g.conv(t, 16, 16))
    t = g.op("Relu", g.conv(t, 16, 16))
    model = g.model(g.gemm_head(g.op("Flatten", g.op("GlobalAveragePool", t)), 16, 5))
    for init in model.graph.initializer:
        value = numpy_helper.to_array(init)
        if value.ndim >= 2:
            fan_in = int(np.prod(value.shape[1:]))
            init.CopyFrom(numpy_helper.from_array((value / np.sqrt(fan_in)).astype(np.float32), init.name))
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("search_eval")
    onnx.save(tiny_cnn(), root / "cnn.onnx")
    np.savez(root / "calib.npz", x=correlated_inputs(96, 0))
    return {"model": root / "cnn.onnx", "calib": root / "calib.npz", "root": root}


def search(files, **options) -> onnxprune.PruneResult:
    """random-search at half the MACs, SAMPLES candidates, on the 96 calibration samples."""
    options = {"samples": SAMPLES, "calib": files["calib"], "batch_size": 16, **options}
    return onnxprune.prune(files["model"], target_flops=0.5, allocate="random-search", **options)


@pytest.fixture(scope="module")
def runs(files) -> dict[str, onnxprune.PruneResult]:
    return {mode: search(files, search_eval=mode) for mode in (None, "raw", "reconstruct", "kd-steps:2")}


def candidates(result: onnxprune.PruneResult) -> list[dict]:
    return [h for h in result.report["allocation"]["history"] if "candidate" in h]


def winner(result: onnxprune.PruneResult) -> dict:
    return next(h for h in result.report["allocation"]["history"] if "winner" in h)


def argmin(result: onnxprune.PruneResult, tie: str | None = None) -> int:
    """The candidate with the lowest recorded (score, tie) among those within the tolerance below
    the target (the strategy's rule)."""
    target = result.report["allocation"]["target"]["target"]
    rows = [h for h in candidates(result) if h["flops"] >= target * (1 - TOLERANCE)] or candidates(result)
    return min(rows, key=lambda h: (h["score"], h[tie] if tie else 0.0, h["candidate"]))["candidate"]


def test_parse_search_eval_forms():
    assert parse_search_eval(None) == SearchEval("raw")
    assert parse_search_eval("raw").name == "raw" and not parse_search_eval("raw").recovers
    assert parse_search_eval("Reconstruct") == SearchEval("reconstruct")
    assert parse_search_eval("kd-steps:12") == SearchEval("kd", 12)
    assert parse_search_eval("kd-steps:12").name == "kd-steps:12"
    for bad in ("foo", "kd-steps:0", "kd-steps:", "kd-steps:-3", "kd-steps:2.5", "kd"):
        with pytest.raises(InputError, match=r"raw, reconstruct or kd-steps:N"):
            parse_search_eval(bad)


def test_default_is_raw_and_ranks_by_the_raw_output_change(runs):
    default, raw = runs[None], runs["raw"]
    assert default.plan["groups"] == raw.plan["groups"]
    assert default.report["allocation"]["history"] == raw.report["allocation"]["history"]
    assert default.report["allocation"]["search_eval"] == "raw" and winner(default)["search_eval"] == "raw"
    rows = candidates(default)
    assert len(rows) == SAMPLES and all(h["score"] == h["raw_score"] > 0 for h in rows)
    assert sum(h["chosen"] for h in rows) == 1 and winner(default)["winner"] == argmin(default)


def test_reconstruct_ranks_the_same_candidates_by_the_recovered_error(runs):
    raw, rebuilt = candidates(runs["raw"]), candidates(runs["reconstruct"])
    assert [h["ratios"] for h in rebuilt] == [h["ratios"] for h in raw]  # same candidates
    assert [h["raw_score"] for h in rebuilt] == [h["score"] for h in raw]
    for h in rebuilt:
        assert h["applied"] and h["held_out_samples"] == 16 and h["seconds"] > 0
        assert h["score"] == h["held_out_error_after"] <= h["held_out_error_before"]
        assert h["score"] < 0.8 * h["raw_score"]  # reconstruction recovers most of the change here
    result = runs["reconstruct"]
    assert winner(result)["search_eval"] == "reconstruct" and winner(result)["winner"] == argmin(result)
    chosen = next(h for h in rebuilt if h["chosen"])
    assert chosen["ratios"] == pytest.approx(result.report["allocation"]["ratios"], abs=1e-6)
    assert result.report["verification"]["ok"] and "reconstruction" not in result.report  # ranking only


def test_kd_steps_ranks_by_held_out_error_then_kl(runs):
    pytest.importorskip("torch")
    result = runs["kd-steps:2"]
    rows = candidates(result)
    assert [h["raw_score"] for h in rows] == [h["score"] for h in candidates(runs["raw"])]
    for h in rows:
        assert h["steps"] == 2 and h["held_out_samples"] == 19
        assert 0 <= h["agreement"] <= 1 and h["score"] == pytest.approx(h["held_out_error"])
        assert h["held_out_error"] <= h["held_out_error_before"]
    assert len({h["score"] for h in rows}) > 1  # the candidates are told apart
    assert winner(result)["search_eval"] == "kd-steps:2" and winner(result)["winner"] == argmin(result, "kl")
    assert "distillation" not in result.report  # ranking only: the chosen plan is not distilled


class StageRecorder:
    """A progress callable with `stage()`, as the CLI's progress bar has: records the stages."""

    def __init__(self):
        self.stages: list[str | None] = []
        self.steps = 0

    def __call__(self, steps: int = 1) -> None:
        self.steps += steps

    def stage(self, description: str | None, total: int | None = None) -> None:
        self.stages.append(description)


def test_one_progress_stage_per_candidate(files):
    progress = StageRecorder()
    run_prune(
        files["model"],
        PruneConfig.from_keywords(
            target_flops=0.5, allocate="random-search", samples=3, calib=files["calib"], batch_size=16,
            search_eval="reconstruct",
        ),
        progress,
    )  # fmt: skip
    expected = [f"random search (reconstruct): candidate {i}/3" for i in (1, 2, 3)]
    assert progress.stages == [*expected, None] and progress.steps > 0


def test_cli_report_records_the_mode(files, capsys, tmp_path):
    report = tmp_path / "report.json"
    code, out, err = run_cli(
        capsys, files["model"], "-o", tmp_path / "out.onnx", "--target-flops", "0.5", "--allocate", "random-search",
        "--samples", "2", "--calib", files["calib"], "--batch-size", "16", "--search-eval", "reconstruct",
        "--report", report,
    )  # fmt: skip
    assert code == 0, err
    allocation = json.loads(report.read_text())["allocation"]
    assert allocation["search_eval"] == "reconstruct"
    assert all("held_out_error_after" in h for h in allocation["history"] if "candidate" in h)


BAD = {
    "foo": (["--allocate", "random-search", "--search-eval", "foo"], "raw, reconstruct or kd-steps:N"),
    "kd-steps:0": (["--allocate", "random-search", "--search-eval", "kd-steps:0"], "got 'kd-steps:0'"),
    "no random-search": (["--search-eval", "reconstruct"], "add --allocate random-search"),
    "another strategy": (["--allocate", "sensitivity", "--search-eval", "raw"], "add --allocate random-search"),
    "no calib": (["--allocate", "random-search", "--search-eval", "kd-steps:3"], "add --calib"),
    "one sample": (["--allocate", "random-search", "--search-eval", "kd-steps:3"], "at least 2 samples"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_search_eval_is_one_line_exit_2(case, files, capsys, tmp_path):
    args, expected = BAD[case]
    calib = {"no calib": [], "one sample": ["--calib", tmp_path / "one.npz"]}.get(case, ["--calib", files["calib"]])
    np.savez(tmp_path / "one.npz", x=correlated_inputs(1, 0))
    out = tmp_path / "out.onnx"
    code, _, err = run_cli(capsys, files["model"], "-o", out, "--target-flops", "0.5", *calib, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and expected in lines[0] and "--search-eval" in lines[0], err
    assert not out.exists()


def test_api_refuses_search_eval_without_random_search(files):
    with pytest.raises(InputError, match="random-search"):
        onnxprune.prune(files["model"], target_flops=0.5, calib=files["calib"], search_eval="reconstruct")
    with pytest.raises(InputError, match="got 'foo'"):
        search(files, search_eval="foo")


def test_help_teaches_the_modes(capsys):
    code, out, _ = run_cli(capsys, "prune", "--help")
    text = " ".join(out.split())
    assert code == 0 and "--search-eval MODE" in text
    assert all(word in text for word in ("raw (default)", "reconstruct:", "kd-steps:N:"))
