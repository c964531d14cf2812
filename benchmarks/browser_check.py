"""The region explorer in a real browser: start JupyterLab from .venv, open notebooks/explore.ipynb (its run_dir
set to RUN_DIR) in headless Chromium, run all cells, move the image slider and check that the picture changed.

    .venv/bin/python benchmarks/browser_check.py outputs/quickstart/digit_mosaic/resnet14-resnet8-sd_kd-M124-seed0
    .venv/bin/python benchmarks/browser_check.py RUN_DIR --screenshot docs/explorer.png --record

Needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver) and the selenium package
(`pip install selenium`); without them it says so and exits 2. Exit 0: the explorer rendered and its picture
changed with the slider; 1: it did not.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from recording import heading, publish

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(root: Path, port: int, token: str) -> subprocess.Popen:
    lab = subprocess.Popen([str(REPO / ".venv" / "bin" / "jupyter"), "lab", "--no-browser", f"--port={port}",
                            "--ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                            "--allow-root"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            return lab
        except OSError:
            time.sleep(0.5)
    lab.terminate()
    raise RuntimeError("JupyterLab did not answer within 60 s.")


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,2200", f"--user-data-dir={tempfile.mkdtemp()}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=options)


def check(run_dir: Path, screenshot: Path | None) -> dict:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    work = Path(tempfile.mkdtemp(prefix="explorer-check-"))
    notebook = json.loads((REPO / "notebooks" / "explore.ipynb").read_text())
    cell = next(c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", []))
    cell["source"] = f"run_dir = {str(run_dir.resolve())!r}\n"
    (work / "explore.ipynb").write_text(json.dumps(notebook))
    port, token = free_port(), secrets.token_hex(16)
    lab = start_lab(work, port, token)
    driver = browser()
    try:
        started = time.perf_counter()
        driver.get(f"http://127.0.0.1:{port}/lab/tree/explore.ipynb?token={token}")
        wait = WebDriverWait(driver, 120)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".jp-Notebook-ExecutionIndicator, "
                                                   ".jp-KernelStatus, .jp-Toolbar")))
        time.sleep(2)  # the kernel connects
        driver.find_element(By.XPATH, "//div[contains(@class,'lm-MenuBar-itemLabel') and text()='Run']").click()
        wait.until(ec.element_to_be_clickable((By.XPATH, "//div[contains(@class,'lm-Menu-itemLabel') and "
                                                         "text()='Run All Cells']"))).click()
        picture = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".jupyter-widgets img, img.widget-image")))
        rendered = time.perf_counter() - started
        time.sleep(1)
        for button in driver.find_elements(By.XPATH, "//button[.//text()='No'] | //button[text()='No']"):
            button.click()   # JupyterLab's question about news, over the page
        caption = driver.find_element(By.XPATH, "//*[contains(text(), 'listed): target')]/..").text
        before = picture.screenshot_as_png
        if screenshot is not None:
            explorer = driver.find_element(By.CSS_SELECTOR, ".jp-OutputArea-output .widget-vbox, "
                                                            ".jp-OutputArea-output .jupyter-widgets")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(explorer.screenshot_as_png)
        handle = driver.find_element(By.CSS_SELECTOR, ".widget-slider .noUi-handle, .widget-slider .ui-slider-handle")
        handle.click()
        handle.send_keys(Keys.ARROW_RIGHT)
        changed_at, after, new_caption = None, before, caption
        for _ in range(40):
            time.sleep(0.25)
            picture = driver.find_element(By.CSS_SELECTOR, ".jupyter-widgets img, img.widget-image")
            after = picture.screenshot_as_png
            new_caption = driver.find_element(By.XPATH, "//*[contains(text(), 'listed): target')]/..").text
            if after != before and new_caption != caption:
                changed_at = time.perf_counter()
                break
        return {"rendered_s": rendered, "picture_changed": after != before, "caption_before": caption,
                "caption_after": new_caption, "changed": changed_at is not None,
                "browser": subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()}
    finally:
        driver.quit()
        lab.terminate()
        lab.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, help="a finished distillation run (its figures/region_predictions.npz)")
    ap.add_argument("--screenshot", type=Path, help="save a picture of the explorer here (e.g. docs/explorer.png)")
    ap.add_argument("--record", action="store_true", help="append the result to benchmarks/results.md")
    args = ap.parse_args(argv)
    missing = [p for p in (CHROMIUM, DRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        print(f"error: the browser check needs {', '.join(missing)}; apt-get install chromium chromium-driver and "
              "pip install selenium.")
        return 2
    load = os.getloadavg()[0]
    result = check(args.run_dir, args.screenshot)
    print(json.dumps(result, indent=1))
    ok = result["changed"]
    table = (heading("Region explorer in a real browser", load)
             + f"`.venv/bin/python benchmarks/browser_check.py {args.run_dir}`: JupyterLab from .venv, "
             f"{result['browser']} headless through selenium; Run All Cells, then the image slider moved one step "
             f"with the keyboard.\n\n- explorer rendered {result['rendered_s']:.1f} s after the page was opened\n"
             f"- before: {result['caption_before']!r}\n- after: {result['caption_after']!r}\n"
             f"- picture changed: {'yes' if ok else 'NO'}\n")
    publish(table, args.record)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
