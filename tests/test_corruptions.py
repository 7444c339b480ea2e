"""The MedMNIST-C blood corruptions (core.evaluation.corruptions) on real cell images: shape and type kept, every
severity changes the image, a higher severity changes it more, the same seed gives the same image, and the
same corruption covers the same share of a cell at every image size."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import NPZ_28, NPZ_64, PBC_SAMPLES

from core.data.dataset import read_split
from core.data.images import read_file, to_model_input
from core.evaluation import corruptions as C

RANDOM = ("motion_blur", "stain_deposit", "bubble")  # the corruptions that draw random numbers


def one_per_class(path, per_class: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The first test images of each class in a real npz, and their indices in its test split."""
    images, labels = read_split(path, "test")
    index = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
    return images[index], index


@pytest.fixture(scope="module")
def cells_64() -> tuple[np.ndarray, np.ndarray]:
    return one_per_class(NPZ_64)


@pytest.fixture(scope="module")
def cells_224() -> np.ndarray:
    """Two original CellaVision JPEGs as a 224 px model sees them (the MedMNIST recipe)."""
    paths = [sorted((PBC_SAMPLES / c).glob("*.jpg"))[0] for c in ("lymphocyte", "neutrophil")]
    return np.stack([to_model_input(read_file(p), 224) for p in paths])


def mean_change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def test_the_registry_is_medmnist_c_bloodmnist_set():
    assert C.NAMES == ("pixelate", "jpeg_compression", "defocus_blur", "motion_blur", "brightness_up",
                       "brightness_down", "contrast_up", "contrast_down", "saturate", "stain_deposit", "bubble")
    assert len({c.title for c in C.CORRUPTIONS}) == len(C.CORRUPTIONS)
    assert all(len(c.severities) == len(C.SEVERITIES) == 5 for c in C.CORRUPTIONS)
    assert C.corruption("jpeg_compression").parameter(5) == 7  # MedMNIST-C's BloodMNIST table, severity 5
    assert C.title("defocus_blur") == "Defocus blur" and C.title("from_a_newer_report") == "from_a_newer_report"
    with pytest.raises(ValueError, match="unknown corruption 'fog'; one of pixelate"):
        C.corruption("fog")


@pytest.mark.parametrize("name", C.NAMES)
def test_every_severity_keeps_shape_and_type_and_changes_each_image(name, cells_64):
    images, index = cells_64
    for severity in C.SEVERITIES:
        out = C.corrupt_batch(images, name, severity, seed=0, indices=index)
        assert out.shape == images.shape and out.dtype == np.uint8
        changed = [bool(np.any(o != i)) for o, i in zip(out, images)]
        assert all(changed), (severity, changed)


@pytest.mark.parametrize("name", C.NAMES)
def test_a_higher_severity_changes_the_image_more(name, cells_64):
    images, index = cells_64
    found = C.corruption(name)
    change = [mean_change(C.corrupt_batch(images, name, s, seed=0, indices=index), images) for s in C.SEVERITIES]
    assert change[-1] > change[0], change
    for s in C.SEVERITIES[1:]:
        if found.parameter(s) == found.parameter(s - 1):  # MedMNIST-C repeats a level (stain_deposit 3 and 4)
            assert change[s - 1] == pytest.approx(change[s - 2]), (s, change)
        else:
            assert change[s - 1] > change[s - 2], (s, change)


@pytest.mark.parametrize("name", C.NAMES)
def test_the_same_seed_gives_the_same_image(name, cells_64):
    images, index = cells_64
    first = C.corrupt_batch(images, name, 3, seed=7, indices=index)
    assert np.array_equal(first, C.corrupt_batch(images, name, 3, seed=7, indices=index))
    other = C.corrupt_batch(images, name, 3, seed=8, indices=index)
    assert np.array_equal(first, other) == (name not in RANDOM)  # only the random ones depend on the seed


def test_an_image_is_corrupted_the_same_way_alone_or_in_any_batch(cells_64):
    images, index = cells_64
    for name in RANDOM:
        batch = C.corrupt_batch(images, name, 4, seed=3, indices=index)
        assert np.array_equal(batch[5], C.corrupt(images[5], name, 4, seed=3, index=int(index[5])))
        assert np.array_equal(batch[2:4], C.corrupt_batch(images[2:4], name, 4, seed=3, indices=index[2:4]))


@pytest.mark.parametrize("size", [28, 64, 128, 224])
def test_every_corruption_works_at_every_medmnist_size(size, cells_224):
    if size == 28:
        images = one_per_class(NPZ_28)[0][:2]
    else:
        images = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in cells_224])
    for name in C.NAMES:
        for severity in (1, 5):
            out = C.corrupt_batch(images, name, severity)
            assert out.shape == images.shape and out.dtype == np.uint8, (name, severity)
        assert mean_change(C.corrupt_batch(images, name, 5), images) > 0, name


@pytest.mark.parametrize("name", ["stain_deposit", "bubble"])
def test_marks_and_bubbles_cover_the_same_share_of_the_cell_at_every_size(name, cells_224):
    """Lengths are pixels of a 224 px image, scaled to the image's size: the same image at 28 px gets its ink
    marks and bubbles at the same places and the same share of its area, so the mean change is about equal."""
    for image in cells_224:
        reference = mean_change(C.corrupt(image, name, 5, seed=0, index=1), image)
        for size in (28, 64, 128):
            small = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
            assert mean_change(C.corrupt(small, name, 5, seed=0, index=1), small) == pytest.approx(reference, rel=0.15)


def test_bad_images_and_severities_are_refused(cells_64):
    image = cells_64[0][0]
    for bad in (image.astype(np.float32), image[..., 0], image[..., :2]):
        with pytest.raises(ValueError, match="uint8 \\(H, W, 3\\)"):
            C.corrupt(bad, "pixelate", 1)
    for severity in (0, 6):
        with pytest.raises(ValueError, match="severity must be one of 1, 2, 3, 4, 5"):
            C.corrupt(image, "pixelate", severity)
    with pytest.raises(ValueError, match="non-negative"):
        C.corrupt(image, "bubble", 1, seed=-1)
