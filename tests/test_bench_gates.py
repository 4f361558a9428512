"""`onnxprune bench` gates: decisions on fake timing tables (pass, fail, inconclusive -> re-measured,
decided after the last round), baselines (saved, matched, refused from elsewhere unless forced),
JUnit XML and markdown reports, and end-to-end CLI runs whose gates cannot flake."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import GraphBuilder

from onnxprune.bench import BenchOptions, LatencyStats, resolve_ep
from onnxprune.bench.baseline import check_compatible, load_baseline, regression_gates, save_baseline
from onnxprune.bench.bootstrap import as_blocks, ratio_estimate
from onnxprune.bench.gates import (
    LATENCY,
    REGRESSION,
    SPEEDUP,
    Gate,
    GateSettings,
    TimingTable,
    latency_gates,
    parse_latency,
    parse_share,
    run_gates,
    speedup_gates,
)
from onnxprune.bench.providers import available_providers
from onnxprune.bench.reports import junit_xml, markdown
from onnxprune.bench.suite import BenchModel, BenchResult
from onnxprune.cli import main
from onnxprune.errors import InputError

BLOCK = 5


def runs(median_ms: float, blocks: int, spread: float, seed: int) -> np.ndarray:
    """Fake timed runs: log-normal around `median_ms`, each block shifted by its own load factor."""
    rng = np.random.default_rng(seed)
    load = np.exp(rng.normal(0, spread, size=(blocks, 1)))
    return (median_ms * load * np.exp(rng.normal(0, spread / 4, size=(blocks, BLOCK)))).ravel()


def table(base_ms: float, cand_ms: float, blocks: int = 10, spread: float = 0.02, seed: int = 0) -> TimingTable:
    """Two models at batch 1, the blocks of both hit by the same load (they were timed side by side)."""
    base = runs(base_ms, blocks, spread, seed)
    cand = base / base_ms * cand_ms * np.exp(np.random.default_rng(seed + 1).normal(0, spread, base.size))
    return TimingTable(["base.onnx", "cand.onnx"], BLOCK, {1: [base, cand]}, {1: 1})


class Remeasure:
    """A `remeasure` that appends `more()` blocks to the table and counts the calls."""

    def __init__(self, first: TimingTable, more):
        self.table, self.more, self.calls = first, more, []

    def __call__(self, batches):
        self.calls.append(list(batches))
        extra = self.more(len(self.calls))
        for batch in batches:
            self.table.samples[batch] = [np.concatenate([a, b]) for a, b in zip(self.table.samples[batch], extra)]
            self.table.rounds[batch] += 1
        return self.table


def never(_):
    raise AssertionError("re-measured a conclusive gate")


def test_clear_pass_and_clear_fail_take_one_round():
    settings = GateSettings()
    (passed,), _ = run_gates([Gate(SPEEDUP, 1, 1, 1.5)], table(10.0, 2.5), never, settings)
    assert passed.state == "pass" and passed.passed and passed.rounds == 1 and passed.runs == 50
    assert passed.estimate.low <= 4.0 <= passed.estimate.high and passed.estimate.low > 1.5
    (failed,), _ = run_gates([Gate(SPEEDUP, 1, 1, 5.0)], table(10.0, 2.5), never, settings)
    assert failed.state == "fail" and not failed.passed and failed.decided_by == "interval"
    assert failed.estimate.high < 5.0


def test_inconclusive_is_remeasured_and_pooled_until_clear():
    first = table(10.0, 10 / 1.6, blocks=4, spread=0.25, seed=3)  # 1.6x, noisy: straddles 1.5
    quiet = table(10.0, 10 / 1.6, blocks=40, spread=0.005, seed=4)
    remeasure = Remeasure(first, lambda n: quiet.samples[1])
    (decision,), pooled = run_gates([Gate(SPEEDUP, 1, 1, 1.5)], first, remeasure, GateSettings(max_rounds=3))
    assert remeasure.calls == [[1]]
    assert decision.state == "pass" and decision.rounds == 2 and decision.runs == (4 + 40) * BLOCK
    assert pooled.runs(1) == decision.runs


def test_still_inconclusive_after_max_rounds_is_decided_as_asked():
    def straddling(seed):
        return table(10.0, 10 / 1.5, blocks=4, spread=0.3, seed=seed)

    for how, verdict in (("point", None), ("fail", "fail"), ("pass", "pass")):
        first = straddling(10)
        remeasure = Remeasure(first, lambda n: straddling(10 + n).samples[1])
        settings = GateSettings(max_rounds=3, inconclusive=how)
        (decision,), _ = run_gates([Gate(SPEEDUP, 1, 1, 1.5)], first, remeasure, settings)
        assert decision.state == "inconclusive" and decision.rounds == 3 and len(remeasure.calls) == 2
        assert decision.estimate.low < 1.5 < decision.estimate.high
        if verdict is None:
            assert decision.decided_by == "point estimate"
            assert decision.passed == (decision.estimate.point >= 1.5)
        else:
            assert decision.verdict == verdict and decision.decided_by == f"--inconclusive {how}"


def test_latency_gate_and_its_targets():
    fake = table(10.0, 4.0)
    assert [(g.model, g.batch, g.required) for g in latency_gates(2, (1, 8), {1: 5.0})] == [(1, 1, 5.0)]
    assert [g.model for g in latency_gates(1, (1,), {None: 5.0})] == [0]  # the only model
    gates = latency_gates(2, (1,), parse_latency("5ms"))
    (decision,), _ = run_gates(gates, fake, never, GateSettings())
    assert decision.gate.kind == LATENCY and decision.passed and decision.estimate.point == pytest.approx(4.0, rel=0.05)
    (slow,), _ = run_gates(latency_gates(2, (1,), {None: 3.0}), fake, never, GateSettings())
    assert slow.state == "fail"
    with pytest.raises(InputError, match="batch sizes \\[8\\]"):
        latency_gates(2, (1,), {8: 3.0})


def test_option_parsers_and_gate_checks():
    assert parse_latency("1=5,8=30") == {1: 5.0, 8: 30.0} and parse_latency("2.5") == {None: 2.5}
    assert parse_share("5%") == pytest.approx(0.05) and parse_share("12.5") == pytest.approx(0.125)
    for bad in ("x", "0", "1=0", "0=4"):
        with pytest.raises(InputError, match="--max-latency"):
            parse_latency(bad)
    with pytest.raises(InputError, match="--max-regression"):
        parse_share("-3%")
    with pytest.raises(InputError, match="at least one candidate"):
        speedup_gates(1, (1,), 1.5)
    assert len(speedup_gates(3, (1, 8), 1.5)) == 4
    for bad in (GateSettings(confidence=1.0), GateSettings(max_rounds=0), GateSettings(inconclusive="maybe")):
        with pytest.raises(InputError):
            bad.validate()


def test_paired_bootstrap_ignores_load_both_models_shared():
    """Load that drifts block by block, hitting both models alike, leaves their ratio alone when paired."""
    base = np.linspace(10.0, 20.0, 10)[:, None] * np.ones((1, BLOCK))
    cand = base / 2.0
    rng = np.random.default_rng(0)
    paired = ratio_estimate(base, cand, rng, 2000, 0.95)
    unpaired = ratio_estimate(base, cand, rng, 2000, 0.95, paired=False)
    assert paired.low == paired.high == paired.point == pytest.approx(2.0)
    assert unpaired.high - unpaired.low > 0.1
    assert as_blocks(np.arange(12.0), 5).shape == (2, 5)


def fake_result(paths: list[str], medians: list[float], threads: int = 1, shas=None) -> BenchResult:
    """A BenchResult of fake runs (batch 1) without timing anything."""
    options = BenchOptions(threads=threads, iters=50, block=BLOCK)
    samples = [list(runs(m, 10, 0.01, i) / 1000.0) for i, m in enumerate(medians)]
    stats = {1: [LatencyStats.from_samples(s, 1) for s in samples]}
    models = [BenchModel(p, 1000, 10, sha256=(shas or {}).get(p, f"sha-{p}")) for p in paths]
    return BenchResult(models, stats, options, resolve_ep("cpu"), "Fake CPU", {1: samples}, {1: 1})


def test_baseline_round_trip_and_regression(tmp_path):
    stored = fake_result(["ci/model.onnx", "ci/small.onnx"], [10.0, 4.0])
    path = save_baseline(stored, tmp_path / "base.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == "onnxprune-bench/1" and len(doc["results"][0]["samples_ms"]) == 50
    assert doc["device"] == "Fake CPU" and doc["threads"] == 1 and doc["cpu_count"] and doc["onnxruntime"]
    baseline = load_baseline(path)
    # today: model.onnx 3 % slower (allowed 5 %), small.onnx (renamed, same content) 30 % slower
    today = fake_result(
        ["build/model.onnx", "build/renamed.onnx"], [10.3, 5.2], shas={"build/renamed.onnx": "sha-ci/small.onnx"}
    )
    assert check_compatible(baseline, today.to_dict(), force=False) == []
    gates, notes = regression_gates(baseline, today, 0.05)
    assert [g.kind for g in gates] == [REGRESSION, REGRESSION] and all(g.required == 1.05 for g in gates)
    assert any("renamed.onnx: compared with small.onnx of the baseline (same file)" in n for n in notes)
    decisions, _ = run_gates(gates, TimingTable.from_result(today), never, GateSettings())
    assert [d.verdict for d in decisions] == ["pass", "fail"]
    assert decisions[1].estimate.point == pytest.approx(1.3, rel=0.03)
    stranger = fake_result(["other.onnx"], [1.0])
    with pytest.raises(InputError, match="none of the models is in it"):
        regression_gates(baseline, stranger, 0.05)
    partial, notes = regression_gates(baseline, fake_result(["model.onnx", "other.onnx"], [1.0, 1.0]), 0.05)
    assert len(partial) == 1 and any("other.onnx: not in baseline" in n for n in notes)


def test_baseline_from_elsewhere_is_refused_unless_forced(tmp_path):
    path = save_baseline(fake_result(["model.onnx"], [10.0], threads=1), tmp_path / "base.json")
    baseline = load_baseline(path)
    current = fake_result(["model.onnx"], [10.0], threads=2).to_dict()
    current["onnxruntime"] = "0.0.1"
    with pytest.raises(InputError, match="measured elsewhere .*onnxruntime.*threads 1 there, 2 here.*--force"):
        check_compatible(baseline, current, force=False)
    (note,) = check_compatible(baseline, current, force=True)
    assert "compared anyway (--force)" in note and "threads" in note
    (tmp_path / "bad.json").write_text('{"format": "something/2"}')
    with pytest.raises(InputError, match="not an onnxprune-bench/1 document"):
        load_baseline(tmp_path / "bad.json")
    with pytest.raises(InputError, match="cannot read"):
        load_baseline(tmp_path / "missing.json")


def test_junit_xml_and_markdown_parse():
    gates = [Gate(SPEEDUP, 1, 1, 1.5), Gate(SPEEDUP, 1, 1, 5.0), Gate(LATENCY, 1, 1, 100.0)]
    decisions, _ = run_gates(gates, table(10.0, 2.5), never, GateSettings())
    root = ET.fromstring(junit_xml(decisions, 0.95, {"ep": "cpu"}))
    assert root.tag == "testsuites" and root.get("tests") == "3" and root.get("failures") == "1"
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == 3 and all(c.get("classname").startswith("onnxprune.bench.") for c in cases)
    failed = [c for c in cases if c.find("failure") is not None]
    assert len(failed) == 1 and "required ≥ 5.00×" in failed[0].find("failure").get("message")
    assert "95% CI" in failed[0].find("failure").get("message")
    assert suite.find("properties/property").get("name") == "ep"
    doc = {
        "onnxruntime": "1.x",
        "provider": "CPUExecutionProvider",
        "device": "cpu",
        "results": [{"model": "m.onnx", "batch": 1, "median_ms": 1.0, "p90_ms": 1.1, "throughput": 1e3, "runs": 9}],
    }
    text = markdown(doc, decisions, 0.95, ["a note"])
    assert "| speedup | cand.onnx | 1 |" in text and "❌ fail" in text and "✅ pass" in text and "* a note" in text


# --------------------------------------------------------------------------------------------
# end to end: a big model against the same model pruned to a sliver: ~20x faster, so a 1.5x gate
# cannot fail; no ONNX Runtime run takes under 0.1 microseconds, so that latency gate cannot pass
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_and_sliver(tmp_path_factory) -> tuple[Path, Path]:
    import onnxprune

    root = tmp_path_factory.mktemp("gates")
    g = GraphBuilder(shape=("N", 4, 16, 16))
    t = g.op("Relu", g.conv("x", 4, 96))
    t = g.op("Relu", g.conv(t, 96, 96))
    path = root / "big.onnx"
    onnx.save(g.model(g.op("GlobalAveragePool", g.conv(t, 96, 3))), path)
    sliver = onnxprune.prune(str(path), ratio=0.9).save(root / "sliver.onnx")
    return path, sliver


TIMING = ["--iters", "15", "--block", "5", "--warmup", "2", "--threads", "1"]


def test_cli_gate_that_must_pass(big_and_sliver, tmp_path, capsys):
    big, sliver = big_and_sliver
    junit, md = tmp_path / "gates.xml", tmp_path / "gates.md"
    args = ["bench", str(big), str(sliver), *TIMING, "--min-speedup", "1.5", "--max-latency", "10000"]
    code = main([*args, "--junit", str(junit), "--markdown", str(md), "--save-baseline", str(tmp_path / "b.json")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == "" and "gates: 2 passed, 0 failed" in captured.out
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "0"
    assert "✅" in md.read_text() and load_baseline(tmp_path / "b.json").doc["results"][0]["samples_ms"]


def test_cli_gate_that_must_fail(big_and_sliver, tmp_path, capsys):
    big, sliver = big_and_sliver
    code = main(["bench", str(big), str(sliver), *TIMING, "--batch", "1,2", "--max-latency", "0.0001", "--json"])
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert code == 1
    failing = captured.err.strip().splitlines()
    assert len(failing) == 2 and all(line.startswith("onnxprune: gate failed: sliver.onnx batch") for line in failing)
    assert all("required ≤ 0.0001 ms" in line and "95% CI" in line and "1 round" in line for line in failing)
    assert [g["verdict"] for g in doc["gates"]] == ["fail", "fail"] and doc["gates"][0]["rounds"] == 1


def test_cli_baseline_from_other_settings_is_exit_2(big_and_sliver, tmp_path, capsys):
    big, _ = big_and_sliver
    base = tmp_path / "b.json"
    assert main(["bench", str(big), *TIMING, "--save-baseline", str(base)]) == 0
    capsys.readouterr()
    timing = [*TIMING[:-1], "2"]  # --threads 2
    assert main(["bench", str(big), *timing, "--baseline", str(base)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "measured elsewhere (threads 1 there, 2 here)" in err and "--force" in err
    code = main(["bench", str(big), *timing, "--baseline", str(base), "--force", "--max-regression", "900%"])
    assert code == 0 and "compared anyway (--force)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-regression", "5%"], "--max-regression needs --baseline"),
        (["--min-speedup", "1.5"], "at least one candidate"),
        (["--max-latency", "5", "--iters", "10"], "at least 3 timed blocks"),
        (["--max-latency", "5", "--confidence", "1.5"], "--confidence"),
        (["--max-latency", "8=5"], "batch sizes [8]"),
        (["--max-latency", "fast"], "--max-latency fast"),
    ],
)
def test_cli_bad_gate_options(big_and_sliver, capsys, args, message):
    code = main(["bench", str(big_and_sliver[0]), *TIMING, *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


@pytest.mark.skipif("CUDAExecutionProvider" not in available_providers(), reason="needs onnxruntime-gpu and a GPU")
@pytest.mark.parametrize("ep", ["cuda", "tensorrt"])
def test_gates_on_gpu_providers(big_and_sliver, capsys, ep):
    if ep == "tensorrt" and "TensorrtExecutionProvider" not in available_providers():
        pytest.skip("this ONNX Runtime has no TensorRT provider")
    big, sliver = big_and_sliver
    timing = ["--ep", ep, "--iters", "30", "--block", "5"]
    assert main(["bench", str(big), str(sliver), *timing, "--min-speedup", "0.01", "--max-latency", "10000"]) == 0
    assert "gates: 2 passed" in capsys.readouterr().out
    assert main(["bench", str(big), str(sliver), *timing, "--max-latency", "0.0001"]) == 1
