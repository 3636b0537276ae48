/*
 * django-redis-logstream: the live log console, browser side.
 *
 * Mounts every <section class="rls-console" data-stream-url="..."> on the page
 * and follows its Server-Sent-Events stream:
 *   event: log     one record (JSON), id = its Redis stream entry id
 *   event: ready   the history is done, what follows is live; its id is the
 *                  resume point when no record came yet
 *   event: status  the server lost or regained Redis, skipped old records on a
 *                  resume, or ended a viewer that fell behind
 * Plain ES2020, no dependencies, Content-Security-Policy friendly: records are
 * only ever inserted as text, configuration comes from data- attributes.
 */
(() => {
  "use strict";
  // The panel fragment carries its own <script> tag, so a page with two panels
  // loads this file twice: the second copy must do nothing.
  if (window.RedisLogstream) return;

  const MAX_LINES = 5000; // lines kept in the DOM; the oldest go first
  const CHUNK = 100; // lines per .rls-chunk block
  const PER_FLUSH = 1000; // lines built per DOM update at most
  const WINDOW = 60; // seconds shown by the rate strip
  const FLUSH_MS = 100; // at most ~10 DOM updates per second
  const BACKOFF_MIN = 1000;
  const BACKOFF_MAX = 30000;
  const LEVELNO = { DEBUG: 10, INFO: 20, WARN: 30, WARNING: 30, ERROR: 40, FATAL: 50, CRITICAL: 50 };
  const NAMES = { 10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL" };
  // Colour classes in the order the rate strip stacks them, bottom first (so a
  // burst of errors rises from the baseline); each reads --rls-<class> from CSS.
  const CLASSES = ["critical", "error", "warning", "unknown", "info", "debug"];
  const FALLBACK = ["#da3633", "#ff6b61", "#e3b341", "#d670d6", "#4fc1ff", "#8b949e"];
  const ERR = CLASSES.length; // slot of the errors/s count (levelno >= 40) in a second's counts
  const LABELS = {
    connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…",
    degraded: "Degraded", error: "Disconnected",
  };

  /** Build an element; strings among the children become text nodes (never HTML). */
  function h(tag, attrs = {}, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    el.append(...children);
    return el;
  }

  function span(cls, text) {
    const el = document.createElement("span");
    el.className = cls;
    el.textContent = text;
    return el;
  }

  function setText(el, s) {
    if (el.textContent !== s) el.textContent = s;
  }

  /** Any JSON value as display text: other producers write odd types too. */
  function text(v) {
    if (typeof v === "string") return v;
    if (v === undefined || v === null) return "";
    try { return JSON.stringify(v); } catch { return String(v); }
  }

  /**
   * A stream entry id "ms-seq" as one BigInt (ms in the high 64 bits), or null.
   * Both halves are unsigned 64-bit integers: as strings "9-0" > "10-0", and as
   * Numbers they lose precision beyond 2^53, hence BigInt.
   */
  function idKey(id) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(id);
    return m ? (BigInt(m[1]) << 64n) + BigInt(m[2] || 0) : null;
  }

  /** url with its query parameter `name` set to value (others kept as they are). */
  function withParam(url, name, value) {
    const hashAt = url.indexOf("#");
    const hash = hashAt < 0 ? "" : url.slice(hashAt);
    const base = hashAt < 0 ? url : url.slice(0, hashAt);
    const q = base.indexOf("?");
    const kept = q < 0 ? [] : base.slice(q + 1).split("&").filter((p) => p && p.split("=")[0] !== name);
    kept.push(`${name}=${encodeURIComponent(value)}`);
    return `${q < 0 ? base : base.slice(0, q)}?${kept.join("&")}${hash}`;
  }

  /** Local HH:MM:SS.mmm of a timestamp in seconds since the epoch. */
  function fmtTime(ts) {
    if (typeof ts === "string" && ts.trim() !== "") ts = Number(ts);
    const d = new Date(typeof ts === "number" ? Math.round(ts * 1000) : NaN);
    if (Number.isNaN(d.getTime())) return "--:--:--.---";
    const p = (n, w = 2) => String(n).padStart(w, "0");
    return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
  }

  function bucket(no) {
    return no >= 50 ? "critical" : no >= 40 ? "error" : no >= 30 ? "warning" : no >= 20 ? "info" : "debug";
  }

  /**
   * {name, no, cls}: the name shown (as received), the number the level filter
   * uses (null when unknown: such records are never filtered out) and the
   * colour class. "?" is magenta whatever its levelno.
   */
  function levelOf(rec) {
    const raw = typeof rec.level === "string" && rec.level !== "" ? rec.level : null;
    const known = raw === null ? undefined : LEVELNO[raw.toUpperCase()];
    const no = typeof rec.levelno === "number" && Number.isFinite(rec.levelno) ? rec.levelno : known ?? null;
    const cls = known !== undefined ? bucket(known) : raw === "?" || no === null ? "unknown" : bucket(no);
    return { name: raw ?? NAMES[no] ?? (no === null ? "?" : `Level ${no}`), no, cls };
  }

  /** Push onto a queue that never holds more than 2 × MAX_LINES items: what
   *  would be cut from the DOM anyway is dropped early (e.g. in a hidden tab,
   *  where animation frames do not run). */
  function capPush(queue, item) {
    queue.push(item);
    if (queue.length > 2 * MAX_LINES) queue.splice(0, queue.length - MAX_LINES);
  }

  /** Counts per level class (and errors) for each of the last WINDOW seconds, in a fixed ring. */
  class RateWindow {
    constructor() {
      this.sec = new Array(WINDOW).fill(-1);
      this.counts = Array.from({ length: WINDOW }, () => new Uint32Array(ERR + 1));
    }
    add(lv) {
      const s = Math.floor(Date.now() / 1000);
      const i = s % WINDOW;
      if (this.sec[i] !== s) { this.sec[i] = s; this.counts[i].fill(0); }
      this.counts[i][CLASSES.indexOf(lv.cls)]++;
      if (lv.no !== null && lv.no >= 40) this.counts[i][ERR]++;
    }
    get(s) {
      const i = s % WINDOW;
      return this.sec[i] === s ? this.counts[i] : null;
    }
    total(s) {
      const c = this.get(s);
      let n = 0;
      if (c) for (let i = 0; i < ERR; i++) n += c[i];
      return n;
    }
  }

  /** The default markup (the same as panel.html), for a bare section mounted from script. */
  function skeleton(root) {
    const opt = (value, label) => h("option", { value }, label);
    const title = root.querySelector(".rls-title") || h("h2", { class: "rls-title" }, root.dataset.title || "Logs");
    root.append(
      h("div", { class: "rls-head" }, title,
        h("span", { class: "rls-status", "data-state": "connecting", role: "status", "aria-live": "polite" },
          h("span", { class: "rls-dot", "aria-hidden": "true" }), h("span", { class: "rls-status-label" }, LABELS.connecting)),
        h("div", { class: "rls-ratebox" },
          h("canvas", { class: "rls-rate", role: "img", "aria-label": "Records per second by level, last 60 seconds" }),
          h("span", { class: "rls-rate-text" }, "0 rec/s · 0 err/s"))),
      h("div", { class: "rls-controls" },
        h("label", { class: "rls-field" }, "Level ",
          h("select", { class: "rls-level-filter", autocomplete: "off" }, opt("0", "All"), opt("10", "DEBUG+"),
            opt("20", "INFO+"), opt("30", "WARNING+"), opt("40", "ERROR+"), opt("50", "CRITICAL"))),
        h("label", { class: "rls-field" }, h("span", { class: "rls-sr" }, "Search"),
          h("input", { type: "search", class: "rls-search", placeholder: "Search logger, context, message", autocomplete: "off", spellcheck: "false" })),
        h("span", { class: "rls-shown" }, "0 of 0 shown"),
        h("button", { type: "button", class: "rls-pause" }, "Pause"),
        h("span", { class: "rls-held", hidden: "" }),
        h("label", { class: "rls-field" }, h("input", { type: "checkbox", class: "rls-autoscroll", checked: "", autocomplete: "off" }), " Auto-scroll")),
      h("div", { class: "rls-lines", role: "log", "aria-live": "off", tabindex: "0" }));
  }

  class LogConsole {
    constructor(root) {
      this.root = root;
      this.url = root.dataset.streamUrl || "";
      this.firehose = root.dataset.firehose === "1";
      this.received = 0; // log events accepted
      this.lastId = null; // id of the last accepted record, as sent
      this.lastKey = null; // the same as a BigInt, for comparisons
      this.pending = []; // accepted, waiting for the next animation frame
      this.held = []; // accepted while paused
      this.heldCount = 0;
      this.paused = false;
      this.total = 0; // .rls-line elements in the DOM
      this.shown = 0; // of those, the ones the filters let through
      // This connection's history (or resume backlog) is done: records count in
      // the rate strip from here, so a catch-up after a reconnect is no fake burst.
      this.live = false;
      this.separated = false; // "— live —" shown (first connection only)
      this.attempts = 0; // failed reconnections in a row, for the backoff
      this.es = null;
      this.frame = 0; // pending animation frame
      this.timer2 = 0; // pending wait before asking for one
      this.flushedAt = -Infinity;
      this.timer = 0; // pending reconnection
      this.rate = new RateWindow();
      this.abort = new AbortController();

      if (!root.querySelector(".rls-lines")) skeleton(root);
      const q = (sel) => root.querySelector(sel);
      this.ui = {
        status: q(".rls-status"), statusLabel: q(".rls-status-label") || q(".rls-status"),
        lines: q(".rls-lines"), filter: q(".rls-level-filter"), search: q(".rls-search"),
        shown: q(".rls-shown"), pause: q(".rls-pause"), held: q(".rls-held") || h("span"),
        autoscroll: q(".rls-autoscroll"), canvas: q("canvas.rls-rate"), rateText: q(".rls-rate-text"),
      };
      this.minLevel = Number(this.ui.filter.value) || 0; // a browser may restore form values
      this.needle = this.ui.search.value.toLowerCase();
      this.ui.lines.replaceChildren(); // mounted again after close(): start afresh
      this.bind();
      this.setPaused(false);
      this.flush();
      this.tick();
      if (this.url) this.connect(this.url);
      else this.setState("error", "no stream URL");
    }

    bind() {
      const u = this.ui;
      const on = (el, type, fn) => el.addEventListener(type, fn, { signal: this.abort.signal });
      on(u.filter, "change", () => { this.minLevel = Number(u.filter.value) || 0; this.refilter(); });
      on(u.search, "input", () => { this.needle = u.search.value.toLowerCase(); this.refilter(); });
      on(u.pause, "click", () => this.setPaused(!this.paused));
      on(u.autoscroll, "change", () => { if (u.autoscroll.checked) this.toBottom(); });
      // Auto-scroll follows the user: scrolling up turns it off, back to the
      // bottom turns it on. Our own scrolling always lands at the bottom, and
      // scroll events are dispatched before animation-frame callbacks, so a
      // user's scroll is seen before the next batch of lines could move it.
      on(u.lines, "scroll", () => {
        const l = u.lines;
        u.autoscroll.checked = l.scrollHeight - l.scrollTop - l.clientHeight <= 4;
      });
      this.resize = new ResizeObserver(() => {
        this.drawRate();
        if (u.autoscroll.checked) this.toBottom();
      });
      this.resize.observe(u.canvas);
      this.resize.observe(u.lines);
    }

    // ---- connection -------------------------------------------------------

    connect(url) {
      let es;
      try { es = new EventSource(url); } catch { this.setState("error", "invalid stream URL"); return; }
      this.es = es;
      // Events of an EventSource that was replaced or closed are ignored.
      const on = (type, fn) => es.addEventListener(type, (e) => { if (this.es === es) fn(e); });
      on("open", () => { this.attempts = 0; this.live = false; this.setState("live"); });
      // While the browser retries by itself (the server ended the response),
      // readyState is CONNECTING; CLOSED means it gave up (e.g. a non-200).
      on("error", () => (es.readyState === EventSource.CLOSED ? this.retry() : this.setState("reconnecting")));
      on("log", (e) => this.onLog(e));
      on("ready", (e) => this.onReady(e));
      on("status", (e) => this.onStatus(e));
    }

    /** Reconnect after the EventSource gave up: capped exponential backoff, and
     *  the resume point in the URL (a new EventSource has no Last-Event-ID). */
    retry() {
      this.es.close();
      this.es = null;
      const delay = Math.min(BACKOFF_MIN * 2 ** this.attempts, BACKOFF_MAX);
      this.attempts++;
      this.setState("error", `retrying in ${Math.round(delay / 1000)} s`);
      this.timer = setTimeout(() => {
        this.timer = 0;
        this.setState("reconnecting");
        this.connect(this.lastId === null ? this.url : withParam(this.url, "last_event_id", this.lastId));
      }, delay);
    }

    setState(state, detail = "") {
      const s = this.ui.status;
      s.dataset.state = state;
      s.title = detail;
      setText(this.ui.statusLabel, detail ? `${LABELS[state]}: ${detail}` : LABELS[state]);
    }

    onLog(e) {
      const id = e.lastEventId || "";
      const key = idKey(id);
      if (key !== null) {
        // Exactly once: a resumed connection may repeat what was already shown.
        if (this.lastKey !== null && key <= this.lastKey) return;
        this.lastKey = key;
        this.lastId = id;
      }
      let rec = null;
      try { rec = JSON.parse(e.data); } catch { /* not JSON: shown as it came */ }
      if (rec === null || typeof rec !== "object" || Array.isArray(rec)) {
        rec = { message: typeof rec === "string" ? rec : e.data };
      }
      const lv = levelOf(rec);
      this.received++;
      if (this.live) this.rate.add(lv);
      this.enqueue({ id, rec, lv });
    }

    onReady(e) {
      // The resume point even when no record came (an empty stream, ?history=0):
      // the browser resends it as Last-Event-ID, and retry() puts it in the URL.
      const key = idKey(e.lastEventId || "");
      if (key !== null && (this.lastKey === null || key > this.lastKey)) {
        this.lastKey = key;
        this.lastId = e.lastEventId;
      }
      this.live = true;
      if (this.separated) return;
      this.separated = true;
      let history = null;
      try { history = JSON.parse(e.data).history; } catch { /* optional */ }
      this.enqueue({ sep: true, history });
    }

    onStatus(e) {
      let d = null;
      try { d = JSON.parse(e.data); } catch { return; }
      if (!d || typeof d !== "object") return;
      if (d.redis === "down") this.setState("degraded", text(d.message) || "Redis unavailable");
      else if (d.redis === "up") this.setState("live");
      else if (d.behind) this.setState("reconnecting", "fell behind, catching up");
      else if ("skipped" in d) {
        const n = typeof d.skipped === "number" ? `${d.skipped} ` : "";
        this.enqueue({ note: `${n}older records skipped`, title: text(d.message) });
      }
    }

    // ---- rendering ----------------------------------------------------------

    enqueue(item) {
      if (this.paused) {
        capPush(this.held, item);
        if (!item.sep && !item.note) this.heldCount++;
      } else {
        capPush(this.pending, item);
      }
      this.schedule();
    }

    /**
     * DOM work is batched: records wait for an animation frame, and frames
     * that change the DOM are at least FLUSH_MS apart. Each change costs a
     * style, layout and paint pass, so hundreds of records per second must
     * cost a few passes, not hundreds; nothing is built while nobody looks
     * (no frames in a hidden tab).
     */
    schedule() {
      if (this.frame || this.timer2) return;
      const wait = this.flushedAt + FLUSH_MS - performance.now();
      const go = () => { this.timer2 = 0; this.frame = requestAnimationFrame(() => this.flush()); };
      if (wait > 0) this.timer2 = setTimeout(go, wait);
      else go();
    }

    flush() {
      this.frame = 0;
      this.flushedAt = performance.now();
      const l = this.ui.lines;
      if (this.pending.length) {
        // What the cap would drop is never built; a big backlog (a long pause,
        // a hidden tab) is spread over several frames.
        if (this.pending.length > MAX_LINES) this.pending = this.pending.slice(-MAX_LINES);
        const items = this.pending.splice(0, PER_FLUSH);
        // Lines go into blocks of CHUNK with CSS containment: dropping the
        // oldest lines then moves 50 blocks instead of 5000 lines (measured:
        // at 500 records/s, a tenth of the main-thread time of a flat list).
        let tail = l.lastElementChild;
        for (const it of items) {
          if (!tail || tail.childElementCount >= CHUNK) tail = l.appendChild(h("div", { class: "rls-chunk" }));
          tail.append(it.sep ? this.separator(it) : it.note ? this.notice(it) : this.line(it));
        }
        // Drop the oldest lines beyond the cap (a separator in the way goes too).
        // Browsers keep what the user reads in place (scroll anchoring).
        while (this.total > MAX_LINES) {
          const chunk = l.firstElementChild;
          const el = chunk.firstElementChild;
          if (!el) { chunk.remove(); continue; }
          if (el.rls) { this.total--; if (!el.hidden) this.shown--; }
          el.remove();
        }
        if (!l.firstElementChild.firstElementChild) l.firstElementChild.remove();
        if (this.ui.autoscroll.checked) this.toBottom();
        if (this.pending.length) this.schedule();
      }
      setText(this.ui.shown, `${this.shown} of ${this.total} shown`);
      setText(this.ui.held, `${this.heldCount} waiting`);
      this.ui.held.hidden = !this.paused;
    }

    line({ id, rec, lv }) {
      const logger = text(rec.logger);
      const context = text(rec.context);
      const msg = text(rec.message);
      const el = document.createElement("div");
      el.className = `rls-line rls-lv-${lv.cls}`;
      el.dataset.id = id;
      el.dataset.level = lv.name;
      const lg = span("rls-logger", logger);
      if (rec.pod !== undefined || rec.pid !== undefined) lg.title = `pod ${text(rec.pod)} · pid ${text(rec.pid)}`;
      // Real spaces between the fields, so that copied lines read as in a terminal.
      el.append(span("rls-time", fmtTime(rec.timestamp)), " ", span("rls-level", lv.name), " ", lg, " ");
      if (this.firehose) el.append(span("rls-context", context), " ");
      el.append(span("rls-msg", msg));
      // What the filters look at. The context is searched only where it is shown:
      // elsewhere it is the same on every line (the view's own context).
      const hay = this.firehose ? `${logger}\n${context}\n${msg}` : `${logger}\n${msg}`;
      el.rls = { no: lv.no, text: hay.toLowerCase() };
      el.hidden = !this.matches(el);
      this.total++;
      if (!el.hidden) this.shown++;
      return el;
    }

    separator(it) {
      const el = h("div", { class: "rls-sep", role: "separator" }, "— live —");
      if (typeof it.history === "number") el.title = `${it.history} earlier records above`;
      return el;
    }

    notice(it) {
      const el = h("div", { class: "rls-sep rls-notice", role: "note" }, it.note);
      if (it.title) el.title = it.title;
      return el;
    }

    matches(el) {
      const { no, text: hay } = el.rls;
      return (no === null || no >= this.minLevel) && (!this.needle || hay.includes(this.needle));
    }

    refilter() {
      let shown = 0;
      for (const el of this.ui.lines.querySelectorAll(".rls-line")) {
        const hide = !this.matches(el);
        if (el.hidden !== hide) el.hidden = hide;
        if (!hide) shown++;
      }
      this.shown = shown;
      setText(this.ui.shown, `${this.shown} of ${this.total} shown`);
      if (this.ui.autoscroll.checked) this.toBottom();
    }

    setPaused(paused) {
      this.paused = paused;
      this.ui.pause.textContent = paused ? "Resume" : "Pause";
      this.root.classList.toggle("rls-paused", paused);
      if (!paused) {
        for (const it of this.held) capPush(this.pending, it);
        this.held = [];
        this.heldCount = 0;
      }
      this.schedule();
    }

    toBottom() {
      this.ui.lines.scrollTop = this.ui.lines.scrollHeight;
    }

    // ---- rate strip ---------------------------------------------------------

    /** Redraw on each new second (aligned to the clock, not to the mount time). */
    tick() {
      this.drawRate();
      this.ticker = setTimeout(() => this.tick(), 1010 - (Date.now() % 1000));
    }

    drawRate() {
      const now = Math.floor(Date.now() / 1000);
      const last = this.rate.get(now - 1); // the last complete second
      const err = last ? last[ERR] : 0;
      setText(this.ui.rateText, `${this.rate.total(now - 1)} rec/s · ${err} err/s`);
      this.ui.rateText.classList.toggle("rls-hot", err > 0);

      // The backing store in device pixels, so bars stay crisp on HiDPI screens.
      const cv = this.ui.canvas;
      const dpr = window.devicePixelRatio || 1;
      const W = Math.round(cv.clientWidth * dpr);
      const H = Math.round(cv.clientHeight * dpr);
      if (!W || !H) return;
      if (cv.width !== W) cv.width = W;
      if (cv.height !== H) cv.height = H;
      const g = cv.getContext("2d");
      g.clearRect(0, 0, W, H);
      const css = getComputedStyle(this.root);
      const colours = CLASSES.map((c, i) => css.getPropertyValue(`--rls-${c}`).trim() || FALLBACK[i]);
      let peak = 0;
      for (let s = now - WINDOW + 1; s <= now; s++) peak = Math.max(peak, this.rate.total(s));
      const scale = H / Math.max(peak, 5); // a lone record is not a full bar
      const bw = W / WINDOW;
      const gap = bw >= 4 * dpr ? Math.round(dpr) : 0;
      for (let k = 0; k < WINDOW; k++) {
        const c = this.rate.get(now - WINDOW + 1 + k);
        if (!c) continue;
        const x = Math.round(k * bw);
        const w = Math.max(1, Math.round((k + 1) * bw) - x - gap);
        let y = H;
        for (let i = 0; i < ERR; i++) {
          if (!c[i]) continue;
          const bh = Math.max(Math.round(c[i] * scale), Math.ceil(dpr)); // one record stays visible
          g.fillStyle = colours[i];
          g.fillRect(x, y - bh, w, bh);
          y -= bh;
        }
      }
      cv.title = `Records per second by level, last ${WINDOW} s (peak ${peak}/s)`;
    }

    close() {
      if (this.es) this.es.close();
      this.es = null;
      clearTimeout(this.timer);
      clearTimeout(this.ticker);
      clearTimeout(this.timer2);
      cancelAnimationFrame(this.frame);
      this.frame = 0;
      this.resize.disconnect();
      this.abort.abort();
      this.setState("error", "closed");
      mounted.delete(this.root);
      const i = consoles.indexOf(this);
      if (i >= 0) consoles.splice(i, 1);
    }
  }

  const consoles = [];
  const mounted = new WeakMap();

  /** Start a console on element (once: mounting it again returns the same console). */
  function mount(element) {
    let c = mounted.get(element);
    if (!c) {
      c = new LogConsole(element);
      mounted.set(element, c);
      consoles.push(c);
    }
    return c;
  }

  function mountAll() {
    document.querySelectorAll(".rls-console[data-stream-url]").forEach(mount);
  }

  window.RedisLogstream = { mount, consoles };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", mountAll);
  else mountAll();
})();
