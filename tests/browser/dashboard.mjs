// Browser end-to-end tests of the jobbox web dashboard.
//
//     node tests/browser/dashboard.mjs <scenario> <base-url> <token> <artifacts-dir>
//
// Run by tests/it/dashboard.rs, which starts a real `jobbox run` (its API
// and the dashboard on <base-url>, protected by <token>) on a fresh
// database, and installs nothing: scripts/test installs playwright-core
// (tests/browser/package-lock.json) into ${CARGO_TARGET_DIR:-target}/browser
// and uses Debian's Chromium. Never downloads a browser.
//
// Environment:
//   JOBBOX_CHROMIUM               the browser (default /usr/bin/chromium)
//   JOBBOX_BROWSER_NODE_MODULES   the node_modules holding playwright-core
//                                 (default tests/browser/node_modules)
//   JOBBOX_UPDATE_SCREENSHOT=1    the `pages` scenario also writes the
//                                 overview to docs/dashboard.png
//
// Each scenario drives the dashboard through the DOM hooks of its contract
// (data-ready, data-testid, data-nav, ...), waits on `body[data-ready=...]`
// (never sleeps), and fails on any console error, uncaught page error or
// failed request that it did not expect. Screenshots go to
// <artifacts-dir>/<scenario>-<page>.png; a failure also saves
// <scenario>-failure.png and prints the page's text.
//
// Exits 0 if the scenario passed, 1 if it failed, 2 on bad arguments.

import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');

const SCENARIOS = {
  smoke, live, retry, schedules, bulk, 'read-only': readOnly, login, pages,
};

const [scenario, baseArg, token, artifacts] = process.argv.slice(2);
if (!SCENARIOS[scenario] || !baseArg || !token || !artifacts) {
  console.error(`usage: node dashboard.mjs <${Object.keys(SCENARIOS).join('|')}> <base-url> <token> <artifacts-dir>`);
  process.exit(2);
}
const base = baseArg.replace(/\/+$/, '');

process.env.PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD = '1';
const nodeModules = process.env.JOBBOX_BROWSER_NODE_MODULES || path.join(here, 'node_modules');
const require = createRequire(path.join(nodeModules, 'resolve-from-here.js'));
const { chromium } = require('playwright-core');
const executablePath = process.env.JOBBOX_CHROMIUM || '/usr/bin/chromium';

// Generous: the suite runs these next to the rest of the tests on a small
// machine. Waits end as soon as the hook appears.
const WAIT = 45_000;
// The whole scenario, browser start included.
const DEADLINE = 150_000;
const started = Date.now();

function log(...args) {
  const s = ((Date.now() - started) / 1000).toFixed(1).padStart(6);
  console.log(`[${s}s ${scenario}]`, ...args);
}

class Failure extends Error {}
function fail(msg) { throw new Failure(msg); }
function check(cond, msg) { if (!cond) fail(msg); }

// ---------------------------------------------------------------------------
// The API, from node (to set up and to verify what the page did)

