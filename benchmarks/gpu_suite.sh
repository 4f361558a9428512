#!/usr/bin/env bash
# Every GPU check in one go, for a machine with one NVIDIA GPU (H100/H200: about 8 minutes),
# writing one JSON (onnxprune-gpu-suite/1):
#
#   1. export ResNet-50, MobileNetV2 and ViT-S/16 (224x224, dynamic batch) and prune each at
#      ratio 0.5 (L1, verified on CPU);
#   2. `onnxprune bench` before/after at batch 1/8/64 on the CUDA and on the TensorRT execution
#      provider (IO binding, interleaved blocks);
#   3. `--round-to auto --ep cuda` on MobileNetV2 (counts timed on the GPU), benched against
#      `--round-to 1` and the unpruned model;
#   4. the ResNet-56 L1 row of the published CIFAR-10 table (benchmarks/reproduce_table.py: ~50 %
#      FLOPs, reconstruction, 30 epochs of fine-tuning with distillation on the GPU).
#
#   5. with --training (not in the 8 minutes): the CIFAR-10 rows of issue 17 on ResNet-56 at ~50 %
#      FLOPs, L1, top-1 on test1000 per epoch: fine-tuning with BN folded, with --unfold-bn,
#      from scratch (--reinit, Scratch-E and Scratch-B), and iterative pruning (--steps 3), with
#      TRAIN_EPOCHS (default 40) epochs for fine-tuning and 4x that from scratch.
#
# A step that fails is logged and the suite goes on; the exit status is non-zero when any failed.
#
#   bash benchmarks/gpu_suite.sh [--out FILE] [--work DIR]       # on the GPU machine
#   bash benchmarks/gpu_suite.sh --dry-run                       # on a CPU: --ep cpu, 1 epoch, small
#
# Environment: PYTHON (default .venv/bin/python, else python3), ONNXPRUNE (default: $PYTHON -m onnxprune).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=benchmarks/out/gpu_suite.json
WORK=
DRY=0
TRAINING=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        --training) TRAINING=1; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "gpu_suite.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
ONNXPRUNE=${ONNXPRUNE:-"$PYTHON -m onnxprune"}
if [ "$DRY" = 1 ]; then
    EPS="cpu"; AUTO_EP=cpu; BATCHES=1,2; ITERS=10; WARMUP=2; EPOCHS=1; TRAIN_IMAGES=1000; DEVICE=cpu
    NO_FAIL=--no-fail  # a 1-epoch run cannot meet the published row: check that it runs
    TRAIN_EPOCHS=${TRAIN_EPOCHS:-1}; SCRATCH_EPOCHS=1; TRAIN_FOLDER_IMAGES=256
else
    EPS="cuda tensorrt"; AUTO_EP=cuda; BATCHES=1,8,64; ITERS=100; WARMUP=10; EPOCHS=30; TRAIN_IMAGES=50000; DEVICE=cuda; NO_FAIL=
    TRAIN_EPOCHS=${TRAIN_EPOCHS:-40}; SCRATCH_EPOCHS=$((4 * TRAIN_EPOCHS)); TRAIN_FOLDER_IMAGES=50000
fi
WORK=${WORK:-$(mktemp -d -t onnxprune-gpu-suite.XXXXXX)}
mkdir -p "$WORK" "$(dirname "$OUT")"
: > "$WORK/steps.tsv"

# step NAME COMMAND...: run it, log NAME, exit status and seconds; stdout goes to $WORK/NAME.log.
step() {
    local name=$1; shift
    local start=$SECONDS
    echo "== $name: $*"
    "$@" > "$WORK/$name.log" 2>&1
    local status=$?
    printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" >> "$WORK/steps.tsv"
    tail -n 25 "$WORK/$name.log"
    [ "$status" = 0 ] || echo "!! $name failed (exit $status), log: $WORK/$name.log"
}

