// busd's dashboard. Vanilla JS, no build step, nothing fetched from outside busd.
//
// Data: polls /api/v1/{stats,clients,apps,services} every second, follows /events (server-sent
// events) to refetch apps and clients at once when busd says something changed, and streams
// /api/v1/inspect (fetch + ReadableStream, since EventSource cannot send a bearer token) for
// the inspector and the log tail. Protobuf JSON: 64-bit integers arrive as strings, hence num().
//
// DOM: every row is keyed (app, worker instance, client id, subject, service) and updated in
// place; nothing from busd goes through innerHTML.
'use strict';

(() => {
  const POLL_MS = 1000;
  const MIN_DT = 0.9;           // seconds between two samples a rate is computed from
  const HISTORY = 300;          // samples per subject: 5 minutes at one a second
  const TOP_N = 25;             // subjects shown unless "show all"
  const INSPECTOR_MAX = 200;    // messages kept in the inspector
  const LOG_MAX = 1000;         // lines kept in the log tail
  const EVENTS_MAX = 100;
  const TOKEN_KEY = 'bus.http.token';

  const $ = (id) => document.getElementById(id);
  const num = (v) => (v === undefined || v === null || v === '' ? 0 : Number(v));

  // ---------------------------------------------------------------- formatting
  const nf = new Intl.NumberFormat('en-US');
  function fmtInt(v) { return nf.format(Math.round(num(v))); }
  function fmtRate(r) {
    if (!isFinite(r) || r <= 0) return '0';
    if (r < 10) return r.toFixed(1);
    if (r < 1e4) return nf.format(Math.round(r));
    if (r < 1e6) return (r / 1e3).toFixed(1) + 'k';
    return (r / 1e6).toFixed(2) + 'M';
  }
  function fmtBytes(b) {
    b = num(b);
    if (b < 1024) return Math.round(b) + ' B';
    const units = ['KiB', 'MiB', 'GiB', 'TiB'];
    let i = -1;
    do { b /= 1024; i++; } while (b >= 1024 && i < units.length - 1);
    return (b < 10 ? b.toFixed(1) : Math.round(b)) + ' ' + units[i];
  }
  function fmtByteRate(r) { return r > 0 ? fmtBytes(r) + '/s' : '0'; }
  function fmtDuration(ms) {
    if (!isFinite(ms) || ms < 0) return '–';
    const s = Math.floor(ms / 1000);
    if (s < 60) return s + 's';
    const m = Math.floor(s / 60);
    if (m < 60) return m + 'm ' + (s % 60) + 's';
    const h = Math.floor(m / 60);
    if (h < 48) return h + 'h ' + (m % 60) + 'm';
    return Math.floor(h / 24) + 'd ' + (h % 24) + 'h';
  }
  function fmtSeconds(sec) {
    if (!isFinite(sec)) return '–';
    if (sec < 1e-3) return (sec * 1e6).toFixed(sec < 1e-5 ? 1 : 0) + ' µs';
    if (sec < 1) return (sec * 1e3).toFixed(sec < 1e-2 ? 2 : 1) + ' ms';
    return sec.toFixed(2) + ' s';
  }
  function sinceNs(ns) { return ns && num(ns) > 0 ? Date.now() - num(ns) / 1e6 : NaN; }
  function clock(date) { return date.toLocaleTimeString('en-GB', { hour12: false }); }
  function clockNs(ns) {
    const d = new Date(num(ns) / 1e6);
    return clock(d) + '.' + String(d.getMilliseconds()).padStart(3, '0');
  }

  // ---------------------------------------------------------------- DOM helpers
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    if (attrs) for (const [k, v] of Object.entries(attrs)) {
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }
  // Sets a node's text only when it changed (no layout work for the same figure each second).
  function setText(node, text) {
    text = String(text);
    if (node.textContent !== text) node.textContent = text;
  }
  function setNum(td, value, text) {
    setText(td, text);
    const zero = !value;
    if (td.classList.contains('zero') !== zero) td.classList.toggle('zero', zero);
  }
  // Keeps tbody's rows in the order of `keys`, creating rows only for new keys and removing
  // those gone; moves nothing that is already in place.
  function reconcile(container, cache, keys, create) {
    const want = new Set(keys);
    for (const [k, row] of cache) if (!want.has(k)) { row.remove(); cache.delete(k); }
    let prev = null;
    for (const k of keys) {
      let row = cache.get(k);
      if (!row) { row = create(k); cache.set(k, row); }
      const next = prev ? prev.nextSibling : container.firstChild;
      if (row !== next) container.insertBefore(row, next);
      prev = row;
    }
  }

  // ---------------------------------------------------------------- status line
  let statusTimer = null;
  function showStatus(kind, text) {
    const box = $('action-status');
    box.dataset.kind = kind;
    setText(box, text);
    box.hidden = false;
    clearTimeout(statusTimer);
    if (kind !== 'error') statusTimer = setTimeout(() => { box.hidden = true; }, 6000);
  }
  $('action-status').addEventListener('click', () => { $('action-status').hidden = true; });

  // ---------------------------------------------------------------- connection state
  const conn = { api: 'connecting', events: 'connecting', lastOk: 0, error: '' };
  function renderConn() {
    const pill = $('conn');
    let state, text;
    if (conn.api === 'down') {
      state = 'down';
      text = 'busd unreachable' + (conn.lastOk ? ' · last data ' + clock(new Date(conn.lastOk)) : '');
    } else if (conn.api === 'connecting') {
      state = 'connecting'; text = 'connecting…';
    } else if (conn.events === 'down') {
      // EventSource retries by itself; the page polls meanwhile.
      state = 'degraded'; text = 'polling · live events reconnecting';
    } else {
      state = 'live'; text = 'live';
    }
    if (pill.dataset.state !== state) pill.dataset.state = state;
    setText(pill, text);
    pill.title = conn.error || '';
    document.querySelector('main').classList.toggle('stale', state === 'down');
  }

  // ---------------------------------------------------------------- HTTP
  class HttpError extends Error {
    constructor(status, body) {
      super((body && (body.detail || body.error)) || ('HTTP ' + status));
      this.status = status;
      this.code = body && body.error;
    }
  }
  function token() { return sessionStorage.getItem(TOKEN_KEY) || ''; }
  function authHeaders(t) { return t ? { Authorization: 'Bearer ' + t } : {}; }
  async function api(path, { method = 'GET', body, auth = false, signal } = {}) {
    const headers = auth ? authHeaders(token()) : {};
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(path, {
      method, headers, signal, cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let json = null;
    if (text) { try { json = JSON.parse(text); } catch { json = null; } }
    if (!res.ok) throw new HttpError(res.status, json || { detail: text.trim() });
    return json;
  }

  // ---------------------------------------------------------------- the token
  function renderToken() {
    const b = $('token-button');
    setText(b, token() ? 'token: set · forget' : 'token: not set');
    b.dataset.token = token() ? 'set' : 'unset';
  }
  let tokenAsk = null;
  // Opens the token dialog; resolves with a token busd accepted, or null when cancelled.
  function askToken(why) {
    if (tokenAsk) return tokenAsk;
    const dialog = $('token-dialog'), input = $('token-input'), err = $('token-error');
    setText($('token-why'), why || '');
    err.hidden = true;
    input.value = '';
    tokenAsk = new Promise((resolve) => {
      const finish = (t) => {
        $('token-form').removeEventListener('submit', onSubmit);
        $('token-cancel').removeEventListener('click', onCancel);
        dialog.removeEventListener('cancel', onCancel);
        if (dialog.open) dialog.close();
        tokenAsk = null;
        resolve(t);
      };
      const onCancel = (e) => { e.preventDefault(); finish(null); };
      const onSubmit = async (e) => {
        e.preventDefault();
        const t = input.value.trim();
        if (!t) { err.hidden = false; setText(err, 'Paste the token first.'); return; }
        $('token-ok').disabled = true;
        try {
          const res = await fetch('/api/v1/auth', { headers: authHeaders(t), cache: 'no-store' });
          await res.text();  // read to the end (an unread body shows as an aborted request)
          if (res.status === 204 || res.ok) {
            sessionStorage.setItem(TOKEN_KEY, t);
            renderToken();
            finish(t);
          } else if (res.status === 401) {
            err.hidden = false;
            setText(err, 'busd rejected this token (401). Copy it again from http.token.');
            input.select();
          } else {
            err.hidden = false;
            setText(err, 'busd answered ' + res.status + ' to the token check.');
          }
        } catch (x) {
          err.hidden = false;
          setText(err, 'busd is unreachable: ' + x.message);
        } finally {
          $('token-ok').disabled = false;
        }
      };
      $('token-form').addEventListener('submit', onSubmit);
      $('token-cancel').addEventListener('click', onCancel);
      dialog.addEventListener('cancel', onCancel);
      dialog.showModal();
      input.focus();
    });
    return tokenAsk;
  }
  // Runs fn with a token: the stored one, else one asked for. A 401 forgets the stored token
  // and asks once more. Returns fn's result, or throws an HttpError(401) when none was given.
  async function withToken(what, fn) {
    for (let attempt = 0; attempt < 2; attempt++) {
      if (!token()) {
        const t = await askToken(what + ' needs busd\'s token.');
        if (!t) throw new HttpError(401, { error: 'unauthorized', detail: 'no token given: nothing was done' });
      }
      try {
        return await fn(token());
      } catch (x) {
        if (!(x instanceof HttpError) || x.status !== 401) throw x;
        sessionStorage.removeItem(TOKEN_KEY);
        renderToken();
        if (attempt === 1) throw x;
      }
    }
  }
  $('token-button').addEventListener('click', () => {
    if (token()) {
      sessionStorage.removeItem(TOKEN_KEY);
      renderToken();
      showStatus('ok', 'Token forgotten.');
    } else {
      askToken('').then((t) => { if (t) showStatus('ok', 'Token accepted by busd.'); });
    }
  });

  // ---------------------------------------------------------------- header
  let lastStats = null;
  function renderBroker(s, rate) {
    setText($('broker-version'), s.version ? 'v' + s.version : '');
    setText($('broker-id'), s.broker_id || '–');
    $('broker-id').title = (s.endpoints || []).join('\n');
    setText($('broker-uptime'), fmtDuration(sinceNs(s.started_unix_ns)));
    setText($('broker-clients'), fmtInt(s.clients));
    setText($('broker-routed'), fmtInt(s.msgs_routed));
    setText($('broker-rate'), rate === null ? '–' : fmtRate(rate));
    setText($('broker-dropped'), fmtInt(s.dropped));
    setText($('broker-expired'), fmtInt(s.expired));
  }

  // ---------------------------------------------------------------- apps
  const appCards = new Map();      // name -> { root, parts..., workers: Map }
  const appRoots = new Map();      // name -> its card's root element
  const busy = new Set();          // "app/action" in flight
  function appCard(name) {
    const facts = {};
    const fact = (k, label) => { facts[k] = el('b'); return el('span', { 'data-field': k }, label + ' ', facts[k]); };
    const state = el('span', { class: 'state', 'data-field': 'state' });
    const scaleInput = el('input', { type: 'number', min: '1', max: '1024', 'aria-label': 'instances', 'data-field': 'scale-instances' });
    const btn = (action, label, cls) => el('button', {
      type: 'button', class: cls || 'ghost', 'data-action': action,
      onclick: () => appAction(name, action, action === 'scale' ? { instances: Number(scaleInput.value) } : undefined),
    }, label);
    const tbody = el('tbody');
    const reason = el('div', { class: 'app-reason', hidden: '' });
    const table = el('div', { class: 'scroll' }, el('table', null,
      el('thead', null, el('tr', null,
        ...['worker', 'pid', 'state', 'uptime', 'memory', 'cpu', 'connections', 'heartbeat lag', ''].map(
          (h, i) => el('th', { class: i === 0 || i === 2 || i === 8 ? '' : 'num', text: h })))),
      tbody));
    const none = el('div', { class: 'app-none empty', text: 'no workers' });
    const root = el('div', { class: 'app', 'data-app': name },
      el('div', { class: 'app-head' },
        el('span', { class: 'app-name', text: name }), state,
        el('span', { class: 'app-facts' },
          fact('instances', 'instances'), fact('restarts', 'restarts'), fact('mode', 'mode'),
          fact('listening', 'listening'), fact('pending', 'pending')),
        el('span', { class: 'app-actions' },
          btn('reload', 'Reload', 'reload'), btn('restart', 'Restart'), btn('stop', 'Stop', 'danger'),
          btn('start', 'Start'), scaleInput, btn('scale', 'Scale'),
          el('button', { type: 'button', class: 'ghost', 'data-action': 'logs', onclick: () => openLogs(name, '') }, 'Logs'))),
      reason, table, none);
    return { root, state, facts, scaleInput, reason, table, none, tbody, workers: new Map() };
  }
  function workerRow(app, instance) {
    const cells = {};
    const td = (k, cls) => (cells[k] = el('td', { class: cls === undefined ? 'num' : cls, 'data-field': k }));
    const state = el('span', { class: 'state' });
    const row = el('tr', { 'data-worker': instance },
      td('instance', ''), td('pid'), el('td', null, state), td('uptime'), td('rss'), td('cpu'),
      td('connections'), td('lag'),
      el('td', null, el('button', { type: 'button', class: 'ghost', 'data-action': 'logs',
        onclick: () => openLogs(app, instance) }, 'logs')));
    row._cells = cells;
    row._state = state;
    return row;
  }
  function renderApps(list) {
    const apps = (list && list.apps) || [];
    setText($('apps-count'), apps.length ? String(apps.length) : '');
    $('apps-empty').hidden = apps.length > 0;
    const byName = new Map(apps.map((a) => [a.name, a]));
    reconcile($('apps'), appRoots, apps.map((a) => a.name), (name) => {
      const c = appCard(name);
      appCards.set(name, c);
      return c.root;
    });
    for (const name of appCards.keys()) if (!appRoots.has(name)) appCards.delete(name);
    for (const [name, a] of byName) {
      const c = appCards.get(name);
      setText(c.state, a.state || '?');
      c.state.dataset.state = a.state || '';
      const workers = a.workers || [];
      const ready = workers.filter((w) => w.state === 'ready').length;
      setText(c.facts.instances, ready + '/' + num(a.instances));
      setText(c.facts.restarts, fmtInt(a.restarts));
      c.facts.restarts.dataset.value = String(num(a.restarts));
      setText(c.facts.mode, a.mode || '–');
      setText(c.facts.listening, (a.listening || []).join(' ') || '–');
      setText(c.facts.pending, fmtInt(a.pending));
      if (document.activeElement !== c.scaleInput && !c.scaleInput.value) c.scaleInput.value = num(a.instances) || 1;
      c.reason.hidden = !a.reason;
      setText(c.reason, a.reason ? 'errored: ' + a.reason : '');
      c.root.dataset.state = a.state || '';
      // Workers by instance; a joined worker can share nothing with busd's own, so key both.
      c.table.hidden = workers.length === 0;
      c.none.hidden = workers.length > 0;
      const keyed = new Map(workers.map((w) => [String(w.instance), w]));
      const keys = [...keyed.keys()].sort((x, y) => Number(x) - Number(y));
      reconcile(c.tbody, c.workers, keys, (k) => workerRow(name, k));
      for (const k of keys) {
        const w = keyed.get(k), row = c.workers.get(k), cells = row._cells;
        setText(cells.instance, k + (w.joined ? ' (joined)' : ''));
        const pid = String(num(w.pid));
        if (cells.pid.textContent && cells.pid.textContent !== pid) {
          row.classList.remove('flash'); void row.offsetWidth; row.classList.add('flash');
        }
        setText(cells.pid, pid);
        row.dataset.pid = pid;
        setText(row._state, w.state || '?');
        row._state.dataset.state = w.state || '';
        row.dataset.state = w.state || '';
        setText(cells.uptime, fmtDuration(sinceNs(w.started_unix_ns)));
        setText(cells.rss, num(w.rss_bytes) ? fmtBytes(w.rss_bytes) : '–');
        setText(cells.cpu, fmtSeconds(num(w.cpu_ms) / 1000));
        setText(cells.connections, fmtInt(w.connections));
        const lag = num(w.heartbeat_lag_ms);
        setText(cells.lag, lag + ' ms');
        cells.lag.classList.toggle('hot', lag > 2000);
      }
    }
    refreshLogApps(apps);
  }
  async function appAction(name, action, body) {
    const key = name + '/' + action;
    if (busy.has(key)) return;
    if (action === 'scale' && !(body.instances >= 1)) {
      showStatus('error', 'scale ' + name + ': give a number of instances (1 or more).');
      return;
    }
    const card = appCards.get(name);
    const button = card && card.root.querySelector('[data-action="' + action + '"]');
    busy.add(key);
    if (button) button.disabled = true;
    const what = action + ' ' + name + (action === 'scale' ? ' to ' + body.instances : '');
    try {
      const list = await withToken(what, () =>
        api('/api/v1/apps/' + encodeURIComponent(name) + '/' + action, { method: 'POST', body: body || {}, auth: true }));
      if (list) renderApps(list);
      showStatus('ok', what + ': done.');
      refreshSoon();
    } catch (x) {
      const why = x instanceof HttpError
        ? (x.status === 401 ? 'not done: busd\'s token is needed (' + x.message + ')'
                            : 'failed: ' + (x.code ? x.code + ': ' : '') + x.message + ' (HTTP ' + x.status + ')')
        : 'failed: ' + x.message;
      showStatus('error', what + ' ' + why);
    } finally {
      busy.delete(key);
      if (button) button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- clients
  const clientRows = new Map();
  const clientPrev = new Map();  // id -> {t, msgs_in, msgs_out, bytes_in, bytes_out}
  function clientRow(id) {
    const cells = {};
    const order = ['id', 'name', 'pid', 'transport', 'subs', 'in', 'out', 'bin', 'bout', 'queued', 'dropped', 'age'];
    const row = el('tr', { 'data-client': id }, ...order.map((k) => (cells[k] = el('td', {
      class: k === 'id' || k === 'name' ? 'name' : k === 'transport' ? '' : 'num', 'data-field': k }))));
    row._cells = cells;
    return row;
  }
  function renderClients(list, t) {
    const clients = (list && list.clients) || [];
    setText($('clients-count'), String(clients.length));
    const ids = clients.map((c) => c.id);
    reconcile($('clients').tBodies[0], clientRows, ids, clientRow);
    const seen = new Set();
    for (const c of clients) {
      seen.add(c.id);
      const prev = clientPrev.get(c.id);
      const now = { t, msgs_in: num(c.msgs_in), msgs_out: num(c.msgs_out), bytes_in: num(c.bytes_in), bytes_out: num(c.bytes_out) };
      const dt = prev ? (t - prev.t) / 1000 : 0;
      const r = (k) => (prev && dt >= MIN_DT ? Math.max(0, (now[k] - prev[k]) / dt) : null);
      if (!prev || dt >= MIN_DT) clientPrev.set(c.id, now);
      const cells = clientRows.get(c.id)._cells;
      setText(cells.id, c.id);
      setText(cells.name, c.name || '–');
      setText(cells.pid, num(c.pid) || '–');
      setText(cells.transport, c.transport || '');
      setText(cells.subs, fmtInt(c.subscriptions));
      for (const [cell, key, f] of [['in', 'msgs_in', fmtRate], ['out', 'msgs_out', fmtRate],
                                    ['bin', 'bytes_in', fmtByteRate], ['bout', 'bytes_out', fmtByteRate]]) {
        const v = r(key);
        if (v !== null) setNum(cells[cell], v, f(v));
        else if (!cells[cell].textContent) setNum(cells[cell], 0, '…');
      }
      setNum(cells.queued, num(c.queued), fmtInt(c.queued));
      setNum(cells.dropped, num(c.dropped), fmtInt(c.dropped));
      cells.dropped.classList.toggle('hot', num(c.dropped) > 0);
      setText(cells.age, fmtDuration(sinceNs(c.connected_unix_ns)));
    }
    for (const id of clientPrev.keys()) if (!seen.has(id)) clientPrev.delete(id);
  }

  // ---------------------------------------------------------------- subjects
  // Every subject busd reports keeps its history (rates per second, HISTORY samples) whether
  // shown or not; only the rows shown exist in the DOM, and they are reused.
  const subjects = new Map();  // subject -> { prev, inHist, outHist, rateIn, rateOut, last }
  const subjectRows = new Map();
  let subjectsVersion = 0;     // bumped by each stats poll, to redraw only then
  function ingestSubjects(list, t) {
    const seen = new Set();
    for (const s of list) {
      seen.add(s.subject);
      let e = subjects.get(s.subject);
      const cur = { t, msgs_in: num(s.msgs_in), msgs: num(s.msgs) };
      if (!e) {
        e = { prev: null, inHist: [], outHist: [], rateIn: 0, rateOut: 0 };
        subjects.set(s.subject, e);
      }
      if (e.prev) {
        const dt = (t - e.prev.t) / 1000;
        if (dt >= MIN_DT) {
          e.rateIn = Math.max(0, (cur.msgs_in - e.prev.msgs_in) / dt);
          e.rateOut = Math.max(0, (cur.msgs - e.prev.msgs) / dt);
          push(e.inHist, e.rateIn);
          push(e.outHist, e.rateOut);
          e.prev = cur;
        }
      } else {
        e.prev = cur;
      }
      e.last = s;
    }
    for (const k of subjects.keys()) if (!seen.has(k)) subjects.delete(k);
    subjectsVersion++;
  }
  function push(arr, v) { arr.push(v); if (arr.length > HISTORY) arr.shift(); }
  function subjectRow(name) {
    const cells = {};
    const td = (k, cls) => (cells[k] = el('td', { class: cls === undefined ? 'num' : cls, 'data-field': k }));
    const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    svg.setAttribute('class', 'spark');
    svg.setAttribute('viewBox', '0 0 ' + HISTORY + ' 22');
    svg.setAttribute('preserveAspectRatio', 'none');
    const lineOut = document.createElementNS(svg.namespaceURI, 'polyline');
    lineOut.setAttribute('class', 'out');
    const lineIn = document.createElementNS(svg.namespaceURI, 'polyline');
    lineIn.setAttribute('class', 'in');
    const base = document.createElementNS(svg.namespaceURI, 'line');
    base.setAttribute('class', 'base');
    for (const [k, v] of [['x1', 0], ['y1', 21.5], ['x2', HISTORY], ['y2', 21.5]]) base.setAttribute(k, v);
    svg.append(base, lineOut, lineIn);
    const title = document.createElementNS(svg.namespaceURI, 'title');
    svg.append(title);
    const row = el('tr', { 'data-subject': name },
      td('subject', 'name'), td('in'), td('out'), el('td', null, svg),
      td('published'), td('delivered'), td('bytes_in'), td('bytes_out'), td('dropped'));
    cells.subject.textContent = name;
    cells.subject.title = name;
    row._cells = cells;
    row._lines = { in: lineIn, out: lineOut, title };
    row._svg = svg;
    return row;
  }
  function points(hist, max, span) {
    // Right-aligned: the newest sample at x = span.
    const off = span - hist.length;
    let out = '';
    for (let i = 0; i < hist.length; i++) {
      const y = 21 - (max > 0 ? (hist[i] / max) * 20 : 0);
      out += (off + i) + ',' + y.toFixed(1) + ' ';
    }
    return out;
  }
  let drawnVersion = -1, drawnKey = '';
  function renderSubjects(force) {
    const filter = $('subject-filter').value.trim().toLowerCase();
    const sort = $('subject-sort').value;
    const showAll = $('subjects-show-all').checked;
    const key = filter + '\u0000' + sort + '\u0000' + showAll;
    if (!force && drawnVersion === subjectsVersion && drawnKey === key) return;
    drawnVersion = subjectsVersion;
    drawnKey = key;
    let list = [...subjects.entries()];
    if (filter) list = list.filter(([k]) => k.toLowerCase().includes(filter));
    const total = (e) => num(e.last.msgs_in) + num(e.last.msgs);
    if (sort === 'name') list.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    else if (sort === 'total') list.sort((a, b) => total(b[1]) - total(a[1]) || (a[0] < b[0] ? -1 : 1));
    else list.sort((a, b) => (b[1].rateIn + b[1].rateOut) - (a[1].rateIn + a[1].rateOut) ||
                             total(b[1]) - total(a[1]) || (a[0] < b[0] ? -1 : 1));
    const matching = list.length;
    if (!showAll) list = list.slice(0, TOP_N);
    setText($('subjects-count'), String(subjects.size));
    setText($('subjects-shown'), matching === subjects.size && list.length === matching ? ''
      : 'showing ' + list.length + ' of ' + matching + (filter ? ' matching' : ''));
    reconcile($('subjects').tBodies[0], subjectRows, list.map(([k]) => k), subjectRow);
    // The sparklines' window: the history there is, from one minute up to five.
    let longest = 0;
    for (const [, e] of list) if (e.inHist.length > longest) longest = e.inHist.length;
    const span = Math.min(HISTORY, Math.max(60, longest));
    setText($('subjects-window'), 'last ' + fmtDuration(span * POLL_MS).replace(/ 0s$/, ''));
    for (const [name, e] of list) {
      const row = subjectRows.get(name), c = row._cells, s = e.last;
      if (row._span !== span) { row._svg.setAttribute('viewBox', '0 0 ' + span + ' 22'); row._span = span; }
      setNum(c.in, e.rateIn, fmtRate(e.rateIn));
      setNum(c.out, e.rateOut, fmtRate(e.rateOut));
      setNum(c.published, num(s.msgs_in), fmtInt(s.msgs_in));
      setNum(c.delivered, num(s.msgs), fmtInt(s.msgs));
      setNum(c.bytes_in, num(s.bytes_in), fmtBytes(s.bytes_in));
      setNum(c.bytes_out, num(s.bytes), fmtBytes(s.bytes));
      setNum(c.dropped, num(s.dropped), fmtInt(s.dropped));
      c.dropped.classList.toggle('hot', num(s.dropped) > 0);
      let max = 0;
      for (const v of e.inHist) if (v > max) max = v;
      for (const v of e.outHist) if (v > max) max = v;
      row._lines.in.setAttribute('points', points(e.inHist, max, span));
      row._lines.out.setAttribute('points', points(e.outHist, max, span));
      row._lines.title.textContent = 'peak ' + fmtRate(max) + ' msgs/s over the last ' +
        fmtDuration(e.inHist.length * POLL_MS);
    }
  }
  for (const id of ['subject-filter', 'subject-sort', 'subjects-show-all']) {
    $(id).addEventListener('input', () => renderSubjects(true));
  }

  // ---------------------------------------------------------------- services
  const serviceRows = new Map();
  const servicePrev = new Map();
  // The q-quantile of a histogram, interpolated linearly inside its bucket; for the +Inf
  // bucket, its lower bound (shown as "> x").
  function quantile(h, q) {
    const counts = (h.counts || []).map(num), bounds = h.bounds_seconds || [];
    const total = counts.reduce((a, b) => a + b, 0);
    if (!total) return null;
    const rank = q * total;
    let cum = 0;
    for (let i = 0; i < counts.length; i++) {
      if (counts[i] > 0 && cum + counts[i] >= rank) {
        const lo = i === 0 ? 0 : bounds[i - 1];
        if (i >= bounds.length) return { value: lo, over: true };
        const hi = bounds[i];
        return { value: lo + (hi - lo) * ((rank - cum) / counts[i]), over: false };
      }
      cum += counts[i];
    }
    return { value: bounds[bounds.length - 1] || 0, over: true };
  }
  function fmtQuantile(r) { return r === null ? '–' : (r.over ? '> ' : '') + fmtSeconds(r.value); }
  function serviceRow(name) {
    const cells = {};
    const order = ['name', 'instances', 'requests', 'rate', 'ok', 'errors', 'no_responders', 'timeouts', 'service_lost', 'expired', 'mean', 'p50', 'p99'];
    const row = el('tr', { 'data-service': name }, ...order.map((k) => (cells[k] = el('td', {
      class: k === 'name' ? 'name' : 'num', 'data-field': k }))));
    row._cells = cells;
    return row;
  }
  function renderServices(list, t) {
    const services = ((list && list.services) || []).slice().sort((a, b) => (a.name < b.name ? -1 : 1));
    setText($('services-count'), String(services.length));
    reconcile($('services').tBodies[0], serviceRows, services.map((s) => s.name), serviceRow);
    for (const s of services) {
      const c = serviceRows.get(s.name)._cells;
      const prev = servicePrev.get(s.name);
      const dt = prev ? (t - prev.t) / 1000 : 0;
      if (prev && dt >= MIN_DT) {
        const r = Math.max(0, (num(s.requests) - prev.requests) / dt);
        setNum(c.rate, r, fmtRate(r));
      } else if (!c.rate.textContent) setNum(c.rate, 0, '…');
      if (!prev || dt >= MIN_DT) servicePrev.set(s.name, { t, requests: num(s.requests) });
      setText(c.name, s.name);
      setText(c.instances, (s.instances || []).length);
      c.instances.title = (s.instances || []).join('\n');
      for (const k of ['requests', 'ok', 'errors', 'no_responders', 'timeouts', 'service_lost', 'expired']) {
        setNum(c[k], num(s[k]), fmtInt(s[k]));
        if (k !== 'requests' && k !== 'ok') c[k].classList.toggle('hot', num(s[k]) > 0);
      }
      const h = s.latency || {};
      const n = num(h.count);
      setText(c.mean, n ? fmtSeconds(num(h.sum_seconds) / n) : '–');
      setText(c.p50, fmtQuantile(quantile(h, 0.5)));
      setText(c.p99, fmtQuantile(quantile(h, 0.99)));
    }
  }

  // ---------------------------------------------------------------- polling
  let refreshTimer = null, polling = false, pollAgain = false;
  async function poll() {
    if (polling) { pollAgain = true; return; }
    polling = true;
    clearTimeout(refreshTimer);
    try {
      const t = performance.now();
      const [stats, clients, apps, services] = await Promise.all([
        api('/api/v1/stats'), api('/api/v1/clients'), api('/api/v1/apps'), api('/api/v1/services')]);
      const rate = lastStats && t - lastStats.t >= MIN_DT * 1000
        ? Math.max(0, (num(stats.msgs_routed) - num(lastStats.s.msgs_routed)) / ((t - lastStats.t) / 1000)) : null;
      if (!lastStats || t - lastStats.t >= MIN_DT * 1000) lastStats = { t, s: stats, rate };
      renderBroker(stats, rate === null ? lastStats.rate : rate);
      ingestSubjects(stats.subjects || [], t);
      renderSubjects(false);
      renderClients(clients, t);
      renderApps(apps);
      renderServices(services, t);
      conn.api = 'ok';
      conn.lastOk = Date.now();
      conn.error = '';
    } catch (x) {
      conn.api = 'down';
      conn.error = String(x.message || x);
    } finally {
      renderConn();
      polling = false;
      if (pollAgain) { pollAgain = false; refreshTimer = setTimeout(poll, 0); }
      else refreshTimer = setTimeout(poll, POLL_MS);
    }
  }
  // busd said something changed: fetch at once (coalesced).
  function refreshSoon() { if (polling) pollAgain = true; else { clearTimeout(refreshTimer); refreshTimer = setTimeout(poll, 0); } }

  // ---------------------------------------------------------------- busd's events (SSE)
  const EVENT_SUBJECTS = ['$sys.client.connected', '$sys.client.disconnected', '$sys.client.slow_consumer',
    '$sys.cluster.worker.started', '$sys.cluster.worker.exited', '$sys.cluster.errored'];
  function describeEvent(subject, ev) {
    ev = ev || {};
    switch (subject) {
      case '$sys.client.connected': return 'client ' + (ev.id || '?') + (ev.name ? ' (' + ev.name + ')' : '') + ' connected';
      case '$sys.client.disconnected': return 'client ' + (ev.id || '?') + (ev.name ? ' (' + ev.name + ')' : '') + ' gone';
      case '$sys.client.slow_consumer': return 'client ' + (ev.id || '?') + ' dropped as a slow consumer';
      case '$sys.cluster.worker.started': {
        const w = ev.worker || {};
        return (ev.app || '?') + ' worker ' + num(w.instance) + ' started, pid ' + num(w.pid);
      }
      case '$sys.cluster.worker.exited': {
        const w = ev.worker || {};
        const how = num(ev.signal) ? 'killed by signal ' + num(ev.signal) : 'exit code ' + num(ev.exit_code);
        return (ev.app || '?') + ' worker ' + num(w.instance) + ' (pid ' + num(w.pid) + ') exited: ' + how +
          (ev.reason ? ', ' + ev.reason : '');
      }
      case '$sys.cluster.errored': return (ev.name || '?') + ' errored' + (ev.reason ? ': ' + ev.reason : '');
      default: return subject;
    }
  }
  function onBusEvent(data) {
    let m;
    try { m = JSON.parse(data); } catch { return; }
    const subject = String(m.subject || '');
    const li = el('li', { 'data-subject': subject },
      el('time', { text: clock(new Date()) }),
      el('span', { class: /exited|errored|slow/.test(subject) ? 'bad' : '', text: describeEvent(subject, m.event) }));
    const feed = $('events');
    feed.prepend(li);
    while (feed.childElementCount > EVENTS_MAX) feed.lastElementChild.remove();
    if (subject.startsWith('$sys.cluster') || subject.startsWith('$sys.client')) refreshSoon();
  }
  let events = null;
  function connectEvents() {
    events = new EventSource('/events');
    events.onopen = () => { conn.events = 'live'; setText($('events-state'), ''); renderConn(); refreshSoon(); };
    events.onerror = () => {
      conn.events = 'down';
      setText($('events-state'), 'reconnecting…');
      renderConn();
    };
    const onEvent = (e) => {
      if (conn.events !== 'live') { conn.events = 'live'; setText($('events-state'), ''); renderConn(); }
      onBusEvent(e.data);
    };
    events.onmessage = onEvent;
    // Should busd name its events, listen to each name too.
    for (const s of EVENT_SUBJECTS) events.addEventListener(s, onEvent);
  }

  // ---------------------------------------------------------------- /api/v1/inspect streams
  // Reads a server-sent event stream from fetch(), calling onEvent(json) per event; resolves
  // when the stream ends, rejects with an HttpError for a refused request.
  async function streamInspect(pattern, signal, onEvent, onOpen) {
    const res = await fetch('/api/v1/inspect?subject=' + encodeURIComponent(pattern), {
      headers: { ...authHeaders(token()), Accept: 'text/event-stream' }, signal, cache: 'no-store',
    });
    if (!res.ok) {
      let body = null;
      try { body = JSON.parse(await res.text()); } catch { body = null; }
      throw new HttpError(res.status, body);
    }
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value.replace(/\r\n?/g, '\n');
      let end;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const data = block.split('\n').filter((l) => l.startsWith('data:'))
          .map((l) => l.slice(l[5] === ' ' ? 6 : 5)).join('\n');
        if (!data) continue;  // a comment (keep-alive) or an event without data
        let json;
        try { json = JSON.parse(data); } catch { json = { error: 'not JSON: ' + data }; }
        if (json && json.subscribed !== undefined && json.subject === undefined) {
          // busd has the subscription: what is published from now on will show.
          if (onOpen) onOpen();
          continue;
        }
        if (json && json.error && json.subject === undefined) {
          // busd could not watch the pattern: {"error": "..."} and nothing more.
          reader.cancel().catch(() => {});
          throw new Error(json.error);
        }
        onEvent(json);
      }
    }
  }
  function describeError(x) {
    if (x instanceof HttpError) return (x.status === 401 ? 'unauthorized: ' : 'HTTP ' + x.status + ': ') + x.message;
    return x.message || String(x);
  }

  // ---------------------------------------------------------------- inspector
  let inspector = null;  // { abort, pattern }
  let inspected = 0;
  function renderInspectorState(text) { setText($('inspector-state'), text); }
  function inspectorMessage(m) {
    inspected++;
    setText($('inspector-count'), String(inspected));
    const head = el('div', { class: 'msg-head' },
      el('time', { class: 'muted', text: clock(new Date()) }),
      el('span', { class: 'subj', text: m.subject || '' }),
      m.kind ? el('span', { class: 'muted', text: String(m.kind).replace(/^KIND_/, '').toLowerCase() }) : null,
      el('span', { class: 'type', text: m.type || 'untyped' }),
      el('span', { class: 'muted', text: fmtBytes(m.size || 0) }),
      m.source ? el('span', { class: 'muted', text: 'from ' + m.source }) : null);
    const headers = m.headers && Object.keys(m.headers).length
      ? el('div', { class: 'muted mono', text: Object.entries(m.headers).map(([k, v]) => k + '=' + v).join('  ') }) : null;
    let body;
    if (m.payload !== null && m.payload !== undefined) {
      body = el('pre', { class: 'payload', 'data-decoded': 'true', text: JSON.stringify(m.payload, null, 2) });
    } else {
      body = el('pre', { class: 'payload undecoded', 'data-decoded': 'false',
        text: (m.error ? 'not decoded: ' + m.error + '\n' : '') + (m.payload_base64 ? 'base64: ' + m.payload_base64 : '(empty)') });
    }
    const entry = el('div', { class: 'msg', 'data-subject': m.subject || '' }, head, headers, body);
    const log = $('inspector-log');
    log.prepend(entry);
    while (log.childElementCount > INSPECTOR_MAX) log.lastElementChild.remove();
  }
  function stopInspector(why) {
    if (!inspector) return;
    inspector.abort.abort();
    inspector = null;
    setText($('inspector-start'), 'Subscribe');
    $('inspector-pattern').disabled = false;
    renderInspectorState(why || 'stopped');
  }
  async function startInspector(pattern) {
    stopInspector();
    const abort = new AbortController();
    const me = { abort, pattern };
    inspector = me;
    setText($('inspector-start'), 'Stop');
    $('inspector-pattern').disabled = true;
    $('inspector-section').dataset.pattern = pattern;
    renderInspectorState('subscribing to ' + pattern + '…');
    try {
      await withToken('The inspector', async () => {
        if (inspector !== me) return;
        // Live once busd says it has the subscription ({"subscribed": PATTERN}).
        const live = () => {
          if (inspector !== me || $('inspector-section').dataset.live === 'true') return;
          renderInspectorState('live: ' + pattern);
          $('inspector-section').dataset.live = 'true';
        };
        await streamInspect(pattern, abort.signal, (m) => {
          if (inspector !== me) return;
          live();
          inspectorMessage(m);
        }, live);
      });
      if (inspector === me) stopInspector('busd ended the stream');
    } catch (x) {
      if (abort.signal.aborted) return;
      if (inspector === me) stopInspector('');
      renderInspectorState('');
      showStatus('error', 'inspector on ' + pattern + ' failed: ' + describeError(x));
    } finally {
      if (inspector !== me) delete $('inspector-section').dataset.live;
    }
  }
  $('inspector-form').addEventListener('submit', (e) => {
    e.preventDefault();
    if (inspector) { stopInspector(); return; }
    const pattern = $('inspector-pattern').value.trim();
    if (pattern) startInspector(pattern);
  });
  $('inspector-clear').addEventListener('click', () => {
    $('inspector-log').replaceChildren();
    inspected = 0;
    setText($('inspector-count'), '');
  });

  // ---------------------------------------------------------------- log tail
  let tail = null;  // { abort, app, instance }
  let logLines = 0;
  function refreshLogApps(apps) {
    const sel = $('logs-app');
    const names = apps.map((a) => a.name);
    const have = [...sel.options].slice(1).map((o) => o.value);
    if (have.join('\u0000') !== names.join('\u0000')) {
      const keep = sel.value;
      sel.replaceChildren(el('option', { value: '' }, 'app…'), ...names.map((n) => el('option', { value: n }, n)));
      sel.value = names.includes(keep) ? keep : '';
    }
    const app = apps.find((a) => a.name === sel.value);
    const inst = $('logs-instance');
    const instances = app ? (app.workers || []).map((w) => String(w.instance)) : [];
    const haveInst = [...inst.options].slice(1).map((o) => o.value);
    if (haveInst.join(',') !== instances.join(',')) {
      const keep = inst.value;
      inst.replaceChildren(el('option', { value: '' }, 'all workers'),
        ...instances.map((i) => el('option', { value: i }, 'worker ' + i)));
      inst.value = instances.includes(keep) ? keep : '';
    }
  }
  function logLine(l) {
    const instance = String(num(l.instance));
    if (tail && tail.instance !== '' && tail.instance !== instance) return;
    logLines++;
    setText($('logs-count'), String(logLines));
    const box = $('log-tail');
    const stick = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
    box.append(el('div', { class: 'line', 'data-stream': l.stream || '', 'data-instance': instance },
      el('time', { text: num(l.unix_ns) ? clockNs(l.unix_ns) : clock(new Date()) }),
      el('span', { class: 'who', text: '[' + instance + ' ' + num(l.pid) + ' ' + (l.stream || '') + ']' }),
      el('span', { class: 'text', text: l.text || '' })));
    while (box.childElementCount > LOG_MAX) box.firstElementChild.remove();
    if (stick) box.scrollTop = box.scrollHeight;
  }
  function stopTail() {
    if (!tail) return;
    tail.abort.abort();
    tail = null;
    setText($('logs-start'), 'Tail');
    delete $('logs-section').dataset.live;
  }
  async function startTail(app, instance) {
    stopTail();
    const abort = new AbortController();
    const me = { abort, app, instance: String(instance) };
    tail = me;
    setText($('logs-start'), 'Stop');
    $('log-tail').replaceChildren();
    logLines = 0;
    $('logs-section').dataset.app = app;
    setText($('logs-state'), 'loading ' + app + '…');
    try {
      await withToken('Reading ' + app + '\'s logs', async () => {
        // Live first (busd says when it has the subscription), so nothing logged between the
        // two requests is lost; then the last lines.
        const queued = [];
        let loaded = false;
        let subscribed;
        const ready = new Promise((resolve) => { subscribed = resolve; });
        const live = streamInspect('$sys.log.' + app, abort.signal, (m) => {
          if (tail !== me || !m.payload) return;
          if (loaded) logLine(m.payload); else queued.push(m.payload);
        }, subscribed);
        live.catch(() => {});
        await Promise.race([ready, live]);
        if (tail !== me) return;
        const res = await api('/api/v1/apps/' + encodeURIComponent(app) + '/logs?lines=100', { auth: true, signal: abort.signal });
        if (tail !== me) return;
        const initial = (res && res.lines) || [];
        const lastNs = initial.length ? num(initial[initial.length - 1].unix_ns) : 0;
        for (const l of initial) logLine(l);
        for (const l of queued) if (num(l.unix_ns) > lastNs) logLine(l);
        loaded = true;
        setText($('logs-state'), 'live: ' + app + (me.instance ? ' worker ' + me.instance : '') +
          (res && res.path ? ' · ' + res.path : ''));
        $('logs-section').dataset.live = 'true';
        await live;
      });
      if (tail === me) { stopTail(); setText($('logs-state'), 'busd ended the stream'); }
    } catch (x) {
      if (abort.signal.aborted) return;
      if (tail === me) stopTail();
      setText($('logs-state'), '');
      showStatus('error', app + ' logs failed: ' + describeError(x));
    }
  }
  function openLogs(app, instance) {
    $('logs-app').value = app;
    refreshLogApps([...appCards.keys()].map((n) => ({ name: n, workers: [...appCards.get(n).workers.keys()].map((i) => ({ instance: i })) })));
    $('logs-instance').value = String(instance);
    startTail(app, instance);
    $('logs-section').scrollIntoView({ behavior: 'smooth', block: 'nearest' });
  }
  $('logs-form').addEventListener('submit', (e) => {
    e.preventDefault();
    if (tail) { stopTail(); setText($('logs-state'), 'stopped'); return; }
    const app = $('logs-app').value;
    if (!app) { setText($('logs-state'), 'pick an app'); return; }
    startTail(app, $('logs-instance').value);
  });

  // ---------------------------------------------------------------- start
  renderToken();
  renderConn();
  connectEvents();
  poll();
  // Uptimes move even when nothing else does.
  setInterval(() => { if (lastStats) setText($('broker-uptime'), fmtDuration(sinceNs(lastStats.s.started_unix_ns))); }, 1000);
})();
