"""Tests for where real sets come from (helpers.data.prepare and its tensor files) and for ImageFolder input.

Every archive here is a tiny tar.gz built in ``tmp_path`` with the layout of ``../shared/data`` (see
``../shared/README.md``), and ``data.SHARED`` points at it; every fault (corrupt, truncated or outdated file,
truncated image, full disk) is injected by the test.
"""

from __future__ import annotations

import errno
import io
import tarfile
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import data
from helpers.artifacts import ArtifactsError

from .conftest import make_tiny

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _image_bytes(colour, size=(32, 32), fmt: str = "PNG", mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, fmt)
    return out.getvalue()


def _archive(folder: Path, name: str, members: dict[str, bytes]) -> Path:
    """A tar.gz ``folder/name`` holding ``members`` (path → bytes), with directory entries as ``tar`` makes them."""
    folder.mkdir(parents=True, exist_ok=True)
    dirs = sorted({"/".join(p.split("/")[:i]) for p in members for i in range(1, p.count("/") + 1)})
    with tarfile.open(folder / name, "w:gz") as tar:
        for d in dirs:
            info = tarfile.TarInfo(d + "/")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for path, blob in members.items():
            info = tarfile.TarInfo(path)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return folder / name


def _cifar100_archive(shared: Path) -> Path:
    """``train/<label>/NNNN.png``, ``test/<label>/NNNN.png``; the folders are written out of sorted order."""
    colours = {"zebra": (250, 5, 5), "apple": (5, 250, 5), "maple_tree": (5, 5, 250)}
    members = {f"{split}/{label}/{i:04d}.png": _image_bytes(tuple(v + 10 * i * (split == 'test') for v in c))
               for split, n in (("train", 2), ("test", 1)) for label, c in colours.items() for i in range(n)}
    return _archive(shared, "cifar100-png.tar.gz", members)


def _tinyimagenet_archive(shared: Path) -> Path:
    members = {f"tinyimagenet32/val/{wnid}/val_{i}.JPEG": _image_bytes((40 * i, 0, 0), fmt="JPEG")
               for i, wnid in enumerate(["n02", "n01", "n03"])}
    members |= {f"tinyimagenet32/test/unlabelled/test_{i}.JPEG": _image_bytes((0, 40 * i, 0), fmt="JPEG")
                for i in range(2)}
    members |= {"tinyimagenet32/wnids.txt": b"n01\nn02\nn03\n", "tinyimagenet32/words.txt": b"n01\tfish\n"}
    return _archive(shared, "tinyimagenet32-jpeg.tar.gz", members)


def _dtd10_archive(shared: Path) -> Path:
    members = {f"dtd10/{cat}/{cat}_{i:04d}.jpg": _image_bytes((90, 90, 90), size=(80, 64), fmt="JPEG")
               for cat in ("banded", "bumpy") for i in range(2)}
    return _archive(shared, "dtd10-jpeg.tar.gz", members)


@pytest.fixture
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "shared" / "data"
    folder.mkdir(parents=True)
    monkeypatch.setattr(data, "SHARED", folder)
    return folder


# ----------------------------------------------------------------------------------------- archives
def test_prepare_cifar100_from_its_archive_labels_by_sorted_folder(tmp_path: Path, shared: Path) -> None:
    archive = _cifar100_archive(shared)
    cfg = make_tiny(tmp_path)
    lines = data.prepare(cfg, {"cifar100": ("train", "test")}, quiet=True)
    note = "(lossless PNG, a seeded re-split (500 train / 100 test per class), not the official split)"
    assert lines == [f"prepared cifar100 (train): 6 images from {archive}:train {note}",
                     f"prepared cifar100 (test): 3 images from {archive}:test {note}"]
    train = data.load("cifar100", "train", cfg)
    assert train.classes == ["apple", "maple_tree", "zebra"] and train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert train.images.shape == (6, 3, 32, 32) and train.images.dtype == torch.uint8
    expected = torch.tensor([(5, 250, 5)] * 2 + [(5, 5, 250)] * 2 + [(250, 5, 5)] * 2, dtype=torch.uint8)
    assert torch.equal(train.images.amin((2, 3)), expected) and torch.equal(train.images.amax((2, 3)), expected)
    test = data.load("cifar100", "test", cfg)
    assert test.labels.tolist() == [0, 1, 2] and test.source == f"{archive}:test {note}"
    assert not list(tmp_path.glob("data/**/*.png"))                    # decoded from the tar, nothing extracted


