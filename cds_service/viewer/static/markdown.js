// A small Markdown renderer for card details: the GitHub-flavoured subset cards use (headings, paragraphs,
// bold, italic, strikethrough, code spans and blocks, lists, block quotes, tables, rules, links).
//
// Safety comes first: the whole input is HTML-escaped before any Markdown is recognised, so no tag, attribute or
// entity from the card can reach the page; the only markup in the output is the renderer's own. Links keep only
// http(s) URLs (anything else is shown as its text), open in a new tab and send no referrer. Images are shown
// as links, never loaded: the viewer works offline and a card must not make the browser fetch anything.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (ch) => ESCAPES[ch]);
}

// A URL (already escaped) that may become an href: absolute http or https, no whitespace or control characters.
const SAFE_URL = /^https?:\/\/[^\s\u0000-\u001f]+$/i;

export function safeUrl(escapedUrl) {
  return SAFE_URL.test(escapedUrl) ? escapedUrl : null;
}

function anchor(escapedUrl, innerHtml) {
  return `<a href="${escapedUrl}" target="_blank" rel="noopener noreferrer">${innerHtml}</a>`;
}

// ---- inline ------------------------------------------------------------------------------------------------

// Pieces already rendered (code spans, links) are parked behind placeholders so later passes cannot touch them.
// The input never contains U+0000 (it is removed first), so a placeholder cannot be forged.
class Parking {
  constructor() {
    this.items = [];
  }
  park(html) {
    this.items.push(html);
    return `\u0000${this.items.length - 1}\u0000`;
  }
  restore(text) {
    let previous;
    do {
      previous = text;
      text = text.replace(/\u0000(\d+)\u0000/g, (_, i) => this.items[Number(i)]);
    } while (text !== previous);
    return text;
  }
}

function emphasis(text) {
  return text
    .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>")
    .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
    .replace(/\*(?=[^\s*])([\s\S]*?[^\s*])\*/g, "<em>$1</em>")
    .replace(/\*(?=[^\s*])([^*])\*/g, "<em>$1</em>")
    .replace(/(^|[^\w])_(?=\S)([\s\S]*?\S)_(?!\w)/g, "$1<em>$2</em>");
}

// ``escaped`` is HTML-escaped text; the result is HTML.
function inline(escaped, parking) {
  let text = escaped.replace(/(`+)([\s\S]*?[^`])\1(?!`)/g, (_, _ticks, code) =>
    parking.park(`<code>${code.trim() || code}</code>`),
  );
  // ![alt](url) and [text](url "title"): only http(s) targets become links.
  text = text.replace(/(!?)\[([^\]]*)\]\(\s*((?:[^\s()]|\([^\s()]*\))+)(?:\s+&quot;[^\n]*?&quot;)?\s*\)/g, (_, bang, label, url) => {
    const target = safeUrl(url);
    const shown = bang ? label || url : emphasis(label);
    return target ? parking.park(anchor(target, shown)) : shown;
  });
  // <https://...> autolinks (escaped to &lt;...&gt;) and bare http(s) URLs (GFM's extended autolinks).
  text = text.replace(/&lt;(https?:\/\/[^\s&]*(?:&amp;[^\s&]*)*)&gt;/gi, (_, url) => parking.park(anchor(url, url)));
  text = text.replace(/\bhttps?:\/\/(?:[^\s&\u0000]|&amp;)+/gi, (found) => {
    const url = found.replace(/(?:[.,;:!?)*_~]|&amp;)+$/, "");
    return parking.park(anchor(url, url)) + found.slice(url.length);
  });
  text = emphasis(text);
  text = text.replace(/(?: {2,}|\\)\n/g, "<br>\n");
  return parking.restore(text);
}

// ---- blocks -----------------------------------------------------------------------------------------------

const FENCE = /^ {0,3}(`{3,}|~{3,})/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const LIST_ITEM = /^( *)([-*+]|\d{1,9}[.)])[ \t]+(.*)$/;
const QUOTE = /^ {0,3}&gt; ?(.*)$/;
const TABLE_DELIMITER = /^ *\|? *:?-+:? *(\| *:?-+:? *)*\|? *$/;

function isBlank(line) {
  return line.trim() === "";
}

function splitRow(line) {
  let row = line.trim();
  if (row.startsWith("|")) row = row.slice(1);
  if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
  return row.split(/(?<!\\)\|/).map((cell) => cell.trim().replace(/\\\|/g, "|"));
}

function startsBlock(lines, i) {
  const line = lines[i];
  return (
    FENCE.test(line) ||
    HEADING.test(line) ||
    RULE.test(line) ||
    LIST_ITEM.test(line) ||
    QUOTE.test(line) ||
    (line.includes("|") && i + 1 < lines.length && TABLE_DELIMITER.test(lines[i + 1]))
  );
}

// The heading levels inside a card start at 4, so a card's "# Title" does not outrank the page's own headings.
const HEADING_OFFSET = 3;

