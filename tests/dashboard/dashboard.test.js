// The dashboard as a person sees it: a real busd (with a cluster app of two bus-http-hello
// workers and its HTTP face on a free loopback port), the page in Debian's headless Chromium
// driven by puppeteer-core (which never downloads a browser), and the bus CLI for traffic.
//
//   BUSD, BUS_CLI, BUS_HTTP_HELLO   the programs (ctest passes them)
//   BUS_TEST_PROTO_DIR              tests/integration/proto (testonly.v1.Reading)
//   CHROMIUM                        default /usr/bin/chromium
//   BUS_DASHBOARD_SCREENSHOT=FILE   also save a screenshot of the busy page there
//
// Every process started here (busd and its workers, the CLI, Chromium) is stopped however the
// test ends: after(), and a process 'exit' handler for a crash or a Ctrl-C.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const puppeteer = require('puppeteer-core');
const { need, track, killAll, sleep, until, run } = require('../support/processes');

const BUSD = need('BUSD');
const BUS_CLI = need('BUS_CLI');
const BUS_HTTP_HELLO = need('BUS_HTTP_HELLO');
const PROTO_DIR = need('BUS_TEST_PROTO_DIR');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SCREENSHOT = process.env.BUS_DASHBOARD_SCREENSHOT || '';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bus-dashboard-'));
const runtimeDir = path.join(tmp, 'run');
fs.mkdirSync(runtimeDir, { mode: 0o700 });
const env = {
  ...process.env,
  XDG_RUNTIME_DIR: runtimeDir,
  XDG_STATE_HOME: path.join(tmp, 'state'),
  NO_COLOR: '1',
};
delete env.BUS_ENDPOINT;

// `bus ARGS...`; resolves with stdout, rejects with stderr on failure.
function bus(args, { timeout = 10000 } = {}) {
  return run(BUS_CLI, args, { env, timeout });
}
function busBackground(args) {
  const child = track(spawn(BUS_CLI, args, { env, stdio: ['ignore', 'ignore', 'pipe'] }));
  child.stderr.on('data', () => {});
  return child;
}

// ------------------------------------------------------------------ busd
let busd = null, busdLog = '', origin = '';
const readingArgs = ['--type', 'testonly.v1.Reading', '--proto',
  path.join(PROTO_DIR, 'testonly/v1/sensor.proto'), '-I', PROTO_DIR];

// Each worker says one line when it starts (then becomes bus-http-hello, same pid), so its
// log has something to tail.
const config = `
[[app]]
name = "hello"
command = "/bin/sh"
args = ["-c", "echo \\"hello worker $BUS_INSTANCE up, pid $$\\"; exec \\"$0\\"", ${JSON.stringify(BUS_HTTP_HELLO)}]
instances = 2
listen = ["tcp://127.0.0.1:0"]
`;

async function startBusd() {
  const configPath = path.join(tmp, 'busd.toml');
  fs.writeFileSync(configPath, config);
  busd = track(spawn(BUSD, ['-c', configPath, '--http', '127.0.0.1:0',
    '--apps-log-dir', path.join(tmp, 'logs')], { env, stdio: ['ignore', 'inherit', 'pipe'] }));
  busd.stderr.setEncoding('utf8');
  origin = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('busd did not print its http address in 15 s:\n' + busdLog)), 15000);
    busd.stderr.on('data', (d) => {
      busdLog += d;
      process.stderr.write(d);
      const m = /busd: http on (http:\/\/[^\s]+)/.exec(busdLog);
      if (m) { clearTimeout(timer); resolve(m[1].replace(/\/$/, '')); }
    });
    busd.on('exit', (code, sig) => { clearTimeout(timer); reject(new Error(`busd exited (${code ?? sig}):\n${busdLog}`)); });
  });
}
async function stopBusd() {
  if (!busd || busd.exitCode !== null || busd.signalCode !== null) return;
  const exited = new Promise((r) => busd.once('exit', r));
  busd.kill('SIGTERM');
  const timer = setTimeout(() => busd.kill('SIGKILL'), 8000);
  await exited;
  clearTimeout(timer);
}
// As a person would: `cat` the token busd wrote beside its socket ($XDG_RUNTIME_DIR/bus).
function readToken() {
  return fs.readFileSync(path.join(runtimeDir, 'bus', 'http.token'), 'utf8').trim();
}
async function getJson(p, headers = {}) {
  const res = await fetch(origin + p, { headers });
  assert.equal(res.status, 200, `GET ${p}: ${res.status}`);
  return res.json();
}
async function helloApp() {
  const list = await getJson('/api/v1/apps');
  return list.apps.find((a) => a.name === 'hello');
}
async function readyWorkers() {
  const app = await helloApp();
  const ready = app.workers.filter((w) => w.state === 'ready' && w.pid);
  return ready.length === 2 ? app : null;
}

