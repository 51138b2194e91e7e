"""Faults around reading and writing: leftovers of killed writers, permissions of exported folders, odd entries in
input folders (pipes, sockets, devices, broken links, link loops, unreadable folders), multi-frame files and the
warnings Pillow raises about damaged files."""

import errno
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colordiff import io as cio
from colordiff.io import IMAGE_SUFFIXES, ImageReadError, atomic_folder, atomic_write, read_image

ROOT = Path(__file__).resolve().parents[1]
HEX32 = "0123456789abcdef" * 2


def scan_folder(folder, exclude=None):
    """colordiff.files.scan_folder for image files, as colorize scans an INPUT folder."""
    from colordiff.files import scan_folder

    return scan_folder(folder, IMAGE_SUFFIXES, exclude=exclude)


def remove_stale_temps(*args, **kwargs):
    from colordiff.files import remove_stale_temps

    return remove_stale_temps(*args, **kwargs)


def make_image(path: Path, h: int = 16, w: int = 16) -> Path:
    """A small valid image at path (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(path)
    return path


def set_age(path: Path, seconds: float) -> None:
    """Make path's modification time `seconds` old (the link itself is not followed)."""
    when = time.time() - seconds
    os.utime(path, (when, when), follow_symlinks=False)


def killed_writer(tmp_path: Path, body: str) -> None:
    """Run `body` in a child process that SIGKILLs itself inside it, as a killed colorize run would."""
    code = f"import os, signal\nfrom pathlib import Path\nfrom colordiff.io import atomic_folder, atomic_write\n{body}"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


# -----------------------------------------------------------------------------
# stale temps


def test_remove_stale_temps_removes_what_killed_writers_left(tmp_path):
    out = tmp_path / "out"
    killed_writer(tmp_path, f"""
with atomic_write(Path({str(out / "photo.png")!r})) as tmp:
    tmp.write_bytes(b"half an image")
    os.kill(os.getpid(), signal.SIGKILL)
""")
    killed_writer(tmp_path, f"""
with atomic_folder(Path({str(out / "model")!r})) as staging:
    (staging / "unet").mkdir(parents=True)
    (staging / "unet" / "weights.safetensors").write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)
""")
    leftovers = sorted(out.iterdir())
    assert len(leftovers) == 2 and all(p.name.startswith(".") for p in leftovers)
    keep = {
        "photo.jpg": "user file",
        ".hidden.tmp": "hidden, but no token",
        f".x.{HEX32[:31]}.tmp": "31 hex digits",
        f".x.{HEX32[:31]}g.tmp": "not hex",
        f".x.{HEX32.upper()}.tmp": "uuid hex is lower case",
        f"x.{HEX32}.tmp": "not hidden",
        f".x.{HEX32}.tmp.bak": "more after .tmp",
        ".x.tmp-1234567": "7 hex digits",
        ".x.tmp-123456789": "9 hex digits",
        ".x.tmp-abcdef12": "a file, not a staging folder",
    }
    for name in keep:
        (out / name).write_text("keep me")
    (out / f".folder.{HEX32}.tmp").mkdir()  # a folder, where the writer makes a file
    for path in out.iterdir():
        set_age(path, 7200)

    removed = remove_stale_temps(out, min_age_s=0)
    assert sorted(removed) == leftovers
    assert sorted(p.name for p in out.iterdir()) == sorted([*keep, f".folder.{HEX32}.tmp"])
    assert all((out / name).read_text() == "keep me" for name in keep)
    assert remove_stale_temps(out, min_age_s=0) == []


def test_remove_stale_temps_spares_live_writers(tmp_path):
    with atomic_write(tmp_path / "a.png") as tmp:
        tmp.write_bytes(b"being written")
        with atomic_folder(tmp_path / "model") as staging:
            staging.mkdir()
            (staging / "big.safetensors").write_bytes(b"being written")
            from colordiff import files

            assert remove_stale_temps(tmp_path) == []  # seconds old: the default grace period keeps them
            assert files.DEFAULT_TEMP_AGE_S == 600

            set_age(tmp, 700)
            set_age(staging, 700)  # the folder is old, but a file in it is still being written
            assert remove_stale_temps(tmp_path) == [tmp]
            assert (staging / "big.safetensors").exists()
            set_age(staging / "big.safetensors", 700)
            assert remove_stale_temps(tmp_path, min_age_s=800) == []
            assert remove_stale_temps(tmp_path) == [staging]
            staging.mkdir()
            (staging / "config.json").write_text("{}")
        tmp.write_bytes(b"done")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "model"]


