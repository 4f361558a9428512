"""finetune --unfold-bn, --reinit (with --scratch-budget) and --group-lasso on tiny models."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from recovery_data import brightest_channel_samples, tiny_cnn

torch = pytest.importorskip("torch")

from onnxprune.analysis.analyze import load_and_analyze  # noqa: E402
from onnxprune.api import prune  # noqa: E402
from onnxprune.cli import main  # noqa: E402
from onnxprune.measure.calibration import load_calibration  # noqa: E402
from onnxprune.recover.finetune import finetune  # noqa: E402
from onnxprune.recover.group_lasso import GroupLasso  # noqa: E402
from onnxprune.recover.practices import Practices  # noqa: E402
from onnxprune.recover.reinit import reinitialize, scratch_epochs  # noqa: E402
from onnxprune.recover.unfold_bn import fold_batchnorm, folded_layers, unfold_batchnorm  # noqa: E402
from onnxprune.torch import export_onnx, to_torch  # noqa: E402

CLASSES = 3


class _Residual(torch.nn.Module):
    """conv -> relu -> conv -> (+ skip) -> relu -> pool -> fc -> relu -> fc: BN-less, as exported
    after folding (every conv and the hidden fc have a bias)."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, CLASSES)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(self.conv(h) + h)
        h = h.mean((2, 3))
        return self.fc2(torch.relu(self.fc1(h)))


def _samples(n: int, seed: int):
    return brightest_channel_samples(n, seed, CLASSES)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("practices")
    torch.manual_seed(0)
    with torch.no_grad():
        net = _Residual().eval()
        for p in net.parameters():  # biases with an offset, as folded BNs leave them
            p.add_(0.3 * torch.randn_like(p))
    original = root / "original.onnx"
    export_onnx(net, torch.zeros(1, 3, 8, 8), original)
    pruned = root / "pruned.onnx"
    onnx.save(prune(original, "l1", 0.5).model, str(pruned))
    x, y = _samples(192, 1)
    np.savez(root / "train.npz", x=x, y=y)
    return {"root": root, "original": original, "pruned": pruned, "train": root / "train.npz", "x": x}


def _outputs(module, x):
    with torch.no_grad():
        return module.eval()(torch.from_numpy(x)).numpy()


def test_folded_layers_found(setup):
    model = load_and_analyze(setup["pruned"]).model
    kinds = sorted(n.op_type for n in folded_layers(model))
    assert kinds == ["Conv", "Conv", "Gemm"]  # both convs and the hidden fc; not the classifier


def test_unfolded_module_computes_the_same(setup):
    model = load_and_analyze(setup["pruned"]).model
    module = to_torch(model)
    before = _outputs(module, setup["x"][:32])
    data = load_calibration(setup["train"], model, samples=None, batch_size=64)
    unfolded = unfold_batchnorm(module, model, data)
    assert len(unfolded) == 3
    assert sum(op == "BatchNormalization" for op, *_ in module.graph_nodes) == 3
    np.testing.assert_allclose(_outputs(module, setup["x"][:32]), before, rtol=0, atol=1e-5)
    module.train()  # batch statistics: the output moves, the running statistics are updated
    mean = module.onnx_tensors[unfolded[0].mean].clone()
    with torch.no_grad():
        module(torch.from_numpy(setup["x"][:32]) * 2)
    assert not torch.allclose(module.onnx_tensors[unfolded[0].mean], mean)


def test_fold_back_keeps_the_function(setup):
    model = load_and_analyze(setup["pruned"]).model
    module = to_torch(model)
    data = load_calibration(setup["train"], model, samples=None, batch_size=64)
    unfolded = unfold_batchnorm(module, model, data)
    torch.manual_seed(1)
    with torch.no_grad():  # as if trained: BN parameters and statistics anywhere
        for names in unfolded:
            for name in (names.scale, names.bias, names.mean):
                module.onnx_tensors[name].add_(0.5 * torch.randn_like(module.onnx_tensors[name]))
            module.onnx_tensors[names.var].mul_(torch.rand_like(module.onnx_tensors[names.var]) + 0.5)
    with_bn = _outputs(module, setup["x"][:32])
    fold_batchnorm(module, unfolded)
    assert not any(op == "BatchNormalization" for op, *_ in module.graph_nodes)
    assert not module.batch_statistics
    np.testing.assert_allclose(_outputs(module, setup["x"][:32]), with_bn, rtol=1e-4, atol=1e-4)


