"""Image dataset sources: where the rows of a prepared dataset come from.

Every source yields rows ``k = 0 .. N-1`` in a fixed order (row ``k`` becomes id ``k``) as
``(H, W, C)`` uint8 images (C = 1 grey or 3 RGB, values 0..255) and an integer label or
``None``. Sources:

``digits``       scikit-learn's ``load_digits`` (bundled, offline): 1797 images, 8x8x1. The
                 values 0..16 become ``round(v * 255 / 16)``; label = the digit.
``mnist``        torchvision MNIST, train split: 60000 images, 28x28x1; label = the digit.
``cifar10``      torchvision CIFAR-10, train split: 50000 images, 32x32x3; label = class index.
``celeba``       torchvision CelebA (aligned and cropped faces), the official ``train`` split
                 (162770 images, as the original NCSN code used), centre-cropped to 140x140
                 and resized to 32x32 (bilinear), i.e. torchvision's ``CenterCrop(140)`` then
                 ``Resize(32)``; label = null.
``celeba64``     the same, resized to 64x64: NCSNv2's CelebA.
``imagefolder``  every image file below ``root`` (recursive, hidden names skipped), sorted by
                 relative path; centre-cropped to a square and resized to ``image_size``
                 (bilinear), converted to ``channels`` (1 or 3; transparency composited over
                 white). Label = index of the image's immediate sub-folder of ``root`` among
                 the sorted sub-folder names, or null when all images lie directly in ``root``.

The torchvision datasets are read from ``root`` in torchvision's own layout, and downloaded
there when they are missing and ``download`` is on (default root: ``$NCSN_DATA_ROOT`` or
``~/.cache/ncsn_ray/data``). A missing source raises :class:`SourceError` saying how to
provide the files; an unreadable image raises :class:`SourceError` naming the file.

Nothing here touches the output storage; see :mod:`ncsn_ray.data.prepare`.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from ..errors import DamagedInput, UserError

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "SourceError",
    "SourceUsageError",
    "SourceSpec",
    "ImageSource",
    "default_data_root",
    "static_spec",
    "describe",
    "open_source",
    "load_image",
]

DATASETS = ("digits", "mnist", "cifar10", "celeba", "celeba64", "imagefolder")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")

# name -> (height, width, channels) of the prepared images, for the fixed-shape datasets.
_NATIVE_SHAPES = {"digits": (8, 8, 1), "mnist": (28, 28, 1), "cifar10": (32, 32, 3), "celeba": (32, 32, 3),
                  "celeba64": (64, 64, 3)}
DIGITS_ROWS = 1797
CELEBA_CROP = 140
CELEBA_SIZE = 32
CELEBA64_SIZE = 64  # NCSNv2's CelebA: the same crop, resized to 64

_IDENTITY = {
    "digits": {"split": "all", "transform": "round(v*255/16)"},
    "mnist": {"split": "train", "transform": "none"},
    "cifar10": {"split": "train", "transform": "none"},
    "celeba": {"split": "train", "transform": f"center_crop({CELEBA_CROP}),resize({CELEBA_SIZE},bilinear)"},
    "celeba64": {"split": "train", "transform": f"center_crop({CELEBA_CROP}),resize({CELEBA64_SIZE},bilinear)"},
}

_LAYOUT_HINTS = {
    "mnist": "ROOT/MNIST/raw/ holding train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (the .gz files unpacked)",
    "cifar10": "ROOT/cifar-10-batches-py/ holding data_batch_1..5, test_batch and batches.meta "
    "(cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, unpacked)",
    "celeba": "ROOT/celeba/ holding img_align_celeba/ (the aligned JPEGs) and list_eval_partition.txt, "
    "identity_CelebA.txt, list_attr_celeba.txt, list_bbox_celeba.txt, list_landmarks_align_celeba.txt "
    "(from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html; torchvision's own download needs "
    "`pip install gdown` and is often refused by Google Drive quotas)",
}


class SourceError(UserError):
    """A source that cannot be read: missing files, an unreadable image (named), bad contents."""


class DamagedSource(SourceError, DamagedInput):
    """A source file that does not decode (named); exit 2 even mid-preparation."""


class SourceUsageError(SourceError):
    """Options that do not fit the dataset (unknown name, a missing ``--image-size``, ...)."""


@dataclass(frozen=True)
class SourceSpec:
    """What a source produces, known before (or without) decoding any image.

    ``num_rows`` is ``None`` where it is only known once the source is loaded (the
    torchvision datasets). ``identity`` is what makes two preparations the same dataset
    (compared between runs: dataset, split, transform, and for imagefolder a fingerprint of
    the file list); ``details`` is informational and recorded in the manifest's ``source``.
    ``entries`` (imagefolder only) holds ``(relative path, label)`` per row, in row order.
    """

    name: str
    height: int
    width: int
    channels: int
    num_rows: int | None
    identity: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    entries: tuple[tuple[str, int | None], ...] = field(default=(), repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)``."""
        return (self.height, self.width, self.channels)

    def summary(self) -> str:
        rows = "" if self.num_rows is None else f", {self.num_rows} rows"
        return f"{self.name} ({self.height}x{self.width}x{self.channels}{rows})"