def test_prepare_ood_sets_from_archives_labels_minus_one_and_distinct_sources(tmp_path: Path, shared: Path) -> None:
    tin, dtd = _tinyimagenet_archive(shared), _dtd10_archive(shared)
    cfg = make_tiny(tmp_path)
    data.prepare(cfg, {n: ("test",) for n in ("tinyimagenet", "tinyimagenet-holdout", "dtd10")}, quiet=True)
    val, holdout, textures = (data.load(n, "test", cfg) for n in ("tinyimagenet", "tinyimagenet-holdout", "dtd10"))
    assert (len(val), len(holdout), len(textures)) == (3, 2, 4)
    for ds in (val, holdout, textures):
        assert (ds.labels == -1).all() and ds.labels.dtype == torch.int64 and ds.classes == []
    assert (val.source, holdout.source) == (f"{tin}:tinyimagenet32/val", f"{tin}:tinyimagenet32/test")
    assert textures.source == f"{dtd}:dtd10"
    red = val.images[:, 0].float().mean((1, 2))                        # JPEG: within a few levels
    assert (red - torch.tensor([40.0, 0.0, 80.0])).abs().max() <= 3    # sorted by wnid: n01, n02, n03
    assert (holdout.images[:, 1].float().mean((1, 2)) - torch.tensor([0.0, 40.0])).abs().max() <= 3
    assert (textures.images.float() - 90).abs().max() <= 3            # 80x64 JPEG resized and cropped to 32x32


@pytest.mark.parametrize("name", ["tinyimagenet", "tinyimagenet-holdout", "dtd10", "places365"])
def test_test_only_sets_refuse_the_train_split(tmp_path: Path, shared: Path, name: str) -> None:
    cfg = make_tiny(tmp_path)
    with pytest.raises(ValueError, match=rf"^'{name}' has no 'train' split: it is an OOD test set; use split "
                                         r"'test'\.$"):
        data.load(name, "train", cfg)
    _tinyimagenet_archive(shared)
    with pytest.raises(ValueError, match=r"has no 'train' split"):
        data.prepare(cfg, {"cifar100": ("test",), name: ("test", "train")}, quiet=True)
    assert not (tmp_path / "data").exists()                            # refused before decoding anything


def test_prepare_of_a_set_with_no_source_says_how_to_get_it(tmp_path: Path, shared: Path) -> None:
    with pytest.raises(data.DataNotFoundError) as err:
        data.prepare(make_tiny(tmp_path), {"tinyimagenet": ("test",)}, quiet=True)
    message = str(err.value)
    assert "\n" not in message
    assert message == (f"data set 'tinyimagenet' (test) not found: no torchvision files in {tmp_path / 'data'}, "
                       f"no {shared / 'tinyimagenet32-jpeg.tar.gz'}; put tinyimagenet32-jpeg.tar.gz in "
                       "../shared/data.")