// ------------------------------------------------------------------ the browser
let browser = null, page = null;
const consoleErrors = [];     // console.error and uncaught exceptions in the page
const failedRequests = [];    // requests that failed, except streams the page itself ended
const foreignRequests = [];   // anything not served by busd
let allowed401 = false;       // while pressing buttons with a wrong token on purpose

before(async () => {
  await startBusd();
  await until('two ready workers', readyWorkers, 15000);
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,                      // Chromium's new headless mode (--headless=new)
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--no-default-browser-check'],
  });
  track(browser.process());
  page = await browser.newPage();
  await page.setViewport({ width: 1440, height: 1000 });
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    if (allowed401 && /status of 401/.test(m.text())) return;
    consoleErrors.push(m.text() + ' @ ' + JSON.stringify(m.location()));
  });
  page.on('pageerror', (e) => consoleErrors.push('pageerror: ' + (e.stack || e.message)));
  page.on('request', (r) => {
    const u = r.url();
    if (!u.startsWith(origin + '/') && !u.startsWith('data:')) foreignRequests.push(u);
  });
  page.on('requestfailed', (r) => {
    const why = r.failure() ? r.failure().errorText : '?';
    // The page ends an inspector or log stream by aborting its fetch.
    if (why === 'net::ERR_ABORTED' && /\/api\/v1\/inspect\?/.test(r.url())) return;
    failedRequests.push(`${r.method()} ${r.url()}: ${why}`);
  });
});

after(async () => {
  try { if (browser) await browser.close(); } catch { /* killed below */ }
  await stopBusd();
  killAll();
  fs.rmSync(tmp, { recursive: true, force: true });
});

// Reads what a person sees of an app's workers: instance -> {pid, state}.
function pageWorkers() {
  return page.$$eval('[data-app="hello"] tr[data-worker]', (rows) => Object.fromEntries(rows.map((r) => [
    r.dataset.worker, { pid: r.querySelector('[data-field="pid"]').textContent, state: r.dataset.state }])));
}
async function pageRestarts() {
  return Number(await page.$eval('[data-app="hello"] [data-field="restarts"] b', (b) => b.textContent));
}

test('the page loads with no console error, no failed request and nothing from outside busd', async () => {
  const res = await page.goto(origin + '/', { waitUntil: 'load' });
  assert.equal(res.status(), 200);
  assert.match(res.headers()['content-type'] || '', /text\/html/);
  await page.waitForFunction(() => document.getElementById('conn').dataset.state === 'live', { timeout: 5000 });
  const app = await helloApp();
  await until('the page to show both workers', async () => {
    const w = await pageWorkers();
    return w['0'] && w['1'] && w['0'].pid === String(app.workers[0].pid) && w['1'].state === 'ready';
  });
  await page.evaluate(() => { window.__notReloaded = true; });
  await sleep(2500); // a few polls and events
  assert.deepEqual(consoleErrors, []);
  assert.deepEqual(failedRequests, []);
  assert.deepEqual(foreignRequests, []);
  // It shows what busd says about itself.
  const stats = await getJson('/api/v1/stats');
  assert.equal(await page.$eval('#broker-id', (e) => e.textContent), stats.broker_id);
});

