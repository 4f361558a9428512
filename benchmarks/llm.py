"""A Llama-architecture decoder (~100M parameters, random weights) with its KV cache, pruned at
25 % and 50 % of its attention (KV groups) and MLP widths: size, MACs, ONNX Runtime CPU latency per
token (prefill and one decode step), peak RSS and seconds of the pruning.

What it measures
----------------
``transformers.LlamaForCausalLM`` built from a config (hidden 768, 12 layers, 12 query heads in 4
KV groups (GQA), SwiGLU MLP 2048, vocab 16000, untied LM head: ~101M parameters), exported with
its cache the way optimum exports decoders (``tests/hf_zoo.export_with_cache``: TorchScript, opset
17, ``past_key_values.*`` inputs and ``present.*`` outputs, dynamic batch/sequence/past). Each ratio
is pruned by the CLI in a child process (``onnxprune model.onnx --ratio R -o out.onnx``: l1, the
residual stream frozen; the child's peak RSS comes from ``getrusage``), which also verifies the
pruned model against the masked reference. Latency: ONNX Runtime CPU, all graph optimizations,
the models interleaved in ABBA blocks (``onnxprune.bench.latency.interleaved``), median of ``--iters``
runs: prefill of ``--prompt`` tokens (after one cached token) divided by the prompt length, and one
decode step (1 new token after ``--prompt`` cached ones).

Goal: every pruned model verified, and at ratio 0.5 the decode step and the prefill at least
``--goal`` (default 1.25) times faster than the original; exit status 1 when missed (unless
``--no-fail``).

Usage: ``.venv/bin/python benchmarks/llm.py [--layers 12] [--iters 20] [--prompt 64]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from common import table  # noqa: E402

from onnxprune.bench.latency import interleaved, make_session  # noqa: E402

SIZES = dict(
    hidden_size=768,
    num_attention_heads=12,
    num_key_value_heads=4,
    intermediate_size=2048,
    vocab_size=16000,
    max_position_embeddings=512,
)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--ratios", default="0.25,0.5", help="comma-separated pruning ratios")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--prompt", type=int, default=64, help="prefill tokens; also the past of the decode step")
    parser.add_argument("--goal", type=float, default=1.25, help="minimum speedup at ratio 0.5")
    parser.add_argument("--no-fail", action="store_true")
    return parser.parse_args(argv)


def export(folder: Path, layers: int) -> tuple[Path, object]:
    """The random-weight Llama exported with its cache; returns (path, config)."""
    import hf_zoo
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(num_hidden_layers=layers, **SIZES)
    model = transformers.LlamaForCausalLM(config).eval()
    return hf_zoo.export_with_cache(model, config, folder / "llama.onnx"), config


def prune(path: Path, ratio: float, folder: Path) -> tuple[Path, dict, float, float]:
    """Prune in a child process: (output, JSON report, seconds, the child's peak RSS in GB)."""
    out, report = folder / f"llama-{ratio}.onnx", folder / f"llama-{ratio}.json"
    command = [sys.executable, "-m", "onnxprune", str(path), "--ratio", str(ratio), "-o", str(out)]
    start = time.perf_counter()
    subprocess.run([*command, "--report", str(report)], check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # max over children so far
    return out, json.loads(report.read_text()), seconds, peak_gb


def feeds(model: onnx.ModelProto, config, past: int, new: int) -> dict[str, np.ndarray]:
    """Token ids, mask and a random cache of `past` tokens with the model's own KV head count."""
    rng = np.random.default_rng(0)
    heads = {i.name: i.type.tensor_type.shape.dim[1].dim_value for i in model.graph.input}
    head_dim = config.hidden_size // config.num_attention_heads
    result = {
        "input_ids": rng.integers(0, config.vocab_size, (1, new)).astype(np.int64),
        "attention_mask": np.ones((1, past + new), np.int64),
    }
    for name in (i.name for i in model.graph.input if i.name.startswith("past_key_values")):
        result[name] = rng.standard_normal((1, heads[name], past, head_dim)).astype(np.float32)
    return result


def latency(models: list[onnx.ModelProto], config, past: int, new: int, iters: int) -> list[float]:
    """Median ms per new token of each model, interleaved in ABBA blocks, each fed a cache of its
    own KV head count."""
    sessions = [make_session(model) for model in models]
    samples = interleaved(sessions, [feeds(m, config, past, new) for m in models], warmup=3, iters=iters)
    return [1e3 * float(np.median(s)) / new for s in samples]


def main(argv=None) -> int:
    """Print the table; non-zero exit when the goal is missed."""
    args = parse_args(argv)
    ratios = [float(r) for r in args.ratios.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path, config = export(folder, args.layers)
        runs = [prune(path, ratio, folder) for ratio in ratios]
        models = [onnx.load(str(path))] + [onnx.load(str(out)) for out, *_ in runs]
        prefill = latency(models, config, 1, args.prompt, args.iters)
        decode = latency(models, config, args.prompt, 1, args.iters)
    rows = [("original", runs[0][1]["before"], None, None, True)]
    rows += [
        (f"ratio {r}", report["after"], seconds, peak, report["verification"]["ok"])
        for r, (_, report, seconds, peak) in zip(ratios, runs)
    ]
    tokens = int(np.prod(runs[0][1]["shapes"]["input_ids"]["macs_shape"]))
    ok, lines = all(row[4] for row in rows), []
    for index, (label, size, seconds, peak, verified) in enumerate(rows):
        speedups = (prefill[0] / prefill[index], decode[0] / decode[index])
        ok = ok and (label != "ratio 0.5" or min(speedups) >= args.goal)
        lines.append(
            [label, f"{size['params'] / 1e6:.1f}", f"{size['macs'] / tokens / 1e6:.1f}", f"{prefill[index]:.3f}"]
            + [f"{decode[index]:.2f}", f"{speedups[0]:.2f} / {speedups[1]:.2f}"]
            + ["" if peak is None else f"{peak:.2f}", "" if seconds is None else f"{seconds:.0f}", str(verified)]
        )
    headers = ["model", "params M", "MACs/token M", "prefill ms/token", "decode ms", "speedup prefill / decode"]
    title = f"Llama-architecture decoder, {args.layers} layers, {SIZES}; l1, residual stream frozen"
    print(table(headers + ["prune peak RSS GB", "prune s", "verified"], lines, title=title))
    verdict = "met" if ok else "MISSED"
    print(f"goal: every model verified, prefill and decode >= {args.goal}x faster at ratio 0.5: {verdict}")
    return 0 if ok or args.no_fail else 1


if __name__ == "__main__":
    sys.exit(main())