class ImageSource:
    """A loaded source: ``spec`` (with ``num_rows`` known) and random access by row range."""

    def __init__(self, spec: SourceSpec):
        self.spec = spec

    def __len__(self) -> int:
        return int(self.spec.num_rows or 0)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, list[int | None]]:
        """Rows ``start .. stop-1``: ``(n, H, W, C)`` uint8 images and ``n`` labels (int or None)."""
        raise NotImplementedError


class ArraySource(ImageSource):
    """A source held in memory: ``images (N, H, W, C)`` uint8 and ``labels (N,)`` (or None)."""

    def __init__(self, spec: SourceSpec, images: np.ndarray, labels: Sequence[int] | np.ndarray | None):
        if images.ndim != 4 or images.dtype != np.uint8:
            raise SourceError(f"{spec.name}: expected (N, H, W, C) uint8 images, got {images.shape} {images.dtype}")
        super().__init__(replace(spec, num_rows=int(images.shape[0])))
        self.images = images
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, list[int | None]]:
        labels: list[int | None] = (
            [None] * (stop - start) if self.labels is None else [int(v) for v in self.labels[start:stop]]
        )
        return self.images[start:stop], labels


class FileSource(ImageSource):
    """A source of image files decoded on demand (a few threads; PIL releases the GIL)."""

    def __init__(
        self,
        spec: SourceSpec,
        paths: Sequence[str],
        labels: Sequence[int | None],
        load: Callable[[str], np.ndarray],
    ):
        super().__init__(replace(spec, num_rows=len(paths)))
        self.paths, self.labels, self.load = list(paths), list(labels), load
        self.workers = max(1, min(8, os.cpu_count() or 1))

    def read(self, start: int, stop: int) -> tuple[np.ndarray, list[int | None]]:
        paths = self.paths[start:stop]
        if self.workers == 1 or len(paths) < 16:
            images = [self.load(p) for p in paths]
        else:
            with ThreadPoolExecutor(self.workers) as pool:
                images = list(pool.map(self.load, paths))
        return np.stack(images), self.labels[start:stop]


def default_data_root() -> str:
    """Where torchvision datasets live when no root is given: ``$NCSN_DATA_ROOT`` or ``~/.cache/ncsn_ray/data``."""
    return str(Path(os.environ.get("NCSN_DATA_ROOT") or "~/.cache/ncsn_ray/data").expanduser())


def static_spec(dataset: str, *, image_size: int | None = None, channels: int | None = None) -> SourceSpec:
    """The name and shape a dataset will have, from the options alone (no file is touched).

    Raises :class:`SourceUsageError` for an unknown dataset or options that do not fit it:
    imagefolder needs ``image_size`` (channels default 3, must be 1 or 3); the fixed-shape
    datasets accept ``image_size``/``channels`` only when equal to their native shape.
    """
    if dataset not in DATASETS:
        raise SourceUsageError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if image_size is not None and int(image_size) < 1:
        raise SourceUsageError(f"--image-size must be a positive number of pixels, got {image_size}")
    if channels is not None and int(channels) not in (1, 3):
        raise SourceUsageError(f"--channels must be 1 (grey) or 3 (RGB), got {channels}")
    if dataset == "imagefolder":
        if image_size is None:
            raise SourceUsageError("imagefolder needs --image-size S (images are resized to S x S)")
        size, chans = int(image_size), int(channels if channels is not None else 3)
        return SourceSpec("imagefolder", size, size, chans, None, {"dataset": "imagefolder"})
    h, w, c = _NATIVE_SHAPES[dataset]
    if image_size is not None and (int(image_size) != h or int(image_size) != w):
        raise SourceUsageError(f"{dataset} images are {h}x{w}; --image-size {image_size} applies to imagefolder only")
    if channels is not None and int(channels) != c:
        raise SourceUsageError(f"{dataset} images have {c} channel(s); --channels {channels} applies to imagefolder only")
    rows = DIGITS_ROWS if dataset == "digits" else None
    return SourceSpec(dataset, h, w, c, rows, {"dataset": dataset, **_IDENTITY[dataset]})