def test_remove_stale_temps_recursive(tmp_path):
    root = tmp_path / "root"
    deep = root / "a" / "b"
    deep.mkdir(parents=True)
    temp = deep / f".x.png.{HEX32}.tmp"
    temp.write_bytes(b"")
    staging = root / "a" / ".m.tmp-0011aabb"
    (staging / "inner").mkdir(parents=True)
    (staging / "inner" / f".y.{HEX32}.tmp").write_bytes(b"")  # inside a staging folder: removed with it
    linked = tmp_path / "elsewhere"
    linked.mkdir()
    (linked / f".z.{HEX32}.tmp").write_bytes(b"")
    (root / "a" / "link").symlink_to(linked)  # links are not followed
    assert remove_stale_temps(root, min_age_s=0) == []
    assert sorted(remove_stale_temps(root, recursive=True, min_age_s=0)) == sorted([temp, staging])
    assert not temp.exists() and not staging.exists() and (linked / f".z.{HEX32}.tmp").exists()
    assert remove_stale_temps(tmp_path / "missing", recursive=True) == []


# -----------------------------------------------------------------------------
# permissions


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    saved = os.umask(0o022)
    yield os.umask
    os.umask(saved)


def modes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): stat.S_IMODE(p.lstat().st_mode) for p in [folder, *folder.rglob("*")]}


@pytest.fixture(scope="module")
def tiny_pipe():
    import torch

    from colordiff.testing import tiny_colordiff_pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_colordiff_pipeline()
    torch.set_num_threads(threads)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_exported_pipeline_follows_the_umask(tmp_path, umask, tiny_pipe, mask, file_mode, dir_mode):
    from colordiff.pipelines.assemble import save_pipeline_atomically

    umask(mask)
    target = save_pipeline_atomically(tiny_pipe, tmp_path / "model")
    found = modes(target)
    weights = [name for name in found if name.endswith(".safetensors")]
    assert len(weights) >= 3  # unet, vae, text encoder: the files the safetensors library writes
    assert {name: m for name, m in found.items() if m != (dir_mode if (target / name).is_dir() else file_mode)} == {}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_write_and_folder_follow_the_umask(tmp_path, umask):
    umask(0o022)
    with atomic_write(tmp_path / "w.bin") as tmp:
        os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600))  # as the safetensors library creates its files
    assert stat.S_IMODE((tmp_path / "w.bin").stat().st_mode) == 0o644
    with atomic_folder(tmp_path / "f") as staging:
        staging.mkdir(mode=0o700)
        os.close(os.open(staging / "x", os.O_CREAT | os.O_WRONLY, 0o600))
    assert modes(tmp_path / "f") == {".": 0o755, "x": 0o644}


def test_atomic_folder_keeps_the_old_folder_when_nothing_was_staged(tmp_path):
    old = tmp_path / "model"
    old.mkdir()
    (old / "keep").write_text("old")
    with pytest.raises(FileNotFoundError):
        with atomic_folder(old):
            pass  # the writer created nothing
    assert (old / "keep").read_text() == "old"


# -----------------------------------------------------------------------------
# odd files: read_image


def assert_refused(path, *phrases):
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert "\n" not in str(info.value) and str(info.value).startswith(str(path))
    for phrase in phrases:
        assert phrase in info.value.reason, (phrase, info.value.reason)


@pytest.fixture
def short_dir():
    """A folder with a short path: a Unix socket's path must stay under about 100 bytes."""
    with tempfile.TemporaryDirectory(dir="/tmp") as name:
        yield Path(name)


def test_read_image_refuses_pipes_sockets_and_devices(tmp_path, short_dir):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    assert_refused(fifo, "not a regular file", "named pipe")
    sock_path = short_dir / "s.png"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        assert_refused(sock_path, "not a regular file", "socket")
    assert_refused(Path("/dev/null"), "not a regular file", "character device")


def test_read_image_never_blocks_on_a_pipe_swapped_in_after_the_check(tmp_path, monkeypatch):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    monkeypatch.setattr(cio, "_check_file", lambda path: None)  # as if the file were replaced after the check
    result = []

    def read():
        try:
            read_image(fifo)
        except ImageReadError as err:
            result.append(err.reason)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(3)
    blocked = reader.is_alive()
    if blocked:  # release the reader: a writer opening the pipe lets its open() return, closing gives it EOF
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(10)
    assert not blocked, "read_image blocked opening a named pipe"
    assert result and "not a regular file" in result[0]


def test_read_image_names_broken_links_and_loops(tmp_path):
    broken = tmp_path / "gone.jpg"
    broken.symlink_to(tmp_path / "missing.jpg")
    assert_refused(broken, "broken symbolic link")
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    assert_refused(loop, "symbolic link loop")
    assert_refused(tmp_path / "missing.jpg", "no such file")
    good = tmp_path / "good.png"
    good.symlink_to(make_image(tmp_path / "real.png"))
    assert read_image(good).size == (16, 16)


