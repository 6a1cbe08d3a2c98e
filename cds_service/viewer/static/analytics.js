// The feedback analytics page: GET /analytics for a period of days and a table per rule.

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

function render(report) {
  const table = document.createElement("table");
  table.className = "report";
  const head = document.createElement("thead");
  head.append(
    row("th", [
      ["Rule"], ["Shown", "number"], ["Critical / warning / info", "number"], ["Accepted", "number"],
      ["Overridden", "number"], ["No feedback", "number"], ["Override rate", "number"], ["Override reasons"],
    ]),
  );
  const body = document.createElement("tbody");
  for (const rule of report.rules) {
    const tr = row("td", [
      [rule.ruleId],
      [String(rule.shown), "number"],
      [`${rule.shownByIndicator.critical} / ${rule.shownByIndicator.warning} / ${rule.shownByIndicator.info}`, "number"],
      [String(rule.accepted), "number"],
      [String(rule.overridden), "number"],
      [String(rule.noFeedback), "number"],
      [percent(rule.overridden, rule.shown), "number"],
    ]);
    tr.dataset.ruleId = rule.ruleId;
    tr.append(reasonsCell(rule));
    body.append(tr);
  }
  const foot = document.createElement("tfoot");
  const totals = report.totals;
  foot.append(
    row("td", [
      ["All rules"], [String(totals.shown), "number"], [""], [String(totals.accepted), "number"],
      [String(totals.overridden), "number"], [""], [percent(totals.overridden, totals.shown), "number"], [""],
    ]),
  );
  table.append(head, body, foot);
  const parts = [report.rules.length ? table : cell("p", "No cards were shown in this period.", "no-cards")];
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
