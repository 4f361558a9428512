"""Calibration data: .npz/.npy files and image folders become batches of model inputs (and labels),
preprocessed as specified; bad input is one clear InputError; the command line needs --calib for
the data-driven criteria."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import GraphBuilder, conv_chain
from PIL import Image

import onnxprune
from onnxprune.cli import main
from onnxprune.measure.calibration import Preprocess, load_calibration


def identity_model(shape=("N", 3, 6, 6), name: str = "img") -> onnx.ModelProto:
    """input `name` -> Relu: enough for load_calibration, which reads the input's name and shape."""
    g = GraphBuilder(shape=shape)
    g.inputs[0].name = name
    return g.model(g.op("Relu", name))


def collect(data):
    """All batches concatenated: (inputs, labels or None, batch sizes)."""
    xs, ys, sizes = [], [], []
    for feeds, labels in data.batches():
        (x,) = feeds.values()
        xs.append(x)
        sizes.append(len(x))
        if labels is not None:
            ys.append(labels)
    return np.concatenate(xs), (np.concatenate(ys) if ys else None), sizes


def numbered(count: int, shape=(3, 6, 6)) -> np.ndarray:
    """Sample i is filled with the value i."""
    return np.broadcast_to(np.arange(count, dtype=np.float32).reshape(-1, 1, 1, 1), (count,) + shape).copy()


# --- .npz / .npy -------------------------------------------------------------------------------


def test_npz_array_named_like_the_input_wins(tmp_path):
    x = numbered(5)
    np.savez(tmp_path / "c.npz", x=x + 100, img=x, y=np.arange(5) % 2)
    data = load_calibration(tmp_path / "c.npz", identity_model())
    got, labels, _ = collect(data)
    np.testing.assert_array_equal(got, x)
    np.testing.assert_array_equal(labels, [0, 1, 0, 1, 0])
    assert data.samples == 5 and data.labels_available


def test_npz_x_and_y(tmp_path):
    x = numbered(7)
    np.savez(tmp_path / "c.npz", y=np.arange(7), x=x)
    data = load_calibration(tmp_path / "c.npz", identity_model(), batch_size=3)
    got, labels, sizes = collect(data)
    assert got.dtype == np.float32 and sizes == [3, 3, 1] and data.num_batches == 3
    np.testing.assert_array_equal(got, x)
    np.testing.assert_array_equal(labels, np.arange(7))


def test_npz_without_labels_or_known_names_takes_the_first_array(tmp_path):
    np.savez(tmp_path / "c.npz", data=numbered(4))
    data = load_calibration(tmp_path / "c.npz", identity_model())
    got, labels, _ = collect(data)
    assert labels is None and not data.labels_available
    np.testing.assert_array_equal(got, numbered(4))


def test_float64_arrays_become_the_input_dtype(tmp_path):
    np.savez(tmp_path / "c.npz", x=numbered(3).astype(np.float64))
    got, _, _ = collect(load_calibration(tmp_path / "c.npz", identity_model()))
    assert got.dtype == np.float32


def test_npy_is_memory_mapped(tmp_path):
    np.save(tmp_path / "c.npy", numbered(9))
    data = load_calibration(tmp_path / "c.npy", identity_model(), batch_size=4)
    assert isinstance(data._arrays[0], np.memmap) and not data.labels_available
    got, labels, sizes = collect(data)
    assert sizes == [4, 4, 1] and labels is None
    np.testing.assert_array_equal(got, numbered(9))


