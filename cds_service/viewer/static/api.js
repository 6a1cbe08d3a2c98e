// Calls to the service from the viewer's pages, relative to /viewer/ so the service may sit behind a path prefix.

export function serviceUrl(path) {
  return new URL(`../${path}`, document.baseURI).toString();
}

// A version 4 UUID. crypto.randomUUID exists only in secure contexts; getRandomValues works on plain http too.
export function uuid4() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export class ServiceError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The diagnostics of an OperationOutcome, or the HTTP status when the body is something else.
function problem(status, body) {
  const diagnostics = body && Array.isArray(body.issue) ? body.issue.map((i) => i.diagnostics).filter(Boolean) : [];
  return diagnostics.length ? diagnostics.join(" ") : `HTTP ${status}`;
}

export async function requestJson(path, { method = "GET", body } = {}) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(serviceUrl(path), init);
  } catch (error) {
    throw new ServiceError(0, `The service did not answer (${error.message}).`);
  }
  let parsed = null;
  try {
    parsed = await response.json();
  } catch {
    parsed = null;
  }
  if (!response.ok) throw new ServiceError(response.status, problem(response.status, parsed));
  return parsed;
}

// One feedback entry, sent as an EHR sends it (CDS Hooks 2.0.1, "Feedback").
export function sendFeedback(serviceId, entry) {
  const feedback = { ...entry, outcomeTimestamp: new Date().toISOString() };
  return requestJson(`cds-services/${encodeURIComponent(serviceId)}/feedback`, {
    method: "POST",
    body: { feedback: [feedback] },
  });
}
