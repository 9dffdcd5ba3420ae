"""The demo's tally, read off the routing inspector in headless Chromium: the first N test questions it offers,
asked one by one with a method as a user would, then the page's own session tally (the router's accuracy and
cost against the best single model's).

    bash scripts/demo.sh --records &          # or: jisi-pool demo --port 8000
    python -m bench.demo_tally --url http://127.0.0.1:8000 --n 30 --method route [--screenshot docs/img/x.png]

Each question's row (what the page drew) goes to stdout as it is answered, the tally at the end; --json writes both.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

from bench.browser import InspectorPage, chromium


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.demo_tally", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--n", type=int, default=30, help="test questions asked (the page offers 30)")
    parser.add_argument("--method", choices=["jisi", "route", "shortcut"], default="route",
                        help="the page's method: jisi (adaptive), route (jisi-route, top-K fan-out), shortcut")
    parser.add_argument("--screenshot", type=Path, help="a PNG of the page after the last question")
    parser.add_argument("--screenshot-example", type=int, default=None,
                        help="ask this test question again last, for the screenshot")
    parser.add_argument("--json", type=Path, help="the rows and the tally as JSON")
    args = parser.parse_args(argv)
    driver = chromium(1280, 2000)
    rows = []
    try:
        page = InspectorPage(driver, args.url, timeout_s=300)
        examples = page.open()
        started = time.perf_counter()
        for i in range(min(args.n, len(examples))):
            t = time.perf_counter()
            page.ask(example=i, method=args.method)
            error = page.error()
            drawn = {} if error else page.drawn()
            row = {"question": examples[i][:70], "error": error, "chosen": drawn.get("chosen"),
                   "verdict": drawn.get("verdict"), "cost": drawn.get("cost"), "calls": drawn.get("calls"),
                   "baseline_verdict": drawn.get("baseline_verdict"), "baseline_cost": drawn.get("baseline_cost"),
                   "seconds": round(time.perf_counter() - t, 2)}
            rows.append(row)
            print(f"{i + 1:>2} {row['question']:<72} {error or ''}{row['chosen'] or ''} {row['verdict'] or ''} "
                  f"{row['cost'] or ''} ({row['calls'] or '?'} calls) | best single {row['baseline_verdict'] or ''} "
                  f"{row['baseline_cost'] or ''} | {row['seconds']} s", flush=True)
        tally = page.tally()
        if rows:
            print(f"\ntally over {tally['n']} graded questions ({args.method}, {time.perf_counter() - started:.0f} s): "
                  f"JiSi {tally['router-right']} right ({tally['router-acc']}), {tally['router-cost']}; "
                  f"{tally['baseline-name']} {tally['baseline-right']} right ({tally['baseline-acc']}), "
                  f"{tally['baseline-cost']}")
        if args.screenshot:
            if args.screenshot_example is not None:
                page.ask(example=args.screenshot_example, method=args.method)
            driver.execute_script("window.scrollTo(0, 0)")
            height = driver.execute_script("return document.body.scrollHeight")
            driver.set_window_size(1280, min(int(height) + 40, 4000))
            args.screenshot.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.screenshot))
            print(f"screenshot: {args.screenshot}")
        if args.json:
            args.json.write_text(json.dumps({"method": args.method, "rows": rows, "tally": tally}, indent=1) + "\n")
    finally:
        driver.quit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
