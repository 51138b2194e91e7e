"""`colordiff demo`: the app's functions, its API through gradio_client, and the page in a real (headless) Chromium.

The server runs in this process (one per module, a tiny random model, 2 steps at 64 px) on a free port of
127.0.0.1. Screenshots of each browser state are written under the test's tmp_path (pytest keeps the last runs').
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from colordiff.cli import build_parser, main
from colordiff.color import rgb_to_lab
from colordiff.config import ConfigError, load_config
from colordiff.demo.core import Colorizer, DemoConfig, DemoError, PriorEdits, read_upload, unique_names
from colordiff.demo.view import gallery_items, instance_overlay, priors_summary, result_at, status_text
from colordiff.demo_cli import demo_config
from colordiff.semantics.priors import ImagePriors, Instances

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "photos"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FAST = ["steps=2", "resolution=64"]
WAIT = 60  # seconds any page state may take on a busy 2-core machine


# -- fixtures -----------------------------------------------------------------------------------------------------
def _photo(path: Path, source: str = "kodim05.jpg", size=(96, 64), alpha: bool = False) -> Path:
    """A real photo from examples/, shrunk (and with a gradient alpha when asked), saved losslessly as PNG."""
    image = Image.open(EXAMPLES / source).convert("RGB").resize(size, Image.BICUBIC)
    if alpha:
        image.putalpha(Image.linear_gradient("L").resize(size))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _L(path: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255
    return rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1))[0].numpy()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _given_priors() -> ImagePriors:
    """Priors of kodim05.png (96 x 64) as a captioner, a classifier and a segmenter might give them."""
    mask = torch.zeros(1, 64, 96, dtype=torch.bool)
    mask[:, :, :48] = True
    return ImagePriors(caption="a man on a motorbike", category="motor scooter",
                       instances=Instances(mask, ["person"], [0.9]))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("photos")
    bad = root / "notes.png"
    bad.write_text("a text file renamed .png")
    sidecar = root / "sidecars" / "kodim05.priors.json"  # as colorize --save-priors writes it
    sidecar.parent.mkdir()
    sidecar.write_text(json.dumps(_given_priors().to_dict()))
    return SimpleNamespace(one=_photo(root / "kodim05.png"), two=_photo(root / "street.png", "usgov_street.jpg",
                                                                          (80, 64)), bad=bad, sidecar=sidecar)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 12-frame camera pan over a real photo, 96 x 64, H.264 in MP4."""
    from colordiff.video.synthetic import camera_frames, write_clip

    photo = np.asarray(Image.open(EXAMPLES / "kodim05.jpg").convert("RGB"))
    return write_clip(tmp_path_factory.mktemp("clip") / "pan.mp4", camera_frames(photo, (96, 64), 12), rate=12)


