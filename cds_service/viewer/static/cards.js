// Cards as an EHR shows them (CDS Hooks 2.0.1 "Card attributes"): critical first, the indicator as colour and
// word, the summary, the Markdown detail, the source, suggestions as buttons, links, and a dismiss control with
// the card's override reasons. Accepting a suggestion or dismissing sends feedback to the service.

import { safeUrl, renderMarkdown } from "./markdown.js";
import { sendFeedback } from "./api.js";

const INDICATOR_ORDER = { critical: 0, warning: 1, info: 2 };
const INDICATOR_LABEL = { critical: "Critical", warning: "Warning", info: "Info" };

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "className") node.className = value;
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null) node.append(child);
  }
  return node;
}

// A link out of the viewer: http(s) only, new tab, no opener, no referrer.
function externalLink(url, label, className) {
  const target = typeof url === "string" ? safeUrl(url.trim()) : null;
  if (!target) return element("span", { className }, label);
  return element("a", { href: target, target: "_blank", rel: "noopener noreferrer", className }, label);
}

export function sortCards(cards) {
  return cards
    .map((card, position) => ({ card, position }))
    .sort(
      (a, b) =>
        (INDICATOR_ORDER[a.card.indicator] ?? 3) - (INDICATOR_ORDER[b.card.indicator] ?? 3) || a.position - b.position,
    )
    .map((entry) => entry.card);
}

class CardView {
  constructor(card, serviceId) {
    this.card = card;
    this.serviceId = serviceId;
    this.status = element("p", { className: "card__feedback", role: "status" });
    this.controls = [];
    this.node = this.build();
  }

  build() {
    const { card } = this;
    const indicator = INDICATOR_ORDER[card.indicator] === undefined ? "info" : card.indicator;
    const article = element("article", {
      className: `card card--${indicator}`,
      "data-indicator": card.indicator,
      "data-card-uuid": card.uuid,
      "aria-label": `${INDICATOR_LABEL[indicator]}: ${card.summary}`,
    });
    article.append(
      element(
        "header",
        { className: "card__head" },
        element("span", { className: "card__badge" }, INDICATOR_LABEL[indicator]),
        element("h3", { className: "card__summary" }, card.summary || ""),
      ),
    );
    if (card.detail) {
      const detail = element("div", { className: "card__detail markdown" });
      detail.innerHTML = renderMarkdown(card.detail); // escaped first: only the renderer's own markup
      article.append(detail);
    }
    if (card.source && card.source.label) {
      article.append(
        element("p", { className: "card__source" }, "Source: ", externalLink(card.source.url, card.source.label)),
      );
    }
    const suggestions = this.suggestions();
    if (suggestions) article.append(suggestions);
    const links = this.links();
    if (links) article.append(links);
    article.append(this.dismissal(), this.status);
    return article;
  }

  suggestions() {
    const list = Array.isArray(this.card.suggestions) ? this.card.suggestions : [];
    if (!list.length) return null;
    const box = element("div", { className: "card__suggestions", role: "group", "aria-label": "Suggestions" });
    for (const suggestion of list) {
      const button = element(
        "button",
        {
          type: "button",
          className: suggestion.isRecommended ? "suggestion suggestion--recommended" : "suggestion",
          title: (suggestion.actions || []).map((a) => a.description).filter(Boolean).join("\n") || undefined,
        },
        suggestion.label,
      );
      button.addEventListener("click", () => this.accept(suggestion));
      this.controls.push(button);
      box.append(button);
    }
    return box;
  }

  links() {
    const list = Array.isArray(this.card.links) ? this.card.links : [];
    if (!list.length) return null;
    const box = element("div", { className: "card__links" });
    for (const link of list) {
      if (link.type === "smart") {
        box.append(
          element(
            "button",
            { type: "button", className: "link link--smart", disabled: true, title: "SMART apps launch from an EHR" },
            `${link.label} (SMART app)`,
          ),
        );
      } else {
        box.append(externalLink(link.url, link.label, "link"));
      }
    }
    return box;
  }

  dismissal() {
    const reasons = Array.isArray(this.card.overrideReasons) ? this.card.overrideReasons : [];
    this.reason = element(
      "select",
      { className: "dismiss__reason", "aria-label": "Reason for dismissing" },
      element("option", { value: "" }, reasons.length ? "Reason (optional)…" : "No reasons offered"),
      reasons.map((reason, index) => element("option", { value: String(index) }, reason.display || reason.code)),
    );
    this.comment = element("input", {
      type: "text",
      className: "dismiss__comment",
      placeholder: "Comment (optional)",
      "aria-label": "Comment",
      maxLength: 500,
    });
    const button = element("button", { type: "button", className: "dismiss__button" }, "Dismiss");
    button.addEventListener("click", () => this.dismiss(reasons));
    this.controls.push(this.reason, this.comment, button);
    return element("div", { className: "card__dismiss" }, this.reason, this.comment, button);
  }

  async accept(suggestion) {
    if (!this.card.uuid || !suggestion.uuid) {
      this.resolve("accepted", `Accepted “${suggestion.label}” (no feedback: the card or suggestion has no uuid).`);
      return;
    }
    await this.report(
      { card: this.card.uuid, outcome: "accepted", acceptedSuggestions: [{ id: suggestion.uuid }] },
      "accepted",
      `Accepted “${suggestion.label}”.`,
    );
  }

  async dismiss(reasons) {
    const reason = this.reason.value === "" ? null : reasons[Number(this.reason.value)];
    const comment = this.comment.value.trim();
    const shown = reason ? `Dismissed: ${reason.display || reason.code}.` : "Dismissed.";
    if (!this.card.uuid) {
      this.resolve("overridden", `${shown} (no feedback: the card has no uuid).`);
      return;
    }
    const entry = { card: this.card.uuid, outcome: "overridden" };
    if (reason || comment) {
      entry.overrideReason = {};
      if (reason) entry.overrideReason.reason = { code: reason.code, system: reason.system, display: reason.display };
      if (comment) entry.overrideReason.userComment = comment;
    }
    await this.report(entry, "overridden", shown);
  }

  async report(entry, outcome, shown) {
    this.controls.forEach((control) => (control.disabled = true));
    this.status.textContent = "Sending feedback…";
    try {
      const answer = await sendFeedback(this.serviceId, entry);
      const stored = answer && answer.stored ? "feedback stored" : "feedback already stored";
      this.resolve(outcome, `${shown} The service answered: ${stored}.`);
    } catch (error) {
      this.controls.forEach((control) => (control.disabled = false));
      this.status.textContent = `Feedback failed: ${error.message}`;
      this.node.classList.add("card--feedback-failed");
    }
  }

  resolve(outcome, message) {
    this.controls.forEach((control) => (control.disabled = true));
    this.node.classList.add(`card--${outcome}`);
    this.node.dataset.outcome = outcome;
    this.status.textContent = message;
  }
}

// Replace the container's content with the cards, most urgent first.
export function showCards(container, cards, serviceId) {
  container.replaceChildren();
  if (!cards.length) {
    container.append(element("p", { className: "no-cards" }, "No cards: the service has nothing to say for this patient."));
    return;
  }
  for (const card of sortCards(cards)) container.append(new CardView(card, serviceId).node);
}