def test_a_damaged_or_foreign_archive_gives_one_line(tmp_path: Path, shared: Path) -> None:
    archive = _dtd10_archive(shared)
    blob = archive.read_bytes()
    archive.write_bytes(blob[: len(blob) // 2])
    cfg = make_tiny(tmp_path)
    with pytest.raises(data.DataNotFoundError, match=r"cannot read .*dtd10-jpeg.tar.gz .*it is damaged: replace it"):
        data.prepare(cfg, {"dtd10": ("test",)}, quiet=True)
    _archive(shared, "dtd10-jpeg.tar.gz", {"textures/banded/a.jpg": _image_bytes(RED, fmt="JPEG")})
    with pytest.raises(data.DataNotFoundError, match=r"holds no images under dtd10/<class>/; it is not the "
                                                     r"expected archive"):
        data.prepare(cfg, {"dtd10": ("test",)}, quiet=True)
    _archive(shared, "dtd10-jpeg.tar.gz", {"dtd10/banded/a.jpg": _image_bytes(RED)[:60]})
    with pytest.raises(data.ImageDecodeError, match=r"cannot read image .*dtd10-jpeg.tar.gz:dtd10/banded/a.jpg "
                                                    r".*replace dtd10-jpeg.tar.gz"):
        data.prepare(cfg, {"dtd10": ("test",)}, quiet=True)


def test_the_command_line_prepares_then_says_already_prepared(tmp_path: Path, shared: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    _dtd10_archive(shared)
    root = tmp_path / "root"
    data.main(["dtd10", "--data-root", str(root)])
    assert capsys.readouterr().out.startswith("prepared dtd10 (test): 4 images from ")
    data.main(["dtd10", "--data-root", str(root)])
    assert capsys.readouterr().out == f"already prepared in {root}: dtd10 (test)\n"
    with pytest.raises(SystemExit, match=r"^error: data set 'tinyimagenet' \(test\) not found: "):
        data.main(["tinyimagenet", "--data-root", str(root)])


# ------------------------------------------------------------------------------------- tensor files
def _prepared(tmp_path: Path, shared: Path):
    """A config with dtd10 prepared from a tiny archive; returns (cfg, its tensor file)."""
    _dtd10_archive(shared)
    cfg = make_tiny(tmp_path)
    data.prepare(cfg, {"dtd10": ("test",)}, quiet=True)
    return cfg, data.tensor_path(cfg.data_dir(), "dtd10", "test")


def test_prepare_is_a_no_op_the_second_time_and_says_so(tmp_path: Path, shared: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, path = _prepared(tmp_path, shared)
    before = path.stat()
    monkeypatch.setattr(data, "_decode", lambda *a: pytest.fail("decoded a set that was already prepared"))
    lines = data.prepare(cfg, {"dtd10": ("test",)}, quiet=True)
    assert lines == [f"already prepared in {cfg.data_dir()}: dtd10 (test)"]
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "not a dict"])
def test_a_corrupt_tensor_file_is_reported_in_one_line_and_rebuilt(tmp_path: Path, shared: Path,
                                                                   damage: str) -> None:
    cfg, path = _prepared(tmp_path, shared)
    good = data.load("dtd10", "test", cfg)
    blob = path.read_bytes()
    damaged = {"truncated": blob[: len(blob) // 2], "garbage": b"\x00garbage" * 100, "empty": b""}
    if damage == "not a dict":
        torch.save(torch.zeros(3), path)
    else:
        path.write_bytes(damaged[damage])
    with pytest.raises(data.DataNotFoundError) as err:
        data.load("dtd10", "test", cfg)
    assert "\n" not in str(err.value) and f"has a bad file: {path} is corrupt" in str(err.value)
    assert "run `python -m helpers.data dtd10`" in str(err.value) and path.exists()   # load never deletes
    with pytest.warns(UserWarning) as caught:
        data.prepare(cfg, {"dtd10": ("test",)}, quiet=True)
    warning = str(caught[0].message)
    assert len(caught) == 1 and "\n" not in warning
    assert warning.startswith(f"data file {path} is corrupt") and warning.endswith("; rebuilding it.")
    assert torch.equal(data.load("dtd10", "test", cfg).images, good.images)


def test_a_tensor_file_of_another_format_is_never_reused(tmp_path: Path, shared: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, path = _prepared(tmp_path, shared)
    good = data.load("dtd10", "test", cfg)
    stale = {"format": "oodnc-tensors-v1", "images": torch.zeros(4, 3, 32, 32, dtype=torch.uint8),
             "labels": torch.full((4,), -1), "classes": [], "source": "an older decoder"}
    torch.save(stale, path)
    with pytest.raises(data.DataNotFoundError, match=r"was written by another version of helpers.data \(format "
                                                     r"'oodnc-tensors-v1', not 'oodnc-tensors-v2'\)"):
        data.load("dtd10", "test", cfg)
    with pytest.warns(UserWarning, match=r"written by another version .*; rebuilding it"):
        assert data.prepare(cfg, {"dtd10": ("test",)}, quiet=True)[0].startswith("prepared dtd10 (test)")
    assert torch.equal(data.load("dtd10", "test", cfg).images, good.images)
    monkeypatch.setattr(data, "TENSOR_FORMAT", "oodnc-tensors-v3")     # the next version rebuilds this one too
    with pytest.raises(data.DataNotFoundError, match=r"another version"):
        data.load("dtd10", "test", cfg)


def test_a_failing_write_keeps_the_previous_file_and_names_the_data_root(tmp_path: Path, shared: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, path = _prepared(tmp_path, shared)
    blob = path.read_bytes()

    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data, "TENSOR_FORMAT", "oodnc-tensors-v3")     # force a rebuild
    monkeypatch.setattr(torch, "save", disk_full)
    with warnings.catch_warnings(), pytest.raises(ArtifactsError) as err:
        warnings.simplefilter("ignore")
        data.prepare(cfg, {"dtd10": ("test",)}, quiet=True)
    assert "the disk is full" in str(err.value) and "-p data_root (or OODNC_DATA)" in str(err.value)
    assert "-p artifacts" not in str(err.value) and "\n" not in str(err.value)
    assert path.read_bytes() == blob and sorted(p.name for p in path.parent.iterdir()) == [path.name]


# --------------------------------------------------------------------------------------- image folders
def _save(path: Path, img: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def _noise_jpeg(path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (64, 64, 3), generator=g, dtype=torch.uint8).numpy()
    return _save(path, Image.fromarray(pixels), quality=90)


def _folder_with_a_truncated_jpeg(root: Path) -> Path:
    _save(root / "a" / "good.png", Image.new("RGB", (32, 32), RED))
    _save(root / "b" / "good.png", Image.new("RGB", (32, 32), BLUE))
    bad = _noise_jpeg(root / "a" / "broken.jpg")
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    return bad


def test_imagefolder_truncated_jpeg_stops_with_one_line_naming_the_file(tmp_path: Path) -> None:
    bad = _folder_with_a_truncated_jpeg(tmp_path / "set")
    with pytest.raises(data.ImageDecodeError) as err:
        data.load(f"imagefolder:{tmp_path / 'set'}", "test", make_tiny(tmp_path))
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"cannot read image {bad} (")
    assert "truncated" in message and message.endswith("or pass -p skip_bad_images true to skip unreadable images.")


def test_imagefolder_skips_and_counts_unreadable_images_when_asked(tmp_path: Path) -> None:
    _folder_with_a_truncated_jpeg(tmp_path / "set")
    (tmp_path / "set" / "b" / "fake.png").write_text("this is not a PNG")
    cfg = make_tiny(tmp_path, skip_bad_images=True)
    with pytest.warns(UserWarning) as caught:
        ds = data.load(f"imagefolder:{tmp_path / 'set'}", "test", cfg)
    assert len(caught) == 1
    assert str(caught[0].message) == (f"skipped 2 unreadable image(s) of 4 in {tmp_path / 'set'} "
                                      "(first: broken.jpg); kept 2.")
    assert ds.labels.tolist() == [0, 1] and ds.images[:, :, 0, 0].tolist() == [list(RED), list(BLUE)]
    (tmp_path / "set" / "a" / "good.png").write_bytes(b"")
    (tmp_path / "set" / "b" / "good.png").write_bytes(b"\x89PNG")
    with pytest.warns(UserWarning), pytest.raises(data.DataNotFoundError, match=r"no readable images in"):
        data.load(f"imagefolder:{tmp_path / 'set'}", "test", cfg)


def test_imagefolder_ignores_files_that_are_not_images(tmp_path: Path) -> None:
    root = tmp_path / "set"
    _save(root / "cat" / "a.png", Image.new("RGB", (32, 32), RED))
    for junk in ("cat/notes.txt", "cat/Thumbs.db", "cat/.DS_Store", "cat/._a.png", "README.md", ".hidden/x.png"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_bytes(b"\x00not an image")
    (root / "dog" / "nested").mkdir(parents=True)
    _save(root / "dog" / "b.JPG", Image.new("RGB", (32, 32), BLUE))
    ds = data.load(f"imagefolder:{root}", "test", make_tiny(tmp_path))
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0, 1] and len(ds) == 2


def test_imagefolder_converts_every_colour_mode_to_rgb(tmp_path: Path) -> None:
    root = tmp_path / "modes" / "all"
    _save(root / "1-grey.png", Image.new("L", (32, 32), 77))
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([10, 20, 30, 200, 200, 200] + [0] * 762)
    _save(root / "2-palette.png", palette, transparency=0)
    _save(root / "3-rgba.png", Image.new("RGBA", (32, 32), (200, 100, 50, 0)))
    _save(root / "4-cmyk.tif", Image.new("CMYK", (32, 32), (0, 255, 0, 0)))
    _save(root / "5-grey16.png", Image.new("I;16", (32, 32), 51400))  # 51400 / 257 = 200
    _save(root / "6-bilevel.png", Image.new("1", (32, 32), 1))
    ds = data.load(f"imagefolder:{tmp_path / 'modes'}", "test", make_tiny(tmp_path))
    assert ds.images.shape == (6, 3, 32, 32) and ds.images.dtype == torch.uint8
    expected = [[77] * 3, [10, 20, 30], [200, 100, 50], [255, 0, 255], [200] * 3, [255] * 3]
    assert ds.images.amin((2, 3)).tolist() == expected and ds.images.amax((2, 3)).tolist() == expected


def _bands(size: tuple[int, int], colours, vertical: bool) -> Image.Image:
    """Equal bands of ``colours``: side by side (``vertical`` bands) or stacked."""
    img, (w, h), n = Image.new("RGB", size), size, len(colours)
    for i, c in enumerate(colours):
        box = (i * w // n, 0, (i + 1) * w // n, h) if vertical else (0, i * h // n, w, (i + 1) * h // n)
        img.paste(c, box)
    return img


def test_imagefolder_resizes_the_shorter_side_and_centre_crops(tmp_path: Path) -> None:
    root = tmp_path / "sizes" / "x"
    _save(root / "1-wide.png", _bands((96, 32), [RED, GREEN, BLUE], vertical=True))     # keep the middle third
    _save(root / "2-tall.png", _bands((32, 96), [RED, GREEN, BLUE], vertical=False))
    _save(root / "3-big-wide.png", _bands((256, 64), [RED, GREEN, GREEN, BLUE], vertical=True))   # → 128x32
    _save(root / "4-small.png", Image.new("RGB", (10, 20), WHITE))                     # upscaled → 32x64
    quad = Image.new("RGB", (64, 64), WHITE)
    for c, box in ((RED, (0, 0, 32, 32)), (GREEN, (32, 0, 64, 32)), (BLUE, (0, 32, 32, 64))):
        quad.paste(c, box)
    _save(root / "5-quadrants.png", quad)                                              # square, halved
    ds = data.load(f"imagefolder:{tmp_path / 'sizes'}", "test", make_tiny(tmp_path))
    assert ds.images.shape == (5, 3, 32, 32)
    green = torch.tensor(GREEN, dtype=torch.uint8)[:, None, None].expand(3, 32, 32)
    assert torch.equal(ds.images[0], green) and torch.equal(ds.images[1], green)
    assert torch.equal(ds.images[2], green)                           # 128 wide: columns 48..79, all green
    assert (ds.images[3] == 255).all()
    q = ds.images[4]
    assert [q[:, 0, 0].tolist(), q[:, 0, 31].tolist(), q[:, 31, 0].tolist(), q[:, 31, 31].tolist()] == [
        list(RED), list(GREEN), list(BLUE), list(WHITE)]
    assert q[:, 8, 8].tolist() == list(RED) and q[:, 24, 24].tolist() == list(WHITE)


def test_imagefolder_with_a_single_image(tmp_path: Path) -> None:
    _save(tmp_path / "one" / "only" / "x.jpeg", Image.new("RGB", (50, 50), (0, 128, 255)), quality=95)
    ds = data.load(f"imagefolder:{tmp_path / 'one'}", "test", make_tiny(tmp_path))
    assert len(ds) == 1 and ds.classes == ["only"] and ds.labels.tolist() == [0]
    assert (ds.images[0].float() - torch.tensor([0.0, 128, 255])[:, None, None]).abs().max() <= 3


def test_imagefolder_without_class_subfolders_is_one_class(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    _save(root / "b.png", Image.new("RGB", (32, 32), BLUE))
    _save(root / "a.png", Image.new("RGB", (40, 32), RED))
    (root / "empty-subfolder").mkdir()
    ds = data.load(f"imagefolder:{root}", "test", make_tiny(tmp_path))
    assert ds.classes == ["flat"] and ds.labels.tolist() == [0, 0]
    assert ds.images[:, :, 5, 5].tolist() == [list(RED), list(BLUE)] and ds.source == f"folder {root}"