def _frames(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def colorizer(tiny_model_dir, tmp_path_factory) -> Colorizer:
    config = load_config(DemoConfig, [], [f"model={tiny_model_dir}", *FAST])
    return Colorizer(config, tmp_path_factory.mktemp("demo-work"))


@pytest.fixture(scope="module")
def server(colorizer):
    from colordiff.demo.app import build_app, launch

    app = build_app(colorizer)
    port = _free_port()
    launch(app, colorizer, host="127.0.0.1", port=port, block=False)
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", colorizer=colorizer)
    finally:
        app.close()


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    """Headless Chromium through the system chromedriver; Selenium Manager never runs (nothing is downloaded)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(f"the browser tests need Chromium and chromedriver (apt-get install chromium chromium-driver); "
                    f"missing: {', '.join(missing)}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2100"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    with pytest.MonkeyPatch.context() as patch:  # the environment is restored after the module's tests
        patch.setenv("SE_OFFLINE", "true")  # Selenium Manager: never reach the network
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            driver.get(server.url)
            _wait(lambda: driver.find_element(By.ID, "colorize").is_displayed(), "the page to load")
            yield SimpleNamespace(driver=driver, downloads=downloads)
        finally:
            driver.quit()


# -- the app's functions ------------------------------------------------------------------------------------------
def test_bad_uploads_are_one_line_messages_naming_the_file(tmp_path, photos):
    valid = photos.one.read_bytes()
    (tmp_path / "cut.png").write_bytes(valid[: len(valid) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    cases = {photos.bad: "notes.png: not a recognised image format", tmp_path / "cut.png": "cut.png: truncated",
             tmp_path / "empty.png": "empty.png: empty file"}
    for path, expected in cases.items():
        with pytest.raises(DemoError) as err:
            read_upload(path, path.name, 10_000_000, "cpu")
        assert str(err.value).startswith(expected) and "\n" not in str(err.value), str(err.value)
    with pytest.raises(DemoError, match=r"^kodim05.png: 96 x 64 = 6144 pixels exceeds the limit of 1000"):
        read_upload(photos.one, "kodim05.png", 1000, "cpu")  # too large for max_pixels


def test_unique_names_keep_outputs_apart():
    assert unique_names(["/a/x.png", "/b/x.jpg", "/c/y.png", "/d/X.png"]) == ["x.png", "x_2.jpg", "y.png", "X_3.png"]


def test_config_defaults_files_and_overrides(tmp_path):
    yaml = tmp_path / "demo.yaml"
    yaml.write_text("steps: 7\nseed: 3\nscheduler: euler\nresolution: 128\n")
    args, _ = build_parser().parse_known_args(["demo", "--model", "m", "--config", str(yaml), "guidance_scale=2.5",
                                               "seed=9"])
    config = demo_config(args)
    assert (config.model, config.steps, config.seed, config.scheduler, config.resolution, config.guidance_scale,
            config.num_samples) == ("m", 7, 9, "euler", 128, 2.5, 1)
    assert (args.host, args.port, args.share) == ("127.0.0.1", 7860, False)  # local only, never shared by default
    for override, message in (["steps=0", "steps must be >= 1, got 0"],
                              ["captions=c.jsonl", "captions is not used by the demo"]):
        args, _ = build_parser().parse_known_args(["demo", "--model", "m", override])
        with pytest.raises(ConfigError, match=message):
            demo_config(args)


def test_bad_model_fails_at_start_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "colordiff.demo.app", None)  # the web app must not even be imported
    assert main(["demo", "--model", str(tmp_path / "no-such-model"), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"colordiff: error: cannot load model {tmp_path / 'no-such-model'}")


def test_help_lists_the_safe_defaults(capsys):
    assert main(["demo", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: '127.0.0.1')" in text and "(default: 7860)" in text and "--share" in text


def test_result_equals_the_colorize_command(colorizer, tiny_model_dir, tmp_path):
    """Same file name and seed: the demo's PNG is the colorize command's, pixel for pixel, alpha kept."""
    photo = _photo(tmp_path / "in" / "kodim23.png", "kodim23.jpg", (72, 48), alpha=True)
    session = colorizer.start([photo], colorizer.settings(seed=4))
    ours = session.uploads[0].files[0]
    assert ours.name == "kodim23.png" and session.downloads() == session.uploads[0].files  # PNG + sidecar
    assert main(["colorize", str(photo), "-o", str(tmp_path / "cli"), "--model", str(tiny_model_dir), "--seed", "4",
                 *FAST]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(ours)), np.asarray(Image.open(tmp_path / "cli" / ours.name)))
    assert Image.open(ours).mode == "RGBA" and Image.open(ours).size == (72, 48)
    assert np.abs(_L(ours) - _L(photo)).max() < 1.0


def test_progress_is_reported_per_step(colorizer, photos):
    reports = []
    colorizer.start([photos.one, photos.two], colorizer.settings(steps=3), report=lambda d, t: reports.append((d, t)))
    assert reports == [(k, 6) for k in range(1, 7)]
    assert "progress_bar" not in colorizer.pipe.__dict__  # diffusers' own bar is back


def test_samples_zip_and_sidecars(colorizer, photos):
    session = colorizer.start([photos.one, photos.bad, photos.two], colorizer.settings(num_samples=2, seed=7))
    assert session.messages == ["notes.png: not a recognised image format"]  # the others went on
    names = [p.name for p in session.downloads()]
    assert names == ["kodim05_0.png", "kodim05_1.png", "street_0.png", "street_1.png", "colorized.zip"]
    with zipfile.ZipFile(session.archive) as archive:
        assert sorted(archive.namelist()) == sorted([*names[:4], "kodim05.priors.json", "street.priors.json"])
        sidecar = json.loads(archive.read("kodim05.priors.json"))
        first = np.asarray(Image.open(archive.open("kodim05_0.png")))
    assert sidecar["seed"] == 7 and sidecar["steps"] == 2 and sidecar["scheduler"] == "ddim"
    assert sidecar["source"] == "kodim05.png" and sidecar["caption"] is None and sidecar["prompt"] == ""
    np.testing.assert_array_equal(first, np.asarray(Image.open(session.downloads()[0])))
    assert not np.array_equal(first, np.asarray(Image.open(session.downloads()[1])))  # two samples, two seeds
    captions = [c for _, c in gallery_items(session)]
    assert captions[1] == "kodim05.png · seed 7 · sample 1" and result_at(session, 3) == (1, 1)
    assert "none" in priors_summary(session.uploads[0], "ColorDiff")  # the tiny model records no generators


def test_edited_priors_rerun_one_image(colorizer, photos):
    """Precomputed priors (a caption and one instance) are shown, edited and used again."""
    session = colorizer.start([photos.one, photos.two], colorizer.settings(), priors=[_given_priors(), None])
    upload = session.uploads[0]
    assert upload.used.extra["prompt"] == "motor scooter, a man on a motorbike"
    summary = priors_summary(upload, "ColorDiff")
    assert "a man on a motorbike" in summary and "**Instances:** 1" in summary
    image, annotations = instance_overlay(upload)
    assert image.size == (96, 64) and annotations[0][1] == "1: person (0.90)" and annotations[0][0][:, :48].all()
    before, other = np.asarray(upload.results[0]), session.uploads[1].files[0]

    colorizer.rerun(session, 0, colorizer.settings(), PriorEdits(caption="a red barn", category="", instances_on=[]))
    assert upload.used.caption == "a red barn" and upload.used.category is None and upload.used.instances is None
    assert upload.used.extra["prompt"] == "a red barn" and upload.available.instances is not None  # can go back on
    assert not np.array_equal(before, np.asarray(upload.results[0]))
    assert session.uploads[1].files[0] == other  # the other image is untouched
    sidecar = json.loads(upload.files[-1].read_text())
    assert sidecar["caption"] == "a red barn" and "instances" not in sidecar and sidecar["prompt"] == "a red barn"
    with zipfile.ZipFile(session.archive) as archive:
        assert json.loads(archive.read("kodim05.priors.json"))["caption"] == "a red barn"

    with pytest.raises(DemoError, match="resolution must be a positive multiple of 8, got 60"):
        colorizer.settings(resolution=60)


def test_uploaded_sidecar_gives_the_priors(colorizer, photos, tmp_path):
    session = colorizer.start([photos.sidecar, photos.one], colorizer.settings())
    assert session.messages == [] and session.uploads[0].used.extra["prompt"] == "motor scooter, a man on a motorbike"
    assert len(session.uploads[0].used.instances) == 1
    wrong = tmp_path / "street.priors.json"  # masks of kodim05's size for an 80 x 64 image
    shutil.copy(photos.sidecar, wrong)
    orphan = tmp_path / "nobody.priors.json"
    orphan.write_text("{}")
    session = colorizer.start([photos.two, wrong, orphan], colorizer.settings())
    assert session.messages == ["street.priors.json: masks are (64, 96) (H, W) but street.png is (64, 80); priors "
                                "computed instead", "nobody.priors.json: no uploaded image is named nobody.*; ignored"]
    assert session.uploads[0].used is None  # computed: the tiny model has no generators


def test_seada_model_runs_in_the_same_app(tmp_path, photos):
    model = tmp_path / "seada"
    assert main(["init-model", str(model), "--tiny", "--method", "seada"]) == 0
    seada = Colorizer(load_config(DemoConfig, [], [f"model={model}", *FAST]), tmp_path / "work")
    assert seada.method == "SeAda"
    session = seada.start([photos.one], seada.settings(),
                          priors=[ImagePriors(caption="a man on a motorbike")])
    result = session.uploads[0].files[0]
    assert Image.open(result).size == (96, 64) and np.abs(_L(result) - _L(photos.one)).max() < 1.0
    assert session.uploads[0].used.extra["prompt"] == "a man on a motorbike"


def test_video_upload_is_the_colorize_video_result(colorizer, clip, photos, tiny_model_dir, tmp_path):
    reports = []
    session = colorizer.start([clip, photos.one], colorizer.settings(seed=2),
                              report=lambda done, total, unit="steps": reports.append((done, total, unit)))
    assert [p.name for p in session.downloads()] == ["kodim05.png", "pan.mp4", "colorized.zip"]
    assert reports[:2] == [(1, 2, "steps"), (2, 2, "steps")] and reports[-1] == (12, 12, "frames")
    video = session.videos[0]
    assert video.frames == 12 and video.gray.size == video.first.size == (96, 64)
    assert main(["colorize-video", str(clip), "-o", str(tmp_path / "cli"), "--model", str(tiny_model_dir),
                 "--seed", "2", "--format", "mp4", "--steps", "2", "--resolution", "64"]) == 0
    ours, theirs = _frames(video.path), _frames(tmp_path / "cli" / "pan.mp4")
    assert len(ours) == 12 and all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    np.testing.assert_array_equal(np.asarray(video.first), ours[0])
    with zipfile.ZipFile(session.archive) as archive:
        assert sorted(archive.namelist()) == ["kodim05.png", "kodim05.priors.json", "pan.mp4"]
    assert "and 1 video (12 frames)" in status_text(session)


def test_bad_or_long_videos_are_messages(colorizer, clip, photos, tmp_path):
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video")
    session = colorizer.start([fake, photos.one], colorizer.settings())
    assert len(session.messages) == 1 and session.messages[0].startswith("fake.mp4: not a readable video")
    assert [p.name for p in session.downloads()] == ["kodim05.png", "kodim05.priors.json"]
    with pytest.raises(DemoError, match=r"^pan.mp4: 12 frames; the demo takes videos of at most 5 frames"):
        colorizer.start([clip], colorizer.settings(max_video_frames=5))


# -- the API, without a browser -----------------------------------------------------------------------------------
def test_api_round_trip(server, photos, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(server.url, download_files=str(tmp_path), verbose=False)
    params = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/colorize"]["parameters"]
    defaults = {p["parameter_name"]: p["parameter_default"] for p in params if p["parameter_has_default"]}
    assert (defaults["steps"], defaults["resolution"], defaults["seed"]) == (2, 64, 0)  # from the loaded config
    args = dict(steps=2, scheduler="model's own", guidance_scale=7.5, seg_strength=0.3, priors="auto",
                keep_luminance=True, resolution=64, num_samples=1, prompt="")
    outputs = client.predict([handle_file(str(photos.one))], seed=0, **args, api_name="/colorize")
    downloads = [Path(p) for p in outputs[3]]  # slider, gallery, video, downloads, ... (no state)
    assert [p.name for p in downloads] == ["kodim05.png", "kodim05.priors.json"]
    assert Image.open(downloads[0]).size == Image.open(photos.one).size
    assert np.abs(_L(downloads[0]) - _L(photos.one)).max() < 1.0
    again = Path(client.predict([handle_file(str(photos.one))], seed=1, **args, api_name="/colorize")[3][0])
    assert not np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(downloads[0])))
    with pytest.raises(Exception, match="notes.png: not a recognised image format"):
        client.predict([handle_file(str(photos.bad))], seed=0, **args, api_name="/colorize")


# -- the page in a browser ----------------------------------------------------------------------------------------
def _screenshot(browser, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    browser.driver.save_screenshot(str(path))
    return path


def _wait(predicate, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - the page is re-rendering: look again
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _upload(browser, paths: list[Path]) -> None:
    """Replace the uploads with `paths` through the page's file input."""
    from selenium.webdriver.common.by import By

    driver = browser.driver
    for button in driver.find_elements(By.CSS_SELECTOR, "#uploads button[aria-label='Clear']"):
        button.click()
    field = _wait(lambda: driver.find_element(By.CSS_SELECTOR, "#uploads input[type=file]"), "the upload field")
    field.send_keys("\n".join(str(p) for p in paths))
    _wait(lambda: all(p.stem in driver.find_element(By.ID, "uploads").text for p in paths), "the uploads listed")


def _links(browser) -> dict[str, str]:
    from selenium.webdriver.common.by import By

    return {a.get_attribute("download"): a.get_attribute("href")
            for a in browser.driver.find_elements(By.CSS_SELECTOR, "#downloads a[download]")}


def _colorize(browser, expected: list[str]) -> dict[str, str]:
    """Press Colorize and wait for new download links named `expected`; returns {name: href}."""
    from selenium.webdriver.common.by import By

    before = set(_links(browser).values())
    browser.driver.find_element(By.ID, "colorize").click()
    return _wait(lambda: (links := _links(browser)) and sorted(links) == sorted(expected)
                 and not set(links.values()) & before and links, f"downloads {expected}")


def _download(browser, name: str) -> Path:
    """Click the download link `name`; the file as Chromium saved it."""
    from selenium.webdriver.common.by import By

    for old in browser.downloads.iterdir():
        old.unlink()
    browser.driver.find_element(By.CSS_SELECTOR, f"#downloads a[download='{name}']").click()
    target = browser.downloads / name
    _wait(lambda: target.is_file() and not list(browser.downloads.glob("*.crdownload")), f"the download of {name}")
    return target


def _set_number(browser, elem_id: str, value) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = browser.driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)


