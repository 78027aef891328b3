// Interlink dashboard: one page, hash routes, no framework, no build step.
//
// Rules this file keeps (the page's Content-Security-Policy enforces the first two):
// - no inline script or style, no eval;
// - every value from the server reaches the page as a text node or an attribute set with setAttribute
//   (h() below); innerHTML is never used, so a "<script>" in a patient name shows as text;
// - the token lives in sessionStorage only and is sent in the Authorization header, never in a URL.
//   Live updates are read with fetch() streaming (EventSource cannot send that header).

const TOKEN_KEY = "interlink.token";
const SAMPLES = 90; // live samples kept and drawn per channel (~1.5 minutes at one a second)
const COUNTERS = ["received", "filtered", "queued", "sent", "errored", "dead"];
const STATUSES = ["received", "transformed", "sent", "filtered", "error", "dead", "duplicate", "held", "grouped"];
const SVG = "http://www.w3.org/2000/svg";
const RANKS = { viewer: 1, operator: 2, admin: 3 }; // a role includes the ones below it

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  live: null, // AbortController of the event stream
  latest: { channels: [], queues: [] },
  samples: new Map(), // channel -> [{t, received, sent, ...}]
  onTick: null, // the current view's live-update hook
  search: {}, // the message browser's last filter (kept in memory, never in the URL)
  ticks: 0, // live samples received (the alert count is re-read every few)
  role: null, // the token's role (GET /api/v1/me): the page offers only the actions it allows
};

// ---- DOM -------------------------------------------------------------------------------------------

/** An element; attrs: class, text, on<event>, anything else through setAttribute. Children: nodes or text. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") el.textContent = String(v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

function toast(text, kind = "info") {
  const el = document.getElementById("toast");
  el.textContent = text;
  el.className = `toast ${kind}`;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (el.hidden = true), 6000);
}

// ---- formatting ------------------------------------------------------------------------------------

function toDate(v) {
  if (v === undefined || v === null || v === "") return null;
  if (typeof v === "number") return new Date(v > 1e12 ? v : v * 1000);
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? null : d;
}

function fmtTime(v) {
  const d = toDate(v);
  if (!d) return "";
  const p = (n, w = 2) => String(n).padStart(w, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

function fmtAge(seconds) {
  if (seconds === undefined || seconds === null) return "–";
  const n = Math.max(0, Math.round(Number(seconds)));
  if (n < 60) return `${n} s`;
  if (n < 3600) return `${Math.floor(n / 60)} min ${n % 60} s`;
  if (n < 86400) return `${Math.floor(n / 3600)} h ${Math.floor((n % 3600) / 60)} min`;
  return `${Math.floor(n / 86400)} d ${Math.floor((n % 86400) / 3600)} h`;
}

function fmtNum(n) {
  return n === undefined || n === null ? "–" : Number(n).toLocaleString("en-US");
}

/** A list out of an answer that is a list or an object holding one (items / data / the named key). */
function listOf(body, ...keys) {
  if (Array.isArray(body)) return body;
  if (!body || typeof body !== "object") return [];
  for (const k of [...keys, "items", "data", "results"]) if (Array.isArray(body[k])) return body[k];
  return [];
}

function counter(ch, name) {
  const c = ch.counters && typeof ch.counters === "object" ? ch.counters : ch;
  return Number(c[name] ?? 0);
}

function messageId(m) {
  return m.id ?? m.message_id ?? "";
}

// ---- API -------------------------------------------------------------------------------------------

/** Whether the signed-in token's role includes ``role`` (the API checks again: this only hides what would be 403). */
function may(role) {
  return (RANKS[state.role] ?? 0) >= RANKS[role];
}

/** Read the token's role; hide the navigation to views it may not use. */
async function whoAmI() {
  state.role = (await api("GET", "/api/v1/me"))?.role ?? null;
  for (const a of document.querySelectorAll("#nav a[data-role]")) a.hidden = !may(a.dataset.role);
}

class ApiError extends Error {
  constructor(status, body) {
    const why = body && typeof body === "object" ? [body.title, body.detail].filter(Boolean).join(": ") : "";
    super(why || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.token}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
  });
  let data = null;
  const text = await res.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (res.status === 401) {
    // signed in: the token was revoked meanwhile (at sign-in the form says so itself)
    if (sessionStorage.getItem(TOKEN_KEY)) logout("The token was refused (unknown, revoked or expired).");
    throw new ApiError(401, data);
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

function explain(err) {
  if (err instanceof ApiError && err.status === 403) return "Your token's role does not allow this.";
  if (err instanceof ApiError && err.status === 404 && !err.body) return "This route is not available on this engine.";
  return err.message || String(err);
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const text = q.toString();
  return text ? `?${text}` : "";
}

// ---- live updates (Server-Sent Events over fetch) --------------------------------------------------

function setLive(on) {
  const el = document.getElementById("live");
  el.textContent = on ? "live" : "offline";
  el.className = on ? "live on" : "live";
}

function parseEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  return { event, data: data.join("\n") };
}

async function startLive() {
  stopLive();
  const ctrl = new AbortController();
  state.live = ctrl;
  let wait = 1000;
  while (!ctrl.signal.aborted && state.token) {
    try {
      const res = await fetch("/api/v1/events", {
        headers: { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" },
        cache: "no-store",
        credentials: "omit",
        signal: ctrl.signal,
      });
      if (res.status === 401) {
        logout("The token was refused (unknown, revoked or expired).");
        return;
      }
      if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
      setLive(true);
      wait = 1000;
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          const ev = parseEvent(buf.slice(0, end));
          buf = buf.slice(end + 2);
          if (ev.event === "stats" && ev.data) onStats(JSON.parse(ev.data));
        }
      }
    } catch (err) {
      if (ctrl.signal.aborted) return;
    }
    setLive(false);
    await new Promise((r) => setTimeout(r, wait));
    wait = Math.min(wait * 2, 15000);
  }
}

function stopLive() {
  if (state.live) state.live.abort();
  state.live = null;
  setLive(false);
}