@pytest.mark.parametrize("count,batch", [(10, 4), (8, 4), (1, 64), (64, 64), (65, 64)])
def test_batches_cover_every_sample_exactly_once(tmp_path, count, batch):
    np.savez(tmp_path / "c.npz", x=numbered(count), y=np.arange(count))
    data = load_calibration(tmp_path / "c.npz", identity_model(), batch_size=batch)
    got, labels, sizes = collect(data)
    assert len(sizes) == data.num_batches == -(-count // batch) and all(s == batch for s in sizes[:-1])
    np.testing.assert_array_equal(got[:, 0, 0, 0], np.arange(count))
    np.testing.assert_array_equal(labels, np.arange(count))


def test_calib_samples_limits_the_set(tmp_path):
    np.savez(tmp_path / "c.npz", x=numbered(10), y=np.arange(10))
    data = load_calibration(tmp_path / "c.npz", identity_model(), samples=3, batch_size=2)
    got, labels, sizes = collect(data)
    assert data.samples == 3 and sizes == [2, 1]
    np.testing.assert_array_equal(labels, [0, 1, 2])
    assert load_calibration(tmp_path / "c.npz", identity_model(), samples=50).samples == 10
    assert load_calibration(tmp_path / "c.npz", identity_model(), samples=None).samples == 10


# --- uint8 arrays and preprocessing ------------------------------------------------------------

SPEC = "scale=255,mean=0.5/0.4/0.3,std=0.2/0.25/0.5"


def by_hand(images_nhwc: np.ndarray) -> np.ndarray:
    """(x / 255 - mean) / std per channel, NHWC -> NCHW."""
    x = images_nhwc.astype(np.float64) / 255
    x = (x - np.array([0.5, 0.4, 0.3])) / np.array([0.2, 0.25, 0.5])
    return x.transpose(0, 3, 1, 2)


def test_uint8_nhwc_arrays_are_preprocessed_into_nchw(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "c.npz", x=images)
    got, _, _ = collect(load_calibration(tmp_path / "c.npz", identity_model(), preprocess=SPEC, batch_size=2))
    assert got.shape == (5, 3, 6, 6) and got.dtype == np.float32
    np.testing.assert_allclose(got, by_hand(images), rtol=1e-6, atol=1e-6)


def test_uint8_nchw_arrays_are_recognized(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "c.npy", images.transpose(0, 3, 1, 2))
    got, _, _ = collect(load_calibration(tmp_path / "c.npy", identity_model(), preprocess=Preprocess.parse(SPEC)))
    np.testing.assert_allclose(got, by_hand(images), rtol=1e-6, atol=1e-6)


def test_layout_follows_an_nhwc_model_or_the_spec(tmp_path):
    images = np.random.default_rng(2).integers(0, 256, (3, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "c.npz", x=images)
    nhwc = identity_model(shape=("N", 6, 6, 3))
    got, _, _ = collect(load_calibration(tmp_path / "c.npz", nhwc, preprocess=SPEC))
    np.testing.assert_allclose(got, by_hand(images).transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)
    dynamic = identity_model(shape=("N", "C", "H", "W"))  # auto cannot tell: NHWC; the spec decides
    got, _, _ = collect(load_calibration(tmp_path / "c.npz", dynamic, preprocess=SPEC + ",layout=nchw"))
    assert got.shape == (3, 3, 6, 6)


def test_default_preprocess_scales_by_255():
    spec = Preprocess.parse(None)
    assert (spec.resize, spec.scale, spec.mean, spec.std, spec.layout) == (None, 255.0, None, None, "auto")
    out = spec.apply(np.full((1, 2, 2, 3), 51, np.uint8), channels_first=True)
    np.testing.assert_allclose(out, np.full((1, 3, 2, 2), 0.2), rtol=1e-6)
    parsed = Preprocess.parse("resize=32, scale=1,mean=1,std=2/3/4,layout=nhwc")
    assert (parsed.resize, parsed.scale, parsed.mean, parsed.std, parsed.layout) == (
        32,
        1.0,
        (1.0,),
        (2.0, 3.0, 4.0),
        "nhwc",
    )


# --- image folders -----------------------------------------------------------------------------


def write_folder(root, per_class=3, size=(6, 6), suffix=".png"):
    """class_a/, class_b/ with solid-colour-plus-gradient images; returns {file name: (pixels, label)}."""
    rng = np.random.default_rng(3)
    expected = {}
    for label, name in enumerate(["class_a", "class_b"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            path = root / name / f"img{i}{suffix}"
            Image.fromarray(pixels).save(path)
            expected[f"{name}/{path.name}"] = (pixels, label)
    (root / "class_a" / "notes.txt").write_text("not an image")
    (root / "README.txt").write_text("not a class")
    return expected


def test_image_folder_labels_values_and_seeded_order(tmp_path):
    expected = write_folder(tmp_path / "images")
    model = identity_model()
    data = load_calibration(tmp_path / "images", model, preprocess=SPEC, batch_size=4, seed=5)
    assert data.samples == 6 and data.labels_available
    got, labels, sizes = collect(data)
    assert sizes == [4, 2] and got.shape == (6, 3, 6, 6)
    names = [f"{p.parent.name}/{p.name}" for p, _ in data._files]
    assert sorted(names) == sorted(expected)
    for name, x, label in zip(names, got, labels):
        pixels, want = expected[name]
        assert label == want
        np.testing.assert_allclose(x, by_hand(pixels[None])[0], rtol=1e-6, atol=1e-6)
    again = load_calibration(tmp_path / "images", model, preprocess=SPEC, batch_size=4, seed=5)
    np.testing.assert_array_equal(collect(again)[1], labels)
    orders = {tuple(str(p) for p, _ in load_calibration(tmp_path / "images", model, seed=s)._files) for s in range(4)}
    assert len(orders) > 1, "the seed must change the order"


def test_image_folder_resize_and_jpeg(tmp_path):
    write_folder(tmp_path / "images", per_class=2, size=(10, 8), suffix=".jpg")
    data = load_calibration(tmp_path / "images", identity_model(), preprocess="resize=6")
    got, labels, _ = collect(data)
    assert got.shape == (4, 3, 6, 6) and sorted(labels) == [0, 0, 1, 1]
    for (path, _), x in zip(data._files, got):
        with Image.open(path) as image:
            want = np.asarray(image.convert("RGB").resize((6, 6), Image.BILINEAR)).transpose(2, 0, 1) / 255
        np.testing.assert_allclose(x, want, atol=1e-6)


def test_image_folder_samples_limit(tmp_path):
    write_folder(tmp_path / "images", per_class=4)
    full = load_calibration(tmp_path / "images", identity_model(), seed=1)
    part = load_calibration(tmp_path / "images", identity_model(), samples=3, seed=1)
    assert part.samples == 3
    np.testing.assert_array_equal(collect(part)[0], collect(full)[0][:3])


# --- bad input ---------------------------------------------------------------------------------


def bad(path, match, model=None, **options):
    with pytest.raises(onnxprune.InputError, match=match) as info:
        load_calibration(path, model or identity_model(), **options)
    assert "\n" not in str(info.value)


def test_missing_path(tmp_path):
    bad(tmp_path / "nope.npz", "no such file or folder")


def test_empty_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    bad(tmp_path / "empty", "no images in class sub-folders")
    (tmp_path / "classes" / "a").mkdir(parents=True)
    (tmp_path / "classes" / "a" / "x.txt").write_text("")
    bad(tmp_path / "classes", "no images in class sub-folders")


def test_unreadable_files(tmp_path):
    for name in ("junk.npz", "junk.npy"):
        (tmp_path / name).write_bytes(b"this is not numpy")
        bad(tmp_path / name, "not a readable .npz/.npy file")
    np.savez(tmp_path / "empty.npz")
    bad(tmp_path / "empty.npz", "holds no arrays")
    np.savez(tmp_path / "none.npz", x=np.zeros((0, 3, 6, 6), np.float32))
    bad(tmp_path / "none.npz", "no samples found")
    (tmp_path / "images" / "a").mkdir(parents=True)
    (tmp_path / "images" / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    bad(tmp_path / "images", "cannot read image .*broken.jpg")


def test_samples_that_do_not_fit_the_model(tmp_path):
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 3, 5, 5), np.float32))
    bad(tmp_path / "c.npz", r"samples of shape 3x5x5 do not fit model input 'img' \(3x6x6\)")
    write_folder(tmp_path / "images", per_class=1, size=(8, 8))
    bad(tmp_path / "images", "do not fit", preprocess="resize=7")


def test_images_of_different_sizes_need_resize(tmp_path):
    for i, size in enumerate([(6, 6), (6, 6), (7, 6)]):
        write_folder(tmp_path / f"part{i}", per_class=1, size=size)
    for i in range(3):  # gather into one set: class_a/ holds three images, one of another size
        for f in (tmp_path / f"part{i}" / "class_a").glob("*.png"):
            (tmp_path / "images" / "class_a").mkdir(parents=True, exist_ok=True)
            f.rename(tmp_path / "images" / "class_a" / f"{i}{f.name}")
    any_size = identity_model(shape=("N", 3, "H", "W"))
    data = load_calibration(tmp_path / "images", any_size, batch_size=8)
    with pytest.raises(onnxprune.InputError, match="different sizes.*resize=SIZE"):
        collect(data)
    assert collect(load_calibration(tmp_path / "images", identity_model(), preprocess="resize=6"))[0].shape[0] == 3


@pytest.mark.parametrize("spec", ["resize=big", "resize", "colour=1", "layout=chw", "mean=a/b/c", "std="])
def test_bad_preprocess_spec(spec):
    with pytest.raises(onnxprune.InputError, match=r"preprocess: cannot read .*keys: resize=INT"):
        Preprocess.parse(spec)


def test_mean_with_the_wrong_channel_count(tmp_path):
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 6, 6, 3), np.uint8))
    bad(tmp_path / "c.npz", "mean has 2 values for images with 3 channels", preprocess="mean=0.5/0.5")


