"""Tests for ops/make_realistic_set.py: determinism, file validity and EXIF orientation."""

from __future__ import annotations

import csv
import gzip
import io
import struct
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageOps

from helpers import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "ops" / "make_realistic_set.py"
N_FAKE = 20
PER_KIND = 2


@dataclass(frozen=True)
class Generated:
    module: ModuleType
    first: Path
    second: Path


def _fake_digit(i: int) -> npt.NDArray[np.uint8]:
    """A 'T': top-heavy, so an upright image is distinguishable from a turned one."""
    img = np.zeros((28, 28), np.uint8)
    top = 4 + i % 3
    thick = 3 + i % 2
    left, right = 5 + i % 4, 22 - i % 3
    img[top : top + thick, left:right] = 255
    img[top:24, 12 + i % 3 : 15 + i % 3] = 255
    return img


def _write_fake_mnist(mnist_dir: Path) -> None:
    images = np.stack([_fake_digit(i) for i in range(N_FAKE)])
    labels = np.arange(N_FAKE, dtype=np.uint8) % 10
    mnist_dir.mkdir(parents=True, exist_ok=True)
    with gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">IIII", 2051, N_FAKE, 28, 28) + images.tobytes())
    with gzip.open(mnist_dir / "t10k-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">II", 2049, N_FAKE) + labels.tobytes())


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    root = tmp_path_factory.mktemp("realistic")
    module = load_script(SCRIPT, "make_realistic_set")
    _write_fake_mnist(root / "mnist")
    module.generate(root / "mnist", root / "a", PER_KIND, 1)
    module.generate(root / "mnist", root / "b", PER_KIND, 1)
    return Generated(module, root / "a", root / "b")


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / "labels.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _upright_t(img: Image.Image) -> bool:
    """The T's bar (dark ink) must sit in the top quarter of the ink's bounding box."""
    grey = np.asarray(img.convert("L"), dtype=np.float32)
    ys, _ = np.nonzero(grey < 90)
    assert ys.size > 0
    y0, y1 = int(ys.min()), int(ys.max())
    quarter = (y1 - y0) / 4
    top = int(np.count_nonzero(ys <= y0 + quarter))
    bottom = int(np.count_nonzero(ys >= y1 - quarter))
    return top > 2 * bottom


def test_generation_is_byte_identical(generated: Generated) -> None:
    first, second = _files(generated.first), _files(generated.second)
    assert sorted(first) == sorted(second)
    for name, data in first.items():
        assert data == second[name], name


def test_every_kind_written_and_listed(generated: Generated) -> None:
    kinds: tuple[str, ...] = generated.module.KINDS
    assert len(kinds) == 14
    assert set(generated.module.FIRST_KINDS) < set(kinds)
    rows = _rows(generated.first)
    assert list(rows[0]) == ["path", "label", "kind", "source_index"]
    assert len(rows) == PER_KIND * len(kinds)
    for kind in kinds:
        listed = [r for r in rows if r["kind"] == kind]
        assert len(listed) == PER_KIND
        on_disk = sorted(p.name for p in (generated.first / kind).iterdir())
        assert on_disk == sorted(Path(r["path"]).name for r in listed)
    for row in rows:
        assert int(row["label"]) == int(row["source_index"]) % 10
        assert Path(row["path"]).stem.endswith(f"_{row['label']}")


def test_files_decode_within_size_limit(generated: Generated) -> None:
    for row in _rows(generated.first):
        with Image.open(generated.first / row["path"]) as im:
            upright = ImageOps.exif_transpose(im)
            # The phone kind is the reads issue's 12 MP photo; every other kind fits 1024 px.
            limit = 4032 if row["kind"] == "phone_ballpoint" else 1024
            assert max(upright.size) <= limit, row["path"]
            assert min(upright.size) >= 200, row["path"]
            upright.load()


def test_writing_styles_draw_only_styled_labels(generated: Generated) -> None:
    styled = [r for r in _rows(generated.first) if r["kind"] == "writing_styles"]
    assert styled
    assert {int(r["label"]) for r in styled} <= set(generated.module.STYLED_LABELS)
    # Each label's own glyph: a 7 has its crossbar, so its ink differs from a 1's.
    one = generated.module._style_digit(1, np.random.default_rng(0))
    seven = generated.module._style_digit(7, np.random.default_rng(0))
    assert one.shape == seven.shape == (28, 28)
    assert np.abs(one.astype(int) - seven.astype(int)).mean() > 20


def test_canvas_png_is_transparent_rgba(generated: Generated) -> None:
    for path in sorted((generated.first / "canvas_png").glob("*.png")):
        with Image.open(path) as im:
            assert im.mode == "RGBA"
            alpha = np.asarray(im)[..., 3]
        corners = [alpha[0, 0], alpha[0, -1], alpha[-1, 0], alpha[-1, -1]]
        assert all(int(c) == 0 for c in corners)
        assert int(alpha.max()) == 255  # opaque stroke
        assert np.count_nonzero((alpha > 0) & (alpha < 255)) > 0  # anti-aliased edge


def test_exif_kind_is_sideways_but_upright_when_transposed(generated: Generated) -> None:
    for path in sorted((generated.first / "exif_rotated_jpeg").glob("*.jpg")):
        with Image.open(path) as im:
            assert im.getexif().get(0x0112, 1) in (3, 6, 8)
            assert not _upright_t(im)
            assert _upright_t(ImageOps.exif_transpose(im))
    for path in sorted((generated.first / "photo_dark_ink").glob("*.jpg")):
        with Image.open(path) as im:
            assert _upright_t(im)


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_exif_encoding_round_trips(generated: Generated, turns: int) -> None:
    rgb = np.zeros((40, 64, 3), np.uint8)
    rgb[:8, :32] = 255  # bright block in the top-left corner only
    data: bytes = generated.module.encode_exif_rotated(rgb, turns, 95)
    with Image.open(io.BytesIO(data)) as im:
        assert im.size != (64, 40) or turns == 2
        back = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.float32)
    assert back.shape == rgb.shape
    assert float(np.abs(back - rgb).mean()) < 8


def test_read_idx_rejects_unknown_magic(generated: Generated, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(struct.pack(">II", 1234, 0))
    with pytest.raises(ValueError, match="magic"):
        generated.module.read_idx(bad)