def describe(
    dataset: str,
    *,
    root: str | os.PathLike | None = None,
    image_size: int | None = None,
    channels: int | None = None,
) -> SourceSpec:
    """:func:`static_spec` plus what a cheap look at the files tells: for imagefolder the
    sorted file list, labels, row count and a fingerprint (no image is decoded)."""
    spec = static_spec(dataset, image_size=image_size, channels=channels)
    if dataset != "imagefolder":
        root_used = None if dataset == "digits" else str(Path(root or default_data_root()).expanduser().resolve())
        return replace(spec, details={"root": root_used} if root_used else {})
    if root is None:
        raise SourceUsageError("imagefolder needs --root DIR (the folder of images)")
    folder = Path(root).expanduser().resolve()
    entries = _scan_folder(folder)
    digest = hashlib.sha256()
    for rel, label in entries:
        size = (folder / rel).stat().st_size
        digest.update(f"{rel}\t{label}\t{size}\n".encode())
    identity = {
        "dataset": "imagefolder",
        "split": "all",
        "transform": f"center_crop(square),resize({spec.height},bilinear),{'L' if spec.channels == 1 else 'RGB'}",
        "fingerprint": digest.hexdigest(),
    }
    labelled = entries[0][1] is not None
    details = {"root": str(folder), "labels": "sub-folder index" if labelled else None}
    return replace(spec, num_rows=len(entries), identity=identity, details=details, entries=tuple(entries))


def open_source(spec: SourceSpec, *, root: str | os.PathLike | None = None, download: bool = True) -> ImageSource:
    """Load the source described by ``spec`` (from :func:`describe`), downloading if needed and allowed.

    The returned source's ``spec.num_rows`` is the actual row count; its shape is checked
    against ``spec``.
    """
    if spec.name == "digits":
        source: ImageSource = _open_digits(spec)
    elif spec.name == "imagefolder":
        source = _open_imagefolder(spec)
    else:
        data_root = Path(root or default_data_root()).expanduser().resolve()
        opener = {"mnist": _open_mnist, "cifar10": _open_cifar10, "celeba": _open_celeba,
                  "celeba64": _open_celeba}[spec.name]
        source = opener(spec, data_root, download)
    if isinstance(source, ArraySource) and source.images.shape[1:] != spec.shape:
        raise SourceError(
            f"{spec.name}: the source holds images of shape {source.images.shape[1:]}, expected {spec.shape}"
        )
    if spec.num_rows is not None and source.spec.num_rows != spec.num_rows:
        raise SourceError(f"{spec.name}: the source holds {source.spec.num_rows} rows, expected {spec.num_rows}")
    if not source.spec.num_rows:
        raise SourceError(f"{spec.name}: the source holds no images")
    return source


# --------------------------------------------------------------------------- digits


def _open_digits(spec: SourceSpec) -> ArraySource:
    from sklearn.datasets import load_digits

    digits = load_digits()
    values = np.asarray(digits.images, dtype=np.float64)  # (1797, 8, 8), 0..16
    images = np.floor(values * 255.0 / 16.0 + 0.5).clip(0, 255).astype(np.uint8)[..., None]
    return ArraySource(spec, images, digits.target)


# --------------------------------------------------------------------------- torchvision


def _torchvision_load(name: str, root: Path, download: bool, build: Callable[[bool], Any]) -> Any:
    """``build(download)`` -> a torchvision dataset; first from the files, then downloading if allowed."""
    try:
        return build(False)
    except Exception as err:  # torchvision reports missing or corrupt files as RuntimeError
        if not download:
            raise SourceError(
                _missing_message(name, root, f"({_reason(err)}) and downloading is off (--no-download)")
            ) from None
    try:
        return build(True)
    except Exception as err:  # no internet, refused, gdown missing, bad checksum, ...
        raise SourceError(_missing_message(name, root, f"and downloading them failed ({_reason(err)})")) from None


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split())
    text = text.split(" You can use download=True")[0].rstrip(".")  # torchvision's hint does not apply here
    return (text[:300] or type(err).__name__)


