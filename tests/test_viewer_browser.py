"""The card viewer in a real browser (Debian's headless Chromium, Playwright) against the real server.

The server runs as a demo does: ``cds-service serve`` (gunicorn) on a free loopback port, on the real clock, so
the example patients reach the browser moved to today (see cds_service/viewer/examples.py). The browser calls
the service as an EHR would, and the feedback it sends is read back from the server's own database.
"""
from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.sync_api import expect
from sqlalchemy import Engine, func, select
from support.browser import browser, page, page_errors, screenshot  # noqa: F401 (fixtures)
from support.governance import EXPERIMENTAL, as_environment, experimental_fixture, governed_site, seed_history
from support.hookcalls import SERVICE_IDS
from support.live import serve
from support.viewer_requests import RULE_ID, critical_request

from cds_service.storage.database import feedback, issued_cards, open_database
from cds_service.viewer.examples import shift_days, shifted

pytestmark = pytest.mark.slow

EXPECTATIONS = Path(__file__).resolve().parent.parent / "fixtures" / "expectations.json"


def critical_example() -> tuple[str, str]:
    """The first shipped patient-view example whose first card is critical: (example name, its rule id)."""
    fixtures = json.loads(EXPECTATIONS.read_text())["fixtures"]
    for path, expected in fixtures.items():
        if expected["hook"] == "patient-view" and expected["indicators"][:1] == ["critical"]:
            return Path(path).stem, expected["rules"][0]
    raise AssertionError("no example request expects a critical card")


def todays_critical_request() -> dict:
    """The pasted request, moved to today as the viewer moves its examples (it is written for 2026-11-01)."""
    return shifted(critical_request(), shift_days(datetime.now(UTC)))


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> tuple[str, Path]:
    tmp = tmp_path_factory.mktemp("viewer")
    with serve(tmp) as base:
        yield base, tmp / "data" / "cds-service.sqlite3"