function onStats(stats) {
  const channels = listOf(stats.channels, "channels");
  const queues = listOf(stats.queues, "queues");
  const t = typeof stats.at === "number" ? stats.at : Date.now() / 1000;
  for (const ch of channels) {
    const list = state.samples.get(ch.name) ?? [];
    const sample = { t };
    for (const k of COUNTERS) sample[k] = counter(ch, k);
    list.push(sample);
    if (list.length > SAMPLES) list.shift();
    state.samples.set(ch.name, list);
  }
  state.latest = { channels, queues, at: t };
  if (state.onTick) state.onTick(state.latest);
  state.ticks += 1;
  if (state.ticks % 5 === 1) pollAlerts();
}

// ---- throughput chart (inline SVG) -----------------------------------------------------------------

/** Messages per second received and sent between successive samples, drawn as two lines. */
function chart(name) {
  const w = 160;
  const hgt = 32;
  const samples = state.samples.get(name) ?? [];
  const rates = { received: [], sent: [] };
  for (let i = 1; i < samples.length; i++) {
    const dt = Math.max(samples[i].t - samples[i - 1].t, 0.001);
    for (const k of Object.keys(rates)) rates[k].push(Math.max(0, (samples[i][k] - samples[i - 1][k]) / dt));
  }
  const peak = Math.max(1, ...rates.received, ...rates.sent);
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${w} ${hgt}`, width: w, height: hgt, role: "img" });
  const last = rates.received.length ? rates.received[rates.received.length - 1] : 0;
  svg.append(s("title", {}, `${last.toFixed(1)} msg/s received (peak ${peak.toFixed(1)}/s over the last ${samples.length} s)`));
  svg.append(s("line", { class: "axis", x1: 0, y1: hgt - 0.5, x2: w, y2: hgt - 0.5 }));
  for (const k of Object.keys(rates)) {
    const r = rates[k];
    if (r.length < 1) continue;
    const step = (w - 2) / (SAMPLES - 2);
    const x0 = w - 2 - step * (r.length - 1);
    const points = r.map((v, i) => `${(x0 + step * i).toFixed(1)},${(hgt - 1 - (v / peak) * (hgt - 3)).toFixed(1)}`);
    svg.append(s("polyline", { class: `rate ${k}`, points: points.join(" ") }));
  }
  return h("span", { class: "chart-cell" }, svg, h("span", { class: "rate-text" }, `${last.toFixed(1)}/s`));
}

// ---- views -----------------------------------------------------------------------------------------

function section(title, ...children) {
  return h("section", { class: "view" }, h("h1", {}, title), ...children);
}

function errorBox(err) {
  return h("p", { class: "error" }, explain(err));
}

function channelsView() {
  const empty = h("tr", { hidden: true }, h("td", { colspan: 11, class: "muted" }, "No channels."));
  const tbody = h("tbody", {}, empty);
  const table = h(
    "table",
    { class: "grid", id: "channels" },
    h(
      "thead",
      {},
      h("tr", {}, h("th", {}, "Channel"), h("th", {}, "Source"), h("th", {}, "State"),
        COUNTERS.map((k) => h("th", { class: "num" }, k)), h("th", {}, "Throughput"), h("th", {}, "Actions")),
    ),
    tbody,
  );
  const stamp = h("p", { class: "muted" }, "Waiting for the first live sample…");
  // rows are updated in place, not rebuilt: a button under the pointer must survive the next sample
  const rows = new Map();
  const draw = (latest) => {
    const seen = new Set();
    for (const ch of latest.channels) {
      const st = ch.state ?? "";
      seen.add(ch.name);
      let row = rows.get(ch.name);
      if (!row) {
        const cells = Object.fromEntries(COUNTERS.map((k) => [k, h("td", { class: `num ${k}`, "data-counter": k })]));
        row = { tr: null, cells, state: h("span"), chart: h("td"), actions: h("td", { class: "actions" }), st: null };
        row.tr = h("tr", { "data-channel": ch.name }, h("td", {}, ch.name), h("td", {}, ch.source ?? ""),
          h("td", {}, row.state), COUNTERS.map((k) => cells[k]), row.chart, row.actions);
        rows.set(ch.name, row);
      }
      if (row.tr.parentNode !== tbody) tbody.append(row.tr);
      for (const k of COUNTERS) row.cells[k].textContent = fmtNum(counter(ch, k));
      clear(row.chart).append(chart(ch.name));
      if (row.st !== st) {
        row.st = st;
        row.state.textContent = st;
        row.state.className = `state ${st}`;
        append(clear(row.actions), may("admin") ? channelActions(ch.name, st) : []);
      }
    }
    for (const [name, row] of rows) {
      if (!seen.has(name)) {
        row.tr.remove();
        rows.delete(name);
      }
    }
    empty.hidden = latest.channels.length > 0;
    if (latest.at) stamp.textContent = `Updated ${fmtTime(latest.at)}`;
  };
  if (state.latest.channels.length) draw(state.latest);
  else
    api("GET", "/api/v1/channels")
      .then((body) => state.latest.channels.length || draw({ channels: listOf(body, "channels") }))
      .catch((err) => stamp.replaceWith(errorBox(err)));
  state.onTick = draw;
  const reload = h("button", { type: "button", id: "reload", class: "small" }, "Reload channel files");
  reload.addEventListener("click", async () => {
    try {
      const done = await api("POST", "/api/v1/channels/reload");
      const changed = listOf(done?.changed ?? []);
      toast(changed.length ? `Reloaded: ${changed.join(", ")}.` : "Reloaded: nothing changed.");
    } catch (err) {
      toast(explain(err), "bad"); // an invalid file: the problem names file:line; the running version stays
    }
  });
  return section("Channels", h("div", { class: "toolbar" }, stamp, may("admin") && reload), table, h("p", { class: "legend" },
    h("span", { class: "key received" }, "received/s"), " ", h("span", { class: "key sent" }, "sent/s")));
}

function channelActions(name, st) {
  const act = (verb) =>
    h("button", {
      type: "button",
      class: "small",
      onclick: async () => {
        try {
          await api("POST", `/api/v1/channels/${encodeURIComponent(name)}/${verb}`);
          toast(`Channel ${name}: ${verb} done.`);
        } catch (err) {
          toast(explain(err), "bad");
        }
      },
    }, verb);
  if (st === "running") return [act("pause"), act("stop")];
  if (st === "paused") return [act("resume"), act("stop")];
  return [act("start")];
}

function queuesView() {
  const tbody = h("tbody");
  const table = h("table", { class: "grid", id: "queues" },
    h("thead", {}, h("tr", {}, h("th", {}, "Channel"), h("th", {}, "Destination"),
      h("th", { class: "num" }, "Depth"), h("th", {}, "By status"), h("th", { class: "num" }, "Oldest waiting"))),
    tbody);
  const draw = (latest) => {
    clear(tbody);
    for (const q of latest.queues) {
      const age = q.oldest_age_s ?? q.oldest_age ?? q.age_s ?? null;
      tbody.append(h("tr", {}, h("td", {}, q.channel ?? ""), h("td", {}, q.destination ?? h("span", { class: "muted" }, "(to be processed)")),
        h("td", { class: "num depth" }, fmtNum(q.depth)),
        h("td", { class: "muted" }, Object.entries(q.by_status ?? {}).map(([k, n]) => `${k} ${n}`).join(" · ")),
        h("td", { class: `num age${age > 300 ? " warn" : ""}` }, fmtAge(age))));
    }
    if (!latest.queues.length) tbody.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "Nothing waiting.")));
  };
  if (state.latest.at) draw(state.latest);
  else api("GET", "/api/v1/queues").then((b) => draw({ queues: listOf(b, "queues") })).catch(() => {});
  state.onTick = draw;
  return section("Queues", table);
}

function channelSelect(name, value) {
  const sel = h("select", { name }, h("option", { value: "" }, "any channel"));
  for (const ch of state.latest.channels) sel.append(h("option", { value: ch.name, selected: ch.name === value }, ch.name));
  return sel;
}

function field(label, input) {
  return h("label", {}, h("span", {}, label), input);
}

function messagesView() {
  const f = state.search;
  const statusSel = h("select", { name: "status" }, h("option", { value: "" }, "any status"),
    STATUSES.map((st) => h("option", { value: st, selected: f.status === st }, st)));
  const form = h("form", { class: "filters", id: "search" },
    field("MRN", h("input", { name: "mrn", value: f.mrn ?? "", autocomplete: "off" })),
    field("Control id", h("input", { name: "control_id", value: f.control_id ?? "", autocomplete: "off" })),
    field("Accession", h("input", { name: "accession", value: f.accession ?? "", autocomplete: "off" })),
    field("Status", statusSel),
    field("Channel", channelSelect("channel", f.channel)),
    field("Type", h("input", { name: "type", value: f.type ?? "", placeholder: "ORU^R01", autocomplete: "off" })),
    field("Since", h("input", { name: "since", value: f.since ?? "", placeholder: "2h or 2024-03-01T10:00", size: 14,
      autocomplete: "off" })),
    field("Until", h("input", { name: "until", value: f.until ?? "", placeholder: "ISO time or age", size: 14,
      autocomplete: "off" })),
    h("button", { type: "submit" }, "Search"));
  const results = h("div", { id: "results" });
  const actions = h("div", { class: "toolbar" });
  const run = async (filter, cursor) => {
    const body = await api("GET", `/api/v1/messages${query({ ...filter, cursor, limit: 50 })}`);
    return { items: listOf(body, "messages"), next: body?.next_cursor ?? body?.cursor ?? null };
  };
  const show = async (filter) => {
    clear(results).append(h("p", { class: "muted" }, "Searching…"));
    const tbody = h("tbody");
    const more = h("button", { type: "button", hidden: true }, "More");
    let next = null;
    const listed = [];
    const page = async (cursor) => {
      const { items, next: n } = await run(filter, cursor);
      for (const m of items) tbody.append(messageRow(m));
      listed.push(...items.map(messageId));
      next = n;
      more.hidden = !n;
      return items.length;
    };
    more.addEventListener("click", () => page(next).catch((err) => toast(explain(err), "bad")));
    try {
      const n = await page(null);
      armReprocess(actions, filter, listed);
      clear(results).append(
        n ? h("table", { class: "grid clickable" }, h("thead", {}, h("tr", {}, h("th", {}, "Received"),
          h("th", {}, "Channel"), h("th", {}, "Type"), h("th", {}, "Control id"), h("th", {}, "Status"),
          h("th", {}, "Deliveries"), h("th", {}, "Error"))), tbody) : h("p", { class: "muted" }, "No message matches."),
        more);
    } catch (err) {
      clear(results).append(errorBox(err));
    }
  };
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const filter = {};
    for (const [k, v] of new FormData(form)) if (String(v).trim()) filter[k] = String(v).trim();
    state.search = filter;
    show(filter);
  });
  if (Object.keys(f).length) show(f);
  return section("Messages", form, actions, results);
}

/** The reprocess selection of a search: its filter when the store can select by it (channel, status, type, time),
 * else the ids listed (an MRN, control id or accession search). */
function reprocessSelection(filter, listed) {
  if (filter.mrn || filter.control_id || filter.accession || filter.sender) return listed.length ? { ids: listed } : null;
  const sel = {};
  for (const [k, to] of [["channel", "channel"], ["status", "status"], ["type", "message_type"], ["since", "since"],
    ["until", "until"]]) if (filter[k]) sel[to] = filter[k];
  return Object.keys(sel).length ? sel : null;
}

/** "Reprocess matching…": a dry-run count first, then the action on a second click. */
function armReprocess(box, filter, listed) {
  clear(box);
  if (!may("operator") || !reprocessSelection(filter, listed)) return;
  const fresh = h("button", { type: "button", id: "reprocess-matching" });
  const reset = () => {
    fresh.textContent = "Reprocess matching…";
    fresh.dataset.confirm = "";
  };
  reset();
  box.append(fresh);
  fresh.addEventListener("click", async () => {
    const sel = reprocessSelection(filter, listed);
    try {
      if (fresh.dataset.confirm !== "1") {
        const dry = await api("POST", "/api/v1/messages/reprocess?dry_run=true", sel);
        fresh.textContent = `Reprocess ${fmtNum(dry?.count ?? 0)} messages: confirm`;
        fresh.dataset.confirm = "1";
        return;
      }
      const done = await api("POST", "/api/v1/messages/reprocess", sel);
      toast(`Reprocessing ${fmtNum(done?.reprocessed ?? 0)} messages now.`);
      reset();
    } catch (err) {
      toast(explain(err), "bad");
      reset();
    }
  });
}

function deliveriesText(m) {
  const d = m.deliveries;
  if (!Array.isArray(d)) return "";
  return d.map((x) => `${x.destination}: ${x.status}`).join(", ");
}

function messageRow(m) {
  const id = messageId(m);
  return h("tr", { "data-id": id, onclick: () => (location.hash = `#/message/${encodeURIComponent(id)}`) },
    h("td", {}, h("a", { href: `#/message/${encodeURIComponent(id)}` }, fmtTime(m.received_at))),
    h("td", {}, m.channel ?? ""), h("td", {}, m.message_type ?? m.type ?? ""), h("td", {}, m.control_id ?? ""),
    h("td", {}, h("span", { class: `status ${m.status}` }, m.status ?? "")), h("td", {}, deliveriesText(m)),
    h("td", { class: "error-text" }, m.error ?? ""));
}