def _ort(model: onnx.ModelProto, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_finetune_unfold_bn_exports_without_batchnorm(setup, tmp_path):
    out = tmp_path / "tuned.onnx"
    practices = Practices(unfold_bn=True)
    result = finetune(setup["pruned"], setup["train"], epochs=1, batch_size=32, practices=practices, output=out)
    written = onnx.load(str(out))
    assert not any(n.op_type == "BatchNormalization" for n in written.graph.node)
    np.testing.assert_allclose(_ort(written, setup["x"][:16]), _outputs(result.module, setup["x"][:16]), atol=1e-4)
    assert not np.allclose(_ort(written, setup["x"][:16]), _ort(onnx.load(str(setup["pruned"])), setup["x"][:16]))


def test_default_clip_norm_follows_batchnorm(setup, monkeypatch):
    """Without --clip-grad, the folded graph is clipped at norm 1 and a run with BN put back at 5;
    an explicit norm wins."""
    seen = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording(params, max_norm, *args, **kwargs):
        seen.append(float(max_norm))
        return clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    for practices, given in ((Practices(), None), (Practices(unfold_bn=True), None), (Practices(unfold_bn=True), 2.0)):
        seen.clear()
        finetune(setup["pruned"], setup["train"], epochs=1, batch_size=96, practices=practices, clip_grad=given)
        expected = given if given is not None else (5.0 if practices.unfold_bn else 1.0)
        assert seen == [expected, expected]


def test_resume_with_practices_equals_uninterrupted(setup, tmp_path):
    kwargs = {"epochs": 2, "batch_size": 32, "seed": 3}

    def practices():
        return Practices(unfold_bn=True, group_lasso=0.05)

    full = finetune(setup["pruned"], setup["train"], practices=practices(), **kwargs)

    class Stop(Exception):
        pass

    def stop(entry):
        if entry["epoch"] == 1:
            raise Stop

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Stop):
        finetune(
            setup["pruned"], setup["train"], practices=practices(), checkpoint_dir=ckpt, on_epoch_end=stop, **kwargs
        )
    resumed = finetune(
        setup["pruned"], setup["train"], practices=practices(), checkpoint_dir=ckpt, resume=True, **kwargs
    )
    np.testing.assert_allclose(
        _outputs(resumed.module, setup["x"][:16]), _outputs(full.module, setup["x"][:16]), rtol=1e-5, atol=1e-6
    )
    assert resumed.history[-1]["lasso_collapsed"] == full.history[-1]["lasso_collapsed"]
    with pytest.raises(Exception, match="--unfold-bn, --reinit and --group-lasso must match"):
        finetune(setup["pruned"], setup["train"], checkpoint_dir=ckpt, resume=True, **kwargs)


def test_reinit_changes_weights_and_keeps_shapes(setup):
    model = load_and_analyze(setup["pruned"]).model
    module = to_torch(model)
    before = {k: v.detach().clone() for k, v in module.onnx_parameters.items()}
    torch.manual_seed(0)
    changed = reinitialize(module)
    after = module.onnx_parameters
    assert sorted(changed) == sorted(before)
    for name, value in before.items():
        assert after[name].shape == value.shape
        if value.dim() > 1:  # weights are redrawn
            assert not torch.allclose(after[name], value), name
    conv_weights = [ins[1] for op, ins, *_ in module.graph_nodes if op == "Conv"]
    for name in conv_weights:  # Kaiming normal, fan-out: std sqrt(2 / (out * k * k))
        w = after[name]
        expected = (2.0 / (w.shape[0] * w[0, 0].numel())) ** 0.5
        assert 0.5 * expected < float(w.std()) < 1.5 * expected
    for op, ins, *_ in module.graph_nodes:
        if op == "Conv":
            assert float(after[ins[2]].abs().max()) == 0.0  # conv biases 0 (a BN follows)


def test_reinit_finetune_trains_from_scratch(setup, tmp_path):
    out = tmp_path / "scratch.onnx"
    result = finetune(
        setup["pruned"], setup["train"], epochs=1, batch_size=32, practices=Practices(reinit=True), output=out
    )
    written = onnx.load(str(out))
    assert not any(n.op_type == "BatchNormalization" for n in written.graph.node)
    shapes = lambda m: sorted(tuple(sorted(t.dims)) for t in m.graph.initializer if len(t.dims) > 1)  # noqa: E731
    assert shapes(written) == shapes(onnx.load(str(setup["pruned"])))
    assert np.isfinite(result.history[-1]["train_loss"])


def test_scratch_budget_arithmetic():
    assert scratch_epochs(10, "epochs", 100, 50) == 10
    assert scratch_epochs(10, "flops", 100, 80) == 13  # 10 x 1.25 = 12.5, rounded up
    assert scratch_epochs(10, "flops", 100, 50) == 20
    assert scratch_epochs(10, "flops", 100, 10) == 20  # at most doubled
    assert scratch_epochs(3, "flops", 100, 100) == 3


