"""The ``adds serve`` web demo: the JSON API, and the page end to end in headless Chromium (loopback only)."""

from __future__ import annotations

import io
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from adds.cli import main
from adds.decoder import DecoderConfig
from adds.model import ADDS, ADDSConfig
from adds.tagger import Tagger
from adds.web.app import WebConfig, create_app, parse_label_text

LABELS = ["red square", "blue circle", "green triangle", "a dog", "sunset"]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture()
def tagger(tiny_towers):
    model = ADDS(ADDSConfig(decoder=DecoderConfig(num_layers=2, num_heads=4, ffn_dim=64)), towers=tiny_towers)
    return Tagger(model, labels=LABELS)


@pytest.fixture()
def client(tagger):
    return TestClient(create_app(tagger, WebConfig(max_upload_bytes=200_000, default_top_k=3)))


def _png(seed: int, height: int = 48, width: int = 64) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _post(client, data: bytes, name: str = "photo.png", **fields: str):
    return client.post("/api/tag", files={"image": (name, data, "image/png")}, data=fields)


# -- JSON API -------------------------------------------------------------------------------------------------------


def test_page_and_static_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="tag-form"' in page.text and "/static/app.js" in page.text and "http" not in page.text.lower()
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200


def test_info_describes_the_tagger(client):
    info = client.get("/api/info").json()
    assert info["scorer"] == "adds" and info["vocabulary_size"] == len(LABELS) and info["default_top_k"] == 3


def test_tag_returns_what_the_python_api_returns(client, tagger, tmp_path):
    data = _png(0)
    (tmp_path / "photo.png").write_bytes(data)
    response = _post(client, data, labels="red square, a dog\nsunset", threshold="0", top_k="2")
    assert response.status_code == 200
    body = response.json()
    expected = tagger(tmp_path / "photo.png", labels=["red square", "a dog", "sunset"], threshold=0.0, top_k=2)
    assert [t["label"] for t in body["tags"]] == [t["label"] for t in expected]
    assert [t["score"] for t in body["tags"]] == pytest.approx([t["score"] for t in expected], abs=1e-6)
    assert body["labels"] == 3 and body["image"] == {"name": "photo.png", "width": 64, "height": 48}


def test_defaults_are_the_tagger_vocabulary_thresholds_and_page_top_k(client, tagger, tmp_path):
    data = _png(1)
    (tmp_path / "p.png").write_bytes(data)
    body = _post(client, data).json()
    assert body["labels"] == len(LABELS) and body["top_k"] == 3
    expected = tagger(tmp_path / "p.png", top_k=3)  # tagger thresholds (0.5), default vocabulary
    assert [t["label"] for t in body["tags"]] == [t["label"] for t in expected]


def test_typed_labels_follow_the_cli_and_api_rules():
    assert parse_label_text(" dog, cat\n\nred car\r\n") == ["dog", "cat", "red car"]
    assert parse_label_text(" , \n") is None
    with pytest.raises(ValueError, match="Duplicate label 'dog'"):
        parse_label_text("dog, cat\ndog")


def test_duplicate_labels_are_refused_like_the_cli_and_the_api(client, tagger):
    response = _post(client, _png(4), labels="sunset, a dog\nsunset")
    assert response.status_code == 400 and "Duplicate label 'sunset'" in response.json()["detail"]
    with pytest.raises(ValueError, match="Duplicate label 'sunset'"):
        tagger(torch.rand(3, 32, 32), labels=["sunset", "a dog", "sunset"])
    assert main(["tag", "x.png", "--labels", "sunset,a dog,sunset"]) == 2


def test_info_shows_the_input_plan(tiny_towers):
    model = ADDS(ADDSConfig(decoder=DecoderConfig(num_layers=1, num_heads=4, ffn_dim=64)), towers=tiny_towers)
    info = TestClient(create_app(Tagger(model, labels=LABELS, trained_input_size=48))).get("/api/info").json()
    assert (info["input_size"], info["levels"], info["crops"]) == (48, [0, 1], 5)