// -- message detail

/** Names of the fields of common segments (HL7 v2.5.1), shown beside their place in the raw view. */
const FIELD_NAMES = {
  MSH: ["Field Separator", "Encoding Characters", "Sending Application", "Sending Facility", "Receiving Application",
    "Receiving Facility", "Date/Time of Message", "Security", "Message Type", "Message Control ID", "Processing ID",
    "Version ID", "Sequence Number", "Continuation Pointer", "Accept Acknowledgment Type",
    "Application Acknowledgment Type", "Country Code", "Character Set", "Principal Language of Message",
    "Alternate Character Set Handling Scheme", "Message Profile Identifier"],
  EVN: ["Event Type Code", "Recorded Date/Time", "Date/Time Planned Event", "Event Reason Code", "Operator ID",
    "Event Occurred", "Event Facility"],
  PID: ["Set ID", "Patient ID", "Patient Identifier List", "Alternate Patient ID", "Patient Name",
    "Mother's Maiden Name", "Date/Time of Birth", "Administrative Sex", "Patient Alias", "Race", "Patient Address",
    "County Code", "Phone Number - Home", "Phone Number - Business", "Primary Language", "Marital Status", "Religion",
    "Patient Account Number", "SSN Number", "Driver's License Number", "Mother's Identifier", "Ethnic Group",
    "Birth Place", "Multiple Birth Indicator", "Birth Order", "Citizenship", "Veterans Military Status", "Nationality",
    "Patient Death Date and Time", "Patient Death Indicator"],
  PV1: ["Set ID", "Patient Class", "Assigned Patient Location", "Admission Type", "Preadmit Number",
    "Prior Patient Location", "Attending Doctor", "Referring Doctor", "Consulting Doctor", "Hospital Service",
    "Temporary Location", "Preadmit Test Indicator", "Re-admission Indicator", "Admit Source", "Ambulatory Status",
    "VIP Indicator", "Admitting Doctor", "Patient Type", "Visit Number", "Financial Class"],
  ORC: ["Order Control", "Placer Order Number", "Filler Order Number", "Placer Group Number", "Order Status",
    "Response Flag", "Quantity/Timing", "Parent", "Date/Time of Transaction", "Entered By", "Verified By",
    "Ordering Provider", "Enterer's Location", "Call Back Phone Number", "Order Effective Date/Time",
    "Order Control Code Reason", "Entering Organization", "Entering Device", "Action By"],
  OBR: ["Set ID", "Placer Order Number", "Filler Order Number", "Universal Service Identifier", "Priority",
    "Requested Date/Time", "Observation Date/Time", "Observation End Date/Time", "Collection Volume",
    "Collector Identifier", "Specimen Action Code", "Danger Code", "Relevant Clinical Information",
    "Specimen Received Date/Time", "Specimen Source", "Ordering Provider", "Order Callback Phone Number",
    "Placer Field 1", "Placer Field 2", "Filler Field 1", "Filler Field 2", "Results Rpt/Status Chng - Date/Time",
    "Charge to Practice", "Diagnostic Serv Sect ID", "Result Status", "Parent Result", "Quantity/Timing",
    "Result Copies To", "Parent", "Transportation Mode", "Reason for Study", "Principal Result Interpreter"],
  OBX: ["Set ID", "Value Type", "Observation Identifier", "Observation Sub-ID", "Observation Value", "Units",
    "References Range", "Abnormal Flags", "Probability", "Nature of Abnormal Test", "Observation Result Status",
    "Effective Date of Reference Range", "User Defined Access Checks", "Date/Time of the Observation",
    "Producer's ID", "Responsible Observer", "Observation Method", "Equipment Instance Identifier",
    "Date/Time of the Analysis"],
  NTE: ["Set ID", "Source of Comment", "Comment", "Comment Type"],
  AL1: ["Set ID", "Allergen Type Code", "Allergen Code/Mnemonic/Description", "Allergy Severity Code",
    "Allergy Reaction Code", "Identification Date"],
  DG1: ["Set ID", "Diagnosis Coding Method", "Diagnosis Code", "Diagnosis Description", "Diagnosis Date/Time",
    "Diagnosis Type"],
  MSA: ["Acknowledgment Code", "Message Control ID", "Text Message"],
};