def test_browser_colorize_download_and_seed(browser, photos, tmp_path):
    _screenshot(browser, tmp_path, "1_start")
    _upload(browser, [photos.one])
    links = _colorize(browser, ["kodim05.png", "kodim05.priors.json"])
    _screenshot(browser, tmp_path, "2_result")
    first = _download(browser, "kodim05.png")
    assert Image.open(first).size == Image.open(photos.one).size
    assert np.abs(_L(first) - _L(photos.one)).max() < 1.0
    first_pixels = np.asarray(Image.open(first))
    page = browser.driver.find_element("tag name", "body").text
    assert "kodim05.png · seed 0" in page and "Priors used: none" in page

    _set_number(browser, "seed", 5)
    assert _colorize(browser, ["kodim05.png", "kodim05.priors.json"]) != links
    second = _download(browser, "kodim05.png")
    assert not np.array_equal(np.asarray(Image.open(second)), first_pixels)
    assert "kodim05.png · seed 5" in browser.driver.find_element("tag name", "body").text
    _screenshot(browser, tmp_path, "3_seed_5")
    _set_number(browser, "seed", 0)


def test_browser_progress_bar(browser, photos, tmp_path):
    from selenium.webdriver.common.by import By

    _set_number(browser, "steps", 150)
    _upload(browser, [photos.one])
    browser.driver.find_element(By.ID, "colorize").click()
    _wait(lambda: "Denoising" in browser.driver.find_element(By.ID, "slider").text, "the step progress bar")
    _screenshot(browser, tmp_path, "4_progress")
    _wait(lambda: "Denoising" not in browser.driver.find_element(By.ID, "slider").text, "the end of the run")
    _set_number(browser, "steps", 2)