def stored_feedback(database: Path, card_uuid: str) -> list[dict]:
    engine = open_database(f"sqlite:///{database}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(feedback).where(feedback.c.card_uuid == card_uuid)).mappings().all()
        return [dict(row) for row in rows]
    finally:
        engine.dispose()


def open_viewer(tab, base: str) -> None:
    tab.goto(f"{base}/viewer/")
    tab.wait_for_selector("body[data-ready='true']")


def call_with_pasted_request(tab, body: dict, cards: bool = True) -> None:
    tab.select_option("#example", "")
    tab.fill("#request-json", json.dumps(body))
    tab.select_option("#service", SERVICE_IDS[body["hook"]])
    tab.click("#call")
    if cards:
        tab.wait_for_selector("article.card")


def test_example_patient_shows_a_critical_card_that_is_dismissed_with_a_reason(page, server) -> None:
    base, database = server
    name, rule_id = critical_example()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    open_viewer(page, base)
    page.select_option("#example", name)
    expect(page.locator("#request-json")).to_have_value(re.compile(r'"hook": "patient-view"'))
    days = shift_days(datetime.now(UTC))
    if days:
        expect(page.locator("#example-note")).to_contain_text(f"moved {days} days")
    expect(page.locator("#service")).to_have_value(SERVICE_IDS["patient-view"])
    page.click("#call")
    page.wait_for_selector("article.card")

    answer = json.loads(page.locator("#response-json").text_content())
    card = page.locator("article.card").first
    assert card.get_attribute("data-indicator") == "critical"
    assert "card--critical" in card.get_attribute("class")
    assert card.locator(".card__badge").inner_text().lower() == "critical"
    assert card.locator(".card__summary").inner_text() == answer["cards"][0]["summary"]
    assert card.get_attribute("data-card-uuid") == answer["cards"][0]["uuid"]
    # The detail is rendered Markdown: bold text and a list of findings, not asterisks.
    assert card.locator(".card__detail strong", has_text="Findings").count() == 1
    assert card.locator(".card__detail li").count() >= 1
    assert "**" not in card.locator(".card__detail").inner_text()
    source = card.locator(".card__source a")
    assert source.get_attribute("href") == answer["cards"][0]["source"]["url"]
    assert source.get_attribute("rel") == "noopener noreferrer"
    labels = [s["label"] for s in answer["cards"][0].get("suggestions", [])]
    assert card.locator("button.suggestion").all_inner_texts() == labels
    reasons = answer["cards"][0]["overrideReasons"]
    assert card.locator("select.dismiss__reason option").all_inner_texts()[1:] == [r["display"] for r in reasons]

    reason = reasons[-1]
    card.locator("select.dismiss__reason").select_option(label=reason["display"])
    card.locator("input.dismiss__comment").fill("Discussed with the patient today")
    screenshot(page, "viewer-critical-card")

    card.locator("button.dismiss__button").click()
    page.wait_for_selector("article.card[data-outcome='overridden']")
    assert "feedback stored" in card.locator(".card__feedback").inner_text()
    assert card.locator("button.dismiss__button").is_disabled()

    rows = stored_feedback(database, card.get_attribute("data-card-uuid"))
    assert len(rows) == 1
    row = rows[0]
    assert row["outcome"] == "overridden"
    assert (row["override_system"], row["override_code"], row["override_display"]) == (
        reason["system"], reason["code"], reason["display"]
    )
    assert row["user_comment"] == "Discussed with the patient today"
    assert row["rule_id"] == rule_id
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", row["outcome_timestamp"])
    screenshot(page, "viewer-critical-card-dismissed")
    assert [url for url in requested if not url.startswith(base + "/")] == []  # offline: nothing from elsewhere


def test_accepting_a_suggestion_sends_accepted_feedback(page, server) -> None:
    base, database = server
    open_viewer(page, base)
    call_with_pasted_request(page, todays_critical_request())
    card = page.locator("article.card").first
    response = json.loads(page.locator("#response-json").text_content())
    suggestion = next(s for s in response["cards"][0]["suggestions"] if s["label"] == "Order serum magnesium")

    card.locator("button.suggestion", has_text="Order serum magnesium").click()
    page.wait_for_selector("article.card[data-outcome='accepted']")

    rows = stored_feedback(database, card.get_attribute("data-card-uuid"))
    assert [(r["outcome"], r["accepted_suggestions"]) for r in rows] == [("accepted", suggestion["uuid"])]


def test_a_refused_request_shows_the_service_diagnostics(page, page_errors, server) -> None:
    base, _ = server
    open_viewer(page, base)
    body = todays_critical_request()
    del body["context"]["patientId"]
    page.select_option("#example", "")
    page.fill("#request-json", json.dumps(body))
    page.click("#call")
    expect(page.locator("#call-status")).to_contain_text("The service refused the call: CDS-0005")
    assert page.locator("article.card").count() == 0
    page_errors[:] = [e for e in page_errors if "status of 400" not in e]  # the browser logs the 400 itself


def test_markdown_from_a_card_cannot_inject_markup(page, server) -> None:
    base, _ = server
    open_viewer(page, base)
    hostile = (
        "<script>window.injected = 1</script><img src=x onerror=\"window.injected = 2\">\n\n"
        "[click](javascript:window.injected=3) [data](data:text/html,hi) <a href='https://e.org'>raw</a>\n\n"
        "| a | b |\n|---|---|\n| <b>x</b> | [ok](https://example.org/?a=1&b=\"2\") |\n\n"
        "- `<i>code</i>`\n- **bold <u>u</u>**"
    )
    found = page.evaluate(
        """async (text) => {
            const { renderMarkdown } = await import('./static/markdown.js');
            const box = document.createElement('div');
            box.innerHTML = renderMarkdown(text);
            document.body.append(box);
            await new Promise((resolve) => setTimeout(resolve, 100));
            return {
                injected: window.injected ?? null,
                tags: [...new Set([...box.querySelectorAll('*')].map((n) => n.tagName.toLowerCase()))].sort(),
                attributes: [...new Set([...box.querySelectorAll('*')].flatMap((n) => n.getAttributeNames()))].sort(),
                hrefs: [...box.querySelectorAll('a')].map((a) => a.getAttribute('href')),
                text: box.textContent,
            };
        }""",
        hostile,
    )
    assert found["injected"] is None
    assert found["tags"] == ["a", "code", "li", "p", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul"]
    assert found["attributes"] == ["href", "rel", "target"]
    # The escaped <a> tag's URL is linked as plain text is (GFM autolinks); the javascript: and data: links are not.
    assert found["hrefs"] == ["https://e.org", 'https://example.org/?a=1&b="2"']
    assert "<script>" in found["text"] and "<img src=x" in found["text"] and "<i>code</i>" in found["text"]


def test_analytics_page_shows_the_dismissal_per_rule(page, server) -> None:
    base, _ = server
    open_viewer(page, base)
    call_with_pasted_request(page, todays_critical_request())
    card = page.locator("article.card").first
    card.locator("select.dismiss__reason").select_option(label="Already done")
    card.locator("button.dismiss__button").click()
    page.wait_for_selector("article.card[data-outcome='overridden']")

    page.click("text=Feedback analytics")
    page.wait_for_selector("body[data-ready='true']")
    row = page.locator(f"tr[data-rule-id='{RULE_ID}']")
    expect(row).to_be_visible()
    report = page.evaluate("async () => (await fetch('../analytics')).json()")  # what the page was given
    rule = next(r for r in report["rules"] if r["ruleId"] == RULE_ID)
    assert rule["overridden"] >= 1
    cells = row.locator("td").all_inner_texts()
    assert cells[:8] == [
        RULE_ID, "active", str(rule["shown"]), "0", f"{rule['shownByIndicator']['critical']} / 0 / 0",
        str(rule["accepted"]), str(rule["overridden"]), str(rule["noFeedback"]),
    ]
    assert "Already done (action-completed): " in cells[10]
    screenshot(page, "viewer-analytics")


MARKDOWN_CASES = [
    ("# Title\n## Part", "<h4>Title</h4>\n<h5>Part</h5>"),
    ("**bold** and *italic* and _also_ and ~~old~~ and snake_case_name",
     "<p><strong>bold</strong> and <em>italic</em> and <em>also</em> and <del>old</del> and snake_case_name</p>"),
    ("- one\n- two\n  - nested\n- three",
     "<ul>\n<li>one</li>\n<li>two\n<ul>\n<li>nested</li>\n</ul></li>\n<li>three</li>\n</ul>"),
    ("1. first\n\n2. second", "<ol>\n<li>first</li>\n<li>second</li>\n</ol>"),
    ("| Test | Value |\n|:--|--:|\n| K | 2.4 |",
     '<table><thead><tr><th class="align-left">Test</th><th class="align-right">Value</th></tr></thead>'
     '<tbody><tr><td class="align-left">K</td><td class="align-right">2.4</td></tr></tbody></table>'),
    ("Use `a < b` here\n\n```\nx = 1\n```", "<p>Use <code>a &lt; b</code> here</p>\n<pre><code>x = 1</code></pre>"),
    ("[EAS 2015](https://example.org/eas) (see https://example.org/x.)",
     '<p><a href="https://example.org/eas" target="_blank" rel="noopener noreferrer">EAS 2015</a> (see '
     '<a href="https://example.org/x" target="_blank" rel="noopener noreferrer">https://example.org/x</a>.)</p>'),
    ("line one  \nline two\nline three", "<p>line one<br>\nline two\nline three</p>"),
    ("> quoted **text**", "<blockquote><p>quoted <strong>text</strong></p></blockquote>"),
    ("2 * 3 * 4 and a*b", "<p>2 * 3 * 4 and a*b</p>"),
]


def test_markdown_renders_the_subset_cards_use(page, server) -> None:
    base, _ = server
    open_viewer(page, base)
    rendered = page.evaluate(
        """async (inputs) => {
            const { renderMarkdown } = await import('./static/markdown.js');
            return inputs.map(renderMarkdown);
        }""",
        [source for source, _ in MARKDOWN_CASES],
    )
    assert rendered == [html for _, html in MARKDOWN_CASES]


def wait_for_firings(engine: Engine, rule_id: str, count: int) -> None:
    """Until today's issued-card rows of ``rule_id`` number ``count``."""
    today = datetime.now(UTC).date()
    query = select(func.count()).where(issued_cards.c.rule_id == rule_id, issued_cards.c.issued_on == today)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.execute(query).scalar_one() >= count:
                return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} rows of {rule_id} today after 10 s")


def test_analytics_page_shows_silent_firings_and_flags_an_unusual_firing_rate(page, tmp_path) -> None:
    """A site on its defaults: the experimental rule runs silent. Fifteen days of history in the server's database
    (the rule fired on about a tenth of the calls), then today it fires on most: the page flags it."""
    env = as_environment(governed_site(tmp_path))
    with serve(tmp_path, env=env) as base:
        engine = open_database(f"sqlite:///{tmp_path / 'data' / 'cds-service.sqlite3'}")
        seed_history(engine, EXPERIMENTAL, today_firings=12)
        page.goto(f"{base}/viewer/")
        page.wait_for_selector("body[data-ready='true']")
        call_with_pasted_request(page, shifted(experimental_fixture(), shift_days(datetime.now(UTC))), cards=False)
        expect(page.locator("#call-status")).to_contain_text("0 cards")  # silent: recorded, not shown
        wait_for_firings(engine, EXPERIMENTAL, 13)  # the worker that answered writes its batch a moment later
        engine.dispose()

        page.click("text=Feedback analytics")
        page.wait_for_selector("body[data-ready='true']")
        row = page.locator(f"tr[data-rule-id='{EXPERIMENTAL}']")
        expect(row).to_have_attribute("data-flagged", "true")
        cells = row.locator("td").all_inner_texts()
        report = page.evaluate("async () => (await fetch('../analytics')).json()")
        silent = next(r for r in report["rules"] if r["ruleId"] == EXPERIMENTAL)["silent"]
        assert cells[:4] == [EXPERIMENTAL, "silent", "0", str(silent)]
        assert cells[11].startswith("Unusual firing rate: ")
        today = datetime.now(UTC).date().isoformat()  # twelve seeded silent firings, one from the viewer's call
        assert page.locator(f"tr[data-day='{today}'] td").all_inner_texts() == [today, "21", "0", "13", "0.00"]
        expect(page.locator("p.flagged")).to_have_text(f"Unusual firing rate today: {EXPERIMENTAL}.")
        screenshot(page, "viewer-analytics-silent-flagged")
