"""The served page in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven by Selenium loads the page from a server the test starts, uploads
scikit-image's astronaut and finds the box and label drawn over it; with Chromium's fake camera
fed a clip of the same photograph, a label is drawn over the live video. Skipped, saying why,
where Chromium is missing; required where FAML_JAX_REQUIRE_BROWSER=1 (``.ci/run``).

FAML_JAX_SCREENSHOT=PATH: the upload's screenshot is also written there (docs/serving.md's
picture: ``FAML_JAX_SCREENSHOT=docs/images/serve-page.png pytest tests/test_browser.py``)."""

import os
import shutil

import numpy as np
import pytest
from helpers import jittered_variables, tiny_config

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
REQUIRED = os.environ.get("FAML_JAX_REQUIRE_BROWSER") == "1"


def _require(ok: bool, reason: str):
    if not ok:
        if REQUIRED:
            pytest.fail(f"{reason} (FAML_JAX_REQUIRE_BROWSER=1)")
        pytest.skip(reason, allow_module_level=True)


_require(
    os.path.exists(CHROMIUM) and os.path.exists(DRIVER),
    f"no {CHROMIUM} or {DRIVER}: apt-get install chromium chromium-driver",
)
try:
    import selenium  # noqa: F401
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    _require(False, "selenium is not installed (the test extra)")
skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is in the test extra")
pytest.importorskip("fastapi", reason="the serve extra is in the test extra")

from faml_jax import serve  # noqa: E402
from faml_jax.predict import Predictor  # noqa: E402


def y4m(frame: np.ndarray, count: int) -> bytes:
    """A YUV4MPEG2 clip (4:2:0, 30 fps) of ``count`` copies of an RGB ``frame`` (even sides):
    BT.601 studio-range Y'CbCr, chroma averaged over 2x2 pixels."""
    rgb = frame.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255

    def half(c):
        return c.reshape(c.shape[0] // 2, 2, c.shape[1] // 2, 2).mean((1, 3))

    planes = b"".join(np.clip(np.round(p), 0, 255).astype(np.uint8).tobytes() for p in (y, half(cb), half(cr)))
    height, width = frame.shape[:2]
    header = f"YUV4MPEG2 W{width} H{height} F30:1 Ip A1:1 C420jpeg\n".encode()
    return header + (b"FRAME\n" + planes) * count


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    """Two tiny networks (random weights: the labels mean nothing) served on a free port."""
    config = tiny_config(tmp_path_factory.mktemp("browser") / "data", 1)
    predictor = Predictor(config, [jittered_variables(config, i) for i in range(2)], ["net0", "net1"])
    with serve.running(serve.create_app(predictor, serve.Limits(max_batch=2))) as base:
        yield base


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("clip")
    photo = skimage_data.astronaut()
    Image.fromarray(photo).save(folder / "astronaut.png")
    (folder / "clip.y4m").write_bytes(y4m(photo, 10))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new --no-sandbox --disable-gpu --disable-background-networking --disable-component-update "
        "--disable-sync --no-first-run --use-fake-ui-for-media-stream --use-fake-device-for-media-stream "
        "--window-size=1280,900"
    ).split():
        options.add_argument(flag)
    options.add_argument(f"--use-file-for-fake-video-capture={folder / 'clip.y4m'}")
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    try:
        yield driver, folder
    finally:
        driver.quit()


def answers(driver) -> int:
    return driver.execute_script("return window.faml.answers")


def box_pixels(driver, box) -> list:
    """The overlay's pixels (RGBA) on the middle of the box's left edge and at its centre."""
    x0, y0, x1, y1 = box
    script = (
        "const c = document.getElementById('overlay').getContext('2d');"
        "return [Array.from(c.getImageData(arguments[0], arguments[1], 1, 1).data),"
        " Array.from(c.getImageData(arguments[2], arguments[1], 1, 1).data)];"
    )
    return driver.execute_script(script, x0, (y0 + y1) // 2, (x0 + x1) // 2)


def test_an_uploaded_photo_gets_its_box_label_and_score_bars(url, browser, tmp_path):
    driver, folder = browser
    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: "network(s)" in d.find_element(By.ID, "model").text)
    driver.find_element(By.ID, "file").send_keys(str(folder / "astronaut.png"))
    WebDriverWait(driver, 60).until(lambda d: answers(d) >= 1)
    answer = driver.execute_script("return window.faml.last")
    (face,) = answer["faces"]
    label = driver.find_element(By.CSS_SELECTOR, "#faces-list .label").text
    assert label == f"{face['class']} {face['confidence']:.2f}"
    assert len(driver.find_elements(By.CSS_SELECTOR, "#faces-list .bar")) == len(answer["classes"])
    edge, centre = box_pixels(driver, face["box"])
    assert edge == [232, 65, 60, 255] and centre[3] == 0  # the box's red line; inside it, the photo shows through
    picture = tmp_path / "page.png"
    driver.save_screenshot(str(picture))
    if os.environ.get("FAML_JAX_SCREENSHOT"):
        shutil.copyfile(picture, os.environ["FAML_JAX_SCREENSHOT"])


def test_the_camera_shows_a_label_over_the_live_video(url, browser):
    driver, _ = browser
    driver.get(url)
    driver.find_element(By.ID, "camera").click()
    WebDriverWait(driver, 30).until(lambda d: answers(d) >= 2)  # frames keep coming, one per answer
    answer = driver.execute_script("return window.faml.last")
    assert driver.execute_script("return document.getElementById('video').videoWidth") == 512
    (face,) = answer["faces"]  # the astronaut's face, found in the camera's frame
    assert driver.find_element(By.CSS_SELECTOR, "#faces-list .label").text.startswith(face["class"])
    assert box_pixels(driver, face["box"])[0] == [232, 65, 60, 255]
    driver.find_element(By.ID, "camera").click()
    assert driver.find_element(By.ID, "camera").text == "Start the camera"
