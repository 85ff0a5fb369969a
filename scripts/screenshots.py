"""Screenshots of failed kiln-otel runs in Jaeger's real UI, for docs/img/ and for reviewing changes.

    python scripts/screenshots.py --ui-assets PATH [--out docs/img] [--only NAME ...] [--keep]

What it needs (none of it is in CI, which never looks at the UI):
- the ``screenshots`` extra: ``pip install -e '.[screenshots]'`` (selenium, plus the dev extra: litellm
  for the runs, pytest for the tests' Jaeger helpers this script reuses);
- Debian's ``chromium`` and ``chromium-driver``;
- the Jaeger binary (``bash scripts/backends.sh build``);
- a jaeger-ui build of the release the binary pins (v1.76.0 for Jaeger v2.13.0): the Go module serves
  only a placeholder page. Build it from the jaegertracing/jaeger-ui repository at that tag
  (``npm ci`` at the root, ``npm run build`` in ``packages/jaeger-ui``; Node >= 24), and pass its
  ``packages/jaeger-ui/build`` folder as ``--ui-assets`` (or ``KILN_OTEL_JAEGER_UI``).

It starts Jaeger (collector-config/jaeger.yaml plus ``ui.assets_path``) on free 127.0.0.1 ports, runs
each scenario below against the scripted model server (real litellm over real HTTP, as the demo does),
exports its spans over OTLP straight to Jaeger, opens the trace in headless Chromium at 1600x1000 the
way a person would (the run span opened, then the segment holding the last messages), and saves a PNG
per view. ``--keep`` leaves Jaeger running and prints its URL, to look around by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the tests' backend helpers start Jaeger here too

from tests.backends import HOST, JAEGER_CONFIG, JaegerReader, _jaeger_process, _start_jaeger, build_backends  # noqa: E402

WINDOW = (1600, 1000)
SERVICE = "kiln-otel"


# --- Jaeger with its UI ------------------------------------------------------------------------


@contextmanager
def jaeger_with_ui(assets: Path, workdir: Path) -> Iterator[tuple[JaegerReader, str]]:
    """Jaeger serving ``assets`` as its UI (the tests' Jaeger, one config line added): yields a reader
    of its query API (``jaeger_query_url`` is the UI's base URL) and its OTLP/HTTP base URL."""
    config = JAEGER_CONFIG.read_text()
    anchor = "  jaeger_query:\n"
    config = config.replace(anchor, f"{anchor}    ui:\n      assets_path: {assets}\n", 1)
    (workdir / "jaeger.yaml").write_text(config)
    binaries = build_backends(workdir / "build.log")
    jaeger, grpc, http, query = _jaeger_process(binaries, workdir, workdir / "jaeger.yaml")
    reader = JaegerReader()
    reader.jaeger_query_url = f"http://{HOST}:{query}"
    try:
        _start_jaeger(jaeger, reader.jaeger_query_url, grpc, 60)
        yield reader, f"http://{HOST}:{http}"
    finally:
        jaeger.stop()


# --- The runs ------------------------------------------------------------------------------------


def _demo(fail: str) -> Callable[[], tuple[str, int]]:
    def run() -> tuple[str, int]:
        from kiln_otel.demo import run_demo

        result = run_demo(fail=fail)
        assert result.trace_id is not None
        return result.trace_id, 4

    return run


def _long_run(turns: int = 149) -> tuple[str, int]:
    """A trip planner that calls a tool ``turns`` times (2 + 2 x turns messages), then hits a rate limit."""
    from kiln_otel import KilnRunError, traced_run
    from kiln_otel.demo import _import_litellm_offline
    from kiln_otel.export import configure_tracing
    from kiln_otel.litellm import run_agent
    from kiln_otel.testing import Fault, ScriptedModelServer, ToolCall, Turn

    _import_litellm_offline()
    cities = ["Lisbon", "Porto", "Faro", "Madrid", "Seville", "Valencia", "Malaga", "Bilbao"]
    script = [
        Turn.tool_calls([ToolCall("get_weather", {"city": cities[i % len(cities)]}, id=f"call_{i}")])
        for i in range(turns)
    ]
    script.append(Turn.fault(Fault.RATE_LIMIT))

    def get_weather(city: str) -> dict[str, Any]:
        return {"city": city, "forecast": "sunny", "high_c": 24}

    provider, _ = configure_tracing(handle_signals=False)
    trace_id = ""
    try:
        with ScriptedModelServer(script) as server:
            run = traced_run("trip-planner", tracer_provider=provider, provider_name="openai")

            async def agent() -> None:
                with run:
                    run.messages.extend(
                        [
                            {"role": "system", "content": "You plan trips. Check the weather everywhere first."},
                            {"role": "user", "content": "Where in Iberia is it warm next week?"},
                        ]
                    )
                    await run_agent(
                        "openai/scripted", run.messages, tools=None, tool_handlers={"get_weather": get_weather},
                        max_turns=turns + 1, api_base=server.base_url, api_key="sk-local", num_retries=0,
                    )  # fmt: skip

            try:
                asyncio.run(agent())
            except KilnRunError as error:
                trace_id = str(error.trace_id)
    finally:
        provider.force_flush()
        provider.shutdown()
    return trace_id, 2 * turns + 2


SCENARIOS: dict[str, Callable[[], tuple[str, int]]] = {
    "failed-run": _demo("rate-limit"),
    "stream-cut": _demo("stream-cut"),
    "long-run": _long_run,
}


# --- The browser ---------------------------------------------------------------------------------


@contextmanager
def chromium(workdir: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={workdir / 'chromium-profile'}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):  # fmt: skip
        options.add_argument(flag)
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_window_size(*WINDOW)
    try:
        yield driver
    finally:
        driver.quit()


def _rows(driver: Any) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, ".span-row"))


