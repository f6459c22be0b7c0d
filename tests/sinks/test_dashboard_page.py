"""The dashboard in real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium), served by a real
ApiServer over real chDB: the at-risk customers in ``cvm.alerts`` and their reasons must appear on the page, the
customer view must open, and the alert-outcome and defection panels must show the figures an independent computation
(scoring.outcomes on the same rows) gives. A screenshot goes to the test's tmp dir, and to ``$CVM_SCREENSHOT_DIR``
when it is set.

`make chromium` installs the browser (`make test` depends on it); the test skips, saying why, only when it is absent.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cvm.config import Config
from sinks.clickhouse import ClickHouse
from sinks.http import ApiServer
from tests.sinks.outcomes_world import defection_by_tier, make_world, window_figures, write
from tests.sinks.test_dashboard_api import ALERTS, seed

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
)
#: FACTS.md: the flags headless Chromium needs on these machines.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1440,900",
    "--hide-scrollbars",
]

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[dev]'")
if not CHROMIUM or not CHROMEDRIVER:
    pytest.skip(
        "Chromium is not installed: run `make chromium` (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium.webdriver.common.by import By  # noqa: E402 - only once Selenium is known to be there
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

REASONS = [
    "churn probability {p:.2f}",
    "{n} complaints in 30 days",
    "{n} failed payments",
    "no purchase in {d} days",
    "spend down {d}% vs previous 90 days",
    "cancellation request",
    "P(alive) fell to {p:.2f}",
]


def seed_population(ch: ClickHouse, now: datetime) -> list[tuple[str, list[str]]]:
    """A population that looks like a running system: 2,000 customers with a whale-shaped profit curve, 90 days of
    score history with tier moves, transactions, model evaluations and a dozen alerts on valuable customers at risk.
    Returns the alerts (customer id, reasons) it wrote."""
    rng = random.Random(6)
    end = datetime(2025, 6, 30, 18, 0, tzinfo=UTC)
    customers = []
    for i in range(2000):
        profit = rng.lognormvariate(4.6, 1.25) - 95 - (rng.random() < 0.08) * rng.uniform(100, 900)
        churn = min(0.99, max(0.01, rng.betavariate(1.3, 4.0) + (0.25 if profit > 400 and rng.random() < 0.1 else 0)))
        customers.append([f"C{i:05d}", round(profit, 2), churn])
    customers.sort(key=lambda c: -c[1])
    rows = []
    for rank, (cid, profit, churn) in enumerate(customers):
        tier = "A" if rank < 200 else "B" if rank < 700 else "C"
        clv = max(0.0, profit * rng.uniform(1.5, 3.0) * (1 - churn))
        rows.append([cid, 1, end, profit + 150, profit, tier, clv, churn, 1 - churn, rng.randint(1, 60)])
    columns = [
        "customer_id", "version", "as_of", "revenue", "profitability", "value_tier", "clv", "churn_probability",
        "p_alive", "n_transactions",
    ]  # fmt: skip
    ch.insert("customers", columns, rows, token="page-customers")

    history = []
    tiers = {row[0]: row[5] for row in rows[:400]}
    for cid, final in tiers.items():
        # Walk back in time from today's tier, with a random walk of profitability and churn risk.
        tier, profit, churn = final, rng.uniform(200, 800), rng.uniform(0.05, 0.6)
        for d in range(91):
            history.append([cid, 1000 - d, end - timedelta(days=d), tier, profit, churn])
            if rng.random() < 0.03:
                tier = rng.choice([t for t in "ABC" if t != tier])
            profit = max(0.0, profit + rng.gauss(-3, 25))
            churn = min(0.95, max(0.01, churn + rng.gauss(-0.004, 0.03)))
    ch.insert(
        "customer_scores",
        ["customer_id", "version", "as_of", "value_tier", "profitability", "churn_probability"],
        history,
        token="page-history",
    )

    tx = []
    for n in range(6000):
        t = end - timedelta(days=rng.uniform(0, 120))
        amount = round(rng.lognormvariate(3.6, 0.8), 2)
        tx.append(
            [f"e{n}", customers[rng.randrange(2000)][0], t, amount, "EUR", round(amount * 0.32, 2), "web", "books"]
        )
    ch.insert(
        "transactions",
        ["event_id", "customer_id", "event_time", "amount", "currency", "gross_margin", "channel", "category"],
        tx,
        token="page-tx",
    )

    metrics = []
    for k in range(30):
        t = end - timedelta(days=29 - k)
        metrics.append([t, 1 + k // 10, "roc_auc", 0.71 + 0.15 * (1 - 0.9**k) + rng.uniform(-0.01, 0.01)])
        metrics.append([t, 1 + k // 10, "log_loss", 0.58 - 0.16 * (1 - 0.9**k) + rng.uniform(-0.01, 0.01)])
    ch.insert("model_metrics", ["time", "model_version", "metric", "value"], metrics, token="page-metrics")

    written = []
    alert_rows = []
    at_risk = [r for r in rows[:300] if r[7] >= 0.45][:12]
    for k, row in enumerate(at_risk):
        cid, churn = row[0], row[7]
        picks = rng.sample(REASONS, 3)
        reasons = [r.format(p=churn, n=rng.randint(2, 4), d=rng.randint(20, 60)) for r in picks]
        severity = "critical" if churn > 0.6 else "high"
        scores = f'{{"clv": {row[6]:.2f}, "profitability": {row[4]:.2f}, "churn_probability": {churn:.3f}}}'
        alert_rows.append(
            [now - timedelta(minutes=7 * k + 1), cid, "high_value_at_risk", severity, reasons, scores, f"{cid}-1"]
        )
        written.append((cid, reasons))
    ch.insert(
        "alerts",
        ["alert_time", "customer_id", "rule", "severity", "reasons", "scores", "episode"],
        alert_rows,
        token="page-alerts",
    )
    return written


@pytest.fixture
def server(cfg: Config, reader: ClickHouse) -> Iterator[ApiServer]:
    status = {"events_per_s": 1843.2, "lag": {"transactions": 120, "contacts": 14}, "paused": False, "last_error": None}
    api = ApiServer(cfg, reader, status=lambda: dict(status)).start()
    yield api
    api.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)  # Debian's driver: Selenium downloads nothing
    driver = webdriver.Chrome(options=options, service=service)
    # The viewport itself, not the window around it: a screen of 1440 x 900 CSS pixels.
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 1440, "height": 900, "deviceScaleFactor": 1, "mobile": False}
    )
    yield driver
    driver.quit()


def _screenshot(driver: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path)), "Chromium took no screenshot"
    extra = os.environ.get("CVM_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / name)
    return path


def _text(driver: Any) -> str:
    return str(driver.find_element(By.TAG_NAME, "body").text)


def test_page_shows_the_at_risk_customers_and_their_reasons(
    server: ApiServer, ch: ClickHouse, browser: Any, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    seed(ch, now - timedelta(hours=2))
    written = seed_population(ch, now)
    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.execute_script("return document.body.dataset.loaded === '1'"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#alerts tbody tr")
    expected = [cid for cid, _ in written] + [cid for cid, *_ in ALERTS]
    # Newest first: the population's alerts (minutes old), then the seed's (hours and days old).
    assert [r.get_attribute("data-customer") for r in rows] == expected
    table = browser.find_element(By.ID, "alerts").text
    for cid, reasons in written + [(cid, reasons) for cid, _, _, reasons, _ in ALERTS]:
        assert cid in table
        for reason in reasons:
            assert reason in table, reason
    # No panel reports an error, and the figures arrived.
    errors = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".error") if e.is_displayed()]
    assert errors == []
    assert browser.find_element(By.CSS_SELECTOR, "#kpi-customers .value").text == "2,010"
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    today = sum(1 for k in range(len(written)) if now - timedelta(minutes=7 * k + 1) >= midnight)
    today += now - timedelta(hours=2) >= midnight  # the seed's newest alert
    assert browser.find_element(By.CSS_SELECTOR, "#kpi-alerts .value").text == str(today)
    assert "of customers carry" in browser.find_element(By.ID, "whale-note").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#matrix tbody td")) == 12  # 3 tiers x 4 bands (unscored)
    assert browser.find_element(By.CSS_SELECTOR, "#live").get_attribute("class") == "live ok"
    shot = _screenshot(browser, tmp_path, "dashboard.png")
    assert shot.stat().st_size > 20_000

    # The customer view: a click on the first at-risk customer opens its history, events and features.
    first = written[0][0]
    browser.find_element(By.CSS_SELECTOR, f'#alerts tr[data-customer="{first}"] a').click()
    wait.until(lambda d: d.find_element(By.ID, "c-title").text == first)
    drawer = browser.find_element(By.ID, "customer")
    assert (
        drawer.is_displayed()
        and "churn_probability" in drawer.text
        and "high_value_at_risk" in drawer.text.replace(" ", "_")
    )
    _screenshot(browser, tmp_path, "customer.png")


def test_customer_view_shows_events_of_the_three_kinds(server: ApiServer, ch: ClickHouse, browser: Any) -> None:
    seed(ch)
    browser.get(server.url + "/#customer=c00")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_element(By.ID, "c-title").text == "c00")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#c-events tbody tr")) == 5)
    events = browser.find_element(By.ID, "c-events").text
    assert "transaction" in events and "contact" in events and "payment" in events
    assert "cancellation request by email" in events and "failed" in events
    browser.find_element(By.CSS_SELECTOR, "#customer .close").click()
    wait.until(lambda d: not d.find_element(By.ID, "customer").is_displayed())


def test_empty_database_renders_without_errors(server: ApiServer, browser: Any, tmp_path: Path) -> None:
    browser.get(server.url + "/")
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.body.dataset.loaded === '1'"))
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".error") if e.is_displayed()] == []
    shown = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".empty") if e.is_displayed()]
    assert "No alerts yet." in shown and "No customers scored yet." in shown
    assert "no transactions yet" in _text(browser)
    _screenshot(browser, tmp_path, "empty.png")


def _pct(x: float, digits: int = 0) -> str:
    """As the page's ``pct``: JavaScript's toFixed (half away from zero)."""
    from decimal import ROUND_HALF_UP, Decimal

    return f"{Decimal(repr(100 * x)).quantize(Decimal(1).scaleb(-digits), ROUND_HALF_UP)}%"


def test_alert_outcome_and_defection_panels_show_the_figures_from_clickhouse(
    server: ApiServer, ch: ClickHouse, browser: Any, tmp_path: Path
) -> None:
    world = make_world(3, n=120, pending=False)
    write(ch, world)
    base, expected = window_figures(world)
    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.execute_script("return document.body.dataset.loaded === '1'"))
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".error") if e.is_displayed()] == []
    assert f"tier-A base rate {_pct(base, 1)}" in browser.find_element(By.ID, "outcomes-note").text
    rows = browser.find_elements(By.CSS_SELECTOR, "#outcomes tbody tr")
    assert sorted(r.get_attribute("data-rule") for r in rows) == sorted(expected)
    for rule, want in expected.items():
        row = browser.find_element(By.CSS_SELECTOR, f'#outcomes tr[data-rule="{rule}"]')
        cell = lambda name: row.find_element(By.CSS_SELECTOR, f"td.{name}").text  # noqa: E731, B023
        assert cell("precision") == _pct(want["precision"], 1), rule
        assert cell("lift") == f"{want['lift']:.1f}×", rule
        assert cell("caught") == _pct(want["caught"]), rule
        lead = want["median_lead_days"]
        assert cell("lead") == (f"{int(lead + 0.5)} d" if want["alerted"] else "–"), rule
        assert str(want["alerts"]) in row.text and str(want["leavers"]) in row.text
    lines = browser.execute_script("return Chart.getChart('outcomes-chart').data.datasets.map(d => d.label)")
    assert "tier-A base rate" in lines and "precision · high value at risk" in lines

    # Why customers leave: per tier, the share of the leavers who showed each signal (all months together).
    shares = defection_by_tier(world)
    assert set(shares) == {"A", "B", "C"}
    leavers = sum(int(v["leavers"]) for v in shares.values())
    assert f"{leavers} customers left" in browser.find_element(By.ID, "defection-note").text
    for signal in ("silence", "cancellation", "complaints", "payments"):
        cells = browser.find_elements(By.CSS_SELECTOR, f'#defection tr[data-signal="{signal}"] td.share b')
        assert [c.text for c in cells] == [_pct(shares[t][signal]) for t in ("A", "B", "C")], signal
    browser.execute_script("document.querySelector('.grid-outcomes').scrollIntoView()")
    _screenshot(browser, tmp_path, "outcomes.png")
