// The feedback analytics page: GET /analytics for a period of days; a table per rule (with the firing-rate
// flag), one per day, and one per rule and day.

import { requestJson } from "./api.js";

const DAY_MS = 24 * 60 * 60 * 1000;
const $ = (id) => document.getElementById(id);

function cell(tag, text, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  node.textContent = text;
  return node;
}

function row(tag, values) {
  const tr = document.createElement("tr");
  values.forEach(([text, className]) => tr.append(cell(tag, text, className)));
  return tr;
}

function percent(part, whole) {
  return whole ? `${Math.round((100 * part) / whole)}%` : "–";
}

function ratio(value) {
  return value === null || value === undefined ? "–" : value.toFixed(2);
}

// Today's (the period's last day's) firing rate against the rule's usual band; flagged rules say so in words.
function firingCell(rule) {
  const td = document.createElement("td");
  const rate = rule.firingRate;
  if (!rate || rate.rate === null) {
    td.textContent = "–";
    return td;
  }
  const band = rate.band ? ` (usual ${ratio(rate.band.low)}–${ratio(rate.band.high)})` : " (too little data for a band)";
  td.textContent = `${ratio(rate.rate)} per call on ${rate.day}${band}`;
  if (rate.flagged) {
    td.className = "flagged";
    td.prepend(cell("strong", "Unusual firing rate: "));
  }
  return td;
}

function reasonsCell(rule) {
  const td = document.createElement("td");
  const list = document.createElement("ul");
  for (const reason of rule.overrideReasons) {
    list.append(cell("li", `${reason.display || reason.code} (${reason.code}): ${reason.count}`));
  }
  if (rule.overriddenWithoutReason) list.append(cell("li", `no coded reason: ${rule.overriddenWithoutReason}`));
  if (rule.overriddenWithComment) list.append(cell("li", `with a comment: ${rule.overriddenWithComment}`));
  td.append(list.childElementCount ? list : document.createTextNode("–"));
  return td;
}

function table(headings, rows, footer) {
  const node = document.createElement("table");
  node.className = "report";
  const head = document.createElement("thead");
  head.append(row("th", headings));
  const body = document.createElement("tbody");
  body.append(...rows);
  node.append(head, body);
  if (footer) {
    const foot = document.createElement("tfoot");
    foot.append(footer);
    node.append(foot);
  }
  return node;
}

function rulesTable(report) {
  const rows = report.rules.map((rule) => {
    const tr = row("td", [
      [rule.ruleId],
      [rule.deployment || "–"],
      [String(rule.shown), "number"],
      [String(rule.silent), "number"],
      [`${rule.shownByIndicator.critical} / ${rule.shownByIndicator.warning} / ${rule.shownByIndicator.info}`, "number"],
      [String(rule.accepted), "number"],
      [String(rule.overridden), "number"],
      [String(rule.noFeedback), "number"],
      [percent(rule.accepted, rule.shown), "number"],
      [percent(rule.overridden, rule.shown), "number"],
    ]);
    tr.dataset.ruleId = rule.ruleId;
    if (rule.firingRate && rule.firingRate.flagged) tr.dataset.flagged = "true";
    tr.append(reasonsCell(rule), firingCell(rule));
    return tr;
  });
  const totals = report.totals;
  const footer = row("td", [
    ["All rules"], [""], [String(totals.shown), "number"], [String(totals.silent), "number"], [""],
    [String(totals.accepted), "number"], [String(totals.overridden), "number"], [""],
    [percent(totals.accepted, totals.shown), "number"], [percent(totals.overridden, totals.shown), "number"], [""], [""],
  ]);
  return table(
    [
      ["Rule"], ["Deployment"], ["Shown", "number"], ["Silent firings", "number"],
      ["Critical / warning / info", "number"], ["Accepted", "number"], ["Overridden", "number"],
      ["No feedback", "number"], ["Acceptance rate", "number"], ["Override rate", "number"], ["Override reasons"],
      ["Firing rate"],
    ],
    rows,
    footer,
  );
}

function daysTable(report) {
  const rows = report.days.map((day) => {
    const tr = row("td", [
      [day.day], [String(day.hookCalls), "number"], [String(day.shown), "number"], [String(day.silent), "number"],
      [ratio(day.cardsPerCall), "number"],
    ]);
    tr.dataset.day = day.day;
    return tr;
  });
  return table(
    [["Day (UTC)"], ["Hook calls", "number"], ["Cards shown", "number"], ["Silent firings", "number"],
      ["Cards per call", "number"]],
    rows,
  );
}

function ruleDaysTable(report) {
  const rows = report.rules.flatMap((rule) =>
    rule.days.map((day) =>
      row("td", [[day.day], [rule.ruleId], [String(day.shown), "number"], [String(day.silent), "number"]]),
    ),
  );
  return table([["Day (UTC)"], ["Rule"], ["Shown", "number"], ["Silent firings", "number"]], rows);
}

function render(report) {
  const flagged = report.flaggedRules;
  const parts = [];
  if (flagged.length) {
    parts.push(cell("p", `Unusual firing rate today: ${flagged.join(", ")}.`, "flagged"));
  }
  parts.push(report.rules.length ? rulesTable(report) : cell("p", "No cards were shown in this period.", "no-cards"));
  if (report.days.length) {
    parts.push(cell("h3", "Per day"), daysTable(report), cell("h3", "Per rule and day"), ruleDaysTable(report));
  }
  const orphans = report.unattributedFeedback;
  if (orphans.accepted || orphans.overridden) {
    parts.push(
      cell(
        "p",
        `Feedback for cards this service has no record of issuing: ${orphans.accepted} accepted, ${orphans.overridden} overridden.`,
        "note",
      ),
    );
  }
  $("report").replaceChildren(...parts);
}

async function show() {
  const since = $("since").value;
  const until = $("until").value;
  if (!since || !until) {
    $("report-status").textContent = "Pick both dates.";
    return;
  }
  const untilExclusive = new Date(Date.parse(`${until}T00:00:00Z`) + DAY_MS).toISOString().slice(0, 10);
  const query = new URLSearchParams({ since, until: untilExclusive });
  $("report-status").textContent = "Loading…";
  try {
    const report = await requestJson(`analytics?${query}`);
    render(report);
    $("report-status").textContent = `Cards shown from ${report.period.since} until ${report.period.until} (UTC).`;
  } catch (error) {
    $("report-status").textContent = `Could not load the report: ${error.message}`;
  }
}

function start() {
  const today = new Date();
  $("until").value = today.toISOString().slice(0, 10);
  $("since").value = new Date(today.getTime() - 29 * DAY_MS).toISOString().slice(0, 10);
  $("show").addEventListener("click", show);
  show().finally(() => (document.body.dataset.ready = "true"));
}

start();