def _open_span(driver: Any, predicate: Callable[[str], bool], last: bool = False) -> bool:
    """Click the name of the first (or last) span row whose text satisfies ``predicate``."""
    from selenium.webdriver.common.by import By

    matches = [row for row in _rows(driver) if predicate(row.find_element(By.CSS_SELECTOR, ".span-name").text)]
    if not matches:
        return False
    row = matches[-1] if last else matches[0]
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'}); window.scrollBy(0, -200)", row)
    driver.execute_script("arguments[0].click()", row.find_element(By.CSS_SELECTOR, ".span-name"))
    time.sleep(0.8)
    return True


def _scroll_to(driver: Any, css: str, last: bool = True) -> None:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, css)
    if found:
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", found[-1 if last else 0])
        time.sleep(0.5)


def _click_all(driver: Any, css: str, last: bool = False) -> None:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, css)
    for element in found[-1:] if last else found[:1]:
        driver.execute_script("arguments[0].click()", element)
        time.sleep(0.5)


def _click_tags(driver: Any) -> None:
    """Open the first span detail's Tags: the table, sorted by name, instead of its one-line summary."""
    from selenium.webdriver.common.by import By

    xpath = "//div[contains(@class, 'AccordianKeyValues--header')][strong[starts-with(normalize-space(.), 'Tags')]]"
    found = driver.find_elements(By.XPATH, xpath)
    if found:
        driver.execute_script("arguments[0].click()", found[0])
        time.sleep(0.5)


def _trace_page(driver: Any, ui: str, trace_id: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{ui}/trace/{trace_id}")
    WebDriverWait(driver, 30).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, ".span-row")))
    time.sleep(1.0)


def capture(driver: Any, ui: str, name: str, trace_id: str, out: Path) -> list[Path]:
    """The views a person debugging the run looks at, one PNG each."""
    saved = []

    def shot(suffix: str) -> None:
        path = out / f"{name}{suffix}.png"
        driver.save_screenshot(str(path))
        saved.append(path)

    _trace_page(driver, ui, trace_id)
    _open_span(driver, lambda text: "invoke_agent" in text)
    shot("")
    _click_all(driver, ".AccordianLogs--toggle", last=True)  # "show more": every log, the exception last
    _scroll_to(driver, ".AccordianLogs .AccordianKeyValues--header")
    shot("-details")
    _trace_page(driver, ui, trace_id)
    _open_span(driver, lambda text: "invoke_agent" in text)
    _click_tags(driver)
    shot("-tags")
    if name == "long-run":
        _trace_page(driver, ui, trace_id)
        _open_span(driver, lambda text: "messages" in text, last=True)
        shot("-last-segment")
    if name == "stream-cut":
        _scroll_to(driver, ".AccordianLogs .AccordianKeyValues--header")
        shot("-scrolled")
    driver.get(f"{ui}/search?service={SERVICE}&limit=20&lookback=1h")
    time.sleep(2.5)
    shot("-search")
    return saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ui-assets", type=Path, default=os.environ.get("KILN_OTEL_JAEGER_UI"))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), default=None)
    parser.add_argument("--keep", action="store_true", help="leave Jaeger running until Enter is pressed")
    args = parser.parse_args(argv)
    if args.ui_assets is None or not (args.ui_assets / "index.html").is_file():
        parser.error("--ui-assets (or KILN_OTEL_JAEGER_UI) must be a jaeger-ui build folder holding index.html")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kiln-otel-screenshots-") as scratch:
        workdir = Path(scratch)
        with jaeger_with_ui(args.ui_assets.resolve(), workdir) as (jaeger, otlp):
            ui = jaeger.jaeger_query_url
            os.environ.update(
                OTEL_EXPORTER_OTLP_ENDPOINT=otlp, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf", OTEL_SERVICE_NAME=SERVICE
            )
            with chromium(workdir) as driver:
                for name in args.only or SCENARIOS:
                    trace_id, spans = SCENARIOS[name]()
                    jaeger.fetch_jaeger_legacy(trace_id, timeout=30, min_spans=spans)
                    for path in capture(driver, ui, name, trace_id, args.out):
                        print(f"{name}: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}  ({trace_id})")
            if args.keep:
                input(f"Jaeger UI at {ui} (Enter stops it) ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