async function api(method, p, body, { auth = token } = {}) {
  const headers = {};
  if (auth) headers.authorization = `Bearer ${auth}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(base + p, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, body: json, text };
}

async function apiOk(method, p, body) {
  const r = await api(method, p, body);
  check(r.status >= 200 && r.status < 300, `${method} ${p}: ${r.status} ${r.text}`);
  return r.body;
}

/// Enqueues `jobs` (an array of job objects) in one call; returns their ids.
async function enqueue(jobs) {
  const out = await apiOk('POST', '/api/jobs', jobs);
  return out.map((e) => e.id);
}

async function job(id) { return apiOk('GET', `/api/jobs/${id}`); }

/// All jobs matching the query (following the cursor).
async function listJobs(query) {
  const all = [];
  let cursor = null;
  for (;;) {
    const q = new URLSearchParams({ ...query, limit: '1000' });
    if (cursor) q.set('cursor', cursor);
    const page = await apiOk('GET', `/api/jobs?${q}`);
    all.push(...page.jobs);
    if (!page.next_cursor) return all;
    cursor = page.next_cursor;
  }
}

/// Polls `probe` (async, returns a value or null) until it returns one.
async function until(what, probe, timeout = WAIT) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() > end) fail(`timed out after ${timeout / 1000}s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function waitJobState(id, state) {
  return until(`job ${id} to be ${state} (API)`, async () => {
    const j = await job(id);
    return j.state === state ? j : null;
  });
}

// ---------------------------------------------------------------------------
// The browser

let browser;
const monitors = [];

/// Watches a page for console errors, uncaught errors and failed requests.
/// `allow(status)` accepts HTTP errors of that status from the API (and the
/// console line Chromium logs for each) from then on.
function monitor(page, name) {
  const m = {
    name, errors: [], allowed: new Set(), active: true, aborted: 0,
    allow(status) { this.allowed.add(status); },
    disallow(status) { this.allowed.delete(status); },
    assertClean(where) {
      check(this.errors.length === 0,
        `${where || name}: ${this.errors.length} console error(s), page error(s) or failed request(s):\n  ${this.errors.join('\n  ')}`);
    },
  };
  page.on('console', (msg) => {
    if (!m.active || msg.type() !== 'error') return;
    const text = msg.text();
    const status = /the server responded with a status of (\d+)/.exec(text);
    const url = msg.location()?.url || '';
    if (status && m.allowed.has(Number(status[1])) && url.includes('/api/')) return;
    m.errors.push(`console error: ${text}${url ? ` (${url})` : ''}`);
  });
  page.on('pageerror', (err) => {
    if (m.active) m.errors.push(`page error: ${err.stack || err}`);
  });
  page.on('requestfailed', (req) => {
    if (!m.active) return;
    const why = req.failure()?.errorText || 'failed';
    // A request the page itself gave up (an AbortController: a superseded
    // load, a closed stream) is not a failure.
    if (why === 'net::ERR_ABORTED' && req.url().startsWith(`${base}/api/`)) {
      m.aborted++;
      return;
    }
    m.errors.push(`request failed: ${req.method()} ${req.url()}: ${why}`);
  });
  page.on('response', (res) => {
    if (!m.active || res.status() < 400) return;
    const url = res.url();
    if (m.allowed.has(res.status()) && url.startsWith(`${base}/api/`)) return;
    m.errors.push(`HTTP ${res.status()}: ${res.request().method()} ${url}`);
  });
  monitors.push(m);
  return m;
}

/// A new browser context and page. With `signedIn`, the token is in the
/// tab's sessionStorage before the app's script runs (as after a login).
async function newPage({ signedIn = true } = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  if (signedIn) {
    await context.addInitScript((t) => {
      if (!sessionStorage.getItem('jobbox.token')) sessionStorage.setItem('jobbox.token', t);
    }, token);
  }
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  const mon = monitor(page, scenario);
  return { context, page, mon };
}

/// Waits until the page named `name` has drawn its data.
async function ready(page, name) {
  try {
    await page.waitForSelector(`body[data-ready="${name}"]`, { state: 'attached', timeout: WAIT });
  } catch (e) {
    const now = await page.evaluate(() => document.body?.dataset.ready).catch(() => '?');
    fail(`page ${JSON.stringify(name)} never became ready (body[data-ready=${JSON.stringify(name)}]); ` +
      `data-ready is ${JSON.stringify(now)} at ${page.url()}`);
  }
}

/// Loads `p` (a full page load) and waits for page `name`.
async function open(page, p, name) {
  await page.goto(base + p);
  await ready(page, name);
}

/// Follows the nav link to `name` (in the app: no page load) and waits.
async function nav(page, name) {
  await page.click(`nav a[data-nav="${name}"]`);
  await ready(page, name);
}

/// Marks the window, to show later that it was never reloaded.
async function mark(page) {
  await page.evaluate(() => { window.__e2eMarker = 'not reloaded'; });
  let loads = 0;
  page.on('load', () => { loads++; });
  return async (where) => {
    const marker = await page.evaluate(() => window.__e2eMarker);
    check(marker === 'not reloaded' && loads === 0,
      `${where}: the page was reloaded (marker ${JSON.stringify(marker)}, ${loads} load event(s))`);
  };
}

async function shot(page, name) {
  fs.mkdirSync(artifacts, { recursive: true });
  const file = path.join(artifacts, `${scenario}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  log(`screenshot ${file}`);
}

/// The number an element shows (thousands separators and all).
async function numberIn(page, sel) {
  const text = await page.textContent(sel);
  const digits = (text || '').replace(/[^0-9]/g, '');
  check(digits !== '', `${sel} shows no number: ${JSON.stringify(text)}`);
  return Number(digits);
}

/// Waits until the overview's count of `state` is `n`.
async function waitCount(page, state, n) {
  const sel = `[data-testid="count-${state}"]`;
  try {
    await page.waitForFunction(([s, want]) => {
      const el = document.querySelector(s);
      return el && Number(el.textContent.replace(/[^0-9]/g, '')) === want && el.textContent.trim() !== '';
    }, [sel, n], { timeout: WAIT, polling: 100 });
  } catch {
    const text = await page.textContent(sel).catch(() => null);
    fail(`overview: ${sel} never showed ${n} (shows ${JSON.stringify(text)})`);
  }
}

const rowSel = (id) => `table[data-testid="jobs"] tbody tr[data-job-id="${id}"]`;

/// Waits until the Jobs table's row of job `id` shows `state`.
async function waitRowState(page, id, state) {
  const sel = `${rowSel(id)} td[data-col="state"]`;
  try {
    await page.waitForFunction(([s, want]) => {
      const el = document.querySelector(s);
      return el && el.textContent.trim().toLowerCase().includes(want);
    }, [sel, state], { timeout: WAIT, polling: 100 });
  } catch {
    const text = await page.textContent(sel, { timeout: 1000 }).catch(() => null);
    fail(`jobs table: job ${id}'s state cell never showed ${state} ` +
      `(${text === null ? 'no such row' : `shows ${JSON.stringify(text.trim())}`})`);
  }
}

