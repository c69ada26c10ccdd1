"""dpt_jax.datasets: every reader on tiny files the test writes in the dataset's real on-disk format."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from PIL import Image

from dpt_jax import datasets
from dpt_jax.errors import DatasetError
from helpers import write_motorcycle

RNG = np.random.default_rng(5)


def _picture(path, h=6, w=8):
    a = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return a


def _depth(h=6, w=8):
    return RNG.uniform(0.5, 9, (h, w)).astype(np.float32)


def _truth(sample):
    depth, valid = sample.load_truth()
    assert depth.dtype == np.float32 and valid.dtype == bool and depth.shape == valid.shape == sample.picture.size
    return depth, valid


@pytest.mark.parametrize("compressed", [False, True])
def test_nyuv2_labeled_mat_is_hdf5_and_the_split_is_matlab_v5(tmp_path, compressed):
    import h5py  # the `eval` extra (the test extra has it)
    import scipy.io  # a dependency of jax

    n, h, w = 3, 6, 8
    pictures = RNG.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    depths = RNG.uniform(0.5, 9, (n, h, w)).astype(np.float32)
    depths[1, 0, 0] = 0  # missing depth
    # MATLAB v7.3: a 512-byte user block (the MATLAB header) before HDF5; arrays stored transposed
    with h5py.File(tmp_path / datasets.NYU_MAT, "w", userblock_size=512) as f:
        f["images"] = pictures.transpose(0, 3, 2, 1)  # (N, 3, W, H)
        f["depths"] = depths.transpose(0, 2, 1)  # (N, W, H)
    with open(tmp_path / datasets.NYU_MAT, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + b"\0" * 8 + b"\x00\x02IM")
    scipy.io.savemat(tmp_path / datasets.NYU_SPLITS, {"testNdxs": np.array([[2.0], [3.0]]),
                                                       "trainNdxs": np.array([[1.0]])}, do_compression=compressed)
    samples = datasets.open_dataset("nyuv2", tmp_path)
    assert [s.name for s in samples] == ["0002", "0003"]
    assert samples[0].picture.size == (h, w)
    np.testing.assert_array_equal(samples[1].picture.load(), pictures[2])
    depth, valid = _truth(samples[0])
    np.testing.assert_array_equal(depth, depths[1])
    assert not valid[0, 0] and valid.sum() == h * w - 1


def test_nyuv2_without_h5py_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / datasets.NYU_MAT).write_bytes(b"\0" * 512 + datasets.HDF5_SIGNATURE + b"\0" * 600)
    import scipy.io

    scipy.io.savemat(tmp_path / datasets.NYU_SPLITS, {"testNdxs": np.array([[1.0]])})
    monkeypatch.setitem(__import__("sys").modules, "h5py", None)  # as if not installed
    with pytest.raises(DatasetError, match=r"needs h5py: pip install 'dpt-jax\[eval\]'"):
        datasets.open_dataset("nyuv2", tmp_path)


def test_nyuv2_errors_name_what_is_missing_or_wrong(tmp_path):
    with pytest.raises(DatasetError, match="missing nyu_depth_v2_labeled.mat, splits.mat"):
        datasets.open_dataset("nyuv2", tmp_path)
    import scipy.io as scipy_io  # a dependency of jax
    scipy_io.savemat(tmp_path / datasets.NYU_SPLITS, {"trainNdxs": np.array([[1.0]])})
    raw = (tmp_path / datasets.NYU_SPLITS).read_bytes()
    (tmp_path / datasets.NYU_SPLITS).write_bytes(raw[:-5])
    with pytest.raises(DatasetError, match="truncated MATLAB data element"):
        datasets.read_mat_v5(tmp_path / datasets.NYU_SPLITS)
    (tmp_path / datasets.NYU_MAT).write_bytes(b"MATLAB 5.0 MAT-file".ljust(2000, b"\0"))
    (tmp_path / datasets.NYU_SPLITS).write_bytes(b"x")
    with pytest.raises(DatasetError, match="not a MATLAB v7.3"):
        datasets.open_dataset("nyuv2", tmp_path)


def _png16(path, values):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint16)).save(path)


def test_kitti_eigen_list_and_png16_depth(tmp_path):
    raw = RNG.integers(0, 80 * 256, (6, 8)).astype(np.uint16)
    raw[0] = 0
    pic = "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png"
    gt = "2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png"
    _picture(tmp_path / pic)
    _png16(tmp_path / gt, raw)
    (tmp_path / datasets.KITTI_SPLIT).write_text(f"{pic} {gt} 721.5377\n{pic} None 721.5377\n")
    [sample] = datasets.open_dataset("kitti", tmp_path)
    assert sample.name == pic[:-4]
    depth, valid = _truth(sample)
    np.testing.assert_allclose(depth, raw / 256.0)
    np.testing.assert_array_equal(valid, raw > 0)
    assert not valid[0].any()
    annotated = tmp_path / "data_depth_annotated" / "val" / gt  # the annotated-depth download's layout
    annotated.parent.mkdir(parents=True)
    (tmp_path / gt).rename(annotated)
    [sample] = datasets.open_dataset("kitti", tmp_path)
    np.testing.assert_array_equal(sample.load_truth()[0], raw / 256.0)
    Image.fromarray((raw // 256).astype(np.uint8)).save(annotated)  # an 8-bit PNG is not KITTI depth
    with pytest.raises(DatasetError, match="expected a 16-bit grayscale PNG; got mode L"):
        sample.load_truth()
    annotated.unlink()
    with pytest.raises(DatasetError, match="1 files of eigen_test_files_with_gt.txt missing: .*0000000069"):
        datasets.open_dataset("kitti", tmp_path)


def test_eth3d_raw_float32_depth_with_inf(tmp_path):
    scene = tmp_path / "courtyard"
    _picture(scene / "images" / "dslr_images" / "DSC_0286.JPG")
    d = _depth()
    d[2, 3] = np.inf
    (scene / "ground_truth_masked" / "dslr_images").mkdir(parents=True)
    d.astype("<f4").tofile(scene / "ground_truth_masked" / "dslr_images" / "DSC_0286.JPG")
    [sample] = datasets.open_dataset("eth3d", tmp_path)
    depth, valid = _truth(sample)
    assert sample.name == "courtyard/DSC_0286" and not valid[2, 3] and valid.sum() == 47
    np.testing.assert_array_equal(depth[valid], d[valid])
    d[:3].tofile(scene / "ground_truth_masked" / "dslr_images" / "DSC_0286.JPG")  # a file of the wrong size
    with pytest.raises(DatasetError, match="96 bytes; a 8x6 float32 depth map holds 192"):
        datasets.open_dataset("eth3d", tmp_path)[0].load_truth()


def test_diode_npy_depth_and_mask(tmp_path):
    folder = tmp_path / "val" / "indoors" / "scene_00019" / "scan_00183"
    _picture(folder / "00019_00183_indoors_000_010.png")
    d, mask = _depth(), RNG.uniform(size=(6, 8)) > 0.3
    np.save(folder / "00019_00183_indoors_000_010_depth.npy", d[..., None])
    np.save(folder / "00019_00183_indoors_000_010_depth_mask.npy", mask.astype(np.float32))
    [sample] = datasets.open_dataset("diode", tmp_path)
    depth, valid = _truth(sample)
    np.testing.assert_array_equal(valid, mask)
    np.testing.assert_array_equal(depth[mask], d[mask])
    np.save(folder / "00019_00183_indoors_000_010_depth.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(DatasetError, match="not a readable .npy"):  # never unpickled
        sample.load_truth()


def test_sintel_dpt_depth(tmp_path):
    _picture(tmp_path / "training" / "clean" / "alley_1" / "frame_0001.png")
    d = _depth()
    (tmp_path / "training" / "depth" / "alley_1").mkdir(parents=True)
    dpt = tmp_path / "training" / "depth" / "alley_1" / "frame_0001.dpt"
    dpt.write_bytes(struct.pack("<fii", datasets.SINTEL_TAG, 8, 6) + d.astype("<f4").tobytes())
    [sample] = datasets.open_dataset("sintel", tmp_path)
    assert sample.sequence == "alley_1"
    np.testing.assert_array_equal(_truth(sample)[0], d)
    dpt.write_bytes(struct.pack("<fii", datasets.SINTEL_TAG, 80000, 60000) + d.tobytes())  # declares 19 GB
    with pytest.raises(DatasetError, match="192 bytes of depth; 80000x60000 needs 19200000000"):
        sample.load_truth()


def test_folder_npy_png16_and_mask(tmp_path):
    _picture(tmp_path / "images" / "a.jpg")
    _picture(tmp_path / "images" / "sub" / "b.png")
    d = _depth()
    (tmp_path / "depth").mkdir()
    np.save(tmp_path / "depth" / "a.npy", d)
    _png16(tmp_path / "depth" / "sub" / "b.png", np.round(d * 256))
    mask = np.ones((6, 8), np.uint8) * 255
    mask[0] = 0
    (tmp_path / "mask" / "sub").mkdir(parents=True)
    Image.fromarray(mask).save(tmp_path / "mask" / "sub" / "b.png")
    a, b = datasets.open_dataset("folder", tmp_path)
    assert (a.name, b.name) == ("a", "sub/b")
    np.testing.assert_array_equal(_truth(a)[0], d)
    depth, valid = _truth(b)
    np.testing.assert_allclose(depth[1:], d[1:], atol=1 / 512)
    assert not valid[0].any() and valid[1:].all()
    (tmp_path / "depth" / "a.npy").unlink()
    with pytest.raises(DatasetError, match="missing 1 depth maps: depth/a.npy or .png"):
        datasets.open_dataset("folder", tmp_path)
    with pytest.raises(DatasetError, match="missing images, depth"):
        datasets.open_dataset("folder", tmp_path / "mask")


def test_middlebury_real_pair_reads_as_depth(tmp_path):
    left, disparity = write_motorcycle(tmp_path / "Motorcycle")
    [sample] = datasets.open_dataset("middlebury", tmp_path)
    assert sample.name == "Motorcycle" and sample.picture.size == left.shape[:2]
    np.testing.assert_array_equal(sample.picture.load(), left)
    depth, valid = _truth(sample)
    np.testing.assert_array_equal(valid, np.isfinite(disparity))
    assert 0.2 < valid.mean() < 1
    y, x = np.argwhere(valid)[1234]
    np.testing.assert_allclose(depth[y, x], 193.001 * 994.978 / (disparity[y, x] + 31.086) / 1000, rtol=1e-6)
    assert 1.0 < np.median(depth[valid]) < 6.0  # a motorcycle a few metres from the camera


def test_unknown_dataset_and_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'nope'; choose from nyuv2, kitti"):
        datasets.open_dataset("nope", tmp_path)
    with pytest.raises(DatasetError, match="no such folder"):
        datasets.open_dataset("middlebury", tmp_path / "absent")