def test_cli_scratch_budget(setup, tmp_path, capsys):
    out = tmp_path / "b.onnx"
    args = ["finetune", str(setup["pruned"]), "--data", str(setup["train"]), "--epochs", "1", "--reinit"]
    args += ["--scratch-budget", "flops", "--original", str(setup["original"]), "--batch-size", "64", "-o", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Scratch-B budget: 2 epochs" in printed  # the pruned model has about half the MACs
    assert "fine-tuned 2 epochs" in printed
    no_reinit = ["finetune", str(setup["pruned"]), "--data", str(setup["train"]), "--scratch-budget", "flops"]
    assert main(no_reinit + ["--original", str(setup["original"])]) == 2
    assert main(no_reinit + ["--reinit"]) == 2


def test_group_lasso_zeroes_whole_groups(setup):
    model = load_and_analyze(setup["original"]).model
    groups = load_and_analyze(model).groups
    module = to_torch(model)
    lasso = GroupLasso.of(module, groups, strength=1.0)
    penalized = {m.tensor.data_ptr() for m in lasso.members}
    free = {n: p.detach().clone() for n, p in module.onnx_parameters.items() if p.data_ptr() not in penalized}
    assert free  # e.g. the classifier's bias: its group reaches the output
    for _ in range(20):
        lasso.step(lr=0.5)
    assert float(lasso.norms().max()) == 0.0  # every channel, all its members' slices together
    for name, value in free.items():
        assert torch.equal(module.onnx_parameters[name], value), name
    assert lasso.metrics() == {"lasso_penalty": 0.0, "lasso_collapsed": 1.0}


def test_group_lasso_collapses_some_channels_in_training(setup):
    result = finetune(setup["original"], setup["train"], epochs=2, batch_size=32, practices=Practices(group_lasso=20.0))
    entry = result.history[-1]
    assert 0.0 < entry["lasso_collapsed"] <= 1.0
    module = result.module
    groups = load_and_analyze(setup["original"]).groups
    lasso = GroupLasso.of(module, groups, strength=20.0)
    norms = lasso.norms().numpy()
    dead = norms <= 1e-3 * np.median(norms)
    assert dead.mean() == pytest.approx(entry["lasso_collapsed"])
    assert np.all(norms[dead] == 0.0)  # collapsed channels are exactly zero in every member


def _prunable_channels(model) -> int:
    return sum(g.channels for g in load_and_analyze(model).groups if g.prunable)


def test_group_lasso_writes_the_input_graph(setup, tmp_path, capsys):
    """`finetune --group-lasso` writes the input graph holding the trained weights, so the analysis
    of the written model finds the input's 16 prunable channels and the channels the training saw
    collapse. (The torch re-export it used to write traced the Reshape target into a run-time
    Shape-Gather-Reshape-Unsqueeze-Concat-Reshape-Split-Squeeze-Unsqueeze-Concat chain that shape
    inference cannot follow, so the 8 channels before the classifier froze: the shared ResNet-20
    analysed to 336 channels instead of 400.)"""
    torch.manual_seed(0)
    original, out = tmp_path / "flattening.onnx", tmp_path / "sparse.onnx"
    export_onnx(tiny_cnn(8, CLASSES, reshape=True).eval(), torch.zeros(1, 3, 8, 8), original)
    assert _prunable_channels(original) == 16
    args = ["finetune", str(original), "--data", str(setup["train"]), "--epochs", "2", "--batch-size", "32"]
    assert main(args + ["--group-lasso", "8", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    written, source = onnx.load(str(out)), load_and_analyze(original).model
    assert [n.op_type for n in written.graph.node] == [n.op_type for n in source.graph.node]
    assert [t.name for t in written.graph.initializer] == [t.name for t in source.graph.initializer]
    analysis = load_and_analyze(written)
    assert sum(g.channels for g in analysis.groups if g.prunable) == 16
    dead = GroupLasso.of(to_torch(analysis.model), analysis.groups, 1.0).collapsed()
    assert f"collapsed {dead.mean():.1%}" in printed and 0 < dead.sum() < 16  # 7 of 16 here


def _cli_finetune(setup, out, nproc: int | None, *extra: str):
    args = ["finetune", str(setup["pruned"]), "--data", str(setup["train"]), "--epochs", "2", "--batch-size", "16"]
    prefix = [sys.executable, "-m", "onnxprune"]
    if nproc is not None:
        prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        prefix += ["-m", "onnxprune"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        prefix + args + list(extra) + ["-o", str(out)], capture_output=True, text=True, env=env, timeout=300
    )


def test_practices_under_two_gloo_processes_equal_one(setup, tmp_path):
    """Unfolded BNs normalize with the statistics of the global batch (summed over the ranks) and
    the group-lasso step is the same on every rank, so two processes train like one."""
    flags = ("--unfold-bn", "--group-lasso", "0.05")
    single = _cli_finetune(setup, tmp_path / "single.onnx", None, *flags)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = _cli_finetune(setup, tmp_path / "ddp.onnx", 2, *flags)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    one, two = (onnx.load(str(tmp_path / f"{n}.onnx")) for n in ("single", "ddp"))
    assert not any(n.op_type == "BatchNormalization" for n in two.graph.node)
    x = setup["x"][:16]
    np.testing.assert_allclose(_ort(two, x), _ort(one, x), rtol=1e-3, atol=1e-4)
    assert "collapsed" in single.stdout
