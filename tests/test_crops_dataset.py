"""Resize / small-image policies, crop positions and extraction, and the torch datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from nriqa.data.crops import eval_boxes, extract_crops, random_boxes
from nriqa.data.dataset import ImageListDataset, IQADataset
from nriqa.data.policy import CropPolicy
from nriqa.data.resize import ensure_min_size, resize_image, resized_size
from nriqa.data.table import Scale, make_table
from nriqa.errors import ImageError

S = 32  # crop size used throughout: small enough to keep every test fast


# --- resize policies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "policy", "expected"),
    [
        ((1024, 768), "none", (1024, 768)),
        ((1024, 768), "deiqt", (384, 512)),  # torchvision Resize((512, 384)) is (h, w)
        ((768, 1024), "deiqt", (384, 512)),
        ((1024, 768), "aspect:384x512", (512, 384)),
        ((512, 384), "aspect:384x512", (512, 384)),
        ((768, 1024), "aspect:384x512", (384, 512)),  # portrait: short side 384
        ((1600, 900), "aspect:384x512", (512, 288)),  # wider than 4:3: fits the long side
        ((300, 300), "aspect:384x512", (384, 384)),
        ((4000, 3000), "short:384", (512, 384)),
        ((3000, 4000), "short:384", (384, 512)),
        ((100, 50), "short:100", (200, 100)),
    ],
)
def test_resized_size(size, policy, expected):
    assert resized_size(*size, policy) == expected


def test_resize_image_applies_the_size():
    img = Image.new("RGB", (1024, 768), (10, 20, 30))
    out = resize_image(img, "aspect:384x512")
    assert out.size == (512, 384) and out.mode == "RGB"
    assert out.getpixel((100, 100)) == (10, 20, 30)
    assert resize_image(img, "deiqt").size == (384, 512)
    assert resize_image(img, "none") is img


@pytest.mark.parametrize(
    "policy", ["bogus", "aspect:0x512", "aspect:384", "short:", "short:-3", ""]
)
def test_bad_resize_policy(policy):
    with pytest.raises(ValueError, match="allowed: none, deiqt, aspect:HxW, short:N"):
        resized_size(100, 100, policy)


# --- small images ---------------------------------------------------------------------------


def test_small_image_upscale_keeps_aspect():
    out = ensure_min_size(Image.new("RGB", (20, 10)), S)
    assert out.size == (64, 32)
    big = Image.new("RGB", (40, 32))
    assert ensure_min_size(big, S) is big


def test_small_image_pad_reflects():
    arr = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    out = np.asarray(ensure_min_size(Image.fromarray(arr), S, "pad"))
    assert out.shape == (S, S, 3)
    np.testing.assert_array_equal(out[6:26, 1:31], arr)  # centred: 6 + 6 rows, 1 + 1 columns
    np.testing.assert_array_equal(out[5, 1:31], arr[1])  # reflected, edge not repeated
    np.testing.assert_array_equal(out[6:26, 0], arr[:, 1])


def test_small_image_error_names_file_and_sizes():
    with pytest.raises(ImageError, match=r"tiny.png: image is 20x10, smaller than the 32x32 crop"):
        ensure_min_size(Image.new("RGB", (20, 10)), S, "error", path="tiny.png")


def test_bad_small_image_policy():
    with pytest.raises(ValueError, match="allowed: upscale, pad, error"):
        ensure_min_size(Image.new("RGB", (20, 10)), S, "shrink")


# --- crop positions -------------------------------------------------------------------------


def _inside(boxes, width, height, size):
    assert boxes.dtype == np.int64 and boxes.shape[1] == 4
    assert np.all(boxes[:, 2] - boxes[:, 0] == size) and np.all(boxes[:, 3] - boxes[:, 1] == size)
    assert boxes[:, :2].min() >= 0
    assert np.all(boxes[:, 2] <= width) and np.all(boxes[:, 3] <= height)


def test_random_boxes_inside_and_reproducible():
    boxes = random_boxes(100, 60, S, 50, np.random.default_rng(3))
    _inside(boxes, 100, 60, S)
    assert boxes.shape == (50, 4)
    np.testing.assert_array_equal(boxes, random_boxes(100, 60, S, 50, np.random.default_rng(3)))
    assert len(np.unique(boxes, axis=0)) > 10


def test_random_boxes_too_small():
    with pytest.raises(ValueError, match="does not fit"):
        random_boxes(20, 60, S, 1, np.random.default_rng(0))


def _corners(width, height, size):
    return {(0, 0), (width - size, 0), (0, height - size), (width - size, height - size)}


@pytest.mark.parametrize("n", [4, 5, 7, 10, 25])
@pytest.mark.parametrize(("width", "height"), [(100, 60), (60, 100), (S, 50)])
def test_grid_covers_corners(n, width, height):
    boxes = eval_boxes(width, height, S, n)
    assert boxes.shape == (n, 4)
    _inside(boxes, width, height, S)
    assert _corners(width, height, S) <= {tuple(b[:2]) for b in boxes}


def test_grid_layout():
    np.testing.assert_array_equal(eval_boxes(100, 60, S, 1), [[34, 14, 66, 46]])  # centre
    boxes = eval_boxes(200, 100, S, 25)
    assert len({tuple(b) for b in boxes}) == 25  # a 5 x 5 grid, all distinct
    assert sorted(set(boxes[:, 0])) == [0, 42, 84, 126, 168]
    # More crops along the long side: 10 crops on a landscape image are 3 rows of 4, 3, 3.
    assert len(set(eval_boxes(200, 100, S, 10)[:, 1])) == 3
    assert len(set(eval_boxes(100, 200, S, 10)[:, 0])) == 3


def test_seeded_boxes_are_stable_per_key():
    a = eval_boxes(300, 200, S, 8, "seeded", key="img1.jpg")
    _inside(a, 300, 200, S)
    np.testing.assert_array_equal(a, eval_boxes(300, 200, S, 8, "seeded", key="img1.jpg"))
    assert not np.array_equal(a, eval_boxes(300, 200, S, 8, "seeded", key="img2.jpg"))
    # Pinned values: the seed is a SHA-256 of the key, not Python's per-process hash().
    np.testing.assert_array_equal(
        eval_boxes(300, 200, S, 2, "seeded", key="img1.jpg"),
        [[3, 14, 35, 46], [55, 95, 87, 127]],
    )


def test_bad_test_crop_policy():
    with pytest.raises(ValueError, match="allowed: grid, seeded"):
        eval_boxes(100, 100, S, 4, "random")


# --- crop extraction ------------------------------------------------------------------------


def test_extract_crops_slices_and_flips():
    arr = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    boxes = np.array([[0, 0, S, S], [38, 18, 70, 50], [5, 7, 5 + S, 7 + S]])
    out = extract_crops(Image.fromarray(arr), boxes, flips=[False, True, False])
    assert out.dtype == torch.uint8 and out.shape == (3, 3, S, S) and out.is_contiguous()
    np.testing.assert_array_equal(out[0].permute(1, 2, 0).numpy(), arr[:S, :S])
    np.testing.assert_array_equal(out[1].permute(1, 2, 0).numpy(), arr[18:50, 38:70][:, ::-1])
    np.testing.assert_array_equal(out[2].permute(1, 2, 0).numpy(), arr[7 : 7 + S, 5 : 5 + S])


@pytest.mark.parametrize(
    "boxes",
    [[[0, 0, S, S + 1]], [[0, 0, S, S], [0, 0, 16, 16]], [[60, 0, 60 + S, S]], np.zeros((0, 4))],
)
def test_extract_crops_rejects_bad_boxes(boxes):
    with pytest.raises(ValueError):
        extract_crops(np.zeros((50, 70, 3), np.uint8), boxes)


# --- datasets -------------------------------------------------------------------------------


SIZES = [(48, 40), (64, 36), (40, 80), (S, S), (100, 50)]


@pytest.fixture()
def images(tmp_path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(SIZES):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture()
def table(images):
    groups = ["b", "a", "b", "c", "a"]
    return make_table(images, [1, 2, 3, 4, 5], Scale(0, 5), groups=groups)


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a
    )


def test_eval_item_contents(table, images):
    ds = IQADataset(table, train=False, policy=CropPolicy(S, patch_num=5))
    assert len(ds) == len(table)
    item = ds[4]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (5, 3, S, S)
    assert item["label"].dtype == torch.float32 and item["label"].shape == ()
    assert item["label"].item() == pytest.approx(1.0)
    assert item["index"].dtype == torch.int64 and item["index"].item() == 4
    assert item["group"].item() == 0  # "a" among sorted ["a", "b", "c"]
    assert item["boxes"].dtype == torch.float32 and item["boxes"].shape == (5, 4)
    assert item["flip"].dtype == torch.bool and not item["flip"].any()
    assert "full" not in item
    # Crops are the pixels at the boxes, and the grid reaches the image's corners.
    arr = _read(images[4])
    pixel_boxes = (item["boxes"].numpy() * [100, 50, 100, 50]).round().astype(int)
    for crop, (x0, y0, x1, y1) in zip(item["image"], pixel_boxes):
        np.testing.assert_array_equal(crop.permute(1, 2, 0).numpy(), arr[y0:y1, x0:x1])
    assert item["boxes"].min() == 0 and item["boxes"].max() == 1
    assert [0, 0] in item["boxes"][:, :2].tolist() and [1, 1] in item["boxes"][:, 2:].tolist()


def test_group_codes_and_row_labels(table):
    ds = IQADataset(table, train=False, policy=CropPolicy(S))
    assert [ds[i]["group"].item() for i in range(5)] == [1, 0, 1, 2, 0]
    subset = IQADataset(table.iloc[[3, 1]], train=False, policy=CropPolicy(S))
    assert [subset[i]["index"].item() for i in range(2)] == [3, 1]


@pytest.mark.parametrize("policy", ["grid", "seeded"])
def test_eval_crops_identical_across_calls_and_instances(table, policy):
    crops = CropPolicy(S, patch_num=3, test_crops=policy)
    a = IQADataset(table, train=False, policy=crops)
    b = IQADataset(table, train=False, policy=crops, seed=7)
    b.set_epoch(5)
    for i in range(len(table)):
        assert _same(a[i], a[i]) and _same(a[i], b[i])


def test_train_crops_by_seed_epoch_index(table, images):
    ds = IQADataset(table, train=True, policy=CropPolicy(S), crops_per_item=4, repeats=3, seed=1)
    assert len(ds) == 3 * len(table)
    first = [ds[i] for i in range(len(ds))]
    again = IQADataset(table, train=True, policy=CropPolicy(S), crops_per_item=4, repeats=3, seed=1)
    assert all(_same(x, again[i]) for i, x in enumerate(first))
    assert first[0]["image"].shape == (4, 3, S, S) and first[0]["flip"].shape == (4,)
    # item i is image i % len(table), each visit with its own crops
    assert first[4]["index"].item() == first[9]["index"].item() == 4
    assert not torch.equal(first[4]["boxes"], first[9]["boxes"])
    ds.set_epoch(1)
    assert ds.epoch == 1
    assert sum(not _same(x, ds[i]) for i, x in enumerate(first)) >= len(ds) - 1
    other_seed = IQADataset(table, train=True, policy=CropPolicy(S), crops_per_item=4, repeats=3,
                            seed=2)
    assert not all(_same(x, other_seed[i]) for i, x in enumerate(first))
    # The flips are real: a flipped crop is the mirrored slice.
    arr = _read(images[4])
    item = first[4]
    for crop, box, flip in zip(item["image"], item["boxes"].numpy(), item["flip"]):
        x0, y0, x1, y1 = (box * [100, 50, 100, 50]).round().astype(int)
        expected = arr[y0:y1, x0:x1][:, ::-1] if flip else arr[y0:y1, x0:x1]
        np.testing.assert_array_equal(crop.permute(1, 2, 0).numpy(), expected)
    flips = torch.cat([x["flip"] for x in first])
    assert 0 < flips.float().mean() < 1


def test_no_hflip(table):
    ds = IQADataset(table, train=True, policy=CropPolicy(S), crops_per_item=4, repeats=3,
                    hflip=False)
    assert not any(ds[i]["flip"].any() for i in range(len(ds)))


def _batches(ds, workers, persistent=False):
    loader = DataLoader(
        ds, batch_size=4, shuffle=False, num_workers=workers, persistent_workers=persistent
    )
    return loader, lambda: [b for b in loader]


def _same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert _same(x, y)


@pytest.mark.slow
def test_train_crops_independent_of_workers(table):
    kw = dict(train=True, policy=CropPolicy(S), crops_per_item=2, repeats=2, seed=3)
    serial = IQADataset(table, **kw)
    parallel = IQADataset(table, **kw)
    _, run_serial = _batches(serial, 0)
    _, run_parallel = _batches(parallel, 2, persistent=True)
    epoch0 = run_serial()
    _same_batches(epoch0, run_parallel())
    # set_epoch reaches persistent workers, which hold their own copy of the dataset.
    serial.set_epoch(1)
    parallel.set_epoch(1)
    epoch1 = run_serial()
    _same_batches(epoch1, run_parallel())
    assert not torch.equal(epoch0[0]["image"], epoch1[0]["image"])


def test_batches_of_different_sizes_collate(table):
    ds = IQADataset(table, train=False, policy=CropPolicy(S, patch_num=2), return_full=True,
                    full_size=24)
    batch = next(iter(DataLoader(ds, batch_size=len(table))))
    assert batch["image"].shape == (5, 2, 3, S, S)
    assert batch["full"].shape == (5, 3, 24, 24) and batch["full"].dtype == torch.uint8
    assert batch["label"].shape == (5,) and batch["boxes"].shape == (5, 2, 4)


def test_return_full_is_the_whole_image(tmp_path):
    arr = np.zeros((40, 80, 3), dtype=np.uint8)
    arr[:, 40:] = 255  # right half white
    path = tmp_path / "half.png"
    Image.fromarray(arr).save(path)
    tbl = make_table([path], [1.0], Scale(0, 1))
    item = IQADataset(tbl, train=True, policy=CropPolicy(S), return_full=True, full_size=16)[0]
    full = item["full"]
    assert full.shape == (3, 16, 16)
    assert full[:, :, :6].max() < 10 and full[:, :, 10:].min() > 245


def test_resize_and_small_image_in_dataset(images):
    tbl = make_table(images[:1], [1.0], Scale(0, 1))  # 48x40
    ds = IQADataset(tbl, train=False, policy=CropPolicy(S, patch_num=4, resize="short:64"))
    boxes = ds[0]["boxes"].numpy() * [77, 64, 77, 64]  # 48x40 -> 77x64 (rounded)
    np.testing.assert_allclose(np.diff(boxes[:, [0, 2]]), S, atol=1e-4)
    assert boxes[:, 2].max() == pytest.approx(77)
    small = IQADataset(tbl, train=False, policy=CropPolicy(64, small_image="error"))
    with pytest.raises(ImageError, match=r"img0.png: image is 48x40"):
        small[0]
    assert IQADataset(tbl, train=False, policy=CropPolicy(64))[0]["image"].shape == (1, 3, 64, 64)
    padded = IQADataset(tbl, train=False, policy=CropPolicy(64, small_image="pad"))
    assert padded[0]["image"].shape == (1, 3, 64, 64)


def test_unreadable_image_raises_with_path(table, images):
    images[2].write_bytes(b"not an image")
    ds = IQADataset(table, train=True, policy=CropPolicy(S))
    assert ds[0]["image"].shape == (1, 3, S, S)
    with pytest.raises(ImageError, match="img2.png"):
        ds[2]


def test_bad_arguments(table):
    with pytest.raises(ValueError, match="allowed"):
        IQADataset(table, train=True, policy=CropPolicy(resize="big"))
    with pytest.raises(ValueError, match="allowed"):
        IQADataset(table, train=False, policy=CropPolicy(test_crops="center"))
    with pytest.raises(ValueError, match="lacks"):
        IQADataset(table.drop(columns="group"), train=True)
    with pytest.raises(IndexError):
        IQADataset(table, train=False)[len(table)]


def test_image_list_dataset_reports_bad_files(images, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8garbage")
    paths = [images[0], broken, tmp_path / "missing.png", images[4]]
    ds = ImageListDataset(paths, CropPolicy(S, patch_num=3))
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 3, S, S)
    assert batch["error"][0] == "" and batch["error"][3] == ""
    assert "broken.jpg" in batch["error"][1] and "missing.png" in batch["error"][2]
    assert batch["image"][1:3].eq(0).all() and batch["image"][0].any()
    assert batch["path"] == [str(p) for p in paths]
    assert batch["index"].tolist() == [0, 1, 2, 3]
    # Same crops as the labelled dataset's evaluation items.
    tbl = make_table(images, [1] * 5, Scale(0, 5))
    labelled = IQADataset(tbl, train=False, policy=CropPolicy(S, patch_num=3))[4]
    assert torch.equal(labelled["image"], batch["image"][3])
    assert torch.equal(labelled["boxes"], batch["boxes"][3])