function blocks(lines, parking) {
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (isBlank(line)) {
      i += 1;
      continue;
    }
    const fence = line.match(FENCE);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trimStart().startsWith(fence[1])) body.push(lines[i++]);
      i += 1; // the closing fence (or the end)
      out.push(`<pre><code>${body.join("\n")}</code></pre>`);
      continue;
    }
    const heading = line.match(HEADING);
    if (heading) {
      const level = Math.min(heading[1].length + HEADING_OFFSET, 6);
      out.push(`<h${level}>${inline(heading[2] || "", parking)}</h${level}>`);
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      out.push("<hr>");
      i += 1;
      continue;
    }
    if (line.includes("|") && i + 1 < lines.length && TABLE_DELIMITER.test(lines[i + 1])) {
      i = table(lines, i, out, parking);
      continue;
    }
    if (QUOTE.test(line)) {
      const quoted = [];
      while (i < lines.length && QUOTE.test(lines[i])) quoted.push(lines[i++].match(QUOTE)[1]);
      out.push(`<blockquote>${blocks(quoted, parking)}</blockquote>`);
      continue;
    }
    if (LIST_ITEM.test(line)) {
      i = list(lines, i, out, parking);
      continue;
    }
    const paragraph = [line.trimStart()];
    i += 1;
    while (i < lines.length && !isBlank(lines[i]) && !startsBlock(lines, i)) paragraph.push(lines[i++].trimStart());
    out.push(`<p>${inline(paragraph.join("\n").trimEnd(), parking)}</p>`);
  }
  return out.join("\n");
}

function table(lines, start, out, parking) {
  const header = splitRow(lines[start]);
  const aligns = splitRow(lines[start + 1]).map((cell) => {
    const left = cell.startsWith(":");
    const right = cell.endsWith(":");
    return left && right ? "center" : right ? "right" : left ? "left" : "";
  });
  const cell = (tag, text, column) => {
    const align = aligns[column] ? ` class="align-${aligns[column]}"` : "";
    return `<${tag}${align}>${inline(text, parking)}</${tag}>`;
  };
  const head = header.map((text, column) => cell("th", text, column)).join("");
  const rows = [];
  let i = start + 2;
  while (i < lines.length && !isBlank(lines[i]) && lines[i].includes("|")) {
    const cells = splitRow(lines[i++]);
    rows.push(`<tr>${header.map((_, column) => cell("td", cells[column] || "", column)).join("")}</tr>`);
  }
  out.push(`<table><thead><tr>${head}</tr></thead><tbody>${rows.join("")}</tbody></table>`);
  return i;
}

// A list and the lists nested in it: an item's continuation and sub-items are indented past its marker.
function list(lines, start, out, parking) {
  const first = lines[start].match(LIST_ITEM);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const items = [];
  let i = start;
  while (i < lines.length) {
    const item = lines[i].match(LIST_ITEM);
    if (!item || item[1].length !== indent || /\d/.test(item[2]) !== ordered) break;
    const body = [item[3]];
    i += 1;
    while (i < lines.length) {
      const next = lines[i];
      const nested = next.match(LIST_ITEM);
      if (isBlank(next)) {
        const following = lines[i + 1];
        if (following === undefined || following.search(/\S/) <= indent) break;
        body.push("");
      } else if (nested && nested[1].length <= indent) {
        break;
      } else if (!nested && next.search(/\S/) <= indent && startsBlock(lines, i)) {
        break;
      } else {
        body.push(next.slice(Math.min(next.search(/\S/), indent + 2)));
      }
      i += 1;
    }
    items.push(body);
    // A blank line between two items of the same list keeps the list going (a "loose" list).
    let next = i;
    while (next < lines.length && isBlank(lines[next])) next += 1;
    const following = next < lines.length ? lines[next].match(LIST_ITEM) : null;
    if (next > i && following && following[1].length === indent && /\d/.test(following[2]) === ordered) i = next;
  }
  const tag = ordered ? "ol" : "ul";
  const startAt = ordered ? parseInt(first[2], 10) : 1;
  const attrs = ordered && startAt !== 1 ? ` start="${startAt}"` : "";
  const rendered = items.map((body) => {
    const [text, ...rest] = body;
    const nestedAt = rest.findIndex((l) => LIST_ITEM.test(l) || isBlank(l));
    const lead = nestedAt < 0 ? [text, ...rest] : [text, ...rest.slice(0, nestedAt)];
    const tail = nestedAt < 0 ? [] : rest.slice(nestedAt);
    const inner = inline(lead.map((l) => l.trim()).join("\n"), parking);
    return `<li>${inner}${tail.length ? "\n" + blocks(tail, parking) : ""}</li>`;
  });
  out.push(`<${tag}${attrs}>\n${rendered.join("\n")}\n</${tag}>`);
  return i;
}

// Markdown text -> HTML that contains no markup from the input.
export function renderMarkdown(markdown) {
  const text = String(markdown ?? "")
    .replace(/\u0000/g, "\ufffd")
    .replace(/\r\n?/g, "\n")
    .replace(/\t/g, "    ");
  return blocks(escapeHtml(text).split("\n"), new Parking());
}