/** The attributes of a span holding the value at ``place``: its place, and a tooltip naming the field. */
function at(place) {
  return { "data-place": place, title: describePlace(place) };
}

/** "PID-5.1 · Patient Name" for a place such as PID-5.1 or PID-3[2].4 (the name when the segment is known). */
function describePlace(place) {
  const m = /^([A-Z][A-Z0-9]{2})-(\d+)/.exec(place);
  const name = m ? FIELD_NAMES[m[1]]?.[Number(m[2]) - 1] : undefined;
  return name ? `${place} · ${name}` : place;
}

/** One HL7 v2 segment as spans per field and component, each titled with its place (PID-3, PID-5.1). */
function hl7Segment(seg, enc) {
  const name = seg.slice(0, 3);
  const fs = name === "MSH" || name === "FHS" || name === "BHS" ? seg[3] ?? "|" : enc.field;
  const row = h("div", { class: "segment" }, h("span", { class: "seg-name", title: name }, name));
  const parts = seg.split(fs);
  const header = name === "MSH" || name === "FHS" || name === "BHS";
  for (let i = 1; i < parts.length; i++) {
    const n = header ? i + 1 : i;
    row.append(h("span", { class: "sep" }, fs));
    if (header && i === 1) {
      row.append(h("span", { class: "field", ...at(`${name}-2`) }, parts[i]));
      continue;
    }
    row.append(hl7Field(parts[i], `${name}-${n}`, enc));
  }
  return row;
}

