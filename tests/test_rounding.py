"""`--round-to auto`: the choice rule on fake timing tables, single-op layer models, the timing
cache, and the whole path on tiny models (timings cached in a temporary folder)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from graphs import GraphBuilder, conv_chain

import onnxprune
from onnxprune.analysis import ModelView
from onnxprune.api import load_and_analyze, score_groups
from onnxprune.bench.cache import TimingCache, cache_dir
from onnxprune.bench.layers import group_layers
from onnxprune.bench.providers import available_providers
from onnxprune.cli import main
from onnxprune.model.runtime import run_model
from onnxprune.select.rounding import (
    AutoRoundOptions,
    auto_round,
    candidate_counts,
    choose_count,
    choose_counts,
    monotone_counts,
)
from onnxprune.select.selection import SelectOptions, select


@pytest.fixture(autouse=True)
def temporary_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize(
    "requested, channels, expected",
    [
        (33, 64, [33, 40, 48, 56, 64]),
        (20, 40, [20, 24, 32]),
        (36, 40, [36, 40]),
        (32, 64, [32]),
        (3, 6, [3, 6]),
        (8, 8, [8]),
        (1, 16, [1, 8, 16]),
    ],
)
def test_candidate_counts(requested, channels, expected):
    assert candidate_counts(requested, channels) == expected


FAKE = {16: 1.0, 24: 1.2, 32: 0.9, 40: 1.1, 48: 1.0}


def test_rule_on_a_fake_table():
    assert monotone_counts(FAKE) == [32, 48]
    assert [choose_count(FAKE, r) for r in (16, 24, 32, 33, 48)] == [32, 32, 32, 48, 48]
    assert choose_counts({"g1": FAKE, "g2": {8: 1.0, 16: 2.0}}, {"g1": 24, "g2": 8, "g3": 5}) == {
        "g1": 32,
        "g2": 8,
        "g3": 5,
    }
    # within the tolerance a larger count does not beat a smaller one
    assert choose_count({8: 1.00, 16: 0.98}, 8) == 16
    assert choose_count({8: 1.00, 16: 0.98}, 8, tolerance=0.03) == 8
    assert choose_count({8: 1.00, 16: 0.90}, 8, tolerance=0.03) == 16


def test_rule_picks_only_monotone_counts_never_slower_than_requested():
    rng = np.random.default_rng(0)
    for _ in range(300):
        counts = sorted(rng.choice(np.arange(1, 65), size=rng.integers(1, 7), replace=False).tolist())
        table = {c: float(rng.uniform(0.5, 2.0)) for c in counts}
        requested = counts[0]
        for tolerance in (0.0, 0.05):
            chosen = choose_count(table, requested, tolerance)
            assert chosen >= requested and chosen in table
            assert all(table[chosen] <= table[c] * (1 + tolerance) for c in counts if c > chosen)
            assert table[chosen] <= table[requested]


class FakeTimer:
    """Group times from a function of the count; remembers what it was asked."""

    cache = None
    timed = 0

    def __init__(self, table):
        self.table, self.asked = table, []

    def group_times(self, specs, counts, progress=None):
        self.asked.append((len(specs), list(counts)))
        return {c: self.table(c) for c in counts}


def _chain(tmp_path, c=40):
    path = tmp_path / "chain.onnx"
    onnx.save(conv_chain(lambda g, t: g.op("Relu", t), c=c), path)
    return path


def test_auto_round_applies_the_chosen_count(tmp_path):
    analysis = load_and_analyze(_chain(tmp_path))
    scores = score_groups(analysis, "l1")
    plan = select(analysis.groups, scores, SelectOptions(0.5))
    timer = FakeTimer(lambda c: {20: 1.0, 24: 0.8, 32: 0.9}[c])
    rounded, report = auto_round(analysis, scores, plan, AutoRoundOptions(), timer=timer)
    (row,) = report["groups"]
    assert timer.asked == [(2, [20, 24, 32])]  # producer and consumer conv, candidates
    assert (row["requested"], row["chosen"]) == (20, 24) and row["times_ms"] == {"20": 1.0, "24": 0.8, "32": 0.9}
    gid = row["id"]
    kept = rounded.kept[gid]
    assert len(kept) == 24 and set(plan.kept[gid]) <= set(kept)  # the 20 kept + the 4 best-scored pruned
    dropped = np.setdiff1d(np.arange(40), kept)
    assert scores[gid][kept].min() >= scores[gid][dropped].max()


def test_prune_round_to_auto_end_to_end_with_cache(tmp_path):
    path = _chain(tmp_path)
    result = onnxprune.prune(str(path), ratio=0.5, round_to="auto")
    rounding = result.report["rounding"]
    (row,) = rounding["groups"]
    assert rounding["ep"] == "cpu" and rounding["layers_timed"] == 2 * 3 and row["layers"] == 2
    assert set(row["times_ms"]) == {"20", "24", "32"} and all(v > 0 for v in row["times_ms"].values())
    assert row["chosen"] == choose_count({int(k): v for k, v in row["times_ms"].items()}, 20, rounding["tolerance"])
    assert result.report["verification"]["ok"] and result.plan["options"]["round_to"] == "auto"
    cache = json.loads((cache_dir() / f"timings-cpu-{_slug(rounding['device'])}.json").read_text())
    assert cache["format"] == "onnxprune-timings/1" and len(cache["entries"]) == 6
    again = onnxprune.prune(str(path), ratio=0.5, round_to="auto").report["rounding"]
    assert again["layers_timed"] == 0 and again["groups"][0]["times_ms"] == row["times_ms"]


def _slug(device: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", device).strip("_")[:80]


def test_depthwise_layer_models_scale_the_group_attribute(tmp_path):
    g = GraphBuilder()
    t = g.op("Relu", g.conv("x", 4, 24))
    t = g.op("Relu", g.conv(t, 24, 24, group=24))
    path = tmp_path / "dw.onnx"
    onnx.save(g.model(g.op("GlobalAveragePool", g.conv(t, 24, 3))), path)
    analysis = load_and_analyze(path)
    (group,) = [gr for gr in analysis.groups if gr.prunable]
    specs = group_layers(group, ModelView(analysis.model), batch=2)
    assert [s.node.op_type for s in specs] == ["Conv"] * 3
    depthwise = specs[1]
    model, feeds = depthwise.model(16)
    assert depthwise.group_attribute(16) == 16 and feeds[depthwise.inputs[0].name].shape == (2, 16, 8, 8)
    (out,) = run_model(model, feeds).values()
    assert out.shape == (2, 16, 8, 8)
    assert specs[2].shapes(16)[1] == (3, 16, 3, 3)  # the consumer's columns
    assert depthwise.signature(16, 1, "x") != depthwise.signature(24, 1, "x")


def test_timing_cache_round_trip(tmp_path):
    cache = TimingCache("cpu", "Some CPU @ 2.0GHz", tmp_path)
    signature = {"op": "Conv", "inputs": [[[1, 8, 4, 4], 1, False]]}
    assert cache.get(signature) is None
    cache.put(signature, 1.25)
    cache.save()
    assert cache.path.name == "timings-cpu-Some_CPU_2.0GHz.json"
    assert TimingCache("cpu", "Some CPU @ 2.0GHz", tmp_path).get(signature) == 1.25
    assert TimingCache("cuda", "Some CPU @ 2.0GHz", tmp_path).get(signature) is None
    cache.path.write_text("{not json")
    assert TimingCache("cpu", "Some CPU @ 2.0GHz", tmp_path).entries == {}


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("ONNXPRUNE_CACHE", str(tmp_path / "a"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("ONNXPRUNE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "onnxprune"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--round-to", "x"], "expected a positive integer or 'auto'"),
        (["--round-to", "auto", "--target-flops", "0.5"], "cannot be combined with a target"),
        (["--round-to", "auto", "--ep", "cuda"], "is not available"),
        (["--round-to", "auto", "--round-batch", "0"], "--round-batch"),
    ],
)
def test_cli_round_to_bad_input(tmp_path, capsys, args, message):
    path = _chain(tmp_path, c=8)
    code = main([str(path), "-o", str(tmp_path / "out.onnx"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "out.onnx").exists()


def test_profile_command(tmp_path, capsys):
    path = _chain(tmp_path)
    assert main(["profile", str(path), "--ratio", "0.5", "--threads", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (row,) = report["groups"]
    assert (row["channels"], row["requested"], row["layers"]) == (40, 20, 2) and report["threads"] == 1
    assert row["chosen"] == choose_count({int(k): v for k, v in row["times_ms"].items()}, 20, report["tolerance"])
    assert main(["profile", str(path), "--ratio", "0.5", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "0 single-op models timed" in out and "20:" in out  # the second run reads the cache
    assert main(["profile", str(path), "--ep", "tensorrt"]) == 2


@pytest.mark.skipif("CUDAExecutionProvider" not in available_providers(), reason="needs onnxruntime-gpu and a GPU")
def test_round_to_auto_on_cuda(tmp_path):
    result = onnxprune.prune(str(_chain(tmp_path)), ratio=0.5, round_to="auto", round_ep="cuda")
    assert result.report["rounding"]["provider"] == "CUDAExecutionProvider"
    assert result.report["rounding"]["groups"][0]["times_ms"]


def test_cli_prune_round_to_auto(tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert (
        main([str(_chain(tmp_path)), "--round-to", "auto", "-o", str(out), "--report", str(tmp_path / "r.json")]) == 0
    )
    assert "round-to auto (CPUExecutionProvider, batch 1):" in capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    (row,) = report["rounding"]["groups"]
    kept = onnx.load(out).graph.initializer
    assert any(list(init.dims)[:1] == [row["chosen"]] for init in kept)