# -----------------------------------------------------------------------------
# odd files: scanning folders


def test_scan_folder_reports_odd_entries_and_follows_links(tmp_path, short_dir):
    root = tmp_path / "in"
    outside = tmp_path / "outside"
    make_image(root / "a.jpg")
    (root / "notes.txt").write_text("a sidecar")
    make_image(root / ".hidden.jpg")
    make_image(root / ".cache" / "x.jpg")
    make_image(root / "sub" / "c.PNG")
    os.mkfifo(root / "sub" / "pipe.jpg")
    os.mkfifo(root / "sub" / "pipe")  # no image suffix: not an input, nothing to report
    (root / "sub" / "up").symlink_to("..")  # a loop through a folder link
    (root / "broken.jpg").symlink_to(tmp_path / "missing.jpg")
    (root / "gone").symlink_to(tmp_path / "missing-folder")
    (root / "loop.jpg").symlink_to(root / "loop.jpg")
    (root / "link.jpg").symlink_to(make_image(outside / "real.jpg"))
    make_image(outside / "dir" / "d.webp")
    (root / "linkdir").symlink_to(outside / "dir")
    make_image(root / "out" / "e.jpg")  # the output folder
    (root / "outlink").symlink_to(root / "out")
    (root / "e.jpg").symlink_to(root / "out" / "e.jpg")  # a file that lives in the output folder
    sock = short_dir / "s.jpg"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))
        (root / "sock.jpg").symlink_to(sock)
        files, odd = scan_folder(root, exclude=root / "out")

    assert files == [root / "a.jpg", root / "link.jpg", root / "linkdir" / "d.webp", root / "sub" / "c.PNG"]
    assert odd == [
        (root / "broken.jpg", "broken symbolic link"),
        (root / "gone", "broken symbolic link"),
        (root / "loop.jpg", "symbolic link loop"),
        (root / "sock.jpg", "not a regular file (socket)"),
        (root / "sub" / "pipe.jpg", "not a regular file (named pipe)"),
        (root / "sub" / "up", "symbolic link loop"),
    ]
    files, _ = scan_folder(root)  # without exclude the output folder is an input folder like any other
    assert [f.relative_to(root).as_posix() for f in files] == [
        "a.jpg", "e.jpg", "link.jpg", "linkdir/d.webp", "out/e.jpg", "outlink/e.jpg", "sub/c.PNG"]


def test_scan_folder_matches_collect_inputs_on_plain_trees(tmp_path):
    root = tmp_path / "photos"
    names = ["b.jpg", "a/z.png", "a.jpg", "a/b/c.tif", "A.JPEG", "x.gif", "x.bmp", "m/.n/o.jpg", "y.tiff", "y.webp"]
    for name in names:
        if name.endswith(".gif"):
            (root / name).write_bytes(b"GIF89a")  # not an input suffix: never looked at
        else:
            make_image(root / name)
    (root / "out").mkdir()
    make_image(root / "out" / "done.png")
    files, odd = scan_folder(root, exclude=root / "out")
    assert odd == []
    assert files == sorted(root / n for n in names if n != "x.gif" and "/.n/" not in n)
    assert scan_folder(root, exclude=root)[0] == []  # an input inside the output folder gives nothing
    assert scan_folder(root, exclude=tmp_path)[0] == []


def test_scan_folder_reports_unreadable_folders(tmp_path, monkeypatch):
    make_image(tmp_path / "ok" / "a.png")
    make_image(tmp_path / "locked" / "b.png")
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    files, odd = scan_folder(tmp_path)
    assert files == [tmp_path / "ok" / "a.png"]
    assert odd == [(tmp_path / "locked", "cannot read folder: Permission denied")]
    assert scan_folder(tmp_path / "locked") == ([], [(tmp_path / "locked", "cannot read folder: Permission denied")])


# -----------------------------------------------------------------------------
# multi-frame files


@pytest.mark.parametrize("suffix, options", [(".gif", {}), (".webp", {"lossless": True}), (".tif", {}), (".png", {})])
def test_multi_frame_files_read_the_first_frame_and_count_them(tmp_path, suffix, options):
    frames = [Image.fromarray(np.full((16, 24, 3), v, np.uint8)) for v in (10, 120, 240, 60)]
    path = tmp_path / f"anim{suffix}"
    frames[0].save(path, save_all=True, append_images=frames[1:], **options)
    image = read_image(path)
    assert image.frames == 4 and image.size == (24, 16)
    np.testing.assert_allclose(image.rgb, 10 / 255, atol=1 / 255)  # the first frame
    assert read_image(make_image(tmp_path / f"still{suffix}")).frames == 1


