"""The playground page of `qa-host serve` in a real browser: Debian's headless Chromium, driven
by Selenium through Debian's chromedriver.

For an ASCII, an accented and a CJK context, the test types a question, submits the form and
checks that the highlighted text is the API's answer for the same request, at the API's
offsets: the text before the highlight holds exactly `start` characters (code points, as the
API counts them; the accented and CJK contexts put an emoji, one code point but two UTF-16
units, before the answer, so a page that indexed UTF-16 would be caught). Then a blank
question must show the `empty_question` message. A screenshot of each is kept.

Usage: playground_browser.py BASE_URL SCREENSHOT_DIR
Exits non-zero on the first failed check.
"""

import json
import sys
import tempfile
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

BENZ = json.loads((Path(__file__).resolve().parents[2] / "fixtures/benz.json").read_text())["context"]

CASES = [
    ("ascii", "Who patented the Benz Patent-Motorwagen?", BENZ),
    (
        "accented",
        "Who founded the café?",
        "Zürich 😀 has many cafés. The Café Odéon on the Limmatquai was founded by Renée Müller-Brügger "
        "in 1911, and its crème brûlée is still served to guests from São Paulo to Kraków.",
    ),
    # Whichever span the English model picks in a Chinese and Japanese text is the one checked.
    ("cjk", "Who invented the car?", "🚗 汽车的历史很长。东京和北京都有很多汽车。卡尔·本茨于1886年在曼海姆发明了现代汽车。日本の自動車産業は二十世紀に成長した。"),
]


def post(base, body):
    request = urllib.request.Request(
        base + "/", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def browser(profile):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def submit(driver, question, context, requests):
    """Types `question`, puts `context` in its box, submits; waits for the page's answer."""
    box = driver.find_element(By.ID, "question")
    box.clear()
    box.send_keys(question)
    # chromedriver types only the Basic Multilingual Plane (no emoji): the context is set as a
    # paste would set it, with the input event the page would get.
    driver.execute_script(
        "const box = arguments[0]; box.value = arguments[1]; box.dispatchEvent(new Event('input', {bubbles: true}));",
        driver.find_element(By.ID, "context"),
        context,
    )
    driver.find_element(By.ID, "ask").click()
    WebDriverWait(driver, 120).until(
        lambda d: d.execute_script(
            "return document.body.dataset.requests === arguments[0] && document.body.dataset.state !== 'asking'",
            str(requests),
        )
    )
    return driver.execute_script("return document.body.dataset.state")


def main(base, shots):
    shots = Path(shots)
    shots.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        driver = browser(profile)
        try:
            driver.get(base + "/")
            WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.body.dataset.state === 'ready'"))
            health = json.load(urllib.request.urlopen(base + "/health", timeout=30))
            model = driver.find_element(By.ID, "model").get_attribute("value")
            check(model == health["default_model"], f"the model picker starts on the default model: {model!r}")
            top_k = int(driver.find_element(By.ID, "top-k").get_attribute("value"))
            requests = 0
            for name, question, context in CASES:
                expected = post(base, {"question": question, "context": context, "model_type": model, "top_k": top_k})
                start, end, answer = expected["start"], expected["end"], expected["Answer"]
                check(context[start:end] == answer, f"{name}: the API's offsets are code points ({start}..{end}, {answer!r})")
                if name != "ascii":
                    check(any(ord(c) > 0xFFFF for c in context[:start]), f"{name}: an astral character comes before the answer")
                requests += 1
                state = submit(driver, question, context, requests)
                check(state == "answered", f"{name}: the page shows an answer, not {state!r}")
                mark = driver.find_element(By.ID, "answer-mark")
                shown = driver.execute_script(
                    "const pre = document.getElementById('highlighted');"
                    "return [pre.childNodes[0].textContent, arguments[0].textContent, pre.textContent];",
                    mark,
                )
                before, highlighted, whole = shown
                check(highlighted == answer, f"{name}: highlighted {highlighted!r}, the API answered {answer!r}")
                check(len(before) == start, f"{name}: {len(before)} characters before the highlight, the API's start is {start}")
                check(len(before) + len(highlighted) == end, f"{name}: the highlight ends at {len(before) + len(highlighted)}, not {end}")
                check(whole == context, f"{name}: the highlighted context is the context sent")
                check(
                    (mark.get_attribute("data-start"), mark.get_attribute("data-end")) == (str(start), str(end)),
                    f"{name}: the mark carries the API's offsets",
                )
                check(driver.find_element(By.ID, "answer").text == answer, f"{name}: the answer line")
                listed = driver.find_elements(By.CSS_SELECTOR, "#answers li .text")
                check(
                    [item.text for item in listed] == [a["text"] or "(no answer)" for a in expected["answers"]],
                    f"{name}: the answers listed are the API's, best first",
                )
                check(driver.find_element(By.ID, "model-version").text == expected["model_version"], f"{name}: model version")
                check(driver.find_element(By.ID, "guest-version").text == expected["guest_version"], f"{name}: guest version")
                driver.save_screenshot(str(shots / f"playground-{name}.png"))
                print(f"playground: {name}: highlighted {answer!r} at {start}..{end}", flush=True)

            # Before the refused request below, whose 400 the browser logs as an error.
            problems = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
            check(not problems, f"the browser logged errors (a blocked script or request?): {problems}")

            requests += 1
            state = submit(driver, "   ", BENZ, requests)
            error = driver.find_element(By.ID, "error")
            check(state == "failed" and error.get_attribute("data-code") == "empty_question", f"a blank question: {state!r}")
            check("Type a question first." in error.text and "HTTP 400" in error.text, f"the empty_question message: {error.text!r}")
            driver.save_screenshot(str(shots / "playground-error.png"))
            print("playground: a blank question shows the empty_question message", flush=True)
        finally:
            driver.quit()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1].rstrip("/"), sys.argv[2])