# bench_json NAME MODEL... : `onnxprune bench --json` into $WORK/NAME.json
bench_json() {
    local name=$1 ep=$2; shift 2
    $ONNXPRUNE bench "$@" --ep "$ep" --batch "$BATCHES" --iters "$ITERS" --warmup "$WARMUP" --json > "$WORK/$name.json"
}

MODELS="resnet50 mobilenetv2 vit_s"
step export $PYTHON benchmarks/gpu_models.py export "$WORK" --models "${MODELS// /,}"
for model in $MODELS; do
    step "prune-$model" $ONNXPRUNE "$WORK/$model.onnx" --ratio 0.5 -o "$WORK/$model.pruned.onnx" \
        --report "$WORK/prune-$model.json"
done
for ep in $EPS; do
    for model in $MODELS; do
        step "bench-$ep-$model" bench_json "bench-$ep-$model" "$ep" "$WORK/$model.onnx" "$WORK/$model.pruned.onnx"
    done
done
step round-auto $ONNXPRUNE "$WORK/mobilenetv2.onnx" --ratio 0.5 --round-to auto --ep "$AUTO_EP" \
    -o "$WORK/mobilenetv2.auto.onnx" --report "$WORK/prune-mobilenetv2-auto.json"
step "bench-$AUTO_EP-round-auto" bench_json "bench-$AUTO_EP-round-auto" "$AUTO_EP" \
    "$WORK/mobilenetv2.onnx" "$WORK/mobilenetv2.pruned.onnx" "$WORK/mobilenetv2.auto.onnx"
step reproduce-resnet56-l1 $PYTHON benchmarks/reproduce_table.py --models resnet56 --criteria l1 \
    --epochs "$EPOCHS" --train-images "$TRAIN_IMAGES" --device "$DEVICE" --name gpu_suite_reproduce $NO_FAIL
cp benchmarks/out/gpu_suite_reproduce.json "$WORK/reproduce-resnet56-l1.json" 2>/dev/null

if [ "$TRAINING" = 1 ]; then
    R56=../shared/data/cifar10/resnet56.onnx
    VAL=../shared/data/cifar10/test1000.npz
    P="scale=255,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=auto"
    TRAIN=$($PYTHON benchmarks/gpu_models.py train-folder "$TRAIN_FOLDER_IMAGES")
    FT=(--data "$TRAIN" --val "$VAL" --preprocess "$P" --batch-size 128)
    step train-prune $ONNXPRUNE "$R56" --target-flops 0.5 -o "$WORK/r56p.onnx" --report "$WORK/train-prune.json"
    step train-finetune-folded $ONNXPRUNE finetune "$WORK/r56p.onnx" "${FT[@]}" --epochs "$TRAIN_EPOCHS" \
        --teacher "$R56" -o "$WORK/r56.ft-folded.onnx"
    step train-finetune-unfold-bn $ONNXPRUNE finetune "$WORK/r56p.onnx" "${FT[@]}" --epochs "$TRAIN_EPOCHS" \
        --teacher "$R56" --unfold-bn -o "$WORK/r56.ft-unfold.onnx"
    step train-scratch-e $ONNXPRUNE finetune "$WORK/r56p.onnx" "${FT[@]}" --epochs "$SCRATCH_EPOCHS" --lr 0.1 \
        --reinit -o "$WORK/r56.scratch-e.onnx"
    step train-scratch-b $ONNXPRUNE finetune "$WORK/r56p.onnx" "${FT[@]}" --epochs "$SCRATCH_EPOCHS" --lr 0.1 \
        --reinit --scratch-budget flops --original "$R56" -o "$WORK/r56.scratch-b.onnx"
    step train-iterative $ONNXPRUNE "$R56" --target-flops 0.5 --steps 3 --finetune-data "$TRAIN" --val "$VAL" \
        --preprocess "$P" --finetune-epochs "$TRAIN_EPOCHS" -o "$WORK/r56.iterative.onnx" \
        --report "$WORK/train-iterative.json"
fi

$PYTHON benchmarks/gpu_models.py merge "$WORK" "$OUT"