def test_camera_jpeg_with_extra_images_counts_as_one_frame(tmp_path):
    path = tmp_path / "camera.jpg"
    big, preview = Image.new("RGB", (32, 32), (200, 10, 10)), Image.new("RGB", (16, 16))
    big.save(path, format="MPO", save_all=True, append_images=[preview])
    with Image.open(path) as img:
        assert img.format == "MPO" and img.n_frames == 2
    image = read_image(path)
    assert image.format == "JPEG" and image.frames == 1 and image.size == (32, 32)


# -----------------------------------------------------------------------------
# warnings from damaged files


def corrupt_exif_jpeg(path: Path) -> Path:
    """A JPEG whose EXIF block claims more tags than it holds: Pillow warns "Corrupt EXIF data" reading it."""
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display; the entry before the damage still counts
    data = bytearray(exif.tobytes())
    assert data[:6] == b"Exif\x00\x00" and data[14:16] == b"\x00\x01"  # big-endian TIFF header, one IFD entry
    data[14:16] = (200).to_bytes(2, "big")
    Image.fromarray(np.full((16, 32, 3), 90, np.uint8)).save(path, exif=bytes(data), quality=95)
    return path


def test_corrupt_exif_warning_is_kept_with_the_image(tmp_path, capsys):
    path = corrupt_exif_jpeg(tmp_path / "bad_exif.jpg")
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        image = read_image(path)
    assert image.warnings == ["Corrupt EXIF data. Expecting to read 12 bytes but only got 4."]  # one line, once
    assert image.size == (16, 32)  # the orientation was still applied
    assert [str(w.message) for w in escaped] == []
    assert capsys.readouterr().err == ""
    assert read_image(make_image(tmp_path / "fine.jpg")).warnings == []


def test_warnings_stay_with_their_thread(tmp_path):
    bad = corrupt_exif_jpeg(tmp_path / "bad.jpg")
    good = make_image(tmp_path / "good.jpg")
    stop = threading.Event()
    sent = []

    def other_work():  # another thread warning while images are read, as a pipeline running beside the reader
        while not stop.is_set() or not sent:
            warnings.warn(f"from elsewhere {len(sent)}", RuntimeWarning, stacklevel=1)
            sent.append(1)
            time.sleep(0.001)

    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        worker = threading.Thread(target=other_work)
        worker.start()
        with ThreadPoolExecutor(max_workers=4) as pool:
            loaded = list(pool.map(read_image, [bad, good] * 20))
        stop.set()
        worker.join()
    assert [len(image.warnings) for image in loaded] == [1, 0] * 20
    assert all("Corrupt EXIF data" in image.warnings[0] for image in loaded[::2])
    elsewhere = [w for w in escaped if str(w.message).startswith("from elsewhere")]
    assert len(elsewhere) == len(sent) and all(w.filename == __file__ for w in elsewhere)
    assert [w for w in escaped if w not in elsewhere] == []


def test_warnings_outside_read_image_are_untouched(tmp_path):
    read_image(corrupt_exif_jpeg(tmp_path / "bad.jpg"))
    with pytest.warns(UserWarning, match="plain") as record:
        warnings.warn("plain", UserWarning, stacklevel=1)
    assert record[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning):
            warnings.warn("escalated", UserWarning, stacklevel=1)


def test_reading_leaves_the_interpreters_warnings_alone(tmp_path):
    import PIL.TiffImagePlugin

    original = warnings.warn
    assert read_image(corrupt_exif_jpeg(tmp_path / "bad.jpg")).warnings  # heard through Pillow's modules only
    assert warnings.warn is original and warnings.warn.__module__ == "_warnings"  # the built-in one
    assert PIL.TiffImagePlugin.warnings is not warnings


def test_atomic_folder_removes_what_a_killed_export_of_the_same_folder_left(tmp_path):
    stale, other, fresh = (tmp_path / ".model.tmp-0123abcd", tmp_path / ".other.tmp-0123abcd",
                           tmp_path / ".model.tmp-89abcdef")
    for folder in (stale, other, fresh):
        folder.mkdir()
        (folder / "weights.safetensors").write_bytes(b"half")
    for path in (stale, stale / "weights.safetensors", other, other / "weights.safetensors"):
        os.utime(path, (0, 0))
    with atomic_folder(tmp_path / "model") as staging:
        staging.mkdir()
        (staging / "config.json").write_text("{}")
    assert not stale.exists()  # the same target's, long untouched
    assert other.exists() and fresh.exists()  # another target's, and one a live export may be writing
    assert (tmp_path / "model" / "config.json").is_file()
