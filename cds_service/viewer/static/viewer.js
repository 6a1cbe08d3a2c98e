// The card viewer page: pick an example patient or paste a request, pick the hook's service, call it as an EHR
// does (a fresh hookInstance each time) and show the cards.

import { requestJson, uuid4 } from "./api.js";
import { showCards } from "./cards.js";

const $ = (id) => document.getElementById(id);
const ui = {
  example: $("example"),
  service: $("service"),
  note: $("example-note"),
  request: $("request-json"),
  call: $("call"),
  status: $("call-status"),
  cards: $("cards"),
  response: $("response-json"),
};
let services = [];

function option(value, text) {
  const node = document.createElement("option");
  node.value = value;
  node.textContent = text;
  return node;
}

function selectServiceFor(hook) {
  const match = services.find((service) => service.hook === hook);
  if (match) ui.service.value = match.id;
}

async function loadExample(name) {
  if (!name) {
    ui.note.textContent = "Paste a CDS Hooks request below.";
    return;
  }
  const example = await requestJson(`viewer/examples/${encodeURIComponent(name)}`);
  ui.request.value = JSON.stringify(example.request, null, 2);
  selectServiceFor(example.hook);
  ui.note.textContent = example.shiftedDays
    ? `Dates in this example are moved ${example.shiftedDays} days to the service's evaluation time, so it fires as it was written to.`
    : "The example as written.";
}

async function callService() {
  ui.status.textContent = "";
  let body;
  try {
    body = JSON.parse(ui.request.value);
  } catch (error) {
    ui.status.textContent = `The request is not valid JSON: ${error.message}`;
    return;
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    ui.status.textContent = "The request must be a JSON object.";
    return;
  }
  const service = services.find((s) => s.id === ui.service.value);
  if (!service) {
    ui.status.textContent = "Pick a service.";
    return;
  }
  body.hook = service.hook;
  body.hookInstance = uuid4();
  ui.call.disabled = true;
  ui.status.textContent = `Calling ${service.id}…`;
  const started = performance.now();
  try {
    const answer = await requestJson(`cds-services/${encodeURIComponent(service.id)}`, { method: "POST", body });
    const cards = Array.isArray(answer.cards) ? answer.cards : [];
    const elapsed = Math.round(performance.now() - started);
    ui.status.textContent = `${cards.length} card${cards.length === 1 ? "" : "s"} from ${service.id} in ${elapsed} ms.`;
    ui.response.textContent = JSON.stringify(answer, null, 2);
    showCards(ui.cards, cards, service.id);
  } catch (error) {
    ui.status.textContent = `The service refused the call: ${error.message}`;
    ui.cards.replaceChildren();
  } finally {
    ui.call.disabled = false;
  }
}

async function start() {
  try {
    const [discovery, examples] = await Promise.all([requestJson("cds-services"), requestJson("viewer/examples")]);
    services = discovery.services || [];
    ui.service.replaceChildren(...services.map((s) => option(s.id, `${s.hook} — ${s.title || s.id}`)));
    ui.example.append(...examples.examples.map((e) => option(e.name, `${e.name} (${e.hook})`)));
    if (examples.examples.length) {
      ui.example.value = examples.examples[0].name;
      await loadExample(ui.example.value);
    } else {
      await loadExample("");
    }
  } catch (error) {
    ui.status.textContent = `Could not load the services or examples: ${error.message}`;
  }
  ui.example.addEventListener("change", () =>
    loadExample(ui.example.value).catch((error) => (ui.status.textContent = error.message)),
  );
  ui.call.addEventListener("click", callService);
  document.body.dataset.ready = "true";
}

start();