test('a worker killed with SIGKILL shows its restart on the page within 2 s, without a reload', async () => {
  const before = await readyWorkers();
  const victim = before.workers.find((w) => w.instance === 0);
  const restartsBefore = await pageRestarts();
  assert.equal(restartsBefore, before.restarts);
  const t0 = Date.now();
  process.kill(victim.pid, 'SIGKILL');
  await page.waitForFunction((oldPid, restarts) => {
    const row = document.querySelector('[data-app="hello"] tr[data-worker="0"]');
    const pid = row && row.querySelector('[data-field="pid"]').textContent;
    const shown = Number(document.querySelector('[data-app="hello"] [data-field="restarts"] b').textContent);
    return pid && pid !== '0' && pid !== String(oldPid) && shown > restarts;
  }, { timeout: 2000, polling: 20 }, victim.pid, restartsBefore);
  const elapsed = Date.now() - t0;
  // ... and busd's event said why, live.
  await page.waitForFunction((pid) => [...document.querySelectorAll('#events li')].some(
    (li) => li.textContent.includes('pid ' + pid + ') exited') && li.textContent.includes('signal 9')),
  { timeout: 2000 }, victim.pid);
  assert.equal(await page.evaluate(() => window.__notReloaded), true, 'the page was reloaded');
  const after = await helloApp();
  const shownPid = (await pageWorkers())['0'].pid;
  assert.equal(shownPid, String(after.workers.find((w) => w.instance === 0).pid));
  console.log(`# restart shown ${elapsed} ms after the SIGKILL (pid ${victim.pid} -> ${shownPid})`);
});

test('reload without the token fails clearly and changes nothing; with it, the app reloads', async () => {
  await until('two ready workers', readyWorkers, 10000);
  const pidsBefore = (await helloApp()).workers.map((w) => w.pid).sort();
  allowed401 = true;
  try {
    // No token yet: the page asks for it.
    await page.click('[data-app="hello"] [data-action="reload"]');
    await page.waitForSelector('#token-dialog[open]', { visible: true, timeout: 2000 });
    // A wrong token: busd says no, and the dialog says so.
    await page.type('#token-input', 'not-the-token');
    await page.click('#token-ok');
    const err = await page.waitForSelector('#token-error:not([hidden])', { visible: true, timeout: 2000 });
    assert.match(await err.evaluate((e) => e.textContent), /rejected/);
    // Given up: a visible error, and nothing was done.
    await page.click('#token-cancel');
    await page.waitForFunction(() => !document.getElementById('token-dialog').open, { timeout: 2000 });
    const status = await page.waitForSelector('#action-status[data-kind="error"]:not([hidden])', { visible: true, timeout: 2000 });
    assert.match(await status.evaluate((e) => e.textContent), /reload hello .*token/);
  } finally {
    allowed401 = false;
  }
  await sleep(300);
  assert.deepEqual((await helloApp()).workers.map((w) => w.pid).sort(), pidsBefore, 'a reload without the token changed the workers');

  // The right token, as a person reads it from http.token.
  await page.click('[data-app="hello"] [data-action="reload"]');
  await page.waitForSelector('#token-dialog[open]', { visible: true, timeout: 2000 });
  await page.type('#token-input', readToken());
  await page.click('#token-ok');
  await page.waitForFunction(() => !document.getElementById('token-dialog').open, { timeout: 5000 });
  const ok = await page.waitForSelector('#action-status[data-kind="ok"]:not([hidden])', { visible: true, timeout: 10000 });
  assert.match(await ok.evaluate((e) => e.textContent), /reload hello: done/);
  // The page shows two ready workers, none of them an old one.
  await until('new ready workers on the page', async () => {
    const w = await pageWorkers();
    const pids = Object.values(w).filter((x) => x.state === 'ready').map((x) => Number(x.pid));
    return pids.length === 2 && pids.every((p) => !pidsBefore.includes(p));
  }, 10000);
  const now = (await helloApp()).workers.map((w) => w.pid);
  assert.ok(now.every((p) => !pidsBefore.includes(p)), `old workers left: ${now} vs ${pidsBefore}`);
  assert.equal(await page.evaluate(() => sessionStorage.getItem('bus.http.token')), readToken());
});

