"""Take the README's picture of the studio: a drawing on the pad, completed by a pretrained model.

    python tools/studio_screenshot.py [--model sketch-rnn-spg5] [--drawing cactus|apple] [--out docs/studio.png]

Serves the studio on a free local port (as `sketchlab serve --models MODEL` does), drives Debian's
chromium with Playwright (as the browser tests do): draws one of DRAWINGS stroke by stroke, asks for four
completions at a low temperature and saves the page. A developer tool: the package never runs it.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

from sketchlab.studio import Studio, StudioSettings, create_app, load_models

# Partial drawings in the pad's units (a 256 box): the model continues them.
DRAWINGS = {
    "cactus": [[(112, 224), (110, 150), (110, 90), (116, 66), (130, 58), (144, 66), (150, 90),
                (150, 150), (152, 224)]],        # a trunk: arms, or not
    "apple": [[(141, 85), (174, 99), (196, 127), (199, 161), (183, 192), (153, 212), (115, 215),
               (82, 201), (60, 173), (57, 139), (73, 108), (103, 88), (128, 84)]],  # a stem?
}
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="sketch-rnn-spg5")
    p.add_argument("--temperature", default="0.3")
    p.add_argument("--seed", default="1")
    p.add_argument("--out", default="docs/studio.png")
    p.add_argument("--drawing", default="cactus", choices=sorted(DRAWINGS))
    args = p.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no chromium: apt-get install chromium")
    models = load_models([args.model], device="cpu")
    config = uvicorn.Config(create_app(Studio(models, StudioSettings())), host="127.0.0.1",
                            port=free_port(), log_level="warning")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        page.goto(f"http://127.0.0.1:{config.port}")
        page.wait_for_selector("body[data-ready=true]", timeout=20000)
        box = page.locator("#pad").bounding_box()
        sx, sy = box["width"] / 256, box["height"] / 256
        for stroke in DRAWINGS[args.drawing]:
            page.mouse.move(box["x"] + stroke[0][0] * sx, box["y"] + stroke[0][1] * sy)
            page.mouse.down()
            for x, y in stroke[1:]:
                page.mouse.move(box["x"] + x * sx, box["y"] + y * sy, steps=4)
            page.mouse.up()
        page.select_option("#complete-n", "4")
        for field, value in (("#temperature", args.temperature), ("#seed", args.seed)):
            if page.locator(field).count():
                page.eval_on_selector(field, "(el, v) => { el.value = v; "
                                      "el.dispatchEvent(new Event('input')); "
                                      "el.dispatchEvent(new Event('change')); }", value)
        page.click("#do-complete")
        page.wait_for_selector("#results[data-state=done]", timeout=120000)
        page.wait_for_timeout(4000)      # the results are drawn stroke by stroke
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=args.out)
        browser.close()
    server.should_exit = True
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
