"""The human-evaluation annotation page in a real headless chromium: nothing in a pack runs, its text shows literally,
scores go in by keyboard, survive a reload, and come out through the Export download in the contract's format."""
import json
import shutil
import struct
import time
from datetime import datetime

import pytest

from polyalign.annotate import (BROWSERS, DIMENSIONS, EXPORT_SCHEMA, PACK_SCHEMA, UI_TEXT, headless_chromium,
                                page_leaks, screenshot_page, write_pack)
from polyalign.core import METHODS

pytestmark = pytest.mark.skipif(
    not (any(shutil.which(b) for b in BROWSERS) and shutil.which("chromedriver")),
    reason="no chromium or chromedriver on PATH: install Debian's chromium and chromium-driver (make setup does)")

PLANT = "</script><script>alert(1)</script>"
IMG = "<img src=x onerror=\"document.title='pwned';alert(2)\"> & <!-- \u2028 -->"
EN = UI_TEXT["en"]
# the key's side of the four items (never in a pack): method, kind, the item a repeat copies, attention's score
KEY_OF_ITEM = (("base_lm", "rate", None, 0), ("", "attention", None, 2), ("dpo", "rate", None, 0),
               ("base_lm", "repeat", 0, 0))


def make_pack(pack_id: str) -> dict:
    def item(i, answer, question, context="", history=(), track="single", family="qa", length_bin="short"):
        return {"item": f"x{i}{pack_id[-4:]}", "question": question, "context": context, "history": list(history),
                "answer": answer, "bucket": {"track": track, "family": family, "length_bin": length_bin}}
    return {"schema": PACK_SCHEMA, "pack_id": pack_id, "annotator": "en-a9", "language": "en", "items": [
        item(1, "Paris.", "What is the capital of France?", context="France's capital is Paris. <i>Really</i>."),
        item(2, PLANT, f"Is {PLANT} safe?"),
        item(3, IMG, "And then?", history=[{"role": "user", "text": "hi <b>there</b>"},
                                           {"role": "assistant", "text": PLANT}],
             track="multi", family="dialogue", length_bin="medium"),
        item(4, "Sure, here is a plan:\n1. rest\n2. water", "Plan my day", family="assistant", length_bin="long")]}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    "One headless chromium for the module, downloading into its own folder."
    downloads = tmp_path_factory.mktemp("downloads")
    with headless_chromium(download_dir=downloads) as wd:
        yield wd, downloads


def open_page(wd, path):
    "Load a page (its script has run when `get` returns) and check that it drew its first item."
    wd.get(path.as_uri())
    if not text(wd, "position"):
        log = "\n".join(e["message"] for e in wd.get_log("browser"))
        raise AssertionError(f"the page did not start; browser console:\n{log}")


def text(wd, element_id: str) -> str:
    from selenium.webdriver.common.by import By
    return wd.find_element(By.ID, element_id).text


def content(wd, element_id: str) -> str:
    "The exact text of an element (WebDriver's `.text` normalises white space)."
    return wd.execute_script("return document.getElementById(arguments[0]).textContent", element_id)


def press(wd, *keys):
    "Type keys into whatever has the focus, as an annotator does."
    for k in keys: wd.switch_to.active_element.send_keys(k)


def alert_open(wd) -> bool:
    from selenium.common.exceptions import NoAlertPresentException
    try:
        wd.switch_to.alert
        return True
    except NoAlertPresentException:
        return False


def progress(done: int, total: int = 4) -> str:
    return EN["progress"].format(done=done, total=total)


def position(n: int, total: int = 4) -> str:
    return EN["position"].format(n=n, total=total)