# --- command line and API ----------------------------------------------------------------------


@pytest.fixture()
def tiny(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(conv_chain(lambda g, t: g.op("Relu", t), c=8), path)
    np.savez(
        tmp_path / "calib.npz",
        x=np.random.default_rng(0).standard_normal((20, 4, 8, 8)).astype(np.float32),
        y=np.arange(20) % 3,
    )
    return path


def test_cli_data_criterion_without_calib_is_one_line_exit_2(tiny, capsys):
    code = main([str(tiny), "--criterion", "apoz"])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1
    assert "criterion apoz needs calibration data: add --calib PATH" in err
    assert not (tiny.parent / "tiny.pruned.onnx").exists()


def test_cli_bad_calib_is_one_line_exit_2(tiny, capsys):
    code = main([str(tiny), "--criterion", "apoz", "--calib", str(tiny.parent / "missing.npz")])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "no such file or folder" in err
    assert not (tiny.parent / "tiny.pruned.onnx").exists()


@pytest.mark.parametrize("criterion", ["apoz", "taylor"])
def test_cli_with_calib_writes_the_pruned_model(tiny, capsys, criterion):
    out = tiny.parent / "out.onnx"
    code = main(
        [
            str(tiny),
            "--criterion",
            criterion,
            "--calib",
            str(tiny.parent / "calib.npz"),
            "--calib-samples",
            "8",
            "--batch-size",
            "3",
            "-o",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    pruned = onnx.load(out)
    onnx.checker.check_model(pruned, full_check=True)
    assert sum(onnx.numpy_helper.to_array(i).size for i in pruned.graph.initializer) < sum(
        onnx.numpy_helper.to_array(i).size for i in onnx.load(tiny).graph.initializer
    )


def test_api_records_the_samples_used(tiny):
    result = onnxprune.prune(tiny, criterion="mean_act", calib=tiny.parent / "calib.npz", calib_samples=5)
    assert result.report["verification"]["ok"]
    assert result.plan["options"]["calib_samples"] == 5 and result.plan["options"]["calib"].endswith("calib.npz")
