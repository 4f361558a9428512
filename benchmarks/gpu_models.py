"""The GPU suite's helper (``benchmarks/gpu_suite.sh``): export its models, merge its results.

    python benchmarks/gpu_models.py export DIR [--models resnet50,mobilenetv2,vit_s]
    python benchmarks/gpu_models.py merge DIR OUT.json
    python benchmarks/gpu_models.py train-folder IMAGES

``export`` writes ``DIR/<name>.onnx`` for the ImageNet-size models timed on the GPU: the bottleneck
ResNet-50 and MobileNetV2 of ``benchmarks/common.py`` and the ViT-S/16 of ``benchmarks/vit.py``
(seeded weights, TorchScript exporter, dynamic batch, 224x224). ``merge`` collects every step's
JSON (``DIR/*.json``) and the step log ``DIR/steps.tsv`` (name, exit status, seconds) into one
document, ``onnxprune-gpu-suite/1``. ``train-folder`` prints the CIFAR-10 JPEG ``train/`` folder
(extracted once from ``../shared``) or a folder of links to its first IMAGES images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402
from criteria import DEFAULT_CACHE, extract_train  # noqa: E402
from reproduce_table import SHARED, train_subset  # noqa: E402
from vit import export_vit_s  # noqa: E402

MODELS = ("resnet50", "mobilenetv2", "vit_s")


def export_model(name: str, folder: Path) -> Path:
    """Export one suite model into `folder`; returns its path."""
    if name == "resnet50":
        return common.export(common.build_resnet50(), common.RESNET50_INPUT, folder / "resnet50.onnx")
    if name == "mobilenetv2":
        return common.export(common.build_mobilenet_v2(), (1, 3, 224, 224), folder / "mobilenetv2.onnx")
    return export_vit_s(folder / "vit_s.onnx")


def merge(folder: Path) -> dict:
    """One JSON document from the steps' log and JSON outputs in `folder`."""
    steps = []
    log = folder / "steps.tsv"
    for line in log.read_text().splitlines() if log.is_file() else []:
        name, status, seconds = line.split("\t")
        steps.append({"step": name, "exit_status": int(status), "seconds": float(seconds)})
    results = {}
    for path in sorted(p for p in folder.glob("*.json") if not p.name.endswith(".plan.json")):
        try:
            results[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            results[path.stem] = {"error": f"not JSON: {error}"}
    return {
        "format": "onnxprune-gpu-suite/1",
        "environment": common.environment(),
        "ok": all(step["exit_status"] == 0 for step in steps),
        "seconds": round(sum(step["seconds"] for step in steps), 1),
        "steps": steps,
        "results": results,
    }


def main(argv=None) -> int:
    """`export` or `merge`, see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="export the suite's models")
    export.add_argument("folder", type=Path)
    export.add_argument("--models", default=",".join(MODELS))
    joined = commands.add_parser("merge", help="merge the steps' results into one JSON")
    joined.add_argument("folder", type=Path)
    joined.add_argument("output", type=Path)
    folder = commands.add_parser("train-folder", help="print the CIFAR-10 training folder (or a subset)")
    folder.add_argument("images", type=int)
    args = parser.parse_args(argv)
    if args.command == "train-folder":
        print(train_subset(extract_train(SHARED / "cifar10-jpg.tar.gz", DEFAULT_CACHE), args.images))
        return 0
    if args.command == "export":
        args.folder.mkdir(parents=True, exist_ok=True)
        for name in args.models.split(","):
            print(export_model(name.strip(), args.folder))
        return 0
    doc = merge(args.folder)
    args.output.write_text(json.dumps(doc, indent=2))
    failed = [step["step"] for step in doc["steps"] if step["exit_status"] != 0]
    print(f"{args.output}: {len(doc['steps'])} steps in {doc['seconds']:.0f} s; failed: {', '.join(failed) or 'none'}")
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
