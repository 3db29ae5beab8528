"""Bad input ends in a LoadError naming the file and the fix, never a raw traceback."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from bodyage_core.errors import BodyageError, LoadError
from bodyage_core.io import load_dicom_series, load_labels, load_volume, save_array
from bodyage_core.io.ukbb_fake import write_dicom_series, write_ukbb_zip
from bodyage_core.volume import Volume


def small_volume(n=6) -> Volume:
    rng = np.random.default_rng(1)
    data = rng.uniform(0, 100, size=(2, n, 5, 7))
    return Volume(data, np.diag([1.5, 1.5, 3.0, 1.0]), ("water", "fat"))


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.nii.gz"
    with pytest.raises(LoadError, match="not found") as err:
        load_volume(missing)
    assert str(missing) in str(err.value)
    assert isinstance(err.value, BodyageError)


@pytest.mark.parametrize("name", ["t.nii.gz", "t.nii"])
def test_truncated_nifti(tmp_path, name):
    path = tmp_path / name
    save_array(np.random.default_rng(0).normal(size=(20, 30, 40)).astype(np.float32),
               np.eye(4), path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(LoadError, match="truncated") as err:
        load_volume(path)
    assert str(path) in str(err.value)


def test_garbage_nifti(tmp_path):
    path = tmp_path / "g.nii.gz"
    path.write_bytes(b"\x00\x01not a nifti at all" * 10)
    with pytest.raises(LoadError):
        load_volume(path)


def test_unknown_extension(tmp_path):
    path = tmp_path / "image.xyz"
    path.write_bytes(b"hello")
    with pytest.raises(LoadError, match="unknown image format") as err:
        load_volume(path)
    assert ".nii.gz" in str(err.value)  # says what is supported


def test_folder_with_two_dicom_series(tmp_path):
    vol = small_volume()
    folder = tmp_path / "mixed"
    write_dicom_series(vol, folder / "a", channel="water", description="T1", series_number=3)
    write_dicom_series(vol, folder / "b", channel="fat", description="T2", series_number=4)
    for sub in ("a", "b"):
        for f in (folder / sub).iterdir():
            f.rename(folder / f"{sub}_{f.name}")
    with pytest.raises(LoadError, match="holds 2 DICOM series") as err:
        load_volume(folder)
    msg = str(err.value)
    assert "T1" in msg and "T2" in msg and "series_uid" in msg
    uids = [part.split(" ")[0] for part in msg.split(": ", 2)[2].split("; ")]
    one = load_dicom_series(folder, series_uid=uids[1].strip())
    assert one.shape == vol.shape
    # a file of the series picks its series
    via_file = load_volume(sorted(folder.glob("a_*"))[0])
    np.testing.assert_allclose(via_file.array, vol.channel("water"), atol=0.01)


def test_dicom_series_round_trip_and_empty_folder(tmp_path):
    vol = small_volume()
    write_dicom_series(vol, tmp_path / "s", channel="fat", age=45, sex="M")
    v = load_volume(tmp_path / "s")
    np.testing.assert_allclose(v.affine, vol.affine, atol=1e-4)
    np.testing.assert_allclose(v.array, vol.channel("fat"), atol=0.01)
    assert v.metadata == {"age": 45.0, "sex": "M"}
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(LoadError, match="no DICOM image files"):
        load_volume(empty)


def test_truncated_dicom_slice(tmp_path):
    vol = small_volume()
    files = write_dicom_series(vol, tmp_path / "s", channel="water")
    raw = files[2].read_bytes()
    files[2].write_bytes(raw[: len(raw) - 40])
    with pytest.raises(LoadError) as err:
        load_volume(tmp_path / "s")
    assert "IM_0003" in str(err.value)


def test_zip_without_dicom(tmp_path):
    path = tmp_path / "empty.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "nothing")
    with pytest.raises(LoadError, match="no DICOM images"):
        load_volume(path)


def test_labels_refuse_float_images(tmp_path):
    path = tmp_path / "f.nii.gz"
    save_array(np.full((4, 4, 4), 0.5, np.float32), np.eye(4), path)
    with pytest.raises(LoadError, match="not a label map"):
        load_labels(path)


def test_wrong_channel_names(tmp_path):
    path = tmp_path / "v.nii.gz"
    save_array(np.zeros((4, 4, 4), np.float32), np.eye(4), path)
    with pytest.raises(LoadError, match="asked for channels"):
        load_volume(path, channels=("water", "fat"))


def test_write_ukbb_needs_water_and_fat(tmp_path):
    with pytest.raises(ValueError):
        write_ukbb_zip(Volume(np.zeros((30, 4, 4)), np.eye(4), ("t1",)), tmp_path / "x.zip")


def test_truncated_metaimage_and_nrrd(tmp_path):
    import SimpleITK as sitk

    for name in ("t.mha", "t.nrrd"):
        path = tmp_path / name
        sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).normal(
            size=(8, 9, 10)).astype(np.float32)), str(path))
        good = load_volume(path)
        assert good.shape == (8, 9, 10)
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) - 500])
        with pytest.raises(LoadError, match="truncated") as err:
            load_volume(path)
        assert str(path) in str(err.value)


def test_dicom_series_with_a_missing_slice_is_resampled(tmp_path):
    z = np.arange(12, dtype=np.float64)[:, None, None] * np.ones((12, 4, 5))
    vol = Volume(100 + 10 * z, np.diag([1.0, 1.0, 2.5, 1.0]), ("water",))
    files = write_dicom_series(vol, tmp_path / "s")
    files[5].unlink()  # a slice lost in transfer
    with pytest.warns(UserWarning, match="not evenly spaced"):
        v = load_volume(tmp_path / "s")
    assert v.shape == vol.shape
    assert v.spacing[2] == pytest.approx(2.5)
    assert v.provenance["resampled_to_uniform_step"] is True
    np.testing.assert_allclose(v.array, vol.array, atol=0.01)  # a linear ramp is recovered