def wait_for_file(path, timeout: float = 30.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.exists() and not list(path.parent.glob("*.crdownload")): return path
        time.sleep(0.1)
    raise AssertionError(f"{path.name} was not downloaded within {timeout:.0f} s: {sorted(path.parent.iterdir())}")


def test_pack_text_is_shown_literally_and_nothing_runs(browser, tmp_path):
    from selenium.webdriver.common.by import By
    wd, _ = browser
    pack = make_pack("en-a9-lit1")
    open_page(wd, write_pack(pack, tmp_path))
    assert not alert_open(wd)
    assert len(wd.find_elements(By.TAG_NAME, "script")) == 3        # the page's own: pack, texts, code
    assert wd.find_elements(By.TAG_NAME, "img") == [] and wd.find_elements(By.TAG_NAME, "i") == []
    assert wd.execute_script("return getComputedStyle(document.body).backgroundColor") == "rgb(245, 247, 249)"
    assert text(wd, "context") == "France's capital is Paris. <i>Really</i>."
    assert text(wd, "bucket") == "single turn · question answering · short answer expected"
    assert not wd.find_element(By.ID, "history-block").is_displayed()
    press(wd, "j")
    assert text(wd, "position") == position(2)
    assert content(wd, "answer") == PLANT and content(wd, "question") == f"Is {PLANT} safe?"
    assert not wd.find_element(By.ID, "context-block").is_displayed()
    press(wd, "j")
    assert content(wd, "answer") == IMG
    turns = wd.find_elements(By.CSS_SELECTOR, "#history .turn")
    assert [t.text for t in turns] == ["User\nhi <b>there</b>", f"Responder\n{PLANT}"]
    assert wd.find_elements(By.TAG_NAME, "img") == [] and wd.find_elements(By.TAG_NAME, "b") == []
    assert wd.title == EN["title"] and not alert_open(wd)
    assert [e["message"] for e in wd.get_log("browser") if e["level"] == "SEVERE"] == []   # no error, no CSP block


def test_keyboard_scores_survive_reload_and_export(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    wd, downloads = browser
    pack = make_pack("en-a9-kbd1")
    ids = [it["item"] for it in pack["items"]]
    page = write_pack(pack, tmp_path)
    open_page(wd, page)
    assert (text(wd, "progress"), text(wd, "position")) == (progress(0), position(1))
    assert text(wd, "annotator") == EN["annotator"].format(annotator="en-a9")

    press(wd, "4", "5", "3")                       # item 1 complete; the last dimension moves on to item 2
    assert (text(wd, "progress"), text(wd, "position")) == (progress(1), position(2))
    press(wd, "2", Keys.ARROW_DOWN, "5")           # item 2: usefulness, skip answerability, naturalness -> item 3
    assert (text(wd, "progress"), text(wd, "position")) == (progress(1), position(3))
    press(wd, "j", "1", "5", "1")                  # item 3 left unscored; item 4 complete, the last item stays
    assert (text(wd, "progress"), text(wd, "position")) == (progress(2), position(4))
    press(wd, Keys.ARROW_UP, "0")                  # clear item 4's answerability ...
    assert text(wd, "progress") == progress(1)
    assert wd.find_element(By.CSS_SELECTOR, "#dim-answerability .value").text == EN["unscored"]
    press(wd, "2")                                 # ... and score it again
    assert text(wd, "progress") == progress(2)
    press(wd, "k", Keys.ARROW_LEFT)                # back to item 2: its first unscored dimension is highlighted
    assert text(wd, "position") == position(2)
    assert "current" in wd.find_element(By.ID, "dim-answerability").get_attribute("class").split()
    press(wd, "3")
    assert (text(wd, "progress"), text(wd, "position")) == (progress(3), position(2))

    wd.execute_script("const i = document.createElement('input'); i.id = 'typing'; document.body.prepend(i);")
    box = wd.find_element(By.ID, "typing")
    box.click()
    box.send_keys("5", "j")                        # keys typed into a text field are not shortcuts
    assert box.get_attribute("value") == "5j"
    assert (text(wd, "progress"), text(wd, "position")) == (progress(3), position(2))

    wd.refresh()                                   # autosave: scores and position come back
    open_page(wd, page)
    assert (text(wd, "progress"), text(wd, "position")) == (progress(3), position(2))
    assert text(wd, "saved") == EN["restored"]
    pressed = [b.get_attribute("data-score") for b in
               wd.find_elements(By.CSS_SELECTOR, "#dim-usefulness button.score[aria-pressed='true']")]
    assert pressed == ["2"]

    wd.find_element(By.ID, "export").click()
    export = json.loads(wait_for_file(downloads / f"{pack['pack_id']}.json").read_text(encoding="utf-8"))
    assert text(wd, "saved") == EN["exported"].format(file=f"{pack['pack_id']}.json")
    assert list(export) == ["schema", "pack_id", "annotator", "language", "exported_at", "answers"]
    assert (export["schema"], export["pack_id"], export["annotator"], export["language"]) == (
        EXPORT_SCHEMA, pack["pack_id"], "en-a9", "en")
    assert datetime.fromisoformat(export["exported_at"].replace("Z", "+00:00")).tzinfo is not None
    expected = [(4, 5, 3), (2, 3, 5), (None, None, None), (1, 2, 1)]
    assert export["answers"] == [{"item": i, **dict(zip(DIMENSIONS, s))} for i, s in zip(ids, expected)]
    assert json.loads(wd.execute_script("return window.polyalignExport()"))["answers"] == export["answers"]
    assert not alert_open(wd)


def test_page_works_when_served_over_http(browser, tmp_path):
    "The same file served by `python -m http.server` (an http origin instead of file://) scores and autosaves."
    import functools
    import http.server
    import threading
    wd, _ = browser
    page = write_pack(make_pack("en-a9-http"), tmp_path)
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        wd.get(f"http://127.0.0.1:{server.server_address[1]}/{page.name}")
        assert text(wd, "position") == position(1)
        press(wd, "4", "5", "3")
        wd.refresh()
        assert (text(wd, "progress"), text(wd, "position")) == (progress(1), position(2))
        assert [e["message"] for e in wd.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        server.shutdown()
        server.server_close()


def human_eval_module():
    "polyalign.human_eval, or a skip while notebook 10 has not exported it yet (a broken module fails)."
    try:
        from polyalign import human_eval
    except ModuleNotFoundError as e:
        if e.name != "polyalign.human_eval": raise
        pytest.skip("polyalign.human_eval does not exist yet: the export is checked against check_export once it does")
    return human_eval


def test_downloaded_export_passes_check_export(browser, tmp_path):
    import pandas as pd
    wd, downloads = browser
    pack = make_pack("en-a9-chk1")
    page = write_pack(pack, tmp_path)
    ids = [it["item"] for it in pack["items"]]
    key = pd.DataFrame([{"item": i, "pack_id": pack["pack_id"], "annotator": pack["annotator"],
                         "language": pack["language"], "example_id": f"squad-{n:05d}", "method": m, "kind": kind,
                         "repeat_of": "" if rep is None else ids[rep], "expected": expected}
                        for n, (i, (m, kind, rep, expected)) in enumerate(zip(ids, KEY_OF_ITEM))])
    names = [*METHODS, *(m.label for m in METHODS.values()), *key["example_id"]]
    assert page_leaks(page.read_text(encoding="utf-8"), names) == []
    open_page(wd, page)
    press(wd, *"453", *"222", *"5")               # item 1 complete, item 2 (attention, asks for 2) passed,
    #                                               item 3 one score, item 4 untouched
    assert text(wd, "progress") == progress(2)
    wd.find_element("id", "export").click()
    export = json.loads(wait_for_file(downloads / f"{pack['pack_id']}.json").read_text(encoding="utf-8"))
    he = human_eval_module()
    assert he.check_export(export, key).status == "partial"
    full = {**export, "answers": [{k: (3 if v is None else v) for k, v in a.items()} for a in export["answers"]]}
    assert he.check_export(full, key).status == "complete"
    careless = {**full, "answers": [{**a, "usefulness": 5} for a in full["answers"]]}
    assert he.check_export(careless, key).status == "rejected"


def test_screenshot_page_writes_a_png(tmp_path):
    pack = {**make_pack("zh-a9-png1"), "language": "zh"}
    pack["items"][0].update(question="法国的首都是哪里？", answer="巴黎。", context="法国的首都是巴黎。")
    png = screenshot_page(write_pack(pack, tmp_path), tmp_path / "shot" / "page.png", width=1100, height=800)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert struct.unpack(">II", data[16:24]) == (1100, 800)
    assert [p.name for p in png.parent.iterdir()] == ["page.png"]