/// The confirm dialog, if one opens within `timeout`.
async function confirmDialog(page, timeout = WAIT) {
  const dialog = page.locator('dialog[data-testid="confirm"][open]');
  await dialog.waitFor({ state: 'visible', timeout });
  return dialog;
}

/// Clicks an action button; if it asks for confirmation, confirms (with
/// `note` in the note field if it has one). Returns the dialog's text.
async function act(page, button, { note, done } = {}) {
  await button.click();
  // Either a dialog opens or the action is done without one.
  const dialog = page.locator('dialog[data-testid="confirm"][open]');
  await until('the action to open its dialog or take effect', async () =>
    (await dialog.count()) > 0 || (done && (await done())));
  if ((await dialog.count()) === 0) return null;
  const text = (await dialog.innerText()).trim();
  const noteInput = dialog.locator('textarea[data-testid="note-input"]');
  if (note !== undefined) {
    check(await noteInput.count() > 0, `the dialog has no note field (textarea[data-testid=note-input]): ${text}`);
    await noteInput.fill(note);
  }
  await dialog.locator('[data-testid="confirm-ok"]').click();
  await dialog.waitFor({ state: 'hidden', timeout: WAIT });
  return text;
}

/// Sets a filter form field, whatever control it is.
async function setField(form, name, value) {
  const field = form.locator(`[name="${name}"]`).first();
  check(await field.count() > 0, `the filter form has no field named ${name}`);
  const tag = await field.evaluate((el) => el.tagName);
  if (tag === 'SELECT') await field.selectOption(value);
  else await field.fill(value);
}

// ---------------------------------------------------------------------------
// Scenarios

/// The page loads and draws the overview (signed in), or the login form.
async function smoke() {
  const { page, mon } = await newPage({ signedIn: false });
  mon.allow(401); // the first load, without a token
  const info = await api('GET', '/api/info', undefined, { auth: null });
  log(`GET /api/info without a token: ${info.status}`);
  await page.goto(base + '/');
  await ready(page, 'login');
  check(await page.locator('form[data-testid="login"] input#token').isVisible(), 'no login form with input#token');
  mon.disallow(401);
  const { page: p2, mon: m2 } = await newPage();
  await open(p2, '/', 'overview');
  await shot(p2, 'overview');
  mon.assertClean('smoke (login)');
  m2.assertClean('smoke (overview)');
}

/// Jobs enqueued while the page is open show up and complete on the
/// Overview's counts and in the Jobs table, without a reload.
async function live() {
  const { page } = await newPage();
  await open(page, '/', 'overview');
  const notReloaded = await mark(page);
  await page.waitForSelector('[data-testid="live"][data-state="open"]', { state: 'attached', timeout: WAIT })
    .catch(() => fail('the live indicator never showed [data-testid=live][data-state=open]'));

  // Queue `live` is held, so the jobs stay available until it resumes.
  await apiOk('POST', '/api/queues/live/pause', { note: 'browser test: hold the jobs' });
  const available0 = await numberIn(page, '[data-testid="count-available"]');
  const completed0 = await numberIn(page, '[data-testid="count-completed"]');
  log(`overview: available ${available0}, completed ${completed0}`);
  const first = await enqueue([1, 2, 3].map((i) => ({ kind: 'echo', queue: 'live', payload: { live: i } })));
  log(`enqueued ${first} into the held queue`);
  await waitCount(page, 'available', available0 + 3);
  log('overview: available counted them');
  await apiOk('POST', '/api/queues/live/resume');
  await waitCount(page, 'completed', completed0 + 3);
  await waitCount(page, 'available', available0);
  log('overview: completed counted them');
  await notReloaded('overview');
  await shot(page, 'overview');

  await nav(page, 'jobs');
  await notReloaded('the nav link to jobs');
  for (const id of first) await waitRowState(page, id, 'completed');
  await apiOk('POST', '/api/queues/live/pause', { note: 'browser test: hold the jobs' });
  const second = await enqueue([4, 5, 6, 7].map((i) => ({ kind: 'echo', queue: 'live', payload: { live: i } })));
  log(`enqueued ${second} while the Jobs page is open`);
  for (const id of second) await waitRowState(page, id, 'available');
  log('jobs: the new rows appeared, available');
  await apiOk('POST', '/api/queues/live/resume');
  for (const id of second) await waitRowState(page, id, 'completed');
  log('jobs: the rows turned completed');
  for (const id of second) check((await job(id)).state === 'completed', `job ${id} is not completed in the API`);
  await notReloaded('jobs');
  await shot(page, 'jobs');
}

