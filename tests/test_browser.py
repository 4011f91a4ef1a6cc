"""The page at / in a real browser: headless Chromium, driven by selenium, against a running server.

    python -m pytest -q tests/test_browser.py

Chromium's fake microphone plays a synthesized WAV (--use-file-for-fake-audio-capture=CLIP.wav%noloop: once,
then silence), so "recording" records that clip: the page decodes Chrome's WebM/Opus recording, resamples it to
16 kHz mono, sends a WAV and shows the transcript. A second test uploads a file through the file input. The
words must light up in order as the audio plays. Needs Debian's `chromium` and `chromium-driver` (.ci/run
installs them); without them the tests skip, saying so.
"""

import shutil
import time

import pytest
import torch

from test_serve import running_server, wav_bytes  # the same server the openai client tests use

webdriver = pytest.importorskip("selenium.webdriver")
pytest.importorskip("espeakng_loader")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from nanoaudio import synth  # noqa: E402
from nanoaudio.audio import SAMPLE_RATE  # noqa: E402

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="no Chromium or chromedriver (apt-get install chromium chromium-driver)")
RECORDED, UPLOADED = "four two seven", "one nine three five"


def clip(text: str) -> torch.Tensor:
    """The words with 0.3 s of silence before and after, as someone pressing Record and Stop would leave."""
    pad = torch.zeros(int(0.3 * SAMPLE_RATE))
    return torch.cat([pad, synth.speak(text, "en-us", 160, 50), pad])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser-clips")
    (folder / "mic.wav").write_bytes(wav_bytes(clip(RECORDED)))
    (folder / "upload.wav").write_bytes(wav_bytes(clip(UPLOADED)))
    return folder


@pytest.fixture(scope="module")
def page(tmp_path_factory, files):
    """-> a Chromium driver on the page, its fake microphone playing mic.wav."""
    tmp = tmp_path_factory.mktemp("browser-server-tmp")
    with running_server(tmp) as url:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--no-first-run", "--window-size=900,640", f"--user-data-dir={tmp_path_factory.mktemp('chrome')}",
                     "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                     f"--use-file-for-fake-audio-capture={files / 'mic.wav'}%noloop",
                     "--autoplay-policy=no-user-gesture-required"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
        try:
            driver.get(url)
            WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "model").text == "tiny-asr")
            yield driver
        finally:
            driver.quit()


def transcript(driver, timeout=30) -> str:
    WebDriverWait(driver, timeout).until(lambda d: d.find_element(By.ID, "transcript").text
                                         or "error" in d.find_element(By.ID, "status").get_attribute("class"))
    return driver.find_element(By.ID, "transcript").text or driver.find_element(By.ID, "status").text


def lit_words(driver) -> list[str]:
    """Play the audio from the start and note, every animation frame, which word is lit: -> the words in the order
    they lit up."""
    return driver.execute_async_script("""
        const done = arguments[0], player = document.getElementById("player"), seen = [];
        player.currentTime = 0;
        player.play();
        (function watch() {
          const now = [...document.querySelectorAll("#transcript span.now")].map((s) => s.textContent);
          if (now.length && now[0] !== seen[seen.length - 1]) seen.push(now[0]);
          if (player.ended) done(seen); else requestAnimationFrame(watch);
        })();""")


def test_record_from_the_microphone(page, tmp_path):
    page.find_element(By.ID, "record").click()
    WebDriverWait(page, 10).until(lambda d: d.find_element(By.ID, "stop").is_enabled())
    time.sleep(len(clip(RECORDED)) / SAMPLE_RATE + 0.4)  # the fake microphone plays the clip once, in real time
    page.find_element(By.ID, "stop").click()
    assert transcript(page) == RECORDED
    assert lit_words(page) == RECORDED.split()
    page.save_screenshot(str(tmp_path / "serve.png"))


def test_upload_a_file(page, files):
    page.find_element(By.ID, "file").send_keys(str(files / "upload.wav"))
    WebDriverWait(page, 30).until(lambda d: d.find_element(By.ID, "transcript").text != RECORDED)
    assert transcript(page) == UPLOADED
    assert lit_words(page) == UPLOADED.split()