test('a message published with the CLI appears decoded in the inspector', async () => {
  await page.$eval('#inspector-pattern', (e) => { e.value = ''; });
  await page.type('#inspector-pattern', 'sensors.>');
  await page.click('#inspector-start');
  // The token is kept from the reload: no dialog this time.
  await page.waitForSelector('#inspector-section[data-pattern="sensors.>"]', { timeout: 2000 });
  assert.equal(await page.$eval('#token-dialog', (d) => d.open), false);
  const reading = { sensor: 'kitchen', celsius: 21.5, seq: 7, place: { room: 'kitchen', floor: 2 }, tags: ['dashboard', '<b>not html</b>'] };
  // busd subscribes for the page as the request arrives, which the page cannot see: publish
  // until the message shows (at most 5 times, a second apart).
  const selector = '#inspector-log .msg[data-subject="sensors.kitchen"] pre[data-decoded="true"]';
  let pre = null;
  for (let i = 0; i < 5 && !pre; i++) {
    await bus(['pub', ...readingArgs, 'sensors.kitchen', JSON.stringify(reading)]);
    pre = await page.waitForSelector(selector, { timeout: 1000 }).catch(() => null);
  }
  assert.ok(pre, 'the message never showed in the inspector');
  assert.equal(await page.$eval('#inspector-section', (e) => e.dataset.live), 'true');
  const shown = JSON.parse(await pre.evaluate((e) => e.textContent));
  assert.equal(shown.sensor, 'kitchen');
  assert.equal(shown.celsius, 21.5);
  assert.equal(shown.seq, 7);
  assert.deepEqual(shown.place, { room: 'kitchen', floor: 2 });
  assert.deepEqual(shown.tags, ['dashboard', '<b>not html</b>']);   // as text, not markup
  const head = await page.$eval('#inspector-log .msg[data-subject="sensors.kitchen"] .msg-head', (e) => e.textContent);
  assert.match(head, /testonly\.v1\.Reading/);
  assert.equal(await page.$('#inspector-log b'), null, 'payload text became markup');
  // A subject outside the pattern does not show.
  await bus(['pub', ...readingArgs, 'other.kitchen', JSON.stringify(reading)]);
  await bus(['pub', ...readingArgs, 'sensors.hall', JSON.stringify({ ...reading, sensor: 'hall' })]);
  await page.waitForSelector('#inspector-log .msg[data-subject="sensors.hall"]', { timeout: 5000 });
  assert.equal(await page.$('#inspector-log .msg[data-subject="other.kitchen"]'), null);
});

test("a worker's log tail: its last lines, then live ones", async () => {
  await page.click('[data-app="hello"] [data-action="logs"]');
  await page.waitForSelector('#logs-section[data-live="true"]', { timeout: 5000 });
  const app = await helloApp();
  for (const w of app.workers) {
    await page.waitForFunction((pid) => document.getElementById('log-tail').textContent.includes('up, pid ' + pid),
      { timeout: 5000 }, w.pid);
  }
  // A new worker's first line arrives live.
  const victim = app.workers.find((w) => w.instance === 1);
  process.kill(victim.pid, 'SIGKILL');
  const fresh = await until('a new worker 1', async () => {
    const a = await helloApp();
    const w = a.workers.find((x) => x.instance === 1);
    return w && w.pid && w.pid !== victim.pid ? w : null;
  }, 5000);
  await page.waitForFunction((pid) => document.getElementById('log-tail').textContent.includes('hello worker 1 up, pid ' + pid),
    { timeout: 5000 }, fresh.pid);
});