@pytest.mark.parametrize(
    "data, fields, status, detail",
    [
        (b"", {}, 400, "zero-byte"),
        (b"hello, not an image", {}, 400, "not an image"),
        (b"\x89PNG" + b"\x00" * 300_000, {}, 413, "larger than"),
        (None, {"threshold": "2"}, 400, "threshold"),
        (None, {"threshold": "abc"}, 400, "threshold"),
        (None, {"top_k": "0"}, 400, "top_k"),
    ],
)
def test_bad_requests_get_a_clear_message(client, data, fields, status, detail):
    response = _post(client, _png(2) if data is None else data, name="up.png", **fields)
    assert response.status_code == status and detail in response.json()["detail"]
    if data is not None and status == 400:
        assert "up.png" in response.json()["detail"]


# -- the page in a real browser -------------------------------------------------------------------------------------


class _Server:
    """uvicorn serving ``app`` on a loopback port picked by the OS, in a background thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the demo server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.socket.close()


def _browser(profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager never runs, so nothing is downloaded.
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def test_upload_type_labels_and_see_the_scores_as_bars_in_chromium(tagger, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    assert shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER), "Debian's chromium and chromium-driver are needed"
    image = tmp_path / "upload.png"
    image.write_bytes(_png(3, 80, 60))
    typed = ["sunset", "a dog", "red square", "zebra crossing"]
    profile = tempfile.mkdtemp(prefix="adds-chromium-")
    with _Server(create_app(tagger)) as server:
        driver = _browser(profile)
        try:
            driver.set_page_load_timeout(30)
            driver.get(server.url + "/")
            WebDriverWait(driver, 20).until(lambda d: "ADDS head" in d.find_element(By.ID, "model-info").text)
            driver.find_element(By.ID, "image-input").send_keys(str(image))
            driver.find_element(By.ID, "labels").send_keys(", ".join(typed))
            driver.find_element(By.ID, "threshold").send_keys("0")
            driver.find_element(By.ID, "tag-button").click()
            results = WebDriverWait(driver, 60).until(
                lambda d: d.find_element(By.ID, "results").get_attribute("data-state") == "done"
                and d.find_elements(By.CSS_SELECTOR, "#results .tag-row")
            )
            shown = [(row.get_attribute("data-label"), float(row.get_attribute("data-score")),
                      row.find_element(By.CLASS_NAME, "tag-label").text,
                      row.find_element(By.CLASS_NAME, "tag-score").text,
                      row.find_element(By.CLASS_NAME, "fill").get_attribute("style")) for row in results]
            status = driver.find_element(By.ID, "status").text
        finally:
            driver.quit()
        api = httpx.post(server.url + "/api/tag", files={"image": ("upload.png", image.read_bytes(), "image/png")},
                         data={"labels": ", ".join(typed), "threshold": "0"}, timeout=30).json()
    shutil.rmtree(profile, ignore_errors=True)
    python = tagger(image, labels=typed, threshold=0.0)
    assert [label for label, *_ in shown] == [t["label"] for t in api["tags"]] == [t["label"] for t in python]
    assert [score for _, score, *_ in shown] == pytest.approx([t["score"] for t in api["tags"]], abs=1e-6)
    assert [score for _, score, *_ in shown] == pytest.approx([t["score"] for t in python], abs=1e-5)
    for label, score, text, score_text, style in shown:
        assert text == label and score_text == f"{score:.3f}"
        assert f"width: {100 * score:.1f}%" in style  # the bar's length is the score
    assert "4 tag(s) from 4 label(s), 60×80 px" in status


def test_serve_command_is_registered_and_explains_itself(capsys):
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "--host" in text and "--port" in text and "--checkpoint" in text and "127.0.0.1" in text
    assert "--input-size" in text and "--levels" in text


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_refuses_bad_arguments_before_starting(capsys, tmp_path):
    port = str(_free_port())
    assert main(["serve", "--checkpoint", str(tmp_path / "none"), "--port", port]) == 2
    assert "none" in capsys.readouterr().err
    assert main(["serve", "--port", "0"]) == 2
    assert main(["serve", "--labels", "dog,dog", "--port", port, "--model", "adds-tiny-vit",
                 "--pretrained", "none"]) == 2
    assert "Duplicate label" in capsys.readouterr().err


def test_serve_says_when_the_port_is_taken_before_loading_a_model(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port), "--checkpoint", "/nowhere"]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err and "nowhere" not in err


def test_static_folder_is_self_contained():
    static = Path(__file__).parents[1] / "src" / "adds" / "web" / "static"
    for name in ("index.html", "app.js", "style.css"):
        text = (static / name).read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name