function hl7Field(value, place, enc) {
  const el = h("span", { class: "field", ...at(place) });
  const reps = value.split(enc.repetition);
  reps.forEach((rep, r) => {
    if (r) el.append(h("span", { class: "sep" }, enc.repetition));
    const where = reps.length > 1 ? `${place}[${r + 1}]` : place;
    const comps = rep.split(enc.component);
    if (comps.length === 1) {
      el.append(reps.length > 1 ? h("span", at(where), rep) : rep);
      return;
    }
    comps.forEach((c, i) => {
      if (i) el.append(h("span", { class: "sep" }, enc.component));
      el.append(h("span", { class: "comp", ...at(`${where}.${i + 1}`) }, c));
    });
  });
  return el;
}

/** The value of {text} / {json} wrappers (stored bodies, raw views); a DICOM summary stays whole. */
function unwrap(v) {
  if (v && typeof v === "object" && !Array.isArray(v)) {
    if (typeof v.text === "string") return v.text;
    if ("json" in v) return v.json;
  }
  return v;
}

function segmentsOf(raw) {
  if (Array.isArray(raw)) return raw.map(String);
  if (raw && typeof raw === "object" && Array.isArray(raw.segments)) return raw.segments.map(String);
  if (typeof raw === "string") return raw.split(/\r\n|\r|\n/).filter((x) => x.length);
  return null;
}

function rawView(raw) {
  const segs = segmentsOf(raw);
  if (segs && segs.length && /^[A-Z][A-Z0-9]{2}/.test(segs[0])) {
    const msh = segs.find((x) => x.startsWith("MSH")) ?? "MSH|^~\\&";
    const encChars = msh.split(msh[3] ?? "|")[1] ?? "^~\\&";
    const enc = { field: msh[3] ?? "|", component: encChars[0] ?? "^", repetition: encChars[1] ?? "~" };
    const place = h("div", { class: "place", id: "place" }, "Point at a field to see its place (PID-3, OBX-5…).");
    const box = h("div", { class: "hl7", id: "raw" }, segs.map((seg) => hl7Segment(seg, enc)));
    box.addEventListener("mouseover", (ev) => {
      const over = ev.target instanceof Element ? ev.target.closest("[data-place]") : null;
      if (over) place.textContent = describePlace(over.dataset.place);
    });
    return h("div", {}, place, box);
  }
  if (raw === null || raw === undefined) return h("p", { class: "muted", id: "raw" }, "No raw content stored.");
  const content = unwrap(raw);
  return h("pre", { class: "json", id: "raw" }, typeof content === "string" ? content : JSON.stringify(content, null, 2));
}

function attemptsView(attempts) {
  if (!attempts.length) return h("p", { class: "muted" }, "No delivery attempt.");
  return h("ol", { class: "timeline", id: "attempts" }, attempts.map((a) => {
    const ok = a.outcome === "sent" || a.status === "sent" || (a.status_code >= 200 && a.status_code < 300);
    const details = [];
    for (const [label, v] of [["Request", a.request], ["Response", a.response], ["Error", a.error]]) {
      const body = unwrap(v);
      if (body === undefined || body === null || body === "") continue;
      details.push(h("details", {}, h("summary", {}, label),
        h("pre", { class: "json" }, typeof body === "string" ? body : JSON.stringify(body, null, 2))));
    }
    return h("li", { class: ok ? "ok" : "bad" },
      h("div", { class: "when" }, fmtTime(a.started_at ?? a.at)),
      h("div", {}, a.number ? `#${a.number} ` : "", h("strong", {}, a.destination ?? ""), " ", a.outcome ?? a.status ?? "",
        a.status_code ? ` · HTTP ${a.status_code}` : "",
        a.duration_ms !== undefined && a.duration_ms !== null ? ` · ${Number(a.duration_ms).toFixed(0)} ms` : ""),
      details);
  }));
}

function prettyJson(v) {
  if (v === undefined || v === null) return h("p", { class: "muted" }, "No transformed bundle.");
  let value = v;
  if (typeof v === "string") {
    try {
      value = JSON.parse(v);
    } catch {
      return h("pre", { class: "json" }, v);
    }
  }
  return h("pre", { class: "json", id: "bundle" }, JSON.stringify(value, null, 2));
}