def test_browser_bad_upload_message(browser, photos, tmp_path):
    _upload(browser, [photos.bad])
    from selenium.webdriver.common.by import By

    browser.driver.find_element(By.ID, "colorize").click()
    text = _wait(lambda: (t := browser.driver.find_element(By.TAG_NAME, "body").text)
                 and "notes.png: not a recognised image format" in t and t, "the error message")
    assert "Traceback" not in text
    _screenshot(browser, tmp_path, "5_bad_upload")
    for close in browser.driver.find_elements(By.CSS_SELECTOR, ".toast-close"):  # the later screenshots without it
        close.click()


def test_browser_priors_panel_edit_and_rerun(browser, photos, tmp_path):
    """Priors from an uploaded sidecar are shown (caption, category, prompt, labelled masks), edited, re-run."""
    from selenium.webdriver.common.by import By

    driver = browser.driver
    _upload(browser, [photos.one, photos.sidecar])
    links = _colorize(browser, ["kodim05.png", "kodim05.priors.json"])
    _wait(lambda: "1: person (0.90)" in driver.find_element(By.ID, "instances").text, "the instance switch")
    summary = driver.find_element(By.ID, "priors").text
    assert "motor scooter, a man on a motorbike" in summary and "Instances: 1" in summary
    caption = driver.find_element(By.CSS_SELECTOR, "#caption textarea")
    assert caption.get_attribute("value") == "a man on a motorbike"
    _screenshot(browser, tmp_path, "7_priors_panel")

    caption.clear()
    caption.send_keys("a red barn")
    driver.find_element(By.XPATH, "//*[@id='instances']//label[contains(., '1: person')]").click()
    driver.find_element(By.ID, "rerun").click()
    _wait(lambda: set(_links(browser).values()).isdisjoint(links.values()), "the re-run's downloads")
    _wait(lambda: "Prompt: motor scooter, a red barn" in driver.find_element(By.ID, "priors").text, "the new prompt")
    assert "Instances: none" in driver.find_element(By.ID, "priors").text
    sidecar = json.loads(_download(browser, "kodim05.priors.json").read_text())
    assert sidecar["caption"] == "a red barn" and "instances" not in sidecar
    _screenshot(browser, tmp_path, "8_rerun_edited")


