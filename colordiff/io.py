"""
Robust image reading and atomic writing.

read_image turns any supported file into a float32 RGB array in [0, 1] (plus alpha when the file has one), applies
the EXIF orientation, and refuses everything else with one ImageReadError whose message is a single line naming the
file and the reason. write_image and atomic_write never leave a half-written file behind: data goes to a hidden temp
file in the target's folder and is renamed onto the target only once complete (colordiff.files.remove_stale_temps
clears what a killed process left).
"""

import errno
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from colordiff.files import (
    remove_stale_temps,
    special_file_reason,
    staging_folder_for,
    stat_failure_reason,
    temp_file_for,
)
from colordiff.pillow_warnings import recorded_pillow_warnings

# Decompression-bomb guard: a tiny compressed file can declare billions of pixels and exhaust memory when decoded,
# so read_image checks width * height from the header against this limit before decoding any pixel data.
DEFAULT_MAX_PIXELS = 100_000_000
MIN_SIDE = 8  # images smaller than this on either side are refused (icons, tracking pixels, broken thumbnails)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"}

# suffix -> PIL format name used by write_image
_SAVE_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
}
# Pillow silently drops alpha when writing BMP, and JPEG has none, so both refuse an alpha channel
_ALPHA_FORMATS = {"PNG", "WEBP", "TIFF"}
# formats whose suffix an output may keep (see output_suffix), with the suffixes that belong to each
_KEEP_SUFFIXES = {"JPEG": {".jpg", ".jpeg"}, "PNG": {".png"}, "WEBP": {".webp"}, "TIFF": {".tif", ".tiff"}}

# 16-bit (or wider) single-channel modes; all are scaled by 1/65535 ("I" is 32-bit int, assumed to hold 16-bit data)
_WIDE_GRAY_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_GRAY_MODES = {"1", "L", "LA"}
_COLOR_MODES = {"P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"}
_SUPPORTED_MODES = _WIDE_GRAY_MODES | {"F"} | _GRAY_MODES | _COLOR_MODES


class ImageReadError(ValueError):
    """An image file that cannot be used, with the path and a one-line reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = " ".join(str(reason).split())  # PIL messages occasionally span lines; keep logs one line each
        super().__init__(f"{self.path}: {self.reason}")

    def __reduce__(self):
        # the default reduce would call ImageReadError(message) and fail; copying/pickling must pass both fields
        return (type(self), (self.path, self.reason))


@dataclass
class LoadedImage:
    """A decoded image with its source metadata."""

    rgb: np.ndarray  # (H, W, 3) float32 in [0, 1]
    alpha: np.ndarray | None  # (H, W) float32 in [0, 1], or None when the file has no transparency
    format: str  # PIL format name, e.g. "JPEG"
    bit_depth: int  # 8, or 16 for high-precision sources (16-bit / 32-bit int / float grayscale)
    path: Path
    frames: int = 1  # frames or pages in the file (animations, multi-page TIFF); only the first is read
    warnings: list[str] = field(default_factory=list)  # one line each: what the decoder noticed (corrupt EXIF, ...)

    @property
    def size(self) -> tuple[int, int]:
        """Return (width, height), PIL's order."""
        return self.rgb.shape[1], self.rgb.shape[0]