def _missing_message(name: str, root: Path, what: str) -> str:
    return (
        f"{name}: no usable dataset files under {root} {what}. Either re-run where the internet is "
        f"reachable (the files are downloaded into --root), or put them under a folder ROOT yourself "
        f"as {_LAYOUT_HINTS[name]}, and pass --root ROOT."
    )


def _open_mnist(spec: SourceSpec, root: Path, download: bool) -> ArraySource:
    from torchvision.datasets import MNIST

    ds = _torchvision_load("mnist", root, download, lambda dl: MNIST(str(root), train=True, download=dl))
    images = ds.data.numpy().astype(np.uint8)[..., None]  # (N, 28, 28, 1)
    return ArraySource(spec, images, ds.targets.numpy())


def _open_cifar10(spec: SourceSpec, root: Path, download: bool) -> ArraySource:
    from torchvision.datasets import CIFAR10

    ds = _torchvision_load("cifar10", root, download, lambda dl: CIFAR10(str(root), train=True, download=dl))
    return ArraySource(spec, np.ascontiguousarray(ds.data, dtype=np.uint8), ds.targets)  # (N, 32, 32, 3)


def _open_celeba(spec: SourceSpec, root: Path, download: bool) -> FileSource:
    from torchvision.datasets import CelebA

    ds = _torchvision_load(
        "celeba", root, download, lambda dl: CelebA(str(root), split="train", target_type=[], download=dl)
    )
    folder = root / "celeba" / "img_align_celeba"
    paths = [str(folder / name) for name in ds.filename]

    size = spec.height  # 32 (NCSN) or 64 (celeba64, NCSNv2)

    def load(path: str) -> np.ndarray:
        return load_image(path, channels=3, crop=CELEBA_CROP, size=size)

    return FileSource(spec, paths, [None] * len(paths), load)


# --------------------------------------------------------------------------- imagefolder


def _scan_folder(folder: Path) -> list[tuple[str, int | None]]:
    """``(relative posix path, label)`` for every image below ``folder``, sorted by path."""
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise SourceError(f"imagefolder: --root {folder} {what}")
    rels: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                rels.append(Path(dirpath, name).relative_to(folder).as_posix())
    rels.sort()
    if not rels:
        raise SourceError(
            f"imagefolder: no image files ({', '.join(IMAGE_EXTENSIONS)}) found under {folder}"
        )
    top_level = [r for r in rels if "/" not in r]
    classes = sorted({r.split("/", 1)[0] for r in rels if "/" in r})
    if classes and top_level:
        raise SourceError(
            f"imagefolder: {folder} mixes images directly inside it (e.g. {top_level[0]}) with images in "
            f"sub-folders (e.g. {classes[0]}/); put every image in a class sub-folder (labelled) or none (unlabelled)"
        )
    index = {name: k for k, name in enumerate(classes)}
    return [(r, index[r.split("/", 1)[0]] if classes else None) for r in rels]


def _open_imagefolder(spec: SourceSpec) -> FileSource:
    folder = Path(spec.details["root"])
    paths = [str(folder / rel) for rel, _ in spec.entries]
    labels = [label for _, label in spec.entries]

    def load(path: str) -> np.ndarray:
        return load_image(path, channels=spec.channels, crop="square", size=spec.height)

    return FileSource(spec, paths, labels, load)


def load_image(path: str, *, channels: int, crop: int | str, size: int) -> np.ndarray:
    """One file -> ``(size, size, channels)`` uint8: centre crop (``crop`` pixels, or the largest
    square), then bilinear resize. Crop offsets round as torchvision's ``CenterCrop``."""
    try:
        with Image.open(path) as img:
            img.load()
            img = _to_mode(img, channels)
    except Exception as err:  # PIL raises OSError, ValueError, DecompressionBombError, SyntaxError...
        raise DamagedSource(f"{path}: cannot read image ({type(err).__name__}: {err})") from None
    w, h = img.size
    side_w, side_h = (min(w, h), min(w, h)) if crop == "square" else (int(crop), int(crop))
    if (side_w, side_h) != (w, h):
        if side_w > w or side_h > h:
            raise SourceError(f"{path}: image is {w}x{h}, smaller than the {side_w}x{side_h} centre crop")
        top, left = int(round((h - side_h) / 2.0)), int(round((w - side_w) / 2.0))
        img = img.crop((left, top, left + side_w, top + side_h))
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if channels == 1 else arr


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert to ``L`` (1 channel) or ``RGB`` (3); transparent pixels are composited over white."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("L" if channels == 1 else "RGB")