function messageView(id) {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  api("GET", `/api/v1/messages/${encodeURIComponent(id)}`)
    .then((m) => {
      const meta = [["Id", messageId(m)], ["Channel", m.channel], ["Status", m.status],
        ["Type", m.message_type ?? m.type], ["Control id", m.control_id], ["Sender", m.sender],
        ["Received", fmtTime(m.received_at)], ["Updated", fmtTime(m.updated_at)], ["Error", m.error],
        ["Deliveries", deliveriesText(m)]];
      const content = m.content; // absent for a viewer: metadata only
      append(clear(body), [
        h("dl", { class: "meta" }, meta.filter(([, v]) => v !== undefined && v !== null && v !== "")
          .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
        may("operator") && messageActions(messageId(m), m.channel),
        content ? [h("h2", {}, "Raw"), rawView(content.raw), h("h2", {}, "FHIR bundle"), prettyJson(content.transformed)]
          : h("p", { class: "muted" }, "Message content needs an operator token."),
        h("h2", {}, "Attempts"), attemptsView(listOf(m.attempts ?? [], "attempts"))]);
    })
    .catch((err) => clear(body).append(errorBox(err)));
  state.onTick = null;
  return section("Message", h("p", {}, h("a", { href: "#/messages" }, "← back to the search")), body);
}

function messageActions(id, channel) {
  const known = state.latest.channels.find((c) => c.name === channel)?.destinations ?? [];
  const dest = known.length
    ? h("select", { name: "destination" }, known.map((d) => h("option", { value: d }, d)))
    : h("input", { name: "destination", placeholder: "destination", autocomplete: "off" });
  const run = (path, body, label) => async () => {
    try {
      await api("POST", path, body());
      toast(`${label}: queued.`);
    } catch (err) {
      toast(explain(err), "bad");
    }
  };
  return h("div", { class: "toolbar" },
    h("button", { type: "button", onclick: run("/api/v1/messages/reprocess", () => ({ message_id: id }), "Reprocess") },
      "Reprocess"),
    h("button", { type: "button", onclick: run(`/api/v1/messages/${encodeURIComponent(id)}/redeliver`,
      () => ({ destination: dest.value.trim() }), "Redeliver") }, "Redeliver to"), dest);
}

// -- dead letters

function deadLettersView() {
  const list = h("div", {});
  const sel = channelSelect("channel", "");
  const reason = h("input", { name: "reason", placeholder: "reason for discarding", autocomplete: "off" });
  const load = async () => {
    clear(list).append(h("p", { class: "muted" }, "Loading…"));
    try {
      const tbody = h("tbody");
      const more = h("button", { type: "button", hidden: true }, "More");
      let next = null;
      const page = async () => {
        const body = await api("GET", `/api/v1/deadletters${query({ channel: sel.value, cursor: next, limit: 100 })}`);
        const items = listOf(body, "deadletters", "dead_letters");
        for (const d of items) tbody.append(deadRow(d, load, reason));
        next = body?.next ?? null;
        more.hidden = !next;
        return items.length;
      };
      more.addEventListener("click", () => page().catch((err) => toast(explain(err), "bad")));
      const n = await page();
      clear(list).append(n
        ? h("table", { class: "grid", id: "deadletters" }, h("thead", {}, h("tr", {}, h("th", {}, "Message"),
          h("th", {}, "Channel"), h("th", {}, "Destination"), h("th", {}, "Type"), h("th", {}, "Since"),
          h("th", { class: "num" }, "Attempts"), h("th", {}, "Error"), h("th", { class: "num" }, "Holding"),
          h("th", {}, "Actions"))), tbody)
        : h("p", { class: "muted", id: "no-deadletters" }, "No dead letter."), more);
    } catch (err) {
      clear(list).append(errorBox(err));
    }
  };
  const bulk = h("button", { type: "button" }, "Replay all matching…");
  bulk.addEventListener("click", async () => {
    const filter = sel.value ? { channel: sel.value } : { all: true };
    try {
      if (bulk.dataset.confirm !== "1") {
        const dry = await api("POST", "/api/v1/deadletters/replay?dry_run=true", filter);
        bulk.dataset.confirm = "1";
        bulk.textContent = `Replay ${fmtNum(dry?.count ?? dry?.matched ?? 0)} dead letters: confirm`;
        return;
      }
      const done = await api("POST", "/api/v1/deadletters/replay", filter);
      toast(`Replayed ${fmtNum(done?.count ?? done?.replayed ?? 0)}.`);
      bulk.dataset.confirm = "";
      bulk.textContent = "Replay all matching…";
      load();
    } catch (err) {
      toast(explain(err), "bad");
    }
  });
  sel.addEventListener("change", () => {
    bulk.dataset.confirm = "";
    bulk.textContent = "Replay all matching…";
    load();
  });
  load();
  state.onTick = null;
  return section("Dead letters", h("div", { class: "toolbar" }, sel, may("operator") && [bulk, reason]), list);
}

function deadRow(d, reload, reason) {
  const id = messageId(d);
  const replay = h("button", { type: "button", class: "small replay" }, "Replay");
  replay.addEventListener("click", async () => {
    try {
      await api("POST", "/api/v1/deadletters/replay", { message_id: id, destination: d.destination });
      toast("Replayed: queued for delivery now.");
      reload();
    } catch (err) {
      toast(explain(err), "bad");
    }
  });
  const discard = h("button", { type: "button", class: "small" }, "Discard");
  discard.addEventListener("click", async () => {
    if (!reason.value.trim()) {
      toast("Give a reason for discarding first.", "bad");
      reason.focus();
      return;
    }
    try {
      await api("POST", "/api/v1/deadletters/discard",
        { message_id: id, destination: d.destination, reason: reason.value.trim() });
      toast("Discarded.");
      reload();
    } catch (err) {
      toast(explain(err), "bad");
    }
  });
  return h("tr", { "data-id": id },
    h("td", {}, h("a", { href: `#/message/${encodeURIComponent(id)}` }, id.slice(0, 12))),
    h("td", {}, d.channel ?? ""), h("td", {}, d.destination ?? ""), h("td", {}, d.message_type ?? ""),
    h("td", {}, fmtTime(d.dead_at ?? d.received_at)), h("td", { class: "num" }, fmtNum(d.attempts)),
    h("td", { class: "error-text" }, d.last_error ?? (d.last_status_code ? `HTTP ${d.last_status_code}` : "")),
    h("td", { class: "num", title: "Later messages of this patient held behind it (per-patient order)" },
      d.holding ? fmtNum(d.holding) : ""),
    h("td", { class: "actions" }, may("operator") && [replay, discard]));
}

// -- mapping diff

function diffView() {
  const out = h("div", { id: "diff" });
  const form = h("form", { class: "filters" }, field("Channel", channelSelect("channel", "")),
    field("Limit", h("input", { name: "limit", type: "number", min: 1, max: 500, value: 20 })),
    h("button", { type: "submit" }, "Run through the mapping on disk"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    const body = { limit: Number(data.limit) || 20 };
    if (data.channel) body.channel = data.channel;
    else body.all = true;
    clear(out).append(h("p", { class: "muted" }, "Running…"));
    try {
      renderDiff(out, await api("POST", "/api/v1/diff", body));
    } catch (err) {
      clear(out).append(errorBox(err));
    }
  });
  state.onTick = null;
  return section("Mapping diff", h("p", { class: "muted" },
    "Stored messages run through the mapping files on disk now; what their FHIR would become, path by path."),
  may("operator") ? form : h("p", { class: "muted" }, "The mapping diff needs an operator token."), out);
}

function diffValue(v) {
  if (v === undefined) return "";
  return typeof v === "string" ? v : JSON.stringify(v);
}

/** Changes of one resource as rows: [kind, path, old, new], whatever the answer's shape. */
function changeRows(r) {
  const rows = [];
  for (const kind of ["added", "removed", "changed"]) {
    for (const c of r[kind] ?? []) {
      if (typeof c === "string") rows.push([kind, c, "", ""]);
      else rows.push([kind, c.path ?? "", diffValue(c.old), diffValue(c.new)]);
    }
  }
  for (const c of r.changes ?? []) rows.push([c.op ?? c.kind ?? "changed", c.path ?? "", diffValue(c.old), diffValue(c.new)]);
  return rows;
}

function renderDiff(out, body) {
  clear(out);
  const messages = listOf(body, "messages", "diffs");
  const changed = messages.filter((m) => m.changed ?? listOf(m.resources ?? [], "resources").length > 0);
  out.append(h("p", { class: "summary" },
    `${fmtNum(messages.length)} messages compared, ${fmtNum(changed.length)} would change.`));
  const summary = listOf(body?.summary ?? [], "summary");
  if (summary.length) {
    out.append(h("table", { class: "grid diff-summary" }, h("thead", {}, h("tr", {}, h("th", {}, "Resource"),
      h("th", {}, "Path"), h("th", {}, "Change"), h("th", { class: "num" }, "Messages"))),
    h("tbody", {}, summary.map((x) => h("tr", {}, h("td", {}, x.resource_type ?? ""), h("td", { class: "path" }, x.path ?? ""),
      h("td", {}, x.op ?? ""), h("td", { class: "num" }, fmtNum(x.count)))))));
  }
  changed.forEach((m, i) => {
    const id = messageId(m);
    const count = listOf(m.resources ?? [], "resources").reduce((n, r) => n + Math.max(1, (r.changes ?? []).length), 0);
    const box = h("details", { class: "diff-message", "data-id": id, open: i < 3 },
      h("summary", {}, h("a", { href: `#/message/${encodeURIComponent(id)}` }, id.slice(0, 12)), " ", m.channel ?? "",
        " ", h("span", { class: "muted" }, m.message_type ?? "", m.before ? ` · was ${m.before}, now ${m.now}` : "",
          ` · ${count} change${count === 1 ? "" : "s"}`)),
      m.error ? h("p", { class: "error-text" }, m.error) : null);
    for (const r of listOf(m.resources ?? [], "resources")) {
      const label = [r.resource_type ?? r.type, r.op && r.op !== "changed" ? `(${r.op})` : "", r.key ?? ""].filter(Boolean).join(" ");
      box.append(h("h3", {}, label || "resource"), h("table", { class: "grid diff" },
        h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", {}, "Path"), h("th", {}, "Stored"), h("th", {}, "Now"))),
        h("tbody", {}, changeRows(r).map(([k, path, o, n]) => h("tr", { class: k }, h("td", {}, k),
          h("td", { class: "path" }, path), h("td", { class: "old" }, o), h("td", { class: "new" }, n))))));
    }
    out.append(box);
  });
}

// -- audit

function auditView() {
  const tbody = h("tbody");
  const more = h("button", { type: "button", hidden: true }, "More");
  const box = h("div", {}, h("table", { class: "grid", id: "audit" }, h("thead", {}, h("tr", {}, h("th", {}, "When"),
    h("th", {}, "Who"), h("th", {}, "Role"), h("th", {}, "Action"), h("th", {}, "Target"), h("th", {}, "Messages"),
    h("th", {}, "From"), h("th", {}, "Outcome"))), tbody), more);
  let next = null;
  const page = async (cursor) => {
    const body = await api("GET", `/api/v1/audit${query({ cursor, limit: 100 })}`);
    for (const a of listOf(body, "entries")) {
      const ids = Array.isArray(a.message_ids) ? a.message_ids : [];
      tbody.append(h("tr", {}, h("td", {}, fmtTime(a.at)), h("td", {}, a.actor ?? ""), h("td", {}, a.role ?? ""),
        h("td", {}, a.action ?? ""), h("td", {}, a.target ?? ""),
        h("td", {}, ids.length > 3 ? `${ids.slice(0, 3).join(", ")} +${ids.length - 3}` : ids.join(", ")),
        h("td", {}, a.peer ?? ""), h("td", {}, a.outcome ?? "")));
    }
    next = body?.next_cursor ?? null;
    more.hidden = !next;
  };
  more.addEventListener("click", () => page(next).catch((err) => toast(explain(err), "bad")));
  page(null).catch((err) => box.replaceWith(errorBox(err)));
  state.onTick = null;
  return section("Audit trail", box);
}

// -- alerts

function detailText(detail) {
  if (!detail || typeof detail !== "object") return detail ?? "";
  return Object.entries(detail).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
}

function alertsView() {
  const sel = h("select", { name: "state" }, ["active", "open", "acknowledged", "escalated", "resolved", ""].map((st) =>
    h("option", { value: st }, st || "any state")));
  const list = h("div", {});
  const load = async () => {
    try {
      const body = await api("GET", `/api/v1/alerts${query({ state: sel.value, limit: 200 })}`);
      const items = listOf(body, "alerts");
      clear(list).append(items.length
        ? h("table", { class: "grid", id: "alerts" }, h("thead", {}, h("tr", {}, h("th", {}, "Raised"), h("th", {}, "Channel"),
          h("th", {}, "Kind"), h("th", {}, "Rule"), h("th", {}, "State"), h("th", {}, "Detail"), h("th", {}, "Message"),
          h("th", {}, ""))), h("tbody", {}, items.map((a) => alertRow(a, load))))
        : h("p", { class: "muted", id: "no-alerts" }, "No alert."));
    } catch (err) {
      clear(list).append(errorBox(err));
    }
  };
  sel.addEventListener("change", load);
  load();
  state.onTick = null;
  return section("Alerts", h("div", { class: "toolbar" }, sel), list);
}

function alertRow(a, reload) {
  const ack = may("operator") && (a.state === "open" || a.state === "escalated")
    ? h("button", { type: "button", class: "small ack", onclick: async () => {
      try {
        await api("POST", `/api/v1/alerts/${encodeURIComponent(a.id)}/ack`);
        toast("Acknowledged.");
        reload();
        pollAlerts();
      } catch (err) {
        toast(explain(err), "bad");
      }
    } }, "Acknowledge")
    : (a.acked_by ? `by ${a.acked_by}` : "");
  return h("tr", { "data-id": a.id, class: `alert ${a.state}` }, h("td", {}, fmtTime(a.raised_at)), h("td", {}, a.channel ?? ""),
    h("td", {}, a.kind ?? ""), h("td", {}, a.rule ?? ""), h("td", {}, h("span", { class: `state ${a.state}` }, a.state)),
    h("td", { class: "detail" }, detailText(a.detail)),
    h("td", {}, a.message_id ? h("a", { href: `#/message/${encodeURIComponent(a.message_id)}` }, a.message_id.slice(0, 12)) : ""),
    h("td", { class: "actions" }, ack));
}

/** The header's count of active alerts (every few live samples). */
async function pollAlerts() {
  const badge = document.getElementById("alerts-badge");
  try {
    const body = await api("GET", "/api/v1/alerts?state=active&limit=100");
    // active = open, escalated or acknowledged: the badge counts those nobody has acknowledged yet
    const n = listOf(body, "alerts").filter((a) => a.state !== "acknowledged").length;
    badge.textContent = `${n} alert${n === 1 ? "" : "s"}`;
    badge.hidden = n === 0;
  } catch {
    badge.hidden = true;
  }
}

// -- tokens (admin)

function tokensView() {
  const list = h("div", {});
  const shown = h("div", { class: "secret", id: "new-token", hidden: true });
  const load = async () => {
    try {
      const body = await api("GET", "/api/v1/tokens");
      const items = listOf(body, "tokens");
      clear(list).append(h("table", { class: "grid", id: "tokens" }, h("thead", {}, h("tr", {}, h("th", {}, "Name"),
        h("th", {}, "Role"), h("th", {}, "Id"), h("th", {}, "Created"), h("th", {}, "Last used"), h("th", {}, "Revoked"),
        h("th", {}, ""))), h("tbody", {}, items.map((tk) => h("tr", { "data-id": tk.id }, h("td", {}, tk.name ?? ""),
        h("td", {}, tk.role), h("td", { class: "path" }, tk.id), h("td", {}, fmtTime(tk.created_at)),
        h("td", {}, fmtTime(tk.last_used_at)), h("td", {}, fmtTime(tk.revoked_at)),
        h("td", { class: "actions" }, tk.revoked_at ? "" : h("button", { type: "button", class: "small", onclick: async () => {
          try {
            await api("DELETE", `/api/v1/tokens/${encodeURIComponent(tk.id)}`);
            toast("Revoked.");
            load();
          } catch (err) {
            toast(explain(err), "bad");
          }
        } }, "Revoke")))))));
    } catch (err) {
      clear(list).append(errorBox(err));
    }
  };
  const form = h("form", { class: "filters" },
    field("Name", h("input", { name: "name", maxlength: 100, autocomplete: "off" })),
    field("Role", h("select", { name: "role" }, ["viewer", "operator", "admin"].map((r) => h("option", { value: r }, r)))),
    h("button", { type: "submit" }, "Create token"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    try {
      const made = await api("POST", "/api/v1/tokens", { name: String(data.name ?? ""), role: String(data.role) });
      clear(shown).append(h("p", {}, "The new token, shown this once (copy it now):"), h("code", {}, made.token));
      shown.hidden = false;
      form.reset();
      load();
    } catch (err) {
      toast(explain(err), "bad");
    }
  });
  load();
  state.onTick = null;
  return section("Tokens", form, shown, list);
}

// -- login

function loginView(reason) {
  const input = h("input", { type: "password", name: "token", id: "token", autocomplete: "off", required: true,
    placeholder: "il_…", spellcheck: "false" });
  const note = h("p", { class: "error", id: "login-error" }, reason ?? "");
  const form = h("form", { class: "login", id: "login" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Paste an API token. An administrator makes one with ",
      h("code", {}, "interlink token create --role viewer"), " (or operator, admin)."),
    input, h("button", { type: "submit" }, "Sign in"), note);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    state.token = input.value.trim();
    try {
      await whoAmI();
    } catch (err) {
      state.token = null;
      state.role = null;
      note.textContent = err instanceof ApiError && err.status === 401 ? "This token is not accepted." : explain(err);
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, state.token);
    input.value = "";
    signedIn();
    location.hash = "#/channels";
    route();
  });
  return form;
}