def is_image_path(path: str | os.PathLike) -> bool:
    """Tell whether path has one of the IMAGE_SUFFIXES, ignoring case."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


# -----------------------------------------------------------------------------
# reading


def _check_file(path: Path) -> None:
    """Raise ImageReadError unless path is a non-empty regular file; looks with stat only, never opens."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ImageReadError(path, stat_failure_reason(path, exc)) from exc
    if stat.S_ISDIR(st.st_mode):
        raise ImageReadError(path, "is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):  # opening a pipe blocks until a writer comes; a device may never end
        raise ImageReadError(path, special_file_reason(st.st_mode))
    if st.st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")


def _open_regular(path: Path):
    """Open path for reading in binary, or raise ImageReadError; refuses anything but a regular file without
    blocking, even one swapped in after _check_file looked (O_NONBLOCK makes opening a pipe return at once)."""
    nonblock = getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, os.O_RDONLY | nonblock | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise ImageReadError(path, f"cannot open: {exc.strerror or exc}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ImageReadError(path, special_file_reason(mode))
        if nonblock:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_dimensions(path: Path, size: tuple[int, int], max_pixels: int | None, min_side: int) -> None:
    """Raise ImageReadError when the header size is too large or too small."""
    w, h = size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageReadError(
            path, f"{w} x {h} = {w * h} pixels exceeds the limit of {max_pixels} (decompression-bomb guard)"
        )
    if min(w, h) < min_side:
        raise ImageReadError(path, f"{w} x {h} is smaller than the minimum side of {min_side} pixels")


def _check_mode(path: Path, mode: str) -> None:
    """Raise ImageReadError for a pixel mode read_image cannot convert to RGB."""
    if mode not in _SUPPORTED_MODES:
        raise ImageReadError(path, f"unsupported image mode {mode!r}")


def _to_arrays(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Convert a decoded PIL image to (rgb (H, W, 3), alpha (H, W) or None, bit depth)."""
    mode = img.mode
    if mode in _WIDE_GRAY_MODES:
        gray = np.clip(np.asarray(img).astype(np.float32), 0, 65535) / 65535  # (H, W), keeps 16-bit precision
        return _gray_to_rgb(gray), None, 16
    if mode == "F":
        # float images carry no scale of their own; assume [0, 1] and clamp (NaN becomes 0)
        gray = np.clip(np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0), 0.0, 1.0)  # (H, W)
        return _gray_to_rgb(gray), None, 16
    # the rest is 8-bit (read_image refused other modes); has_transparency_data also covers P/L/RGB images whose
    # transparency lives in img.info (PNG tRNS, GIF)
    if mode in _GRAY_MODES:
        target = "LA" if img.has_transparency_data else "L"
    else:
        target = "RGBA" if img.has_transparency_data else "RGB"
    arr = np.asarray(img if mode == target else img.convert(target)).astype(np.float32)  # (H, W, C) or (H, W)
    arr /= 255  # in place: one full-size float copy, not two (the same values as `/ 255`)
    if target == "L":
        return _gray_to_rgb(arr), None, 8
    if target == "LA":
        return _gray_to_rgb(arr[..., 0]), np.ascontiguousarray(arr[..., 1]), 8
    if target == "RGB":
        return arr, None, 8
    return np.ascontiguousarray(arr[..., :3]), np.ascontiguousarray(arr[..., 3]), 8


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """Repeat a (H, W) gray array into (H, W, 3)."""
    return np.repeat(gray[..., None], 3, axis=-1)


def _count_frames(src: Image.Image) -> int:
    """Frames or pages in src, 1 for a still image; src stays at its first frame."""
    if src.format == "MPO":
        return 1  # a camera JPEG's extra images are previews, depth or gain maps: the photo is the first
    try:
        return max(1, int(getattr(src, "n_frames", 1)))
    except Exception:  # damage after the first frame: that frame may still be whole, load() will tell
        src.seek(0)
        return 1


def read_image(
    path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE
) -> LoadedImage:
    """Read an image file (the first frame of an animation or multi-page file) into a LoadedImage, or raise
    ImageReadError with a one-line reason; what the decoder warns about the file goes to LoadedImage.warnings."""
    # PIL's own guard (a warning above Image.MAX_IMAGE_PIXELS, an error above twice that) still runs inside
    # Image.open; its error, and its warning when the warning filters make it an exception, become ImageReadError.
    # max_pixels=None leaves only PIL's guard.
    path = Path(path)
    _check_file(path)
    fh = _open_regular(path)
    with fh, recorded_pillow_warnings() as notes:
        try:
            with Image.open(fh) as src:
                # header only: nothing is decoded yet, so a decompression bomb costs nothing
                _check_dimensions(path, src.size, max_pixels, min_side)
                _check_mode(path, src.mode)
                frames = _count_frames(src)  # before load(): counting seeks, and must not move the loaded frame
                src.load()  # decode everything now, so truncation is caught here and not at first use
                # MPO is how Pillow names camera JPEGs that carry extra frames; the first frame is a plain JPEG
                fmt = "JPEG" if src.format == "MPO" else str(src.format)
                img = ImageOps.exif_transpose(src)  # a transposed copy, or a plain copy without orientation
                _check_mode(path, img.mode)  # again, in case the decoder settled on another mode while loading
        except ImageReadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageReadError(path, f"{exc} (decompression-bomb guard)") from exc
        except UnidentifiedImageError as exc:
            raise ImageReadError(path, "not a recognised image format") from exc
        except MemoryError:
            raise
        except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, zlib.error, ... on damaged data
            raise ImageReadError(path, f"truncated or corrupt image data: {exc}") from exc
        rgb, alpha, bit_depth = _to_arrays(img)
    return LoadedImage(rgb, alpha, fmt, bit_depth, path, frames=frames, warnings=notes)


# -----------------------------------------------------------------------------
# writing


def _current_umask() -> int:
    """The process umask; read from /proc where it can be, since os.umask can only read it by setting it (which
    would briefly change it for every other thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def umask_permissions(path: str | os.PathLike) -> None:
    """Give path (a file, or every file and folder under a folder) the modes a plain open() would: 0o666 (files) and
    0o777 (folders) less the process umask. The safetensors library writes 0o600, which would lock other users out
    of a shared model folder."""
    umask = _current_umask()
    root = Path(path)
    entries = [root] if root.is_file() else [root, *root.rglob("*")]
    for entry in entries:
        if entry.is_symlink():
            continue
        entry.chmod((0o777 if entry.is_dir() else 0o666) & ~umask)


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to path; rename it onto path on success, delete it on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # same folder so os.replace is an atomic rename on one filesystem; hidden and .tmp so folder scans skip it
    tmp = temp_file_for(path)
    try:
        yield tmp
        umask_permissions(tmp)  # the writer may be the safetensors library, which creates 0o600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden staging folder next to path; on success it replaces path (an existing folder there is removed
    first), on failure it is deleted: the folder at path is whole or absent (or the old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, target=path.name)  # what a killed export of this folder left
    staging = staging_folder_for(path)
    try:
        yield staging
        if not staging.is_dir():  # checked before the old folder goes: a writer that made nothing must not erase it
            raise FileNotFoundError(errno.ENOENT, "nothing was written to the staging folder", str(staging))
        umask_permissions(staging)  # safetensors writes 0o600: a shared model folder must be readable by others
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _to_uint8(x: np.ndarray, name: str) -> np.ndarray:
    """Convert a float array in [0, 1] (rounded, clipped) or a uint8 array to uint8."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name} must be float in [0, 1] or uint8, got {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return np.rint(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)  # rint: 0.999 -> 255, not 254


def write_image(path: str | os.PathLike, rgb: np.ndarray, alpha: np.ndarray | None = None, quality: int = 95) -> Path:
    """Save rgb (H, W, 3) and optional alpha (H, W) atomically, in the format named by path's suffix."""
    path = Path(path)
    fmt = _SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: cannot tell the image format from suffix {path.suffix!r}")
    rgb8 = _to_uint8(rgb, "rgb")
    if rgb8.ndim != 3 or rgb8.shape[-1] != 3:
        raise ValueError(f"rgb must be shaped (H, W, 3), got {rgb8.shape}")
    if alpha is not None:
        if fmt not in _ALPHA_FORMATS:
            raise ValueError(f"{path}: {fmt} cannot store an alpha channel; use .png, .webp or .tif")
        alpha8 = _to_uint8(alpha, "alpha")
        if alpha8.shape != rgb8.shape[:2]:
            raise ValueError(f"alpha must be shaped {rgb8.shape[:2]}, got {alpha8.shape}")
        img = Image.fromarray(np.dstack([rgb8, alpha8]))  # (H, W, 4) -> RGBA
    else:
        img = Image.fromarray(np.ascontiguousarray(rgb8))  # (H, W, 3) -> RGB
    options = {"JPEG": {"quality": quality}, "WEBP": {"quality": quality, "lossless": False}}.get(fmt, {})
    with atomic_write(path) as tmp:
        img.save(tmp, format=fmt, **options)  # format given explicitly: the temp name ends in .tmp
    return path


def output_suffix(input_path: str | os.PathLike, loaded_format: str, has_alpha: bool) -> str:
    """Return the suffix for an output made from input_path: its own for JPEG/PNG/WEBP/TIFF, else ".png"."""
    suffix = Path(input_path).suffix
    fmt = loaded_format.upper()
    if fmt == "JPEG" and has_alpha:
        return ".png"  # JPEG cannot hold the alpha we must keep
    # keep the suffix only when it really names the format: a PNG saved as photo.jpg gets .png, not a JPEG
    if suffix.lower() in _KEEP_SUFFIXES.get(fmt, set()):
        return suffix
    return ".png"