def test_browser_video_upload_plays_and_downloads(browser, clip, tmp_path):
    from selenium.webdriver.common.by import By

    _upload(browser, [clip])
    _colorize(browser, ["pan.mp4"])
    _wait(lambda: browser.driver.find_element(By.CSS_SELECTOR, "#video video").get_attribute("src"), "the player")
    _screenshot(browser, tmp_path, "9_video")
    frames = _frames(_download(browser, "pan.mp4"))
    assert len(frames) == 12 and frames[0].shape == (64, 96, 3)
    assert browser.driver.find_element(By.ID, "status").text == "Colorized 1 video (12 frames)."
    assert "colorize a photo first" in browser.driver.find_element(By.ID, "priors").text  # no image's priors


def test_browser_two_uploads_give_two_results_and_a_zip(browser, photos, tmp_path):
    from selenium.webdriver.common.by import By

    _upload(browser, [photos.one, photos.two])
    _colorize(browser, ["kodim05.png", "street.png", "colorized.zip"])
    assert len(browser.driver.find_elements(By.CSS_SELECTOR, "#results .thumbnail-item, #results button img")) >= 2
    _screenshot(browser, tmp_path, "6_two_results")
    archive = _download(browser, "colorized.zip")
    with zipfile.ZipFile(archive) as zipped:
        assert sorted(zipped.namelist()) == ["kodim05.png", "kodim05.priors.json", "street.png", "street.priors.json"]
        assert Image.open(zipped.open("street.png")).size == (80, 64)