/// A discarded job, retried from its page, runs again: a second attempt
/// shows up, and it completes.
async function retry() {
  // Fails (retryably) on attempt 1, which is its last: discarded. A retry
  // grants attempt 2, on which it succeeds.
  const [id] = await enqueue([{ kind: 'fail', payload: { mode: 'succeed-on', attempt: 2 }, max_attempts: 1 }]);
  await waitJobState(id, 'discarded');
  log(`job ${id} is discarded`);
  const { page } = await newPage();
  await open(page, `/jobs/${id}`, 'job');
  const notReloaded = await mark(page);
  const stateText = async () => (await page.textContent('[data-testid="job-state"]')).trim().toLowerCase();
  check((await stateText()).includes('discarded'), `job-state shows ${JSON.stringify(await stateText())}, not discarded`);
  const attempts = page.locator('[data-testid="attempt"]');
  check(await attempts.count() === 1, `${await attempts.count()} [data-testid=attempt], expected 1`);
  await shot(page, 'job-discarded');

  const dialogText = await act(page, page.locator('[data-testid="job-retry"]'), {
    done: async () => !(await stateText()).includes('discarded'),
  });
  log(`retried${dialogText ? ` (dialog: ${JSON.stringify(dialogText)})` : ''}`);
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="attempt"]').length === 2, null,
    { timeout: WAIT, polling: 100 })
    .catch(async () => fail(`the job page never showed a second attempt (${await attempts.count()} shown)`));
  await page.waitForFunction(() => /completed/i.test(document.querySelector('[data-testid="job-state"]')?.textContent || ''),
    null, { timeout: WAIT, polling: 100 })
    .catch(async () => fail(`job-state never showed completed (shows ${JSON.stringify(await stateText())})`));
  const j = await job(id);
  check(j.state === 'completed' && j.attempts.length === 2,
    `API: job ${id} is ${j.state} with ${j.attempts.length} attempts, expected completed with 2`);
  await notReloaded('job detail');
  await shot(page, 'job');
}

/// A schedule paused from the Schedules page (with a note) shows paused,
/// and resumes.
async function schedules() {
  const id = 'nightly-report';
  const { page } = await newPage();
  await open(page, '/schedules', 'schedules');
  const notReloaded = await mark(page);
  const row = page.locator(`tr[data-schedule-id="${id}"]`);
  check(await row.count() === 1, `no row tr[data-schedule-id=${id}]`);
  check(await row.getAttribute('data-paused') !== 'true', 'the schedule shows paused before it was');

  const note = `paused by the browser test ${Date.now()}`;
  await act(page, row.locator('[data-testid="schedule-pause"]'), { note });
  await page.waitForSelector(`tr[data-schedule-id="${id}"][data-paused="true"]`, { state: 'attached', timeout: WAIT })
    .catch(() => fail(`the row never showed paused (tr[data-schedule-id=${id}][data-paused=true])`));
  const paused = await apiOk('GET', `/api/schedules/${id}`);
  check(paused.paused === true && paused.pause_note === note,
    `API: schedule ${id} paused=${paused.paused} note=${JSON.stringify(paused.pause_note)}; expected the note ${JSON.stringify(note)}`);
  log(`paused, with the note, as the API says`);
  await shot(page, 'paused');

  await act(page, page.locator(`tr[data-schedule-id="${id}"] [data-testid="schedule-resume"]`), {
    done: async () => (await page.locator(`tr[data-schedule-id="${id}"][data-paused="true"]`).count()) === 0,
  });
  await page.waitForFunction((s) => {
    const r = document.querySelector(`tr[data-schedule-id="${s}"]`);
    return r && r.dataset.paused !== 'true';
  }, id, { timeout: WAIT, polling: 100 }).catch(() => fail('the row still shows paused after resume'));
  const resumed = await apiOk('GET', `/api/schedules/${id}`);
  check(resumed.paused === false, `API: schedule ${id} is still paused after resume`);
  log('resumed');
  await notReloaded('schedules');
  await shot(page, 'schedules');
}

