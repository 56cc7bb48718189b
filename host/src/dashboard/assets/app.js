/* jobbox dashboard: one file, no framework, no build step.
 *
 * Layout of this file:
 *   1. constants and app state
 *   2. DOM helpers (h, svg) and formatting
 *   3. api(): the one place that talks to the admin API
 *   4. notices: toasts and dialogs
 *   5. live updates: the SSE client
 *   6. router and views (each page gets a view context)
 *   7. shared components (badges, panels, tables)
 *   8. pages, one function (and a few helpers) each
 *   9. boot
 *
 * Safety: every piece of data reaches the DOM through textContent or an
 * attribute; no innerHTML anywhere. The page runs under a strict CSP (no
 * inline script or style), so styling goes through classes (CSSOM
 * el.style.x for computed widths only).
 */
"use strict";

(() => {
  // ---------------------------------------------------------------- 1. state

  const TOKEN_KEY = "jobbox.token";
  const STATES = ["available", "running", "retryable", "completed", "discarded", "cancelled"];
  const RETRYABLE_FROM = ["discarded", "retryable", "cancelled"];
  const CANCELLABLE_FROM = ["available", "retryable", "running"];
  const EVENT_STATES = ["pending", "delivered", "failed"];
  const PAGE_SIZE = 50;
  /** Follow-up requests a text search makes on its own before asking. */
  const AUTO_SEARCH_ROUNDS = 8;
  // How long a listing keeps searching older windows before it draws.
  const SEARCH_BUDGET_MS = 120;
  /** A host whose heartbeat is older than this is shown as stale. */
  const STALE_HOST_MS = 15_000;
  const NAV = [
    ["overview", "/", "Overview"],
    ["jobs", "/jobs", "Jobs"],
    ["schedules", "/schedules", "Schedules"],
    ["plugins", "/plugins", "Plugins"],
    ["queues", "/queues", "Queues"],
    ["outbox", "/outbox", "Outbox"],
    ["hosts", "/hosts", "Hosts"],
  ];

  const app = {
    info: null, // GET /api/info
    view: null, // the current page's view context
    live: "closed",
    sse: null, // AbortController of the event stream
    shell: null, // {header, main, toasts, live, ...}
    navigated: false, // whether a navigation (not the first load) happened
    kinds: null, // cached list of plugin kinds, for filter suggestions
  };
  window.__jobbox = { readyAt: 0, page: "" };

  // ------------------------------------------------------- 2. DOM helpers

  /** Appends children: strings become text nodes; null/false are skipped. */
  function append(el, kids) {
    for (const k of kids) {
      if (k == null || k === false) continue;
      if (Array.isArray(k)) append(el, k);
      else if (k instanceof Node) el.appendChild(k);
      else el.appendChild(document.createTextNode(String(k)));
    }
    return el;
  }

  /** Sets attributes: class, text, on<event>, booleans; the rest as given. */
  function setProps(el, props) {
    if (!props) return el;
    for (const [k, v] of Object.entries(props)) {
      if (v == null || v === false) continue;
      if (k === "class") el.setAttribute("class", v);
      else if (k === "text") el.textContent = v;
      else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
      else if (k === "value" && "value" in el) el.value = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    return el;
  }

  /** Creates an HTML element. */
  function h(tag, props, ...kids) {
    return append(setProps(document.createElement(tag), props), kids);
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  /** Creates an SVG element. */
  function s(tag, props, ...kids) {
    return append(setProps(document.createElementNS(SVG_NS, tag), props), kids);
  }

  function a(href, ...kids) {
    return h("a", { href }, ...kids);
  }

  // Formatting ---------------------------------------------------------

  const numFmt = new Intl.NumberFormat();
  const pctFmt = new Intl.NumberFormat(undefined, { style: "percent", maximumFractionDigits: 1 });
  const dec1 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  const dec2 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
  const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
  const dateTimeFmt = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  });

  const num = (n) => (n == null || Number.isNaN(n) ? "—" : numFmt.format(n));
  const pct = (x) => (x == null || !Number.isFinite(x) ? "—" : pctFmt.format(x));

  /** A duration in milliseconds, compact: "850 ms", "1.2 s", "3m 5s", "2h 10m", "3d 4h". */
  function dur(ms) {
    if (ms == null || !Number.isFinite(ms)) return "—";
    ms = Math.abs(ms);
    if (ms < 1000) return `${dec1.format(ms)} ms`;
    const sec = ms / 1000;
    if (sec < 10) return `${dec2.format(sec)} s`;
    if (sec < 60) return `${Math.round(sec)} s`;
    const m = Math.floor(sec / 60), ss = Math.floor(sec % 60);
    if (m < 60) return ss ? `${m}m ${ss}s` : `${m}m`;
    const hh = Math.floor(m / 60), mm = m % 60;
    if (hh < 48) return mm ? `${hh}h ${mm}m` : `${hh}h`;
    const d = Math.floor(hh / 24), rh = hh % 24;
    return rh ? `${d}d ${rh}h` : `${d}d`;
  }

  /** "12s ago", "in 3m", "just now". */
  function rel(ms, now = Date.now()) {
    const d = ms - now;
    const a = Math.abs(d);
    if (a < 2000) return "just now";
    let t;
    if (a < 60_000) t = `${Math.round(a / 1000)}s`;
    else if (a < 3_600_000) t = `${Math.round(a / 60_000)}m`;
    else if (a < 86_400_000) t = `${dec1.format(a / 3_600_000)}h`;
    else if (a < 60 * 86_400_000) t = `${Math.round(a / 86_400_000)}d`;
    else return dateTimeFmt.format(ms);
    return d < 0 ? `${t} ago` : `in ${t}`;
  }

  function bytes(n) {
    if (n == null) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0, v = n;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return `${i ? dec1.format(v) : v} ${units[i]}`;
  }

  const parseTime = (iso) => (iso ? Date.parse(iso) : NaN);

  /** A <time> showing a relative time, with the absolute one in its title. */
  function when(iso, empty = "—") {
    const t = parseTime(iso);
    if (!Number.isFinite(t)) return h("span", { class: "muted" }, empty);
    return h("time", {
      class: "rel", datetime: iso, "data-t": t,
      title: `${dateTimeFmt.format(t)} (${iso})`,
    }, rel(t));
  }

  /** An absolute local time, with the relative one beside it. */
  function absWhen(iso) {
    const t = parseTime(iso);
    if (!Number.isFinite(t)) return h("span", { class: "muted" }, "—");
    return h("span", null, h("span", { title: iso }, dateTimeFmt.format(t)), " ",
      h("time", { class: "rel muted small", datetime: iso, "data-t": t }, rel(t)));
  }

  /** Refreshes the text of every relative time on the page. */
  function tickTimes() {
    const now = Date.now();
    for (const el of document.querySelectorAll("time.rel")) {
      el.textContent = rel(Number(el.dataset.t), now);
    }
  }

  const shortHash = (hash) => (hash ? hash.slice(0, 12) : "—");

  function truncate(text, n) {
    if (text == null) return "";
    return text.length > n ? `${text.slice(0, n - 1)}…` : text;
  }

  function pretty(v) {
    if (v === undefined) return "";
    if (typeof v === "string") return v;
    try { return JSON.stringify(v, null, 2); } catch { return String(v); }
  }

  function debounce(fn, ms) {
    let t = 0;
    return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
  }

  /** Calls fn at most once per `ms`, trailing: the last call always runs. */
  function throttle(fn, ms) {
    let last = 0, timer = 0;
    const run = () => { timer = 0; last = performance.now(); fn(); };
    const call = () => {
      if (timer) return;
      const wait = Math.max(0, last + ms - performance.now());
      timer = setTimeout(run, wait);
    };
    call.cancel = () => { clearTimeout(timer); timer = 0; };
    return call;
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  // ------------------------------------------------------------- 3. api()

  class ApiError extends Error {
    constructor(status, code, message, path) {
      super(message);
      this.status = status;
      this.code = code;
      this.path = path;
    }
  }

  /** Thrown when the view that asked has gone (navigation): ignored. */
  class Stale extends Error {}

  const getToken = () => { try { return sessionStorage.getItem(TOKEN_KEY); } catch { return null; } };
  const setToken = (t) => { try { sessionStorage.setItem(TOKEN_KEY, t); } catch { /* private mode */ } };
  const clearToken = () => { try { sessionStorage.removeItem(TOKEN_KEY); } catch { /* ignore */ } };

  function authHeaders() {
    const t = getToken();
    return t ? { Authorization: `Bearer ${t}` } : {};
  }

  function withQuery(path, query) {
    if (!query) return path;
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v != null && v !== "") qs.set(k, String(v));
    }
    const q = qs.toString();
    return q ? `${path}${path.includes("?") ? "&" : "?"}${q}` : path;
  }

  /**
   * Calls the admin API: adds the token, sends and reads JSON, and turns a
   * failure into an ApiError with a message fit to show. A 401 clears the
   * token and shows the login form.
   */
  async function api(path, { method = "GET", body, query, signal } = {}) {
    const url = withQuery(path, query);
    if (method !== "GET" && app.info && app.info.read_only) {
      throw new ApiError(403, "read_only", "The API is read-only: nothing was changed.", path);
    }
    const headers = { Accept: "application/json", ...authHeaders() };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let res;
    try {
      res = await fetch(url, {
        method, headers, signal, cache: "no-store",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      if (e && e.name === "AbortError") throw new Stale();
      throw new ApiError(0, "network", "Could not reach the API: is `jobbox run` still running?", path);
    }
    if (res.status === 401) {
      unauthorized();
      throw new Stale();
    }
    if (!res.ok) {
      let code = `http_${res.status}`, message = `${res.status} ${res.statusText}`.trim();
      try {
        const j = await res.json();
        if (j && j.error) { code = j.error.code || code; message = j.error.message || message; }
      } catch { /* not JSON */ }
      throw new ApiError(res.status, code, message, path);
    }
    if (res.status === 204) return null;
    const type = res.headers.get("content-type") || "";
    try {
      return type.includes("json") ? await res.json() : await res.text();
    } catch (e) {
      if (e && e.name === "AbortError") throw new Stale();
      throw new ApiError(res.status, "bad_response", "The API answered something that is not JSON.", path);
    }
  }

  /** What an operator can do about an error. */
  function hintFor(err) {
    if (!(err instanceof ApiError)) return "This is a bug in the dashboard; the browser console has details.";
    switch (err.code) {
      case "network": return "Check that `jobbox run` is running and that this page points at it, then retry.";
      case "read_only": return "This API is read-only (api.read_only = true).";
      case "unavailable":
      case "timeout": return "The host is busy or shutting down; retry in a moment.";
      case "store_error": return "The database refused the query; the host's log says why.";
      default:
        if (err.status === 404 && /no such route/i.test(err.message)) {
          return `This jobbox version does not serve ${err.path || "this route"} yet: upgrade the host.`;
        }
        return "";
    }
  }

  function errorText(err) {
    if (err instanceof ApiError) return err.message;
    return (err && err.message) || String(err);
  }

  // ------------------------------------------------------------ 4. notices

  /** Shows a notice in the aria-live region; returns it (text can change). */
  function toast(message, kind = "ok", { sticky = false, action } = {}) {
    const region = app.shell && app.shell.toasts;
    if (!region) return null;
    const text = h("span", { class: "toast-text" }, message);
    const close = h("button", { type: "button", class: "toast-close", "aria-label": "Dismiss" }, "×");
    const el = h("div", { class: `toast toast-${kind}`, "data-testid": "toast", role: kind === "err" ? "alert" : null },
      text, action || null, close);
    close.addEventListener("click", () => el.remove());
    region.appendChild(el);
    while (region.children.length > 4) region.firstElementChild.remove();
    const t = { el, set: (m, k) => { text.textContent = m; if (k) el.className = `toast toast-${k}`; }, close: () => el.remove(), autoClose };
    function autoClose(ms) { setTimeout(() => el.remove(), ms); }
    if (!sticky) autoClose(kind === "err" ? 10_000 : 5_000);
    return t;
  }

  const toastError = (what, err) => toast(`${what}: ${errorText(err)}`, "err");

  /**
   * A modal confirmation (keyboard-usable <dialog>). Resolves to null when
   * cancelled, else to {note}. With `note`, a note is asked for (required).
   */
  function confirmDialog({ title, message, ok = "OK", danger = false, note = null }) {
    return new Promise((resolve) => {
      const titleId = `dlg-${Math.random().toString(36).slice(2)}`;
      const noteId = `${titleId}-note`;
      let textarea = null, noteErr = null;
      if (note) {
        textarea = h("textarea", {
          id: noteId, name: "note", rows: 3, "data-testid": "note-input", required: true,
          maxlength: 1000, placeholder: note.placeholder || "",
          "aria-describedby": `${noteId}-err`,
        });
        noteErr = h("p", { id: `${noteId}-err`, class: "field-error", role: "alert" });
      }
      const cancelBtn = h("button", { type: "button", class: "btn", "data-testid": "confirm-cancel" }, "Cancel");
      const okBtn = h("button", { type: "submit", class: `btn ${danger ? "btn-danger" : "btn-primary"}`, "data-testid": "confirm-ok" }, ok);
      const form = h("form", { method: "dialog", class: "dialog-form", novalidate: true },
        h("h2", { id: titleId }, title),
        h("p", { class: "dialog-message" }, message),
        note ? h("div", { class: "field" },
          h("label", { for: noteId }, note.label || "Note", h("span", { class: "muted" }, " (required)")),
          textarea, noteErr) : null,
        h("div", { class: "dialog-actions" }, cancelBtn, okBtn));
      const dlg = h("dialog", { "data-testid": "confirm", "aria-labelledby": titleId, class: "dialog" }, form);
      let result = null;
      form.addEventListener("submit", (e) => {
        e.preventDefault();
        if (textarea && !textarea.value.trim()) {
          noteErr.textContent = "Say why, so that others know (the note is shown with the pause).";
          textarea.focus();
          return;
        }
        result = { note: textarea ? textarea.value.trim() : null };
        dlg.close("ok");
      });
      cancelBtn.addEventListener("click", () => dlg.close("cancel"));
      dlg.addEventListener("close", () => { dlg.remove(); resolve(result); });
      document.body.appendChild(dlg);
      dlg.showModal();
      (textarea || okBtn).focus();
    });
  }

  /** Copies text, with a fallback for insecure contexts. */
  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      const ta = h("textarea", { class: "offscreen", "aria-hidden": "true" });
      ta.value = text;
      document.body.appendChild(ta);
      ta.select();
      let ok = false;
      try { ok = document.execCommand("copy"); } catch { ok = false; }
      ta.remove();
      return ok;
    }
  }

  // ------------------------------------------------------ 5. live updates

  function setLive(state) {
    app.live = state;
    const el = app.shell && app.shell.live;
    if (!el) return;
    el.dataset.state = state;
    const label = { open: "Live", connecting: "Connecting…", closed: "Offline" }[state];
    el.lastElementChild.textContent = label;
    el.title = {
      open: "Receiving job events as they happen",
      connecting: "Connecting to the event stream…",
      closed: "Not receiving live events: reconnecting with backoff",
    }[state];
  }

  /** Parses one SSE frame: {event, data, id}. */
  function parseFrame(frame) {
    let event = "message", id = null;
    const data = [];
    for (const line of frame.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      let value = i < 0 ? "" : line.slice(i + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
      else if (field === "id") id = value;
    }
    return { event, data: data.join("\n"), id };
  }

  function dispatchFrame(frame) {
    const { event, data } = parseFrame(frame);
    if (!data) return;
    let payload;
    try { payload = JSON.parse(data); } catch { return; }
    const v = app.view;
    if (!v || !v.alive) return;
    try {
      if (event === "job" && v.onEvent) v.onEvent(payload);
      else if (event === "lagged" && v.onLagged) v.onLagged(payload);
      // Other hosts on the database committed changes (at most once a
      // second): views refresh as after missed events, but the jobs list,
      // which would only say it may be out of date, has its own handler.
      else if (event === "outside") {
        const refresh = v.onOutside || (v.name === "jobs" ? null : v.onLagged);
        if (refresh) refresh(payload);
      }
    } catch (e) {
      console.error("jobbox: event handler failed", e);
    }
  }

  /** The one event-stream client: fetch + reader (to send the token), with reconnection. */
  async function runEvents() {
    if (app.sse) app.sse.abort();
    const mine = new AbortController();
    app.sse = mine;
    let backoff = 1000, connectedBefore = false;
    while (!mine.signal.aborted) {
      setLive("connecting");
      const ctrl = new AbortController();
      const abortInner = () => ctrl.abort();
      mine.signal.addEventListener("abort", abortInner, { once: true });
      let watchdog = 0;
      const pet = () => { clearTimeout(watchdog); watchdog = setTimeout(() => ctrl.abort(), 45_000); };
      try {
        const res = await fetch("/api/events", {
          headers: { Accept: "text/event-stream", ...authHeaders() },
          signal: ctrl.signal, cache: "no-store",
        });
        if (res.status === 401) { unauthorized(); return; }
        if (!res.ok || !res.body) throw new Error(`event stream: ${res.status}`);
        setLive("open");
        backoff = 1000;
        // Events may have been missed while disconnected: let the view catch up.
        if (connectedBefore && app.view && app.view.onLagged) app.view.onLagged({ missed: null });
        connectedBefore = true;
        pet();
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          pet();
          buf += value;
          if (buf.includes("\r")) buf = buf.replace(/\r\n?/g, "\n");
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const frame = buf.slice(0, i);
            buf = buf.slice(i + 2);
            dispatchFrame(frame);
          }
        }
      } catch {
        /* reconnect below */
      } finally {
        clearTimeout(watchdog);
        mine.signal.removeEventListener("abort", abortInner);
      }
      if (mine.signal.aborted) break;
      setLive("closed");
      await sleep(backoff * (0.75 + Math.random() / 2));
      backoff = Math.min(backoff * 2, 30_000);
    }
  }

  function stopEvents() {
    if (app.sse) app.sse.abort();
    app.sse = null;
    setLive("closed");
  }

  // ------------------------------------------------------------ 6. router

  const ROUTES = [
    [/^\/$/, "overview", "Overview", pageOverview],
    [/^\/jobs\/?$/, "jobs", "Jobs", pageJobs],
    [/^\/jobs\/(\d+)\/?$/, "job", "Job", pageJob],
    [/^\/schedules\/?$/, "schedules", "Schedules", pageSchedules],
    [/^\/schedules\/([^/]+)\/?$/, "schedule", "Schedule", pageSchedule],
    [/^\/plugins\/?$/, "plugins", "Plugins", pagePlugins],
    [/^\/queues\/?$/, "queues", "Queues", pageQueues],
    [/^\/outbox\/?$/, "outbox", "Outbox", pageOutbox],
    [/^\/hosts\/?$/, "hosts", "Hosts", pageHosts],
  ];

  function navigate(url, { replace = false } = {}) {
    const target = new URL(url, location.href);
    if (target.origin !== location.origin) { location.href = url; return; }
    const same = target.pathname + target.search === location.pathname + location.search;
    if (replace || same) history.replaceState(null, "", target.pathname + target.search + target.hash);
    else history.pushState(null, "", target.pathname + target.search + target.hash);
    app.navigated = true;
    render();
  }

  /** Same-origin links are handled here, without a page load. */
  function onDocumentClick(e) {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    const link = e.target.closest && e.target.closest("a[href]");
    if (!link || link.target || link.hasAttribute("download")) return;
    const href = link.getAttribute("href");
    if (!href.startsWith("/") || href.startsWith("//") || href.startsWith("/api/")) return;
    e.preventDefault();
    navigate(href);
  }

  function setReady(view) {
    if (!view.alive || view.ready) return;
    view.ready = true;
    window.__jobbox.readyAt = performance.now();
    window.__jobbox.page = view.name;
    document.body.dataset.ready = view.name;
  }

  /** A view: one page's lifetime (ends at the next navigation). */
  function newView(name) {
    if (app.view) {
      app.view.alive = false;
      app.view.ctrl.abort();
      for (const t of app.view.timers) clearTimeout(t);
    }
    document.body.dataset.ready = "";
    const ctrl = new AbortController();
    const view = {
      name, alive: true, ready: false, ctrl, signal: ctrl.signal, timers: [],
      onEvent: null, onLagged: null, onOutside: null,
      /** api() bound to this view: resolves only while it is alive. */
      async api(path, opts = {}) {
        const r = await api(path, { ...opts, signal: opts.method && opts.method !== "GET" ? undefined : ctrl.signal });
        if (!view.alive) throw new Stale();
        return r;
      },
    };
    app.view = view;
    return view;
  }

  async function render() {
    if (!app.info) return;
    const path = location.pathname;
    let match = null, route = null;
    for (const r of ROUTES) {
      const m = r[0].exec(path);
      if (m) { match = m; route = r; break; }
    }
    const name = route ? route[1] : "notfound";
    const view = newView(name);
    const { main } = app.shell;
    main.replaceChildren();
    for (const link of app.shell.nav.querySelectorAll("a")) {
      const active = link.dataset.nav === name || (link.dataset.nav === "jobs" && name === "job")
        || (link.dataset.nav === "schedules" && name === "schedule");
      if (active) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    document.title = `${route ? route[2] : "Not found"} · jobbox`;
    const params = new URLSearchParams(location.search);
    try {
      if (!route) {
        main.append(pageHead("Not found"), emptyState(`Nothing lives at ${path}.`, a("/", "Go to the overview")));
        setReady(view);
      } else {
        await route[3](view, main, match.slice(1).map(decodeURIComponent), params);
      }
    } catch (e) {
      if (e instanceof Stale || !view.alive) return;
      console.error(e);
      main.append(errorBox("This page failed to draw", e));
      setReady(view);
    }
    if (app.navigated && view.alive) {
      const h1 = main.querySelector("h1");
      if (h1) h1.focus({ preventScroll: true });
    }
  }

  /** Re-runs a panel's draw, keeping the focused control focused if it is redrawn. */
  function keepFocus(container, draw) {
    const active = document.activeElement;
    const key = active && container.contains(active) ? active.dataset.key : null;
    draw();
    if (key) {
      const again = container.querySelector(`[data-key="${CSS.escape(key)}"]`);
      if (again) again.focus({ preventScroll: true });
    }
  }

  // ------------------------------------------------- 7. shared components

  function pageHead(title, { sub = null, actions = [], badge = null } = {}) {
    return h("div", { class: "page-head" },
      h("div", { class: "page-title" },
        h("h1", { tabindex: "-1" }, title),
        badge,
        sub ? h("p", { class: "page-sub" }, sub) : null),
      h("div", { class: "page-actions" }, actions));
  }

  function badge(state, { testid = null, title = null } = {}) {
    const label = String(state || "—").replace(/_/g, " ");
    return h("span", { class: `badge badge-${state || "none"}`, "data-testid": testid, title }, label);
  }

  /** Outcome badge: colour by meaning, not by name. */
  function outcomeBadge(outcome) {
    const tone = outcome === "completed" ? "completed"
      : ["permanent_error", "trap", "out_of_fuel", "memory_limit", "output_too_large"].includes(outcome) ? "discarded"
        : ["retryable_error", "timeout", "lease_expired", "kv_conflict"].includes(outcome) ? "retryable"
          : "cancelled";
    return h("span", { class: `badge badge-${tone}` }, String(outcome || "—").replace(/_/g, " "));
  }

  function breakerBadge(state) {
    const tone = state === "open" ? "discarded" : state === "half_open" ? "running" : "completed";
    return h("span", { class: `badge badge-${tone}` }, `breaker ${String(state).replace(/_/g, " ")}`);
  }

  function loading(what = "Loading…") {
    return h("div", { class: "loading", role: "status" }, h("span", { class: "spinner", "aria-hidden": "true" }), what);
  }

  function errorBox(title, err, retry = null) {
    const hint = hintFor(err);
    return h("div", { class: "state-box state-error", "data-testid": "error", role: "alert" },
      h("strong", null, title),
      h("p", null, errorText(err)),
      hint ? h("p", { class: "muted" }, hint) : null,
      retry ? h("button", { type: "button", class: "btn btn-small", onclick: retry }, "Retry") : null);
  }

  function emptyState(text, action = null) {
    return h("div", { class: "state-box state-empty", "data-testid": "empty" }, h("p", null, text), action);
  }

  function panel(title, { actions = null, cls = "" } = {}) {
    const body = h("div", { class: "panel-body" }, loading());
    const el = h("section", { class: `panel ${cls}`.trim() },
      h("div", { class: "panel-head" }, h("h2", null, title), actions),
      body);
    return { el, body };
  }

  /** A definition list from [label, value] pairs (null values skipped). */
  function dl(pairs, cls = "kv") {
    const el = h("dl", { class: cls });
    for (const [k, v] of pairs) {
      if (v === undefined) continue;
      el.append(h("dt", null, k), h("dd", null, v == null ? h("span", { class: "muted" }, "—") : v));
    }
    return el;
  }

  /** A table: cols = [{label, cls}], rows already built as <tr>. */
  function table(cols, rows, { testid = null, cls = "" } = {}) {
    return h("div", { class: "table-wrap" },
      h("table", { class: `data ${cls}`.trim(), "data-testid": testid },
        h("thead", null, h("tr", null, cols.map((c) =>
          h("th", { scope: "col", class: c.cls || null, title: c.title || null }, c.label)))),
        h("tbody", null, rows)));
  }

  const td = (content, props = null) => h("td", props, content);
  const numCell = (n, props = {}) => h("td", { ...props, class: `num ${props.class || ""}`.trim() }, num(n));

  const canAct = () => !(app.info && app.info.read_only);

  /**
   * An action button (none in read-only mode). `run` is awaited with the
   * button disabled; its errors become a toast.
   */
  function actionBtn(label, run, { testid = null, cls = "", key = null, title = null, what = label } = {}) {
    if (!canAct()) return null;
    const btn = h("button", { type: "button", class: `btn btn-small ${cls}`.trim(), "data-testid": testid, "data-key": key, title }, label);
    btn.addEventListener("click", async () => {
      // Busy, not disabled: a disabled button would drop the keyboard focus.
      if (btn.getAttribute("aria-disabled") === "true") return;
      btn.setAttribute("aria-disabled", "true");
      btn.setAttribute("aria-busy", "true");
      try {
        await run(btn);
      } catch (e) {
        if (!(e instanceof Stale)) toastError(`${what} failed`, e);
      } finally {
        btn.removeAttribute("aria-disabled");
        btn.removeAttribute("aria-busy");
      }
    });
    return btn;
  }

  function refreshBtn(run) {
    return h("button", { type: "button", class: "btn btn-small btn-ghost", onclick: run, title: "Fetch again" }, "↻ Refresh");
  }

  function jobLink(id) {
    return id == null ? h("span", { class: "muted" }, "—") : a(`/jobs/${id}`, `#${id}`);
  }

  function codeBlock(value, label) {
    const text = pretty(value);
    return h("pre", { class: "code", tabindex: "0", "aria-label": label }, text === "" ? "(empty)" : text);
  }

  /** Sum of state counts over every queue. */
  function totals(queues) {
    const t = Object.fromEntries(STATES.map((st) => [st, 0]));
    for (const q of queues || []) for (const st of STATES) t[st] += (q.counts && q.counts[st]) || 0;
    return t;
  }

  async function loadKinds() {
    if (app.kinds) return app.kinds;
    try {
      const p = await api("/api/plugins");
      app.kinds = p.plugins.map((x) => x.kind).sort();
    } catch { app.kinds = []; }
    return app.kinds;
  }

  // ------------------------------------------------------------ 8. pages

  // Overview -----------------------------------------------------------

  async function pageOverview(view, main) {
    const counts = h("section", { class: "cards", "aria-label": "Jobs by state" });
    const kpis = h("section", { class: "kpis", "aria-label": "Health" });
    const chart = panel("Throughput, last hour", { cls: "panel-wide" });
    const plugins = panel("Plugins, last hour");
    const hosts = panel("Hosts", { actions: a("/hosts", "All hosts") });
    const attention = panel("Needs attention");
    main.append(
      pageHead("Overview", { actions: [refreshBtn(() => refreshAll())] }),
      counts, kpis, chart.el,
      h("div", { class: "grid-2" }, plugins.el, h("div", { class: "stack" }, hosts.el, attention.el)));
    counts.append(loading("Counting jobs…"));

    let lastStats = null, lastPlugins = null, lastEventAt = 0;
    let soonStats = () => {};
    // Breakers, pauses and rejected files: from the plugins and the stats' queues.
    const drawAttention = () => {
      if (!lastPlugins) return;
      keepFocus(attention.body, () => attention.body.replaceChildren(attentionList(lastPlugins, lastStats ? lastStats.queues : [])));
    };
    const loadPlugins = async () => {
      try {
        lastPlugins = await view.api("/api/plugins");
        drawAttention();
      } catch (e) {
        if (e instanceof Stale) throw e;
        attention.body.replaceChildren(errorBox("Could not load breakers and pauses", e, () => loadPlugins()));
      }
    };
    const drawStats = async () => {
      try {
        const st = await view.api("/api/stats");
        lastStats = st;
        // The counts are cached on the host (about a second): if they
        // predate the latest event, ask again shortly.
        if (lastEventAt && !(parseTime(st.counts_at) >= lastEventAt)) {
          view.timers.push(setTimeout(() => { if (view.alive) soonStats(); }, 1100));
        }
        keepFocus(counts, () => drawCounts(counts, st));
        drawKpis(kpis, st);
        drawAttention();
      } catch (e) {
        if (e instanceof Stale) throw e;
        counts.replaceChildren(errorBox("Could not load the job counts", e, () => drawStats()));
        kpis.replaceChildren();
      }
    };
    const drawThroughput = async () => {
      try {
        const tp = await view.api("/api/throughput", { query: { minutes: 60 } });
        lastTp = tp;
        chart.body.replaceChildren(throughputChart(tp, chart.body.clientWidth - 28));
        plugins.body.replaceChildren(pluginRates(tp.plugins || []));
      } catch (e) {
        if (e instanceof Stale) throw e;
        chart.body.replaceChildren(errorBox("Could not load the throughput", e, () => drawThroughput()));
        plugins.body.replaceChildren(errorBox("Could not load the plugins' rates", e));
      }
    };
    const drawHosts = async () => {
      try {
        const list = await view.api("/api/hosts");
        hosts.body.replaceChildren(hostsTable(list, { compact: true }));
      } catch (e) {
        if (e instanceof Stale) throw e;
        hosts.body.replaceChildren(errorBox("Could not load the hosts", e, () => drawHosts()));
      }
    };
    const refreshAll = () => Promise.allSettled([drawStats(), drawThroughput(), drawHosts(), loadPlugins()]);
    let lastTp = null;
    const onResize = debounce(() => {
      if (!view.alive) { window.removeEventListener("resize", onResize); return; }
      if (lastTp) chart.body.replaceChildren(throughputChart(lastTp, chart.body.clientWidth - 28));
    }, 200);
    window.addEventListener("resize", onResize);

    await refreshAll();
    if (!view.alive) return;
    setReady(view);

    soonStats = throttle(() => drawStats().catch(() => {}), 1000);
    const soonSlow = throttle(() => {
      drawThroughput().catch(() => {});
      drawHosts().catch(() => {});
      loadPlugins().catch(() => {});
    }, 10_000);
    view.onEvent = (ev) => {
      const t = parseTime(ev.at);
      if (t > lastEventAt) lastEventAt = t;
      soonStats();
      soonSlow();
    };
    view.onLagged = () => { soonStats(); soonSlow(); };
  }

  function drawCounts(el, st) {
    const t = totals(st.queues);
    el.replaceChildren(...STATES.map((state) =>
      h("a", { class: `card card-${state}`, href: `/jobs?state=${state}`, "data-key": `card-${state}` },
        h("span", { class: "card-label" }, h("span", { class: `dot dot-${state}`, "aria-hidden": "true" }), state),
        h("span", { class: "card-value", "data-testid": `count-${state}` }, num(t[state])))));
  }

  function drawKpis(el, st) {
    const o = st.outbox || { pending: 0, failed: 0, delivered: 0 };
    const kpi = (label, value, sub, tone = "") =>
      h("div", { class: `kpi ${tone}`.trim() }, h("span", { class: "kpi-label" }, label),
        h("span", { class: "kpi-value" }, value), sub ? h("span", { class: "kpi-sub" }, sub) : null);
    el.replaceChildren(
      kpi("Oldest due job waiting", st.oldest_due_ms == null ? "none" : dur(st.oldest_due_ms),
        st.oldest_due_ms == null ? "no job is waiting" : "since it became due",
        st.oldest_due_ms > 60_000 ? "kpi-warn" : ""),
      kpi("Outbox backlog", `${num(o.pending)} pending`, h("span", null,
        o.failed ? a("/outbox?state=failed", `${num(o.failed)} failed`) : "0 failed", ` · ${num(o.delivered)} delivered`),
        o.failed > 0 ? "kpi-warn" : ""),
      kpi("In flight on this host", num(st.in_flight), notReady(st), st.ready ? "" : "kpi-warn"),
      kpi("Schedules", num(st.schedules ? st.schedules.fired : 0),
        st.schedules ? `fired · ${num(st.schedules.missed)} missed · ${num(st.schedules.skipped)} skipped` : ""));
  }

  /** The host's name, and why it is not ready if it is not. */
  function notReady(st) {
    if (st.ready) return st.host;
    const stale = (st.loops || []).filter((l) => !l.fresh).map((l) => l.name);
    const el = h("span", { class: "text-bad" }, `not ready${stale.length ? `: ${stale.join(", ")} stale` : ""}`);
    const why = (st.loops || []).filter((l) => !l.fresh && l.last_error).map((l) => `${l.name}: ${l.last_error}`);
    if (why.length) el.title = why.join("\n");
    return h("span", null, `${st.host} · `, el);
  }

  /** Nice upper bound for an axis: 1, 2, 5 × 10^n. */
  function niceMax(v) {
    if (v <= 0) return 4;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function throughputChart(tp, width) {
    const from = parseTime(tp.from), to = parseTime(tp.to);
    const n = Math.max(1, Math.min(24 * 60, Math.round((to - from) / 60_000) || (tp.minutes || []).length || 60));
    const ok = new Array(n).fill(0), bad = new Array(n).fill(0);
    for (const m of tp.minutes || []) {
      const i = Number.isFinite(from) ? Math.floor((parseTime(m.at) - from) / 60_000) : -1;
      if (i >= 0 && i < n) { ok[i] += m.succeeded || 0; bad[i] += m.failed || 0; }
    }
    const totalOk = ok.reduce((x, y) => x + y, 0), totalBad = bad.reduce((x, y) => x + y, 0);
    const peak = Math.max(0, ...ok.map((v, i) => v + bad[i]));
    const W = Math.max(360, Math.round(width) || 760), H = 220, L = 44, R = 8, T = 10, B = 26;
    const iw = W - L - R, ih = H - T - B;
    const ymax = niceMax(peak);
    const y = (v) => T + ih - (v / ymax) * ih;
    const bw = iw / n;
    const svgEl = s("svg", {
      viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "data-testid": "throughput-chart",
      "aria-label": `Attempts per minute over the last ${n} minutes: ${totalOk} succeeded, ${totalBad} failed`,
      preserveAspectRatio: "xMidYMid meet",
    });
    const grid = s("g", { class: "chart-grid" });
    for (let k = 0; k <= 4; k++) {
      const v = (ymax / 4) * k;
      grid.append(
        s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v) }),
        s("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", class: "chart-label" }, num(Math.round(v * 100) / 100)));
    }
    svgEl.append(grid);
    const bars = s("g", { class: "chart-bars" });
    for (let i = 0; i < n; i++) {
      if (!ok[i] && !bad[i]) continue;
      const x = L + i * bw + Math.min(1, bw * 0.1);
      const w = Math.max(1, bw - Math.min(2, bw * 0.2));
      const at = from + i * 60_000;
      const g = s("g", null, s("title", null,
        `${timeFmt.format(at)}: ${num(ok[i])} succeeded, ${num(bad[i])} failed`));
      if (ok[i]) g.append(s("rect", { class: "bar-ok", x, width: w, y: y(ok[i]), height: Math.max(0.5, y(0) - y(ok[i])) }));
      if (bad[i]) g.append(s("rect", { class: "bar-bad", x, width: w, y: y(ok[i] + bad[i]), height: Math.max(0.5, y(ok[i]) - y(ok[i] + bad[i])) }));
      bars.append(g);
    }
    svgEl.append(bars);
    const axis = s("g", { class: "chart-axis" }, s("line", { x1: L, x2: W - R, y1: y(0), y2: y(0) }));
    const step = n <= 15 ? 1 : n <= 30 ? 5 : n <= 120 ? 10 : 60;
    for (let i = 0; i <= n; i++) {
      const at = from + i * 60_000;
      if (Math.round(at / 60_000) % step !== 0 && i !== n) continue;
      if (i === n && (Math.round(at / 60_000) % step !== 0)) continue;
      const x = L + i * bw;
      axis.append(s("line", { x1: x, x2: x, y1: y(0), y2: y(0) + 4 }),
        s("text", { x, y: H - 8, "text-anchor": "middle", class: "chart-label" }, timeFmt.format(at)));
    }
    svgEl.append(axis,
      s("text", { x: 10, y: T + ih / 2, class: "chart-label", transform: `rotate(-90 10 ${T + ih / 2})`, "text-anchor": "middle" }, "per minute"));
    const total = totalOk + totalBad;
    const legend = h("div", { class: "chart-legend" },
      h("span", null, h("span", { class: "swatch swatch-ok", "aria-hidden": "true" }), `${num(totalOk)} succeeded`),
      h("span", null, h("span", { class: "swatch swatch-bad", "aria-hidden": "true" }), `${num(totalBad)} failed`),
      h("span", null, "failure rate ", h("strong", { class: totalBad ? "text-bad" : null }, total ? pct(totalBad / total) : "—")),
      h("span", null, "peak ", h("strong", null, `${num(peak)}/min`)),
      h("span", { class: "muted" }, `${num(Math.round(total / n * 10) / 10)}/min on average · all hosts`));
    if (!total) {
      return h("div", null, svgEl, h("p", { class: "muted chart-empty", "data-testid": "empty" }, "No attempt ended in the last hour."), legend);
    }
    return h("div", null, svgEl, legend);
  }

  function pluginRates(list) {
    if (!list.length) return emptyState("No plugin ran an attempt in the last hour.");
    const rows = [...list].sort((x, y) => (y.succeeded + y.failed) - (x.succeeded + x.failed)).map((p) => {
      const total = (p.succeeded || 0) + (p.failed || 0);
      const rate = total ? p.succeeded / total : null;
      const meter = h("span", { class: "meter", "aria-hidden": "true" }, h("span", { class: "meter-fill" }));
      meter.firstChild.style.width = `${Math.round((rate ?? 0) * 100)}%`;
      if (rate != null && rate < 0.9) meter.classList.add("meter-bad");
      return h("tr", { "data-plugin-rate": p.plugin },
        td(a(`/jobs?kind=${encodeURIComponent(p.plugin)}`, p.plugin)),
        numCell(p.succeeded), numCell(p.failed, { class: p.failed ? "text-bad" : "" }),
        h("td", { class: "num" }, h("span", { class: "rate" }, meter, pct(rate))),
        h("td", { class: "num" }, dur(p.p50_ms)), h("td", { class: "num" }, dur(p.p99_ms)));
    });
    return table([
      { label: "Plugin" }, { label: "Succeeded", cls: "num" }, { label: "Failed", cls: "num" },
      { label: "Success", cls: "num" }, { label: "p50", cls: "num", title: "Median run time" },
      { label: "p99", cls: "num", title: "99th percentile run time" },
    ], rows, { cls: "compact" });
  }

  function attentionList(p, queues) {
    const items = [];
    const breakers = [...p.plugins.filter((x) => x.breaker && x.breaker.state !== "closed").map((x) => x.breaker),
      ...(p.other_breakers || []).filter((b) => b.state !== "closed")];
    for (const b of breakers) {
      items.push(h("li", null, breakerBadge(b.state), " ", a("/plugins", b.kind),
        b.retry_at && b.state === "open" ? h("span", { class: "muted" }, " · probe ", when(b.retry_at)) : null,
        b.last_error ? h("div", { class: "muted small", title: b.last_error }, truncate(b.last_error, 120)) : null));
    }
    const pauses = [...p.plugins.filter((x) => x.paused).map((x) => x.paused), ...(p.other_pauses || [])];
    for (const ps of pauses) {
      items.push(h("li", null, badge("paused"), " plugin ", a("/plugins", ps.name),
        h("span", { class: "muted" }, ` · “${ps.note}” · `, when(ps.paused_at))));
    }
    for (const q of queues.filter((x) => x.paused)) {
      items.push(h("li", null, badge("paused"), " queue ", a("/queues", q.queue),
        h("span", { class: "muted" }, ` · “${q.paused.note}” · `, when(q.paused.paused_at))));
    }
    for (const r of p.rejected || []) {
      items.push(h("li", null, badge("rejected"), " ", a("/plugins", String(r.path).split("/").pop()),
        h("div", { class: "muted small" }, truncate(r.reason, 160))));
    }
    if (!items.length) {
      return h("p", { class: "all-clear" }, "All clear: no breaker is open, nothing is paused, every plugin file loaded.");
    }
    return h("ul", { class: "attention" }, items);
  }

  // Jobs ---------------------------------------------------------------

  const FILTER_FIELDS = ["state", "kind", "queue", "concurrency_key", "text"];

  function filterFrom(params) {
    const f = {};
    for (const k of FILTER_FIELDS) {
      const v = (params.get(k) || "").trim();
      if (v) f[k] = v;
    }
    return f;
  }

  function describeFilter(f) {
    const parts = FILTER_FIELDS.filter((k) => f[k]).map((k) => `${k}=${f[k]}`);
    return parts.length ? parts.join(", ") : "no filter (every job)";
  }

  function jobFilterForm(f) {
    const field = (name, label, input) => h("div", { class: "field" }, h("label", { for: `f-${name}` }, label), input);
    const stateSel = h("select", { id: "f-state", name: "state" },
      h("option", { value: "" }, "Any state"), STATES.map((st) => h("option", { value: st }, st)));
    stateSel.value = f.state || "";
    const kinds = h("datalist", { id: "kinds-list" });
    loadKinds().then((list) => kinds.replaceChildren(...list.map((k) => h("option", { value: k }))));
    const form = h("form", { class: "filters", "data-testid": "job-filters", role: "search", "aria-label": "Filter jobs" },
      field("state", "State", stateSel),
      field("kind", "Kind", h("input", { id: "f-kind", name: "kind", value: f.kind || "", list: "kinds-list", autocomplete: "off", spellcheck: "false" })),
      field("queue", "Queue", h("input", { id: "f-queue", name: "queue", value: f.queue || "", autocomplete: "off", spellcheck: "false" })),
      field("concurrency_key", "Concurrency key", h("input", { id: "f-concurrency_key", name: "concurrency_key", value: f.concurrency_key || "", autocomplete: "off", spellcheck: "false" })),
      field("text", "Text in payload or error", h("input", { id: "f-text", name: "text", type: "search", value: f.text || "", autocomplete: "off", spellcheck: "false", placeholder: "e.g. timeout" })),
      h("div", { class: "field field-buttons" },
        h("button", { type: "submit", class: "btn btn-primary" }, "Filter"),
        h("a", { href: "/jobs", class: "btn btn-ghost" }, "Clear")),
      kinds);
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const q = new URLSearchParams();
      for (const k of FILTER_FIELDS) {
        const v = String(form.elements[k].value || "").trim();
        if (v) q.set(k, v);
      }
      const qs = q.toString();
      navigate(`/jobs${qs ? `?${qs}` : ""}`);
    });
    stateSel.addEventListener("change", () => form.requestSubmit());
    return form;
  }

  function jobRow(j) {
    const tr = h("tr", { "data-job-id": j.id },
      td(jobLink(j.id), { class: "mono" }),
      td(j.kind, { class: "ellipsis" }),
      td(j.queue),
      td(badge(j.state), { "data-col": "state" }),
      h("td", { class: "num", "data-col": "attempt" }, `${j.attempt}/${j.max_attempts}`),
      h("td", { class: "num", "data-col": "epoch" }, num(j.epoch)),
      h("td", { class: "num" }, String(j.priority)),
      td(when(j.run_at)),
      td(when(j.created_at)),
      h("td", { class: "error-snippet", title: j.error || null }, j.error ? truncate(j.error, 90) : ""));
    return tr;
  }

  const JOB_COLS = [
    { label: "ID" }, { label: "Kind" }, { label: "Queue" }, { label: "State" },
    { label: "Attempt", cls: "num" }, { label: "Epoch", cls: "num", title: "Fencing epoch" },
    { label: "Prio", cls: "num", title: "Priority (lower runs first)" },
    { label: "Run at" }, { label: "Created" }, { label: "Error" },
  ];

  async function pageJobs(view, main, _m, params) {
    const f = filterFrom(params);
    const hasFilter = Object.keys(f).length > 0;
    const st = {
      rows: new Map(), cursor: null, searchedTo: null, topId: 0, newIds: new Map(), loadingMore: false,
    };
    const banner = h("div", { class: "banner", hidden: true, role: "status" });
    const bulk = h("div", { class: "bulkbar" });
    const listBox = h("div", { class: "list" }, loading("Loading jobs…"));
    const footer = h("div", { class: "list-footer" });
    main.append(
      pageHead("Jobs", { sub: hasFilter ? `Filtered by ${describeFilter(f)}` : "Newest first" }),
      jobFilterForm(f), bulk, banner, listBox, footer);
    if (canAct()) drawBulkBar(bulk, f, () => navigate(location.pathname + location.search, { replace: true }));

    const tbody = h("tbody");
    const tableEl = h("table", { class: "data jobs", "data-testid": "jobs" },
      h("caption", { class: "sr-only" }, `Jobs${hasFilter ? ` matching ${describeFilter(f)}` : ""}, newest first`),
      h("thead", null, h("tr", null, JOB_COLS.map((c) => h("th", { scope: "col", class: c.cls || null, title: c.title || null }, c.label)))),
      tbody);

    /**
     * Fetches pages until `want` jobs arrived, the list ended, or the rounds
     * or the time budget ran out (a filter no index serves is searched one
     * window of ids per call: the page stays usable, "Search older" goes on).
     */
    async function fetchMore(cursor, want, rounds) {
      const got = [];
      let next = cursor, searched = null;
      const began = performance.now();
      for (let i = 0; i < rounds && (i === 0 || performance.now() - began < SEARCH_BUDGET_MS); i++) {
        const page = await view.api("/api/jobs", { query: { ...f, limit: want - got.length, cursor: next } });
        got.push(...page.jobs);
        next = page.next_cursor;
        searched = page.searched_to ?? null;
        if (!next || got.length >= want) break;
      }
      return { jobs: got, next, searched };
    }

    function appendJobs(jobs) {
      const frag = document.createDocumentFragment();
      for (const j of jobs) {
        if (st.rows.has(j.id)) continue;
        const tr = jobRow(j);
        st.rows.set(j.id, { tr, job: j });
        st.topId = Math.max(st.topId, j.id);
        frag.append(tr);
      }
      tbody.append(frag);
    }

    function drawFooter() {
      footer.replaceChildren();
      const shown = h("span", { class: "muted" }, `${num(st.rows.size)} job${st.rows.size === 1 ? "" : "s"} shown`);
      if (!st.cursor) {
        if (st.rows.size) shown.append(" · end of the list");
        footer.append(shown);
        return;
      }
      if (st.searchedTo != null) {
        shown.append(" · ", h("span", { "data-testid": "searched-to" }, `searched down to job #${num(st.searchedTo)}`));
        footer.append(shown);
      } else {
        footer.append(shown);
      }
      const more = h("button", { type: "button", class: "btn", "data-testid": "load-more" },
        st.searchedTo != null ? "Search older" : "Load more");
      more.addEventListener("click", async () => {
        if (st.loadingMore) return;
        st.loadingMore = true;
        more.disabled = true;
        more.textContent = "Loading…";
        try {
          const r = await fetchMore(st.cursor, PAGE_SIZE, AUTO_SEARCH_ROUNDS);
          appendJobs(r.jobs);
          st.cursor = r.next;
          st.searchedTo = r.next && r.jobs.length < PAGE_SIZE ? r.searched : null;
          if (st.rows.size && !tableEl.isConnected) listBox.replaceChildren(h("div", { class: "table-wrap" }, tableEl));
          drawFooter();
          footer.querySelector("[data-testid=load-more]")?.focus();
        } catch (e) {
          if (e instanceof Stale) return;
          toastError("Loading more jobs failed", e);
          more.disabled = false;
          more.textContent = "Load more";
        } finally {
          st.loadingMore = false;
        }
      });
      footer.append(more);
    }

    try {
      const r = await fetchMore(null, PAGE_SIZE, AUTO_SEARCH_ROUNDS);
      appendJobs(r.jobs);
      st.cursor = r.next;
      st.searchedTo = r.next && r.jobs.length < PAGE_SIZE ? r.searched : null;
      if (!st.rows.size && !st.cursor) {
        listBox.replaceChildren(emptyState(
          hasFilter ? "No jobs match this filter." : "No jobs yet. Enqueue one with `jobbox enqueue <kind> --payload '{}'` or POST /api/jobs.",
          hasFilter ? a("/jobs", "Clear filters") : null));
      } else if (!st.rows.size) {
        listBox.replaceChildren(emptyState(
          `No match among the newest jobs (searched down to job #${num(st.searchedTo)}).`,
          a("/jobs", "Clear filters")));
      } else {
        listBox.replaceChildren(h("div", { class: "table-wrap" }, tableEl));
      }
      drawFooter();
    } catch (e) {
      if (e instanceof Stale) throw e;
      listBox.replaceChildren(errorBox("Could not load jobs", e, () => navigate(location.pathname + location.search, { replace: true })));
    }
    setReady(view);

    // Live: visible rows follow their job's events. New jobs are added at
    // the top while the reader is at the top of the page; further down,
    // a banner counts them instead of moving the rows under the reader.
    const unknowable = !!(f.queue || f.concurrency_key || f.text);
    const atTop = () => window.scrollY < 80;
    function matching() {
      let n = 0;
      for (const state of st.newIds.values()) if (!f.state || state === f.state) n++;
      return n;
    }
    function drawBanner() {
      const n = matching();
      if (!n) { banner.hidden = true; return; }
      banner.hidden = false;
      const show = h("button", { type: "button", class: "btn btn-small btn-primary", "data-testid": "show-new" }, "Show");
      show.addEventListener("click", () => {
        window.scrollTo({ top: 0 });
        addNew(true);
      });
      banner.replaceChildren(
        h("span", null, `${num(n)} new job${n === 1 ? "" : "s"}${unknowable ? " (some may not match the filter)" : ""}`),
        show);
    }
    /** Fetches the newest jobs of the filter and puts those not shown yet at the top. */
    async function addNew(force = false) {
      if (!matching() && !force) { st.newIds.clear(); drawBanner(); return; }
      if (!force && (!atTop() || st.newIds.size > 200)) { drawBanner(); return; }
      const want = Math.min(200, Math.max(PAGE_SIZE, st.newIds.size + 10));
      st.newIds.clear();
      let page;
      try {
        page = await view.api("/api/jobs", { query: { ...f, limit: want } });
      } catch (e) {
        if (!(e instanceof Stale)) toastError("Loading the new jobs failed", e);
        return;
      }
      const fresh = page.jobs.filter((j) => j.id > st.topId && !st.rows.has(j.id)).sort((x, y) => y.id - x.id);
      if (fresh.length) {
        const frag = document.createDocumentFragment();
        for (const j of fresh) {
          const tr = jobRow(j);
          tr.classList.add("flash");
          st.rows.set(j.id, { tr, job: j });
          frag.append(tr);
        }
        st.topId = Math.max(st.topId, fresh[0].id);
        tbody.prepend(frag);
        if (!tableEl.isConnected) listBox.replaceChildren(h("div", { class: "table-wrap" }, tableEl));
        drawFooter();
      }
      drawBanner();
    }
    const addNewSoon = throttle(() => addNew().catch(() => {}), 1000);
    const onScroll = () => {
      if (!view.alive) { window.removeEventListener("scroll", onScroll); return; }
      if (st.newIds.size && atTop()) addNewSoon();
    };
    window.addEventListener("scroll", onScroll, { passive: true });
    view.onEvent = (ev) => {
      const row = st.rows.get(ev.id);
      if (row) {
        updateJobRow(row, ev, f);
        return;
      }
      if (ev.id > st.topId && (!f.kind || f.kind === ev.kind)) {
        st.newIds.set(ev.id, ev.state);
        addNewSoon();
      }
    };
    // Other hosts' changes: the newest rows shown are read again (their
    // states move in place) and new jobs are offered as for this host's.
    view.onOutside = throttle(async () => {
      const want = Math.min(200, Math.max(PAGE_SIZE, st.rows.size));
      let page;
      try {
        page = await view.api("/api/jobs", { query: { ...f, limit: want } });
      } catch {
        return;
      }
      for (const j of page.jobs) {
        const row = st.rows.get(j.id);
        if (row && row.job.state !== j.state) updateJobRow(row, j, f);
        else if (!row && j.id > st.topId) st.newIds.set(j.id, j.state);
      }
      if (st.newIds.size) addNewSoon();
    }, 1000);
    view.onLagged = () => {
      banner.hidden = false;
      const show = h("button", { type: "button", class: "btn btn-small btn-primary" }, "Reload");
      show.addEventListener("click", () => navigate(location.pathname + location.search, { replace: true }));
      banner.replaceChildren(h("span", null, "Some live updates were missed; the list may be out of date."), show);
    };
  }

  function updateJobRow(row, ev, f) {
    const { tr, job } = row;
    job.state = ev.state;
    const cell = tr.querySelector("td[data-col=state]");
    cell.replaceChildren(badge(ev.state));
    if (ev.attempt > 0) {
      job.attempt = ev.attempt;
      tr.querySelector("td[data-col=attempt]").textContent = `${job.attempt}/${job.max_attempts}`;
    }
    if (ev.epoch > 0) {
      job.epoch = ev.epoch;
      tr.querySelector("td[data-col=epoch]").textContent = num(ev.epoch);
    }
    tr.classList.toggle("row-gone", !!(f.state && f.state !== ev.state));
    tr.title = f.state && f.state !== ev.state ? `Now ${ev.state}: no longer matches state=${f.state}` : "";
    tr.classList.remove("flash");
    void tr.offsetWidth; // restart the animation
    tr.classList.add("flash");
  }

  function drawBulkBar(bar, f, refresh) {
    const summary = h("span", { class: "bulk-summary", role: "status" });
    const selectAll = h("button", {
      type: "button", class: "btn btn-small", "data-testid": "select-all-matching", "aria-pressed": "false",
    }, "Select all matching");
    selectAll.addEventListener("click", async () => {
      if (selectAll.getAttribute("aria-pressed") === "true") {
        selectAll.setAttribute("aria-pressed", "false");
        selectAll.textContent = "Select all matching";
        summary.textContent = "";
        document.querySelector("table[data-testid=jobs]")?.classList.remove("all-selected");
        return;
      }
      selectAll.disabled = true;
      try {
        const r = await api("/api/jobs/count", { query: f });
        selectAll.setAttribute("aria-pressed", "true");
        selectAll.textContent = "Clear selection";
        summary.textContent = `All ${num(r.count)} job${r.count === 1 ? "" : "s"} matching ${describeFilter(f)} selected.`;
        document.querySelector("table[data-testid=jobs]")?.classList.add("all-selected");
      } catch (e) {
        if (!(e instanceof Stale)) toastError("Counting the matching jobs failed", e);
      } finally {
        selectAll.disabled = false;
      }
    });
    const run = (action) => async () => {
      const verb = action === "retry" ? "Retry" : "Cancel";
      const { count } = await api("/api/jobs/count", { query: { ...f, action } });
      if (!count) {
        toast(`No job matching ${describeFilter(f)} can be ${action === "retry" ? "retried" : "cancelled"}.`, "info");
        return;
      }
      const ok = await confirmDialog({
        title: `${verb} ${num(count)} job${count === 1 ? "" : "s"}?`,
        message: `${verb} ${num(count)} job${count === 1 ? "" : "s"} matching ${describeFilter(f)}?` +
          (action === "cancel" ? " Running attempts are fenced out; cancelled jobs can be retried later." : ""),
        ok: `${verb} ${num(count)}`,
        danger: action === "cancel",
      });
      if (!ok) return;
      await bulkLoop(action, f, count);
      refresh();
    };
    bar.replaceChildren(
      selectAll,
      actionBtn("Retry matching…", run("retry"), { testid: "bulk-retry", what: "Bulk retry" }),
      actionBtn("Cancel matching…", run("cancel"), { testid: "bulk-cancel", cls: "btn-danger-ghost", what: "Bulk cancel" }),
      summary);
  }

  /** Calls the bulk route until it says there is no more, with a progress notice. */
  async function bulkLoop(action, f, expected) {
    const past = action === "retry" ? "Retried" : "Cancelled";
    const progress = toast(`${action === "retry" ? "Retrying" : "Cancelling"} ${num(expected)} jobs…`, "info", { sticky: true });
    const body = { ...f, limit: 10_000 };
    let done = 0;
    try {
      for (let round = 0; round < 10_000; round++) {
        const r = await api(`/api/jobs/${action}`, { method: "POST", body });
        done += r.count;
        if (progress) progress.set(`${past} ${num(done)} of ${num(Math.max(expected, done))} jobs…`);
        if (!r.more || r.count === 0) break;
      }
      if (progress) { progress.set(`${past} ${num(done)} job${done === 1 ? "" : "s"}.`, "ok"); progress.autoClose(6000); }
    } catch (e) {
      if (progress) progress.close();
      toastError(`${past} ${num(done)} jobs, then failed`, e);
    }
  }

  // Job detail ----------------------------------------------------------

  async function pageJob(view, main, [rawId]) {
    const id = Number(rawId);
    const head = h("div");
    const body = h("div", { class: "job-body" }, loading("Loading job…"));
    const effects = panel("Committed effects");
    main.append(head, body);

    async function draw(first) {
      let job;
      try {
        job = await view.api(`/api/jobs/${id}`);
      } catch (e) {
        if (e instanceof Stale) throw e;
        head.replaceChildren(pageHead(`Job #${id}`));
        body.replaceChildren(e.status === 404 && e.code === "not_found" && !/no such route/i.test(e.message)
          ? h("div", { class: "state-box state-error", "data-testid": "error", role: "alert" },
            h("strong", null, `Job #${id} does not exist.`),
            h("p", null, "It may never have existed, or retention deleted it after it finished."),
            a("/jobs", "Back to jobs"))
          : errorBox(`Could not load job #${id}`, e, () => draw(false)));
        return;
      }
      document.title = `Job #${id} · ${job.kind} · jobbox`;
      keepFocus(head, () => head.replaceChildren(jobHead(job, () => drawSoon())));
      keepFocus(body, () => body.replaceChildren(jobDetail(job), effects.el));
      if (first) await drawEffects();
      else drawEffects().catch(() => {});
    }

    async function drawEffects() {
      try {
        const ef = await view.api(`/api/jobs/${id}/effects`);
        keepFocus(effects.body, () => effects.body.replaceChildren(effectsView(ef, () => drawSoon())));
      } catch (e) {
        if (e instanceof Stale) throw e;
        effects.body.replaceChildren(errorBox("Could not load the job's effects", e, () => drawEffects()));
      }
    }

    const drawSoon = throttle(() => draw(false).catch(() => {}), 1000);
    await draw(true);
    setReady(view);
    view.onEvent = (ev) => { if (ev.id === id) drawSoon(); };
    view.onLagged = () => drawSoon();
  }

  function jobHead(job, refresh) {
    const actions = [];
    if (RETRYABLE_FROM.includes(job.state)) {
      actions.push(actionBtn("Retry", async () => {
        const r = await api(`/api/jobs/${job.id}/retry`, { method: "POST" });
        toast(`Job #${job.id} is ${r.state} again.`);
        refresh();
      }, { testid: "job-retry", cls: "btn-primary", what: "Retry" }));
    }
    if (CANCELLABLE_FROM.includes(job.state)) {
      actions.push(actionBtn("Cancel", async () => {
        const ok = await confirmDialog({
          title: `Cancel job #${job.id}?`,
          message: job.state === "running"
            ? `Job #${job.id} (${job.kind}) is running: its attempt is fenced out and its effects are not committed.`
            : `Job #${job.id} (${job.kind}) will not run. It can be retried later.`,
          ok: "Cancel job", danger: true,
        });
        if (!ok) return;
        const r = await api(`/api/jobs/${job.id}/cancel`, { method: "POST" });
        toast(`Job #${job.id} is ${r.state}.`);
        refresh();
      }, { testid: "job-cancel", cls: "btn-danger-ghost", what: "Cancel" }));
    }
    return pageHead(`Job #${job.id}`, {
      badge: h("span", { class: "head-badges" }, h("span", { "data-testid": "job-state", class: `badge badge-${job.state}` }, job.state)),
      sub: h("span", null, a(`/jobs?kind=${encodeURIComponent(job.kind)}`, job.kind), " on queue ",
        a(`/jobs?queue=${encodeURIComponent(job.queue)}`, job.queue)),
      actions: [...actions, a("/jobs", "All jobs")],
    });
  }

  function jobDetail(job) {
    const leaseLeft = parseTime(job.lease_expires_at);
    const details = dl([
      ["State", badge(job.state)],
      ["Kind", job.kind],
      ["Queue", job.queue],
      ["Priority", String(job.priority)],
      ["Attempts", `${job.attempt} of ${job.max_attempts}`],
      ["Fencing epoch", num(job.epoch)],
      ["kv conflicts", num(job.conflicts)],
      ["Idempotency key", h("code", { class: "break" }, job.idempotency_key)],
      ["Concurrency key", job.concurrency_key ? h("span", null,
        a(`/jobs?concurrency_key=${encodeURIComponent(job.concurrency_key)}`, job.concurrency_key),
        ` (limit ${job.concurrency_limit ?? 1})`) : null],
      ["Schedule", job.schedule_id ? a(`/schedules/${encodeURIComponent(job.schedule_id)}`, job.schedule_id) : null],
      ["Callback", job.callback_url ? h("code", { class: "break" }, job.callback_url) : null],
    ]);
    const timing = dl([
      ["Created", when(job.created_at)],
      ["Run at", when(job.run_at)],
      ["Last attempted", when(job.attempted_at)],
      ["Finalized", when(job.finalized_at)],
      ["Lease expires", job.lease_expires_at ? h("span", { class: leaseLeft < Date.now() ? "text-bad" : null }, when(job.lease_expires_at)) : null],
    ]);
    const blocks = [
      h("div", { class: "grid-2" },
        h("section", { class: "panel" }, h("div", { class: "panel-head" }, h("h2", null, "Details")), h("div", { class: "panel-body" }, details)),
        h("section", { class: "panel" }, h("div", { class: "panel-head" }, h("h2", null, "Timing")), h("div", { class: "panel-body" }, timing))),
    ];
    if (job.error) {
      blocks.push(h("section", { class: "panel panel-error" }, h("div", { class: "panel-head" }, h("h2", null, "Error")),
        h("div", { class: "panel-body" }, h("pre", { class: "code code-error", tabindex: "0" }, job.error))));
    }
    blocks.push(h("div", { class: "grid-2" },
      h("section", { class: "panel" }, h("div", { class: "panel-head" }, h("h2", null, "Payload")),
        h("div", { class: "panel-body" }, codeBlock(job.payload, "Payload"))),
      h("section", { class: "panel" }, h("div", { class: "panel-head" }, h("h2", null, "Output")),
        h("div", { class: "panel-body" }, job.output == null
          ? h("p", { class: "muted" }, job.state === "completed" ? "No output." : "No output yet.")
          : codeBlock(job.output, "Output")))));
    blocks.push(h("section", { class: "panel" },
      h("div", { class: "panel-head" }, h("h2", null, `Attempts (${job.attempts.length})`)),
      h("div", { class: "panel-body" }, job.attempts.length ? attemptsTimeline(job) : h("p", { class: "muted" }, "No attempt yet."))));
    return h("div", null, blocks);
  }

  function attemptsTimeline(job) {
    const list = [...job.attempts].sort((x, y) => y.attempt - x.attempt || y.epoch - x.epoch);
    return h("ol", { class: "timeline", reversed: true },
      list.map((at) => {
        const cmd = `jobbox jobs replay ${job.id} --attempt ${at.attempt}`;
        let replay = null;
        if (at.recording_bytes != null) {
          const copy = h("button", { type: "button", class: "btn btn-small btn-ghost", "aria-label": `Copy the replay command of attempt ${at.attempt}` }, "Copy");
          copy.addEventListener("click", async () => {
            const ok = await copyText(cmd);
            toast(ok ? "Replay command copied." : "Copying failed: select the command and copy it.", ok ? "ok" : "err");
          });
          replay = h("div", { class: "replay" },
            h("span", { class: "muted" }, `Recorded inputs (${bytes(at.recording_bytes)}): replay with `),
            h("code", { "data-testid": "replay-command" }, cmd), copy);
        }
        return h("li", { class: `attempt attempt-${at.outcome}`, "data-testid": "attempt", "data-attempt": at.attempt },
          h("div", { class: "attempt-head" },
            h("strong", null, `Attempt ${at.attempt}`),
            outcomeBadge(at.outcome),
            h("span", { class: "muted" }, `epoch ${num(at.epoch)}`),
            at.host ? h("span", { class: "muted" }, "on ", h("code", null, at.host)) : null),
          h("div", { class: "attempt-meta" },
            h("span", null, "started ", when(at.started_at)),
            h("span", null, "took ", h("strong", null, dur(at.duration_ms))),
            at.fuel_used != null ? h("span", null, `fuel ${num(at.fuel_used)}`) : null,
            at.component_hash ? h("span", null, "component ", h("code", { title: at.component_hash }, shortHash(at.component_hash))) : null),
          at.error ? h("pre", { class: "code code-error small", tabindex: "0" }, at.error) : null,
          replay);
      }));
  }

  function eventRow(ev, refresh, { withJob = true } = {}) {
    return h("tr", { "data-event-id": ev.id },
      td(String(ev.id), { class: "mono" }),
      withJob ? td(jobLink(ev.job_id), { class: "mono" }) : null,
      td(ev.topic),
      h("td", { class: "ellipsis url", title: ev.url }, ev.url),
      td(badge(ev.state)),
      numCell(ev.attempts),
      td(ev.state === "pending" ? when(ev.next_attempt_at) : ev.state === "delivered" ? when(ev.finalized_at) : h("span", { class: "muted" }, "—")),
      h("td", { class: "num" }, ev.last_status == null ? "—" : String(ev.last_status)),
      h("td", { class: "error-snippet", title: ev.last_error || ev.note || null }, truncate(ev.last_error || ev.note || "", 80)),
      td(ev.state === "failed" ? actionBtn("Retry", async () => {
        await api(`/api/outbox/${ev.id}/retry`, { method: "POST" });
        toast(`Event ${ev.id} will be delivered again.`);
        refresh();
      }, { testid: "event-retry", key: `event-retry-${ev.id}`, what: "Retrying the event" }) : null));
  }

  function eventCols(withJob = true) {
    return [
      { label: "ID" }, withJob ? { label: "Job" } : null, { label: "Topic" }, { label: "URL" }, { label: "State" },
      { label: "Attempts", cls: "num" }, { label: "Next / delivered" }, { label: "Status", cls: "num", title: "Last HTTP status" },
      { label: "Last error" }, { label: "", title: "Actions" },
    ].filter(Boolean);
  }

  function effectsView(ef, refresh) {
    const parts = [];
    const kv = ef.kv_writes || [];
    parts.push(h("h3", null, `kv writes (${kv.length})`));
    parts.push(kv.length
      ? table([{ label: "Namespace" }, { label: "Key" }, { label: "Version", cls: "num" }, { label: "Epoch", cls: "num" }, { label: "Change" }],
        kv.map((w) => h("tr", null, td(w.namespace), td(h("code", { class: "break" }, w.key)), numCell(w.version), numCell(w.epoch),
          td(w.deleted ? badge("deleted") : "written"))), { cls: "compact" })
      : h("p", { class: "muted" }, "No kv writes committed."));
    const evs = ef.events || [];
    parts.push(h("h3", null, `Outbox events (${evs.length})`));
    parts.push(evs.length
      ? table(eventCols(false), evs.map((ev) => eventRow(ev, refresh, { withJob: false })), { cls: "compact" })
      : h("p", { class: "muted" }, "No events emitted."));
    return h("div", null, parts);
  }

  // Schedules -----------------------------------------------------------

  function cadenceText(spec) {
    if (!spec || typeof spec !== "object") return String(spec || "—");
    let t;
    if (spec.cron) t = `cron ${spec.cron}${spec.timezone && spec.timezone !== "UTC" ? ` (${spec.timezone})` : ""}`;
    else if (spec.every) t = `every ${spec.every}${spec.phase ? ` +${spec.phase}` : ""}`;
    else t = "—";
    if (spec.jitter) t += ` ± jitter ${spec.jitter}`;
    return t;
  }

  function scheduleActions(sc, refresh) {
    const out = [];
    if (sc.paused) {
      out.push(actionBtn("Resume", async () => {
        await api(`/api/schedules/${encodeURIComponent(sc.id)}/resume`, { method: "POST" });
        toast(`Schedule ${sc.id} resumed: its next fire is computed from now.`);
        refresh();
      }, { testid: "schedule-resume", key: `toggle-${sc.id}`, what: "Resuming" }));
    } else {
      out.push(actionBtn("Pause…", async () => {
        const r = await confirmDialog({
          title: `Pause schedule ${sc.id}?`,
          message: "No fire is made while it is paused; fires that pass meanwhile are not made up when it resumes.",
          ok: "Pause", note: { label: "Why pause it?", placeholder: "e.g. upstream API down, see INC-123" },
        });
        if (!r) return;
        await api(`/api/schedules/${encodeURIComponent(sc.id)}/pause`, { method: "POST", body: { note: r.note } });
        toast(`Schedule ${sc.id} paused.`);
        refresh();
      }, { testid: "schedule-pause", key: `toggle-${sc.id}`, what: "Pausing" }));
    }
    out.push(actionBtn("Trigger now", async () => {
      const r = await api(`/api/schedules/${encodeURIComponent(sc.id)}/trigger`, { method: "POST" });
      toast(`Schedule ${sc.id} fired job #${r.job_id}.`, "ok", { action: a(`/jobs/${r.job_id}`, "Open") });
      refresh();
    }, { testid: "schedule-trigger", key: `trigger-${sc.id}`, what: "Triggering" }));
    return out.filter(Boolean);
  }

  function lastFire(sc) {
    if (!sc.last_fire_at && sc.last_job_id == null) return h("span", { class: "muted" }, "never");
    return h("span", { class: "cell-stack" }, when(sc.last_fire_at),
      sc.last_job_id != null ? h("span", null, jobLink(sc.last_job_id), " ", sc.last_job_state ? badge(sc.last_job_state) : null) : null);
  }

  async function pageSchedules(view, main) {
    const box = h("div", null, loading("Loading schedules…"));
    main.append(pageHead("Schedules", {
      sub: "Apply definitions with `jobbox schedules apply --file …`",
      actions: [refreshBtn(() => draw())],
    }), box);
    let last = [];
    async function draw() {
      try {
        last = await view.api("/api/schedules");
      } catch (e) {
        if (e instanceof Stale) throw e;
        box.replaceChildren(errorBox("Could not load the schedules", e, () => draw()));
        return;
      }
      if (!last.length) {
        box.replaceChildren(emptyState("No schedules. Define them in a schedules file and run `jobbox schedules apply --file schedules.toml`."));
        return;
      }
      const rows = last.map((sc) => h("tr", { "data-schedule-id": sc.id, "data-paused": sc.paused ? "true" : "false", class: sc.paused ? "row-paused" : null },
        td(a(`/schedules/${encodeURIComponent(sc.id)}`, sc.id), { class: "mono" }),
        td(sc.spec && sc.spec.kind ? a(`/jobs?kind=${encodeURIComponent(sc.spec.kind)}`, sc.spec.kind) : "—"),
        td(h("code", { class: "cadence" }, cadenceText(sc.spec))),
        td(sc.paused ? h("span", { class: "muted" }, "paused") : when(sc.next_fire_at, "no more fires")),
        td(lastFire(sc)),
        h("td", { class: "num counts" }, h("span", { title: "fired" }, num(sc.fired)), " / ",
          h("span", { title: "missed", class: sc.missed ? "text-warn" : null }, num(sc.missed)), " / ",
          h("span", { title: "skipped", class: sc.skipped ? "text-warn" : null }, num(sc.skipped)), " / ",
          h("span", { title: "manual triggers" }, num(sc.triggers))),
        td(sc.paused
          ? h("span", { class: "cell-stack" }, badge("paused"), h("span", { class: "muted small", title: sc.pause_note || "" }, truncate(sc.pause_note || "", 60)), when(sc.paused_at))
          : badge("active")),
        h("td", { class: "actions" }, scheduleActions(sc, () => refreshSoon()))));
      keepFocus(box, () => box.replaceChildren(table([
        { label: "ID" }, { label: "Kind" }, { label: "Cadence" }, { label: "Next fire" }, { label: "Last fire" },
        { label: "Fired / missed / skipped / triggers", cls: "num" }, { label: "Status" }, { label: "", title: "Actions" },
      ], rows, { testid: "schedules" })));
    }
    const refreshSoon = throttle(() => draw().catch(() => {}), 1000);
    await draw();
    setReady(view);
    // A fire's job changing state shows in "last fire": refresh on those.
    view.onEvent = (ev) => {
      const fired = ev.state === "available" && ev.attempt === 0 && last.some((sc) => sc.spec && sc.spec.kind === ev.kind);
      if (fired || last.some((sc) => sc.last_job_id === ev.id)) refreshSoon();
    };
    view.onLagged = () => refreshSoon();
  }

  async function pageSchedule(view, main, [id]) {
    const head = h("div");
    const box = h("div", null, loading("Loading schedule…"));
    main.append(head, box);
    async function draw() {
      let sc;
      try {
        sc = await view.api(`/api/schedules/${encodeURIComponent(id)}`, { query: { next: 10 } });
      } catch (e) {
        if (e instanceof Stale) throw e;
        head.replaceChildren(pageHead(`Schedule ${id}`));
        box.replaceChildren(errorBox(`Could not load schedule ${id}`, e, () => draw()));
        return;
      }
      const spec = sc.spec || {};
      keepFocus(head, () => head.replaceChildren(pageHead(`Schedule ${sc.id}`, {
        badge: h("span", { class: "head-badges", "data-schedule-id": sc.id, "data-paused": sc.paused ? "true" : "false" },
          sc.paused ? badge("paused") : badge("active")),
        sub: cadenceText(spec),
        actions: [...scheduleActions(sc, () => refreshSoon()), a("/schedules", "All schedules")],
      })));
      const def = dl([
        ["Kind", spec.kind ? a(`/jobs?kind=${encodeURIComponent(spec.kind)}`, spec.kind) : null],
        ["Queue", spec.queue ?? null],
        ["Cadence", h("code", null, cadenceText(spec))],
        ["Start", spec.start_at ? when(spec.start_at) : null],
        ["End", spec.end_at ? when(spec.end_at) : null],
        ["Misfire", spec.misfire ? `${spec.misfire}${spec.max_catch_up != null ? ` (catch up ≤ ${spec.max_catch_up})` : ""}, grace ${spec.misfire_grace || "—"}` : null],
        ["Overlap", spec.overlap ?? null],
        ["Priority", spec.priority != null ? String(spec.priority) : null],
        ["Max attempts", spec.max_attempts != null ? String(spec.max_attempts) : "plugin default"],
        ["Concurrency key", spec.concurrency_key ? `${spec.concurrency_key} (limit ${spec.concurrency_limit ?? 1})` : null],
        ["Version", String(sc.version)],
        ["Updated", when(sc.updated_at)],
      ]);
      const state = dl([
        ["Status", sc.paused ? h("span", null, badge("paused"), ` “${sc.pause_note || ""}” `, when(sc.paused_at)) : badge("active")],
        ["Next fire", when(sc.next_fire_at, "none (past its end)")],
        ["Next job inserted", when(sc.next_run_at)],
        ["Last fire", lastFire(sc)],
        ["Buffered fire", sc.buffered_at ? when(sc.buffered_at) : null],
        ["Fired", num(sc.fired)], ["Missed", num(sc.missed)], ["Skipped", num(sc.skipped)], ["Manual triggers", num(sc.triggers)],
        ["Jobs", a(`/jobs?kind=${encodeURIComponent(spec.kind || "")}`, "Jobs of this kind")],
      ]);
      const upcoming = (sc.upcoming || []).length
        ? table([{ label: "#", cls: "num" }, { label: "Nominal time" }, { label: "Job inserted at (with jitter)" }],
          sc.upcoming.map((u, i) => h("tr", null, numCell(i + 1),
            td(absWhen(u.nominal)), td(absWhen(u.run_at)))), { cls: "compact" })
        : h("p", { class: "muted" }, sc.paused ? "Paused: no upcoming fires." : "No upcoming fires.");
      keepFocus(box, () => box.replaceChildren(
        h("div", { class: "grid-2" },
          h("section", { class: "panel" }, h("div", { class: "panel-head" }, h("h2", null, "Definition")), h("div", { class: "panel-body" }, def)),
          h("section", { class: "panel" }, h("div", { class: "panel-head" }, h("h2", null, "State")), h("div", { class: "panel-body" }, state))),
        h("div", { class: "grid-2" },
          h("section", { class: "panel" }, h("div", { class: "panel-head" }, h("h2", null, "Next 10 fires")), h("div", { class: "panel-body" }, upcoming)),
          h("section", { class: "panel" }, h("div", { class: "panel-head" }, h("h2", null, "Payload template")),
            h("div", { class: "panel-body" }, codeBlock(spec.payload ?? {}, "Payload template")))),
        h("details", { class: "panel raw" }, h("summary", null, "Canonical definition (JSON)"), codeBlock(spec, "Canonical definition"))));
    }
    const refreshSoon = throttle(() => draw().catch(() => {}), 1000);
    await draw();
    setReady(view);
  }

  // Plugins --------------------------------------------------------------

  function pluginActions(kind, paused, breaker, refresh) {
    const out = [];
    if (paused) {
      out.push(actionBtn("Resume", async () => {
        await api(`/api/plugins/${encodeURIComponent(kind)}/resume`, { method: "POST" });
        toast(`Plugin ${kind} resumed.`);
        refresh();
      }, { testid: "plugin-resume", key: `toggle-${kind}`, what: "Resuming" }));
    } else {
      out.push(actionBtn("Pause…", async () => {
        const r = await confirmDialog({
          title: `Pause plugin ${kind}?`,
          message: `No job of kind ${kind} is claimed while it is paused, on any host. Running attempts finish.`,
          ok: "Pause", note: { label: "Why pause it?", placeholder: "e.g. bad deploy, rolling back" },
        });
        if (!r) return;
        await api(`/api/plugins/${encodeURIComponent(kind)}/pause`, { method: "POST", body: { note: r.note } });
        toast(`Plugin ${kind} paused.`);
        refresh();
      }, { testid: "plugin-pause", key: `toggle-${kind}`, what: "Pausing" }));
    }
    if (breaker && breaker.state !== "closed") {
      out.push(actionBtn("Reset breaker", async () => {
        const r = await api(`/api/plugins/${encodeURIComponent(kind)}/breaker/reset`, { method: "POST" });
        toast(`Breaker of ${kind} reset (was ${r.was || "closed"}).`);
        refresh();
      }, { testid: "breaker-reset", key: `reset-${kind}`, what: "Resetting the breaker" }));
    }
    return out.filter(Boolean);
  }

  function grantsView(g) {
    const topics = Object.entries(g.outbox_topics || {});
    return dl([
      ["kv", g.kv ? "granted (own namespace)" : h("span", { class: "muted" }, "no")],
      ["Outbox topics", topics.length ? h("ul", { class: "plain" }, topics.map(([t, url]) => h("li", null, h("code", null, t), " → ", h("span", { class: "break" }, url)))) : h("span", { class: "muted" }, "none")],
      ["HTTP allow", (g.http || []).length ? h("ul", { class: "plain" }, g.http.map((r) =>
        h("li", null, h("code", null, `${r.scheme}://${r.host}:${r.port}`), r.methods ? ` ${r.methods.join(", ")}` : " any method"))) : h("span", { class: "muted" }, "none")],
      ["HTTP max response", (g.http || []).length ? bytes(g.http_max_response) : undefined],
    ], "kv kv-tight");
  }

  function pluginCard(p, refresh) {
    const st = p.settings || {};
    const r = st.retry || {};
    const b = p.breaker;
    const limits = dl([
      ["Fuel", num(st.fuel)],
      ["Timeout", st.timeout ?? null],
      ["Memory", bytes(st.memory)],
      ["Max output", bytes(st.max_output)],
      ["Max payload", bytes(st.max_payload)],
      ["Concurrency", num(st.concurrency)],
    ], "kv kv-tight");
    const policy = dl([
      ["Retry", `${r.max_attempts} attempts`],
      ["Backoff", `${r.base} → ${r.max}, jitter ${pct(r.jitter)}`],
      ["Max conflicts", num(st.max_conflicts)],
      ["Rate limit", st.rate ? `${num(st.rate.count)} per ${st.rate.period}, burst ${num(st.rate.burst)}` : h("span", { class: "muted" }, "unlimited")],
      ["Breaker", st.breaker ? h("span", { title: `Counted outcomes: ${(st.breaker.outcomes || []).join(", ")}` },
        `opens after ${st.breaker.failures} failures in ${st.breaker.window}, for ${st.breaker.cooldown}`) : h("span", { class: "muted" }, "off")],
      ["Recording", `${st.record ? "every attempt" : "failed attempts"}, up to ${bytes(st.record_max)}`],
    ], "kv kv-tight");
    const status = [];
    if (b && b.state !== "closed") {
      status.push(h("div", { class: "callout callout-bad" },
        breakerBadge(b.state), ` ${num(b.failures)} failures in a row · opened `, when(b.opened_at),
        b.retry_at ? h("span", null, " · probe ", when(b.retry_at)) : null,
        ` · ${num(b.trips)} trips`,
        b.last_error ? h("pre", { class: "code code-error small" }, b.last_error) : null));
    }
    if (p.paused) {
      status.push(h("div", { class: "callout callout-warn" }, badge("paused"), ` “${p.paused.note}” · `, when(p.paused.paused_at)));
    }
    return h("article", { class: "plugin panel", "data-plugin": p.kind },
      h("div", { class: "panel-head" },
        h("h2", null, a(`/jobs?kind=${encodeURIComponent(p.kind)}`, p.kind)),
        h("span", { class: "head-badges" },
          b ? breakerBadge(b.state) : breakerBadge("closed"),
          p.paused ? badge("paused") : null,
          st.rate ? h("span", { class: "badge badge-none" }, `rate ${st.rate.count}/${st.rate.period}`) : null),
        h("div", { class: "page-actions" }, pluginActions(p.kind, p.paused, b, refresh))),
      h("div", { class: "panel-body" },
        status,
        h("div", { class: "grid-3" },
          h("div", null, h("h3", null, "Limits"), limits),
          h("div", null, h("h3", null, "Policy"), policy),
          h("div", null, h("h3", null, "Grants"), grantsView(st.grants || {}))),
        h("p", { class: "muted small hash" }, "content ", h("code", { title: p.content_hash }, shortHash(p.content_hash)),
          " · ", h("code", { class: "break" }, p.path))));
  }

  function reloadReport(rep) {
    const line = (label, list) => (list && list.length ? h("li", null, h("strong", null, `${label}: `), list.join(", ")) : null);
    const lines = [line("Added", rep.added), line("Replaced", rep.replaced), line("Removed", rep.removed), line("Unchanged", rep.unchanged)].filter(Boolean);
    return h("section", { class: "panel", role: "status" },
      h("div", { class: "panel-head" }, h("h2", null, "Reload report")),
      h("div", { class: "panel-body" },
        lines.length ? h("ul", { class: "plain" }, lines) : h("p", { class: "muted" }, "No plugin found."),
        (rep.rejected || []).length ? rejectedList(rep.rejected) : null));
  }

  function rejectedList(list) {
    return h("div", { class: "rejected" }, h("h3", null, `Rejected files (${list.length})`),
      h("ul", { class: "plain" }, list.map((r) => h("li", null, h("code", null, r.path), h("div", { class: "text-bad small" }, r.reason)))));
  }

  async function pagePlugins(view, main) {
    const report = h("div");
    const box = h("div", null, loading("Loading plugins…"));
    const reload = actionBtn("Reload plugins", async () => {
      const rep = await api("/api/plugins/reload", { method: "POST" });
      report.replaceChildren(reloadReport(rep));
      toast(`Plugins reloaded: ${rep.added.length} added, ${rep.replaced.length} replaced, ${rep.removed.length} removed, ${rep.rejected.length} rejected.`,
        rep.rejected.length ? "err" : "ok");
      app.kinds = null;
      await draw();
    }, { testid: "plugins-reload", what: "Reloading" });
    main.append(pageHead("Plugins", { sub: "Loaded by this host from its plugins directory", actions: [reload, refreshBtn(() => draw())] }), report, box);
    async function draw() {
      let p;
      try {
        p = await view.api("/api/plugins");
      } catch (e) {
        if (e instanceof Stale) throw e;
        box.replaceChildren(errorBox("Could not load the plugins", e, () => draw()));
        return;
      }
      const parts = [];
      if (!p.plugins.length) parts.push(emptyState("No plugin is loaded. Put <kind>.wasm files in the host's plugins_dir, then reload."));
      else parts.push(h("div", { class: "plugin-list" }, p.plugins.map((x) => pluginCard(x, () => draw()))));
      const others = new Map();
      for (const b of p.other_breakers || []) others.set(b.kind, { breaker: b, paused: null });
      for (const ps of p.other_pauses || []) others.set(ps.name, { ...(others.get(ps.name) || { breaker: null }), paused: ps });
      if (others.size) {
        parts.push(h("section", { class: "panel" }, h("div", { class: "panel-head" }, h("h2", null, "Kinds without a plugin on this host")),
          table([{ label: "Kind" }, { label: "Breaker" }, { label: "Paused" }, { label: "", title: "Actions" }],
            [...others].map(([kind, o]) => h("tr", { "data-plugin": kind },
              td(kind), td(o.breaker ? breakerBadge(o.breaker.state) : "—"),
              td(o.paused ? h("span", null, `“${o.paused.note}” `, when(o.paused.paused_at)) : "—"),
              h("td", { class: "actions" }, pluginActions(kind, o.paused, o.breaker, () => draw())))), { cls: "compact" })));
      }
      if ((p.rejected || []).length) parts.push(h("section", { class: "panel" }, h("div", { class: "panel-body" }, rejectedList(p.rejected))));
      keepFocus(box, () => box.replaceChildren(...parts));
    }
    await draw();
    setReady(view);
  }

  // Queues ---------------------------------------------------------------

  async function pageQueues(view, main) {
    const box = h("div", null, loading("Loading queues…"));
    main.append(pageHead("Queues", { actions: [refreshBtn(() => draw())] }), box);
    async function draw() {
      let qs;
      try {
        qs = await view.api("/api/queues");
      } catch (e) {
        if (e instanceof Stale) throw e;
        box.replaceChildren(errorBox("Could not load the queues", e, () => draw()));
        return;
      }
      if (!qs.length) { box.replaceChildren(emptyState("No queues yet: a queue appears with its first job.")); return; }
      const now = Date.now();
      const rows = qs.map((q) => {
        const paused = q.paused;
        const countCell = (state) => {
          const n = q.counts[state] || 0;
          return h("td", { class: "num" }, n ? a(`/jobs?queue=${encodeURIComponent(q.queue)}&state=${state}`, num(n)) : h("span", { class: "muted" }, "0"));
        };
        const age = q.oldest_due ? now - parseTime(q.oldest_due) : null;
        const actions = paused
          ? actionBtn("Resume", async () => {
            await api(`/api/queues/${encodeURIComponent(q.queue)}/resume`, { method: "POST" });
            toast(`Queue ${q.queue} resumed.`);
            draw();
          }, { testid: "queue-resume", key: `toggle-${q.queue}`, what: "Resuming" })
          : actionBtn("Pause…", async () => {
            const r = await confirmDialog({
              title: `Pause queue ${q.queue}?`,
              message: `No job on queue ${q.queue} is claimed while it is paused, on any host. Running attempts finish.`,
              ok: "Pause", note: { label: "Why pause it?" },
            });
            if (!r) return;
            await api(`/api/queues/${encodeURIComponent(q.queue)}/pause`, { method: "POST", body: { note: r.note } });
            toast(`Queue ${q.queue} paused.`);
            draw();
          }, { testid: "queue-pause", key: `toggle-${q.queue}`, what: "Pausing" });
        return h("tr", { "data-queue": q.queue, "data-paused": paused ? "true" : "false", class: paused ? "row-paused" : null },
          td(a(`/jobs?queue=${encodeURIComponent(q.queue)}`, q.queue), { class: "mono" }),
          STATES.map(countCell),
          h("td", { class: `num ${age > 60_000 ? "text-warn" : ""}`.trim() }, age == null ? h("span", { class: "muted" }, "—") : h("span", { title: q.oldest_due }, dur(Math.max(0, age)))),
          td(paused ? h("span", { class: "cell-stack" }, badge("paused"), h("span", { class: "muted small" }, truncate(paused.note, 60)), when(paused.paused_at)) : badge("active")),
          h("td", { class: "actions" }, actions));
      });
      keepFocus(box, () => box.replaceChildren(table([
        { label: "Queue" }, ...STATES.map((st) => ({ label: st, cls: "num" })),
        { label: "Oldest due", cls: "num", title: "How long the oldest due job has waited" },
        { label: "Status" }, { label: "", title: "Actions" },
      ], rows, { testid: "queues" })));
    }
    const soon = throttle(() => draw().catch(() => {}), 2000);
    await draw();
    setReady(view);
    view.onEvent = () => soon();
    view.onLagged = () => soon();
  }

  // Outbox ---------------------------------------------------------------

  async function pageOutbox(view, main, _m, params) {
    const state = EVENT_STATES.includes(params.get("state")) ? params.get("state") : "";
    const limit = Math.min(1000, Math.max(1, Number(params.get("limit")) || 100));
    const before = /^[1-9][0-9]{0,17}$/.test(params.get("before") || "") ? params.get("before") : "";
    const sel = h("select", { id: "o-state", name: "state" }, h("option", { value: "" }, "Any state"),
      EVENT_STATES.map((x) => h("option", { value: x }, x)));
    sel.value = state;
    const form = h("form", { class: "filters", role: "search", "aria-label": "Filter events", "data-testid": "outbox-filters" },
      h("div", { class: "field" }, h("label", { for: "o-state" }, "State"), sel),
      h("div", { class: "field field-buttons" }, h("button", { type: "submit", class: "btn btn-primary" }, "Filter")));
    const go = () => navigate(`/outbox${sel.value ? `?state=${sel.value}` : ""}`);
    form.addEventListener("submit", (e) => { e.preventDefault(); go(); });
    sel.addEventListener("change", go);
    const box = h("div", null, loading("Loading events…"));
    const foot = h("div", { class: "list-footer" });
    main.append(pageHead("Outbox", { sub: "Events committed by jobs, newest first", actions: [refreshBtn(() => draw())] }), form, box, foot);
    async function draw() {
      let evs;
      try {
        evs = await view.api("/api/outbox", { query: { state, limit, before } });
      } catch (e) {
        if (e instanceof Stale) throw e;
        box.replaceChildren(errorBox("Could not load the outbox", e, () => draw()));
        return;
      }
      foot.replaceChildren();
      // Links keep the filter and change the page.
      const link = (changes, text) => {
        const q = new URLSearchParams(location.search);
        for (const [k, v] of Object.entries(changes)) v ? q.set(k, v) : q.delete(k);
        return a(`/outbox${q.size ? `?${q}` : ""}`, text);
      };
      const newest = before ? link({ before: "" }, "Newest events") : null;
      if (!evs.length) {
        box.replaceChildren(emptyState(
          before ? `No ${state ? `${state} ` : ""}events older than #${before}.`
            : state ? `No ${state} events.` : "No events yet: plugins with an outbox grant emit them.",
          newest || (state ? a("/outbox", "Show every state") : null)));
        return;
      }
      keepFocus(box, () => box.replaceChildren(table(eventCols(true), evs.map((ev) => eventRow(ev, () => draw())), { testid: "outbox" })));
      foot.append(h("span", { class: "muted" }, before
        ? `${num(evs.length)} event${evs.length === 1 ? "" : "s"} older than #${before} shown`
        : `${num(evs.length)} newest event${evs.length === 1 ? "" : "s"} shown`));
      if (newest) foot.append(" ", newest);
      if (evs.length >= limit) {
        const older = link({ before: String(evs[evs.length - 1].id) }, "Older events");
        older.dataset.testid = "outbox-older";
        foot.append(" ", older);
        if (limit < 1000) foot.append(" ", link({ limit: String(Math.min(1000, limit * 5)) }, `Show up to ${num(Math.min(1000, limit * 5))}`));
      }
    }
    const soon = throttle(() => draw().catch(() => {}), 3000);
    await draw();
    setReady(view);
    view.onEvent = (ev) => { if (ev.state === "completed" || ev.state === "discarded") soon(); };
    view.onLagged = () => soon();
  }

  // Hosts ----------------------------------------------------------------

  function hostsTable(list, { compact = false } = {}) {
    if (!list.length) return emptyState("No host has sent a heartbeat yet.");
    const now = Date.now();
    const rows = [...list].sort((x, y) => parseTime(y.last_seen) - parseTime(x.last_seen)).map((hs) => {
      const age = now - parseTime(hs.last_seen);
      const stale = age > STALE_HOST_MS;
      const me = app.info && app.info.host === hs.id;
      return h("tr", { "data-host": hs.id, class: stale ? "row-stale" : null, "data-stale": stale ? "true" : "false" },
        td(h("span", null, h("code", null, hs.id), me ? h("span", { class: "badge badge-none" }, "this host") : null), { class: "mono" }),
        compact ? null : td(hs.version),
        compact ? null : td(when(hs.started_at)),
        td(h("span", { class: stale ? "text-bad" : null }, when(hs.last_seen))),
        td(stale ? badge("stale", { title: `No heartbeat for ${dur(age)}: gone, or not ready` }) : hs.ready ? badge("ready") : badge("not_ready")),
        numCell(hs.in_flight));
    });
    return table([
      { label: "Host" }, compact ? null : { label: "Version" }, compact ? null : { label: "Started" },
      { label: "Last seen" }, { label: "Status" }, { label: "In flight", cls: "num" },
    ].filter(Boolean), rows, { testid: compact ? null : "hosts", cls: compact ? "compact" : "" });
  }

  async function pageHosts(view, main) {
    const box = h("div", null, loading("Loading hosts…"));
    main.append(pageHead("Hosts", { sub: `Every host on this database, by its heartbeat (stale after ${dur(STALE_HOST_MS)} without one)`, actions: [refreshBtn(() => draw())] }), box);
    async function draw() {
      try {
        const list = await view.api("/api/hosts");
        box.replaceChildren(hostsTable(list));
      } catch (e) {
        if (e instanceof Stale) throw e;
        box.replaceChildren(errorBox("Could not load the hosts", e, () => draw()));
      }
    }
    const soon = throttle(() => draw().catch(() => {}), 5000);
    await draw();
    setReady(view);
    view.onEvent = () => soon();
  }

  // Login ----------------------------------------------------------------

  function showLogin(message = "") {
    const view = newView("login");
    stopEvents();
    app.info = null;
    document.title = "Sign in · jobbox";
    const err = h("p", { class: "field-error", role: "alert", id: "token-err" }, message);
    const input = h("input", {
      id: "token", name: "token", type: "password", autocomplete: "current-password", required: true,
      spellcheck: "false", "aria-describedby": "token-help token-err",
    });
    const submit = h("button", { type: "submit", class: "btn btn-primary" }, "Sign in");
    const form = h("form", { class: "login", "data-testid": "login", "aria-labelledby": "login-title" },
      h("h1", { id: "login-title" }, "jobbox"),
      h("p", { class: "muted", id: "token-help" }, "This API asks for a token: the api.token of the host's configuration (or its api.token_env variable). It is kept for this browser tab only."),
      h("div", { class: "field" }, h("label", { for: "token" }, "API token"), input),
      err, submit);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const token = input.value.trim();
      if (!token) { err.textContent = "Enter the token."; input.focus(); return; }
      submit.disabled = true;
      err.textContent = "";
      try {
        const res = await fetch("/api/info", { headers: { Accept: "application/json", Authorization: `Bearer ${token}` }, cache: "no-store" });
        if (res.status === 401) { err.textContent = "That token was refused. Check api.token on the host."; input.select(); return; }
        if (!res.ok) { err.textContent = `The API answered ${res.status}; try again.`; return; }
        setToken(token);
        start(await res.json());
      } catch {
        err.textContent = "Could not reach the API: is `jobbox run` still running?";
      } finally {
        submit.disabled = false;
      }
    });
    const root = document.getElementById("app");
    root.replaceChildren(h("main", { class: "login-wrap", id: "main" }, form));
    app.shell = { toasts: null, live: null, main: null, nav: null };
    input.focus();
    setReady(view);
  }

  function unauthorized() {
    if (app.view && app.view.name === "login") return;
    const had = !!getToken();
    clearToken();
    showLogin(had ? "The API refused the token (it may have changed): sign in again." : "");
  }

  // ------------------------------------------------------------- 9. boot

  function buildShell(info) {
    const live = h("span", { class: "live", "data-testid": "live", "data-state": "connecting", role: "status" },
      h("span", { class: "live-dot", "aria-hidden": "true" }), h("span", { class: "live-text" }, "Connecting…"));
    const nav = h("nav", { "aria-label": "Main" }, h("ul", null, NAV.map(([key, href, label]) =>
      h("li", null, h("a", { href, "data-nav": key }, label)))));
    const signOut = info.token_required || getToken()
      ? h("button", { type: "button", class: "btn btn-small btn-ghost", "data-testid": "sign-out" }, "Sign out") : null;
    if (signOut) signOut.addEventListener("click", () => { clearToken(); showLogin("Signed out."); });
    const header = h("header", { class: "topbar" },
      h("a", { href: "/", class: "brand", "aria-label": "jobbox overview" }, h("span", { class: "brand-mark", "aria-hidden": "true" }), "jobbox"),
      nav,
      h("div", { class: "topbar-right" },
        h("span", { class: "host-info", title: `host ${info.host} · jobbox ${info.version} · ${info.store}` },
          h("code", null, info.host), h("span", { class: "muted" }, ` v${info.version} · ${info.store}`)),
        info.read_only ? h("span", { class: "badge badge-readonly", "data-testid": "read-only", title: "The API refuses every change (api.read_only = true)" }, "read-only") : null,
        live, signOut));
    const main = h("main", { id: "main", class: "main" });
    const toasts = h("div", { class: "toasts", "aria-live": "polite", "aria-relevant": "additions text" });
    const skip = h("a", { href: "#main", class: "skip" }, "Skip to content");
    skip.addEventListener("click", (e) => { e.preventDefault(); main.querySelector("h1")?.focus(); });
    document.getElementById("app").replaceChildren(skip, header, main, toasts);
    app.shell = { header, main, toasts, live, nav };
  }

  function start(info) {
    app.info = info;
    document.body.classList.toggle("read-only", !!info.read_only);
    buildShell(info);
    render();
    runEvents();
  }

  async function boot() {
    document.body.dataset.ready = "";
    document.addEventListener("click", onDocumentClick);
    window.addEventListener("popstate", () => { app.navigated = true; render(); });
    setInterval(tickTimes, 10_000);
    let info;
    try {
      info = await api("/api/info");
    } catch (e) {
      if (e instanceof Stale) return; // 401: the login form is up
      const root = document.getElementById("app");
      const view = newView("error");
      root.replaceChildren(h("main", { class: "login-wrap", id: "main" },
        h("div", { class: "login" }, h("h1", null, "jobbox"),
          errorBox("Could not start the dashboard", e, () => location.reload()))));
      setReady(view);
      return;
    }
    start(info);
  }

  boot();
})();