test('traffic shows as rates: subjects, clients and services (and a screenshot of the busy page)', async () => {
  const load = [];
  let bursts = null;
  try {
    load.push(busBackground(['sub', 'orders.>']));
    load.push(busBackground(['sub', 'sensors.*']));
    await sleep(300);
    const subjects = ['orders.eu.created', 'orders.us.created', 'orders.eu.paid', 'sensors.kitchen', 'sensors.hall'];
    subjects.forEach((s, i) => load.push(busBackground(['pub', ...readingArgs, '--count', '2000', '--rate', String(20 * (i + 1)),
      s, JSON.stringify({ sensor: s, celsius: 20 + i, seq: i })])));
    for (let i = 0; i < 40; i++) load.push(busBackground(['pub', '--count', '30', '--rate', '5', `telemetry.host${String(i).padStart(2, '0')}.cpu`, '0.42']));
    // A service with a latency histogram: an echo, asked in short bursts.
    load.push(busBackground(['serve', 'prices.quote']));
    await sleep(200);
    const burst = () => load.push(busBackground(['bench', 'req', 'prices.quote', '-n', '300']));
    burst();
    bursts = setInterval(burst, 1000);
    // Rates need two polls at least; let a few seconds of history build up.
    await page.waitForFunction(() => {
      const row = document.querySelector('#subjects tr[data-subject="orders.eu.created"]');
      return row && Number(row.querySelector('[data-field="in"]').textContent) > 0;
    }, { timeout: 8000 });
    await page.waitForFunction(() => {
      const row = document.querySelector('#services tr[data-service="prices.quote"]');
      return row && row.querySelector('[data-field="p99"]').textContent !== '–';
    }, { timeout: 8000 });
    // A client that publishes shows a rate out of it.
    await page.waitForFunction(() => [...document.querySelectorAll('#clients tbody tr')].some(
      (r) => parseFloat(r.querySelector('[data-field="in"]').textContent) > 0), { timeout: 8000 });
    // The filter and the top-N cut: 45 subjects and more, 25 shown, all on demand.
    const shown = () => page.$$eval('#subjects tbody tr', (rows) => rows.length);
    await until('the telemetry subjects', async () => (await page.$$eval('#subjects tbody tr', (r) => r.length)) >= 25, 8000);
    assert.equal(await shown(), 25);
    await page.click('#subjects-show-all');
    // The 40 telemetry publishers start one by one (slowly on a loaded machine): all of them,
    // once busd has seen more than the cut.
    await until('more than 25 subjects, all shown', async () => (await shown()) > 25, 8000);
    await page.click('#subjects-show-all');
    await page.type('#subject-filter', 'orders.eu');
    assert.equal(await shown(), 2);
    await page.$eval('#subject-filter', (e) => { e.value = ''; e.dispatchEvent(new Event('input')); });
    if (SCREENSHOT) {
      await sleep(20000); // some sparkline history
      await page.evaluate(() => { document.activeElement.blur(); window.scrollTo(0, 0); });
      await page.mouse.move(0, 0);
      const height = await page.evaluate(() => document.documentElement.scrollHeight);
      await page.setViewport({ width: 1440, height: Math.min(height, 2400) });
      await sleep(1200);
      await page.screenshot({ path: SCREENSHOT });
      console.log('# screenshot: ' + SCREENSHOT);
    }
    assert.deepEqual(consoleErrors, []);
    assert.deepEqual(failedRequests, []);
    assert.deepEqual(foreignRequests, []);
  } finally {
    clearInterval(bursts);
    for (const c of load) c.kill('SIGKILL');
  }
});