/// A filter-wide bulk cancel: more jobs than a page, filtered, "select all
/// matching", a dialog that says how many, and every one of them moves.
async function bulk() {
  const N = 150;
  // Not due for an hour: available, and cancellable.
  const targets = await enqueue(Array.from({ length: N }, (_, i) => ({
    kind: 'echo', queue: 'bulk', delay: '1h', payload: { bulk: i },
  })));
  const bystanders = await enqueue(Array.from({ length: 5 }, (_, i) => ({
    kind: 'echo', queue: 'keep', delay: '1h', payload: { keep: i },
  })));
  log(`enqueued ${N} jobs into queue bulk, 5 into queue keep`);
  const { page } = await newPage();
  await open(page, '/jobs', 'jobs');
  const notReloaded = await mark(page);
  const form = page.locator('form[data-testid="job-filters"]');
  check(await form.count() === 1, 'no form[data-testid=job-filters]');
  await setField(form, 'queue', 'bulk');
  await setField(form, 'state', 'available');
  await form.evaluate((f) => f.requestSubmit());
  const want = new Set(targets.map(String));
  await until('the jobs table to show only queue bulk', async () => {
    if ((await page.evaluate(() => document.body.dataset.ready)) !== 'jobs') return null;
    const ids = await page.$$eval('table[data-testid="jobs"] tbody tr[data-job-id]', (rows) => rows.map((r) => r.dataset.jobId));
    return ids.length > 0 && ids.every((id) => want.has(id)) ? ids : null;
  });
  const shown = await page.locator('table[data-testid="jobs"] tbody tr[data-job-id]').count();
  log(`the filtered table shows ${shown} of the ${N} jobs`);
  check(shown < N, `the table shows all ${N} jobs on one page: the bulk action would not be filter-wide`);
  await shot(page, 'filtered');

  await page.click('[data-testid="select-all-matching"]');
  await page.click('[data-testid="bulk-cancel"]');
  const dialog = await confirmDialog(page).catch(() => fail('bulk-cancel opened no dialog[data-testid=confirm]'));
  const text = (await dialog.innerText()).trim();
  log(`dialog: ${JSON.stringify(text)}`);
  check(new RegExp(`(^|[^0-9,.])${N}([^0-9,.]|$)`).test(text), `the dialog does not state the count ${N}: ${JSON.stringify(text)}`);
  await shot(page, 'confirm');
  await dialog.locator('[data-testid="confirm-ok"]').click();

  await until(`all ${N} jobs of queue bulk to be cancelled (API)`, async () => {
    const jobs = await listJobs({ queue: 'bulk' });
    const cancelled = jobs.filter((j) => j.state === 'cancelled').length;
    return cancelled === N ? jobs : null;
  });
  for (const id of bystanders) {
    const j = await job(id);
    check(j.state === 'available', `job ${id} of queue keep was moved too: ${j.state}`);
  }
  log(`API: all ${N} cancelled, the 5 others untouched`);
  // The table follows: no row still says available.
  await page.waitForFunction(() => [...document.querySelectorAll('table[data-testid="jobs"] tbody tr[data-job-id] td[data-col="state"]')]
    .every((td) => !/available/i.test(td.textContent)), null, { timeout: WAIT, polling: 200 })
    .catch(() => fail('the jobs table still shows available jobs after the bulk cancel'));
  await notReloaded('jobs');
  await shot(page, 'jobs');
}

/// Every action button's data-testid (those of the contract, and the
/// queues' and plugins' own).
const ACTIONS = [
  'job-retry', 'job-cancel', 'bulk-retry', 'bulk-cancel', 'select-all-matching', 'schedule-pause',
  'schedule-resume', 'schedule-trigger', 'plugin-pause', 'plugin-resume', 'breaker-reset', 'event-retry',
  'queue-pause', 'queue-resume', 'plugins-reload',
];

