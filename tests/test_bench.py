"""`onnxprune bench`: statistics, the JSON document, inputs from the model's shapes, IO binding on
the CPU, and the message when an execution provider is missing. GPU tests skip without a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import GraphBuilder, conv_chain

from onnxprune.bench import (
    BenchOptions,
    LatencyStats,
    bench_models,
    io_binding_runner,
    make_session,
    resolve_ep,
)
from onnxprune.bench.providers import available_providers, check_session_provider
from onnxprune.bench.suite import input_feeds, parse_batches, parse_shapes
from onnxprune.cli import main
from onnxprune.errors import InputError

HAS_CUDA = "CUDAExecutionProvider" in available_providers()


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory) -> tuple[Path, Path]:
    """A conv chain with 8 middle channels and its pruned copy (ratio 0.5: exactly half the MACs)."""
    import onnxprune

    root = tmp_path_factory.mktemp("bench")
    path = root / "tiny.onnx"
    onnx.save(conv_chain(lambda g, t: g.op("Relu", t), c=8), path)
    pruned = onnxprune.prune(str(path), ratio=0.5).save(root / "tiny.pruned.onnx")
    return path, pruned


def test_latency_stats_from_known_samples():
    seconds = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    stats = LatencyStats.from_samples(seconds, batch=4)
    assert stats.median_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.min_ms == pytest.approx(1.0) and stats.mean_ms == pytest.approx(50.5) and stats.runs == 100
    assert stats.throughput == pytest.approx(4 * 1000 / 50.5)
    assert stats.to_dict()["throughput"] == pytest.approx(stats.throughput)


def test_bench_json_schema_and_statistics(tiny_pair, capsys):
    base, pruned = tiny_pair
    code = main(
        [
            "bench",
            str(base),
            str(pruned),
            "--batch",
            "1,3",
            "--warmup",
            "2",
            "--iters",
            "12",
            "--block",
            "4",
            "--threads",
            "1",
            "--json",
        ]
    )
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert doc["format"] == "onnxprune-bench/1" and doc["ep"] == "cpu" and doc["provider"] == "CPUExecutionProvider"
    assert doc["batches"] == [1, 3] and doc["iters"] == 12 and doc["io_binding"] is False and doc["device"]
    assert [m["path"] for m in doc["models"]] == [str(base), str(pruned)]
    assert doc["models"][0]["macs"] == 2 * doc["models"][1]["macs"] > 0
    assert doc["models"][1]["macs_ratio"] == pytest.approx(0.5)
    assert len(doc["results"]) == 4
    for row in doc["results"]:
        assert row["runs"] == 12
        assert 0 < row["min_ms"] <= row["median_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["throughput"] == pytest.approx(row["batch"] * 1000 / row["median_ms"])
    first, second = doc["results"][0], doc["results"][1]
    assert first["speedup"] == 1.0 and first["macs_reduction"] == 1.0
    assert second["speedup"] == pytest.approx(first["median_ms"] / second["median_ms"])
    assert second["macs_reduction"] == pytest.approx(2.0)
    assert second["speedup_per_macs_reduction"] == pytest.approx(second["speedup"] / 2.0)


def test_bench_table_and_progress_steps(tiny_pair, capsys):
    base, pruned = tiny_pair
    steps = []
    options = BenchOptions(batches=(2,), warmup=1, iters=6, block=3, threads=1)
    result = bench_models([base, pruned], options, progress=lambda: steps.append(1))
    assert len(steps) == 2 * 1 * 2  # models x batches x blocks
    assert [s.batch for s in result.stats[2]] == [2, 2]
    assert main(["bench", str(base), str(pruned), "--iters", "5", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert "tiny.pruned.onnx" in out and "2.00×" in out and "CPUExecutionProvider" in out


def test_io_binding_on_cpu_matches_plain_run(tiny_pair):
    base, _ = tiny_pair
    session = make_session(base, threads=1)
    feeds = input_feeds(onnx.load(base), 3, {})
    expected = session.run(None, feeds)
    binding = io_binding_runner(session, feeds, "cpu")()
    np.testing.assert_allclose(binding.copy_outputs_to_cpu()[0], expected[0], rtol=1e-6)
    doc = bench_models([base], BenchOptions(iters=4, warmup=1, block=2, io_binding=True)).to_dict()
    assert doc["io_binding"] is True and doc["results"][0]["median_ms"] > 0


def test_missing_execution_provider_message():
    with pytest.raises(
        InputError,
        match=r"'cuda' \(CUDAExecutionProvider\) is not available .*available: "
        r"cpu \(CPUExecutionProvider\).*onnxruntime-gpu",
    ):
        resolve_ep("cuda", available=["CPUExecutionProvider"])
    with pytest.raises(InputError, match="'tensorrt' .*TensorrtExecutionProvider"):
        resolve_ep("tensorrt", available=["CPUExecutionProvider", "CUDAExecutionProvider"])
    with pytest.raises(InputError, match="unknown execution provider"):
        resolve_ep("npu")
    assert resolve_ep("tensorrt", available=["TensorrtExecutionProvider"]).device_type == "cuda"


def test_silent_cpu_fallback_is_refused():
    class FellBack:
        def get_providers(self):
            return ["CPUExecutionProvider"]

    with pytest.raises(InputError, match="could not start"):
        check_session_provider(FellBack(), resolve_ep("cuda", available=["CUDAExecutionProvider"]))


@pytest.mark.skipif(HAS_CUDA, reason="this ONNX Runtime has the CUDA provider")
@pytest.mark.parametrize("ep", ["cuda", "tensorrt"])
def test_cli_gpu_provider_missing_is_one_line(tiny_pair, capsys, ep):
    code = main(["bench", str(tiny_pair[0]), "--ep", ep])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is not available" in err and "available: " in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch", "1,x"], "--batch"),
        (["--batch", "0"], "--batch"),
        (["--iters", "0"], "--iters"),
        (["--shape", "x=1x4"], "2 dims given"),
        (["--shape", "nope=1x4x8x8"], "no input 'nope'"),
        (["--shape", "x=1x4xzx8"], "--shape"),
        (["--shape", "x=1x5x8x8"], "fixes it to 4"),
    ],
)
def test_cli_bad_input(tiny_pair, capsys, args, message):
    code = main(["bench", str(tiny_pair[0]), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_inputs_from_shapes(tmp_path):
    g = GraphBuilder(shape=("N", 4, "H", "W"))
    path = tmp_path / "dyn.onnx"
    onnx.save(g.model(g.op("GlobalAveragePool", g.conv("x", 4, 6))), path)
    model = onnx.load(path)
    assert input_feeds(model, 5, {"x": (1, 4, 16, 12)})["x"].shape == (5, 4, 16, 12)
    with pytest.raises(InputError, match="dynamic dimension 2 .*shape x=1xNxNxN"):
        input_feeds(model, 1, {})
    assert parse_shapes(["x=1x4x16x12"]) == {"x": (1, 4, 16, 12)} and parse_batches("1, 8,64") == (1, 8, 64)


def test_fixed_batch_refuses_other_batch_sizes(tmp_path):
    g = GraphBuilder(shape=(1, 4, 8, 8))
    path = tmp_path / "fixed.onnx"
    onnx.save(g.model(g.op("GlobalAveragePool", g.conv("x", 4, 6))), path)
    with pytest.raises(InputError, match="fixed batch size of 1; cannot time batch 8"):
        bench_models([path], BenchOptions(batches=(8,), iters=2, warmup=0))


@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and a GPU")
def test_cuda_io_binding(tiny_pair):
    base, pruned = tiny_pair
    doc = bench_models([base, pruned], BenchOptions(ep="cuda", batches=(1, 8), iters=10, warmup=2)).to_dict()
    assert doc["provider"] == "CUDAExecutionProvider" and doc["io_binding"] is True
    assert all(row["median_ms"] > 0 for row in doc["results"])


def test_model_onnx_runtime_cannot_load_is_one_line(tmp_path, capsys):
    from onnx import TensorProto, helper

    node = helper.make_node("FooBar", ["x"], ["y"], domain="com.nothing")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.nothing", 1)]),
        path,
    )
    assert main(["bench", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"onnxprune: error: ONNX Runtime cannot load {path}") and err.count("\n") == 1
