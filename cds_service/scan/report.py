"""``report.html``: the scan's summary as one self-contained page for a CDS committee.

No script, no font, no image file, no request: inline CSS and SVG only, and a Content-Security-Policy that
forbids loading anything, so the page reads the same offline, from a file share or an e-mail attachment.
"""
from __future__ import annotations

from html import escape
from typing import Any

COLOURS = {"critical": "#b3261e", "warning": "#c77700", "info": "#1a5fb4"}
INDICATORS = ("critical", "warning", "info")
CSP = "default-src 'none'; style-src 'unsafe-inline'"
BAR_WIDTH = 420  # pixels of the longest bar

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:62rem;padding:0 1rem;color:#1b1b1b}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.2rem .5rem;vertical-align:top}
th{border-bottom:1px solid #999}tr:nth-child(even){background:#f4f4f4}.n{text-align:right}
.legend span{display:inline-block;width:.8rem;height:.8rem;margin:0 .3rem 0 1rem}
.totals{display:flex;gap:2rem;flex-wrap:wrap}.totals div{font-size:1.4rem}.totals small{display:block;font-size:.8rem}
"""


def render_report(summary: dict[str, Any]) -> str:
    """The page for ``summary`` (the content of summary.json)."""
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">",
        "<title>Population scan</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Population scan: {escape(summary['hook'])} at {escape(summary['now'])}</h1>",
        _totals(summary),
        "<h2>Cards per 1,000 patients, per rule and indicator</h2>",
        _legend(),
        _rule_chart(summary["rules"]),
        "<h2>Cards per patient</h2>",
        _distribution(summary["cards_per_patient"]),
        "<h2>Top evidence values</h2>",
        _evidence(summary["rules"]),
        "<h2>Data read</h2>",
        _data(summary),
        "</body></html>",
    ]
    return "\n".join(parts)


def _totals(summary: dict[str, Any]) -> str:
    patients, cards = summary["patients"], summary["cards"]
    figures = [
        ("patients scanned", patients["scanned"]),
        ("patients with a card", patients["with_cards"]),
        ("cards", cards["total"]),
        ("cards per 1,000 patients", cards["per_1000_patients"]),
        ("resources read", summary["resources"]["read"]),
    ]
    cells = "".join(f"<div id='total-{i}'>{value:,}<small>{escape(label)}</small></div>"
                    for i, (label, value) in enumerate(figures))
    return f"<section class='totals'>{cells}</section>"


def _legend() -> str:
    keys = "".join(f"<span style='background:{COLOURS[i]}'></span>{i}" for i in INDICATORS)
    return f"<p class='legend'>{keys}</p>"


def _rule_chart(rules: list[dict[str, Any]]) -> str:
    """One horizontal bar per rule, stacked by indicator, scaled to the rule with the most cards."""
    top = max((r["cards_per_1000_patients"] for r in rules), default=0) or 1
    row_height, label_width = 26, 330
    height = row_height * len(rules) + 10
    items = []
    for row, rule in enumerate(rules):
        y = row * row_height + 5
        scanned = rule["patients_scanned"] or 1
        x = label_width
        items.append(f"<text x='0' y='{y + 15}' font-size='12'>{escape(rule['rule'])} ({escape(rule['deployment'])})"
                     "</text>")
        for indicator in INDICATORS:
            count = rule["by_indicator"].get(indicator, 0)
            width = BAR_WIDTH * (1000 * count / scanned) / top
            if count:
                items.append(
                    f"<rect class='bar' data-rule='{escape(rule['rule'])}' data-indicator='{indicator}' "
                    f"data-cards='{count}' x='{x:.1f}' y='{y}' width='{max(width, 1):.1f}' height='18' "
                    f"fill='{COLOURS[indicator]}'><title>{escape(rule['rule'])}: {count} {indicator}</title></rect>"
                )
            x += width
        items.append(f"<text x='{x + 6:.1f}' y='{y + 15}' font-size='12'>{rule['cards_per_1000_patients']}</text>")
    width = label_width + BAR_WIDTH + 80
    return (f"<svg id='rules-chart' role='img' aria-label='cards per 1,000 patients per rule' width='{width}' "
            f"height='{height}' viewBox='0 0 {width} {height}'>{''.join(items)}</svg>")


def _distribution(per_patient: dict[str, int]) -> str:
    """A column per number of cards (0, 1, 2, ...), its height the number of patients."""
    counts = [(int(k), n) for k, n in per_patient.items()]
    counts.sort()
    top = max((n for _k, n in counts), default=0) or 1
    column, height = 60, 160
    items = []
    for i, (cards, patients) in enumerate(counts):
        bar = (height - 40) * patients / top
        x = i * column + 10
        items.append(f"<rect class='column' data-cards='{cards}' data-patients='{patients}' x='{x}' "
                     f"y='{height - 20 - bar:.1f}' width='{column - 16}' height='{max(bar, 1):.1f}' fill='#555'>"
                     f"<title>{patients} patients with {cards} cards</title></rect>")
        items.append(f"<text x='{x}' y='{height - 4}' font-size='12'>{cards} cards</text>")
        items.append(f"<text x='{x}' y='{height - 24 - bar:.1f}' font-size='12'>{patients:,}</text>")
    width = max(len(counts), 1) * column + 20
    return (f"<svg id='cards-per-patient' role='img' aria-label='patients by number of cards' width='{width}' "
            f"height='{height}' viewBox='0 0 {width} {height}'>{''.join(items)}</svg>")


def _evidence(rules: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{escape(rule['rule'])}</td><td>{escape(item['value'])}</td><td class='n'>{item['cards']:,}</td></tr>"
        for rule in rules
        for item in rule["top_evidence"]
    )
    return ("<table id='evidence'><thead><tr><th>Rule</th><th>Evidence value</th><th class='n'>Cards</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>")


def _data(summary: dict[str, Any]) -> str:
    resources = summary["resources"]
    rows = [("read", resources["read"]), ("used", resources["used"]), *resources["skipped"].items()]
    body = "".join(f"<tr><td>{escape(str(k))}</td><td class='n'>{v:,}</td></tr>" for k, v in rows)
    problems = "".join(
        f"<tr><td>{escape(p['file'])}</td><td class='n'>{p.get('line', '')}</td><td>{escape(p['problem'])}</td></tr>"
        for p in [*summary["problems"], *summary["export_errors"]]
    )
    skipped = "".join(f"<tr><td>{escape(f['file'])}</td><td></td><td>{escape(f['reason'])}</td></tr>"
                      for f in summary["files_skipped"])
    return (f"<table id='resources'><thead><tr><th>Resources</th><th class='n'>Count</th></tr></thead>"
            f"<tbody>{body}</tbody></table>"
            "<h2>Problems (file and line)</h2><table id='problems'><thead><tr><th>File</th><th class='n'>Line</th>"
            f"<th>Problem</th></tr></thead><tbody>{problems}{skipped}</tbody></table>")