/// A read-only host: no action buttons anywhere, a read-only badge, and a
/// mutation sent by the page itself (with the token) answers 403.
async function readOnly() {
  // Seeded by the harness before the host started (the API takes no
  // writes): echo jobs, one `fail` job that is discarded, a schedule.
  const discarded = await until('the seeded failing job to be discarded', async () =>
    (await listJobs({ state: 'discarded' }))[0]);
  const { page, mon } = await newPage();
  await open(page, '/', 'overview');
  await page.waitForSelector('[data-testid="read-only"]', { state: 'visible', timeout: WAIT })
    .catch(() => fail('no visible [data-testid=read-only] badge'));
  const actions = ACTIONS.map((t) => `[data-testid="${t}"]`).join(',');
  // What each page shows, whose actions a writable host would offer there
  // (`pages` checks that it does).
  const content = {
    jobs: 'table[data-testid="jobs"] tbody tr[data-job-id]',
    schedules: 'tr[data-schedule-id="nightly-report"]',
    plugins: '[data-plugin="echo"]',
    queues: 'tr[data-queue="default"]',
    outbox: 'body',
    hosts: 'tr[data-host]',
    job: '[data-testid="job-state"]',
  };
  const noActions = async (where) => {
    if (content[where]) check(await page.locator(content[where]).count() > 0, `read-only: ${where} shows nothing matching ${content[where]}`);
    const shown = await page.evaluate((s) => [...document.querySelectorAll(s)]
      .filter((el) => el.checkVisibility()).map((el) => el.dataset.testid), actions);
    check(shown.length === 0, `read-only: ${where} shows action buttons: ${shown.join(', ')}`);
    await shot(page, where);
  };
  await noActions('overview');
  for (const name of ['jobs', 'schedules', 'plugins', 'queues', 'outbox', 'hosts']) {
    await nav(page, name);
    await noActions(name);
  }
  await open(page, `/jobs/${discarded.id}`, 'job');
  await noActions('job');
  // The bulk actions stay hidden with a filter that matches jobs too.
  await open(page, '/jobs?state=discarded', 'jobs');
  await noActions('jobs-filtered');

  // The page's own fetch, with its token: refused.
  mon.allow(403);
  const answers = await page.evaluate(async ([id]) => {
    const t = sessionStorage.getItem('jobbox.token');
    const post = async (p, body) => {
      const r = await fetch(p, {
        method: 'POST',
        headers: { authorization: `Bearer ${t}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      return { path: p, status: r.status, body: await r.json().catch(() => null) };
    };
    return [
      await post(`/api/jobs/${id}/retry`, {}),
      await post('/api/schedules/nightly-report/pause', { note: 'x' }),
      await post('/api/jobs/cancel', { state: 'available' }),
    ];
  }, [discarded.id]);
  for (const a of answers) {
    check(a.status === 403 && a.body?.error?.code === 'read_only',
      `read-only: POST ${a.path} from the page answered ${a.status} ${JSON.stringify(a.body)}, expected 403 read_only`);
  }
  log(`the page's own mutations answered 403 read_only: ${answers.map((a) => a.path).join(', ')}`);
  check((await job(discarded.id)).state === 'discarded', 'the discarded job was moved');
}

/// A token-protected API: the login form; a wrong token refused with a
/// message; the right one works, kept in sessionStorage, never a cookie.
async function login() {
  const { context, page, mon } = await newPage({ signedIn: false });
  const apiRequests = [];
  page.on('request', (req) => { if (req.url().startsWith(`${base}/api/`)) apiRequests.push(req); });
  mon.allow(401); // without a token, and with the wrong one
  await page.goto(base + '/');
  await ready(page, 'login');
  const form = page.locator('form[data-testid="login"]');
  const input = form.locator('input#token');
  check(await input.isVisible(), 'no visible input#token in form[data-testid=login]');
  const labelled = await input.evaluate((el) => (el.labels && el.labels.length > 0)
    || !!el.getAttribute('aria-label') || !!el.getAttribute('aria-labelledby'));
  check(labelled, 'input#token has no label');
  const submit = form.locator('button[type="submit"], input[type="submit"], button:not([type])').first();
  check(await submit.count() === 1, 'the login form has no submit button');
  await shot(page, 'login');

  const before = await page.evaluate(() => document.body.innerText);
  const wrong = 'wrong-token-0123456789abcdef';
  await input.fill(wrong);
  await submit.click();
  const message = await until('a message refusing the wrong token', async () => {
    const text = await page.evaluate(() => document.body.innerText);
    const fresh = text.split('\n').map((l) => l.trim()).filter((l) => l && !before.includes(l));
    return fresh.find((l) => /token|unauthori[sz]ed|wrong|invalid|refused|rejected|incorrect|not accepted|denied/i.test(l));
  });
  log(`wrong token: ${JSON.stringify(message)}`);
  check((await page.evaluate(() => document.body.dataset.ready)) === 'login', 'the wrong token left the login page');
  check(await form.isVisible(), 'the login form went away after a wrong token');
  const kept = await page.evaluate(() => sessionStorage.getItem('jobbox.token'));
  check(kept !== wrong, 'the wrong token was kept in sessionStorage');
  await shot(page, 'refused');

  const firstAfter = apiRequests.length;
  await input.fill(token);
  await submit.click();
  await ready(page, 'overview');
  mon.disallow(401);
  const stored = await page.evaluate(() => ({
    session: sessionStorage.getItem('jobbox.token'),
    local: Object.keys(localStorage).map((k) => localStorage.getItem(k)),
    cookie: document.cookie,
  }));
  check(stored.session === token, `sessionStorage["jobbox.token"] is ${JSON.stringify(stored.session)}`);
  check(stored.cookie === '', `document.cookie is ${JSON.stringify(stored.cookie)}`);
  check(!stored.local.some((v) => v && v.includes(token)), 'the token is in localStorage');
  const cookies = await context.cookies();
  check(cookies.length === 0, `the context has cookies: ${JSON.stringify(cookies)}`);
  // Every API call since carries the token in its header, never its URL.
  const after = apiRequests.slice(firstAfter);
  check(after.length > 0, 'no API request after the login');
  for (const req of after) {
    check(!req.url().includes(token), `the token is in a URL: ${req.url()}`);
    const auth = (await req.allHeaders()).authorization;
    check(auth === `Bearer ${token}`, `${req.method()} ${req.url()} was sent with authorization ${JSON.stringify(auth)}`);
  }
  log(`${after.length} API requests after the login, each with the token in its header; no cookie`);
  await shot(page, 'overview');

  // The tab keeps the session over a reload.
  await page.reload();
  await ready(page, 'overview');
  check(await form.count() === 0 || !(await form.isVisible()), 'the login form is back after a reload');
  check((await context.cookies()).length === 0, 'a cookie was set');
}

/// Every page, with realistic data, free of console errors and failed
/// requests; a screenshot of each (and docs/dashboard.png on request).
async function pages() {
  const invoice = JSON.parse(fs.readFileSync(path.join(repo, 'examples/jobs/invoice.json'), 'utf8'));
  const ledger = JSON.parse(fs.readFileSync(path.join(repo, 'examples/jobs/ledger-credit.json'), 'utf8'));
  const batch = [];
  for (let i = 0; i < 12; i++) batch.push({ kind: 'echo', payload: { greeting: 'hello', n: i } });
  for (let i = 0; i < 6; i++) batch.push({ kind: 'invoice', queue: 'billing', payload: invoice });
  for (let i = 0; i < 4; i++) {
    batch.push({ kind: 'ledger-credit', queue: 'billing', payload: { ...ledger, transfer_id: `tr-2026-${1000 + i}` } });
  }
  batch.push({ kind: 'fail', payload: { mode: 'permanent', message: 'upstream refused the card' }, max_attempts: 1 });
  batch.push({ kind: 'fail', payload: { mode: 'retryable', message: 'rate limited by the provider' }, max_attempts: 2 });
  batch.push({ kind: 'fail', payload: { mode: 'succeed-on', attempt: 2 } });
  for (let i = 0; i < 3; i++) batch.push({ kind: 'echo', queue: 'reports', delay: '1h', payload: { report: i } });
  const ids = await enqueue(batch);
  log(`enqueued ${ids.length} jobs`);
  // Until every job that is due has finished.
  await until('the due jobs to finish', async () => {
    const jobs = await listJobs({});
    const open = jobs.filter((j) => ['running', 'retryable'].includes(j.state)
      || (j.state === 'available' && j.queue !== 'reports'));
    return open.length === 0 ? jobs : null;
  }, 90_000);
  const failed = (await listJobs({ state: 'discarded' }))[0];
  check(failed, 'no discarded job to show');
  // The ledger's events go to a sink where nothing listens: they fail.
  await until('the outbox events to fail', async () =>
    (await apiOk('GET', '/api/outbox?state=failed')).length >= 4);
  // The heartbeat carries the throughput: until it has every attempt (but
  // those that were not the plugin's doing, which it leaves out).
  const uncounted = ['kv_conflict', 'host_shutdown', 'fenced_out', 'cancelled'];
  let attempts = 0, succeeded = 0;
  for (const id of ids) {
    const j = await job(id);
    attempts += j.attempts.filter((a) => !uncounted.includes(a.outcome)).length;
    if (j.state === 'completed') succeeded++;
  }
  let seen = '';
  await until(`the throughput to count ${attempts} attempts, ${succeeded} of them succeeded`, async () => {
    const t = await apiOk('GET', '/api/throughput?minutes=60');
    const sum = (k) => t.minutes.reduce((n, m) => n + m[k], 0);
    seen = `${sum('succeeded')} succeeded, ${sum('failed')} failed`;
    return sum('succeeded') === succeeded && sum('succeeded') + sum('failed') === attempts;
  }).catch((e) => fail(`${e.message} (it counts ${seen})`));
  await apiOk('POST', '/api/queues/reports/pause', { note: 'month-end freeze' });

  const { page, mon } = await newPage();
  await open(page, '/', 'overview');
  const notReloaded = await mark(page);
  await page.waitForSelector('[data-testid="throughput-chart"]', { state: 'attached', timeout: WAIT })
    .catch(() => fail('overview: no [data-testid=throughput-chart]'));
  for (const s of ['available', 'running', 'retryable', 'completed', 'discarded', 'cancelled']) {
    await numberIn(page, `[data-testid="count-${s}"]`);
  }
  await waitCount(page, 'completed', (await listJobs({ state: 'completed' })).length);
  mon.assertClean('overview');
  await shot(page, 'overview');
  if (process.env.JOBBOX_UPDATE_SCREENSHOT === '1') {
    // The whole overview, as a README shows it.
    const file = path.join(repo, 'docs', 'dashboard.png');
    await page.screenshot({ path: file, fullPage: true });
    log(`wrote ${file}`);
  }

  const expectations = {
    jobs: 'table[data-testid="jobs"] tbody tr[data-job-id]',
    schedules: 'tr[data-schedule-id="nightly-report"]',
    plugins: '[data-plugin="echo"]',
    queues: 'tr[data-queue="billing"]',
    outbox: 'tr[data-event-id], [data-testid="empty"]',
    hosts: 'tr[data-host]',
  };
  // The actions a writable host offers (`read-only` checks they go away).
  const offered = {
    schedules: ['schedule-pause', 'schedule-trigger'],
    plugins: ['plugin-pause'],
    outbox: ['event-retry'],
  };
  for (const [name, sel] of Object.entries(expectations)) {
    await nav(page, name);
    check(await page.locator(sel).count() > 0, `${name}: nothing matches ${sel}`);
    for (const t of offered[name] || []) {
      check(await page.locator(`[data-testid="${t}"]`).first().isVisible(), `${name}: no visible [data-testid=${t}]`);
    }
    mon.assertClean(name);
    await shot(page, name);
  }
  await notReloaded('the nav links');

  // The detail pages, by their links and by their addresses.
  await nav(page, 'jobs');
  const link = page.locator(`${rowSel(failed.id)} a[href="/jobs/${failed.id}"]`);
  if (await link.count() > 0) {
    await link.first().click();
    await ready(page, 'job');
    await notReloaded('the job link');
  } else {
    log(`no link a[href="/jobs/${failed.id}"] in the job's row: opening the page by its address`);
    await open(page, `/jobs/${failed.id}`, 'job');
  }
  check(await page.locator('[data-testid="attempt"]').count() >= 1, 'job: no [data-testid=attempt]');
  check(await page.locator('[data-testid="job-retry"]').isVisible(), 'job: a discarded job has no visible [data-testid=job-retry]');
  check(/discarded/i.test(await page.textContent('[data-testid="job-state"]')), 'job: job-state does not say discarded');
  mon.assertClean('job');
  await shot(page, 'job');
  await open(page, '/schedules/nightly-report', 'schedule');
  mon.assertClean('schedule');
  await shot(page, 'schedule');
  // The outbox pages on below the last event shown.
  await open(page, '/outbox?state=failed&limit=2', 'outbox');
  const eventIds = () => page.locator('tr[data-event-id]')
    .evaluateAll((rows) => rows.map((r) => Number(r.dataset.eventId)));
  const newest = await eventIds();
  check(newest.length === 2, `outbox?limit=2: ${newest.length} events shown`);
  await page.click('[data-testid="outbox-older"]');
  await page.waitForURL(/before=/, { timeout: WAIT });
  await ready(page, 'outbox');
  const older = await eventIds();
  check(older.length >= 1 && older.every((id) => id < Math.min(...newest)),
    `the older page shows ${JSON.stringify(older)}, not events below ${JSON.stringify(newest)}`);
  mon.assertClean('outbox-older');
  // An unknown job: a page that says so, not a broken one.
  mon.allow(404);
  await page.goto(`${base}/jobs/999999`);
  await page.waitForSelector('[data-testid="error"], [data-testid="empty"]', { state: 'attached', timeout: WAIT })
    .catch(() => fail('/jobs/999999 shows neither [data-testid=error] nor [data-testid=empty]'));
  mon.disallow(404);
  await shot(page, 'missing-job');
}

// ---------------------------------------------------------------------------

async function main() {
  // A failure screenshot of an earlier run would mislead.
  if (fs.existsSync(artifacts)) {
    for (const f of fs.readdirSync(artifacts)) {
      if (f.startsWith(`${scenario}-failure`)) fs.rmSync(path.join(artifacts, f));
    }
  }
  const info = await api('GET', '/api/info');
  log(`host: ${info.status} ${info.text.slice(0, 200)}`);
  browser = await chromium.launch({
    executablePath,
    chromiumSandbox: false,
    args: ['--disable-dev-shm-usage', '--disable-gpu'],
    timeout: WAIT,
  });
  log(`browser: Chromium ${browser.version()} (${executablePath})`);
  await SCENARIOS[scenario]();
  for (const m of monitors) {
    m.assertClean();
    if (m.aborted) log(`(${m.aborted} API request(s) aborted by the page itself)`);
  }
}

const timer = setTimeout(() => {
  console.error(`${scenario}: FAILED: the scenario took more than ${DEADLINE / 1000}s`);
  process.exit(1);
}, DEADLINE);

let status = 0;
try {
  await main();
  log('passed');
} catch (e) {
  status = 1;
  console.error(`${scenario}: FAILED: ${e instanceof Failure ? e.message : e.stack || e}`);
  for (const m of monitors) {
    if (m.errors.length) console.error(`also seen:\n  ${m.errors.join('\n  ')}`);
  }
  try {
    let n = 0;
    for (const ctx of browser ? browser.contexts() : []) {
      for (const p of ctx.pages()) {
        fs.mkdirSync(artifacts, { recursive: true });
        const file = path.join(artifacts, `${scenario}-failure${n++ ? `-${n}` : ''}.png`);
        await p.screenshot({ path: file, fullPage: true, timeout: 10_000 });
        console.error(`the page at the failure (${p.url()}, data-ready=${JSON.stringify(
          await p.evaluate(() => document.body?.dataset.ready))}): ${file}`);
        const text = await p.evaluate(() => document.body?.innerText || '');
        console.error(`its text:\n${text.slice(0, 3000)}`);
      }
    }
  } catch (e2) {
    console.error(`(no failure screenshot: ${e2.message})`);
  }
} finally {
  for (const m of monitors) m.active = false;
  clearTimeout(timer);
  if (browser) await browser.close().catch(() => {});
}
process.exit(status);