// ---- shell -----------------------------------------------------------------------------------------

function signedIn() {
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  startLive();
}

function logout(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.role = null;
  state.samples.clear();
  state.latest = { channels: [], queues: [] };
  stopLive();
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("alerts-badge").hidden = true;
  state.onTick = null;
  clear(document.getElementById("main")).append(loginView(reason));
}

const VIEWS = {
  channels: channelsView,
  queues: queuesView,
  messages: messagesView,
  message: messageView,
  deadletters: deadLettersView,
  diff: diffView,
  alerts: alertsView,
  audit: auditView,
  tokens: tokensView,
};

function route() {
  if (!state.token) {
    logout();
    return;
  }
  const [, name = "channels", arg] = location.hash.replace(/^#/, "").split("/");
  const view = VIEWS[name] ?? channelsView;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === name);
  state.onTick = null;
  clear(document.getElementById("main")).append(view(arg ? decodeURIComponent(arg) : undefined));
}

document.getElementById("logout").addEventListener("click", () => {
  logout();
  location.hash = "";
});
window.addEventListener("hashchange", route);
// the role is known before the first view is drawn (a refused stored token signs out, see api())
(state.token ? whoAmI().catch(() => {}) : Promise.resolve()).then(() => {
  if (state.token) signedIn();
  route();
});
