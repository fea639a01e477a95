// The custos status page. It renders StatusReport (agent/status.go) from
// the /api/events stream, or by polling /api/status where EventSource is
// missing. Every value from the agent reaches the page through textContent
// or an attribute, never as HTML: source, dataset and atom names and error
// texts are not to be trusted as markup.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  let skew = 0; // agent clock minus browser clock, in ms
  let started = null; // when the agent started
  const shown = {}; // section id -> JSON of what it shows now

  // el builds an element; string children become text nodes.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k.startsWith("data-")) e.dataset[k.slice(5).replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = String(v);
      else if (k === "onclick") e.addEventListener("click", v);
      else e.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === undefined || c === null) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function bytes(n) {
    if (!n) return "0 B";
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
  }

  // dur formats milliseconds for people: 850ms, 12.3s, 4m05s, 2h03m, 3d04h.
  function dur(ms) {
    if (ms < 0) ms = 0;
    if (ms < 1000) return Math.round(ms) + "ms";
    const s = ms / 1000;
    if (s < 60) return s.toFixed(1) + "s";
    const pad = (x) => String(Math.floor(x)).padStart(2, "0");
    if (s < 3600) return Math.floor(s / 60) + "m" + pad(s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h" + pad((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d" + pad((s % 86400) / 3600) + "h";
  }

  const nsToMs = (ns) => (ns || 0) / 1e6;
  const agentNow = () => Date.now() + skew;

  // rel is a time that the page keeps relative ("3s ago", "in 5m00s").
  function rel(t) {
    if (!t) return el("span", {}, "");
    return el("span", { class: "rel", "data-t": t, title: new Date(t).toLocaleString() }, relText(t));
  }
  function relText(t) {
    const d = Date.parse(t) - agentNow();
    return d > 0 ? "in " + dur(d) : dur(-d) + " ago";
  }
  function tick() {
    for (const e of document.querySelectorAll(".rel")) e.textContent = relText(e.dataset.t);
    if (started) $("uptime").textContent = dur(agentNow() - Date.parse(started));
  }

  function message(text, isError) {
    const m = $("msg");
    m.textContent = text;
    m.className = isError ? "error" : "";
  }

  async function post(url, what) {
    try {
      const resp = await fetch(url, { method: "POST" });
      const body = await resp.json().catch(() => ({}));
      if (!resp.ok) throw new Error(body.error || resp.statusText);
      return body;
    } catch (e) {
      message(what + ": " + e.message, true);
      return null;
    }
  }

  async function runNow(source) {
    const r = await post("/api/run?source=" + encodeURIComponent(source), "run " + source);
    if (!r) return;
    const n = (r.jobs || []).length;
    message(n ? "started " + n + " job(s) for " + source + ": " + r.jobs.join(", ")
      : "nothing started for " + source + " (its datasets are already running)", false);
    refreshSoon();
  }

  async function cancelJob(id) {
    if (await post("/api/jobs/" + encodeURIComponent(id) + "/cancel", "cancel " + id)) {
      message("cancelling " + id, false);
      refreshSoon();
    }
  }

  // section replaces a table's rows when what it shows changed.
  function section(id, items, row) {
    const key = JSON.stringify(items);
    if (shown[id] === key) return;
    shown[id] = key;
    $(id).querySelector("tbody").replaceChildren(...items.map(row));
    $(id).hidden = items.length === 0;
    const empty = $(id + "-empty");
    empty.textContent = empty.dataset.empty; // "loading…" until the first report
    empty.hidden = items.length !== 0;
  }

  const num = (v) => el("td", { class: "num" }, v);

  // snapshotCell names the dataset's snapshot, or counts its atoms' own.
  function snapshotCell(d) {
    if (d.snapshot_id) return el("td", {}, el("code", { title: d.snapshot_id }, d.snapshot_id.slice(0, 12)));
    return el("td", {}, (d.atom_count || 0) + " snapshots (one per atom)");
  }

  function render(st) {
    skew = Date.parse(st.now) - Date.now();
    started = st.started;
    document.title = "custos on " + st.host;
    $("host").textContent = st.host;
    $("config").textContent = st.config;
    $("version").textContent = st.version;
    $("pid").textContent = st.pid;
    $("generation").textContent = st.generation;
    const failed = st.spool_failed || [];
    $("spool").textContent = st.spool_depth + " record(s) waiting" +
      (failed.length ? ", " + failed.length + " FAILED for good (not findable): " +
        failed.map((f) => f.source + "/" + f.dataset + " of backup " + f.backup_id + ": " + f.reason).join("; ") : "");
    $("spool").className = failed.length ? "err" : st.spool_depth > 0 ? "warn" : "";
    $("dryrun").hidden = !st.dry_run;

    section("running", st.running, (j) => {
      const p = j.progress || {};
      const total = (done, all, f) => f(done) + (all ? " of " + f(all) : "");
      return el("tr", { "data-job": j.id },
        el("td", {}, el("code", {}, j.id)),
        el("td", {}, j.description),
        el("td", { class: j.state }, j.state + (j.attempts > 1 ? " (attempt " + j.attempts + ")" : ""),
          j.state === "retrying" && j.next_attempt ? el("span", { class: "retry" }, ", next attempt ", rel(j.next_attempt)) : "",
          j.state === "retrying" && j.error ? ": " + j.error : ""),
        el("td", {}, rel(j.started)),
        num(total(p.files || 0, p.total_files, String)),
        num(total(p.bytes || 0, p.total_bytes, bytes)),
        num(bytes(p.bytes_per_second || 0) + "/s"),
        el("td", {}, p.current || ""),
        el("td", {}, el("button", { class: "cancel", "data-job": j.id, onclick: () => cancelJob(j.id) }, "cancel")));
    });

    section("pending", st.pending, (j) => el("tr", { "data-job": j.id },
      el("td", {}, el("code", {}, j.id)),
      el("td", {}, j.description),
      el("td", {}, j.queue),
      el("td", {}, rel(j.submitted)),
      el("td", {}, el("button", { class: "cancel", "data-job": j.id, onclick: () => cancelJob(j.id) }, "cancel"))));

    // The last run of a source: its newest outcome in the catalog (which
    // outlives a restart), else the scheduler's last tick.
    const lastRun = {};
    for (const o of st.outcomes || []) {
      if (o.kind !== "ingest" || !o.source) continue;
      const cur = lastRun[o.source];
      if (!cur || Date.parse(o.end) > Date.parse(cur.end)) lastRun[o.source] = o;
    }
    section("sources", st.sources, (s) => el("tr", { "data-source": s.name },
      el("td", {}, s.name),
      el("td", {}, s.handler),
      el("td", {}, s.repository),
      el("td", {}, s.schedule || "on demand", s.run_on_start ? " (and at start)" : ""),
      el("td", { class: "next" }, rel(s.next)),
      lastRun[s.name]
        ? el("td", { class: "last " + lastRun[s.name].result }, rel(lastRun[s.name].end), " ", lastRun[s.name].result)
        : el("td", { class: "last" }, rel(s.prev)),
      el("td", {}, el("button", { class: "run", "data-source": s.name, onclick: () => runNow(s.name) }, "run now"))));

    section("results", st.done, (j) => el("tr", { "data-job": j.id, "data-result": j.result },
      el("td", {}, rel(j.finished)),
      el("td", {}, j.description),
      el("td", { class: j.result }, j.result),
      num(dur(nsToMs(j.duration_ns))),
      num(j.attempts),
      el("td", { class: "err" }, j.error || "")));

    const rows = [];
    for (const b of st.backups) {
      for (const d of b.datasets || []) rows.push({ b, d });
    }
    section("backups", rows, ({ b, d }) => el("tr", { "data-dataset": d.id },
      el("td", {}, rel(b.timestamp)),
      el("td", {}, d.source + "/" + d.name),
      num(d.atom_count),
      num(d.total_files),
      num(bytes(d.total_bytes)),
      num(bytes(d.bytes_added)),
      num(dur(nsToMs(d.duration_ns))),
      snapshotCell(d),
      el("td", {}, d.repository)));
    section("repositories", st.repositories || [], (r) => el("tr", { "data-repository": r.name },
      el("td", {}, r.name),
      el("td", {}, el("code", {}, r.location)),
      num(r.versions || 0),
      num(bytes(r.logical_bytes || 0)),
      num(bytes(r.added_bytes || 0)),
      num(r.dedup_ratio ? r.dedup_ratio.toFixed(2) + "×" : "—"),
      el("td", {}, r.last_fixity ? rel(r.last_fixity) : "never"),
      num(r.packs_verified || 0),
      num(r.packs_damaged || 0)));

    // The health banner: what failed, and since when.
    const health = st.health || [];
    const hkey = JSON.stringify(health);
    if (shown.health !== hkey) {
      shown.health = hkey;
      $("health-list").replaceChildren(...health.map((p) => el("li", {},
        p.what, p.since ? el("span", {}, " since ", rel(p.since)) : "",
        p.error ? el("span", { class: "err" }, ": " + p.error) : "")));
      $("health").hidden = health.length === 0;
    }

    $("catalog-error").hidden = !st.catalog_error;
    $("catalog-error").textContent = st.catalog_error ? "catalog: " + st.catalog_error + " (the list below may be stale)" : "";
    const warnings = st.catalog_warnings || [];
    $("catalog-warnings").hidden = warnings.length === 0;
    $("catalog-warnings").replaceChildren(...warnings.map(w => el("li", {}, "catalog: " + w)));
    tick();
  }

  function connected(ok, text) {
    $("conn").textContent = text;
    $("conn").className = ok ? "conn" : "conn down";
  }

  async function poll() {
    try {
      const resp = await fetch("/api/status", { cache: "no-store" });
      if (!resp.ok) throw new Error(resp.statusText);
      render(await resp.json());
      connected(true, "updated " + new Date().toLocaleTimeString());
    } catch (e) {
      connected(false, "agent unreachable: " + e.message);
    }
  }

  // refreshSoon fetches a report after an action, in case the stream is
  // slow to bring it.
  function refreshSoon() { setTimeout(poll, 300); }

  // The fleet view: every host's running jobs and last outcomes, read
  // from the catalog every 10 s (it is not part of this agent's report).
  async function fleet() {
    try {
      const resp = await fetch("/api/fleet", { cache: "no-store" });
      if (!resp.ok) throw new Error(resp.statusText);
      const f = await resp.json();
      const hosts = new Set((f.running || []).map((j) => j.host));
      $("fleet-running").textContent = (f.running || []).length + " job(s) running on " + hosts.size + " host(s)";
      section("fleet", f.outcomes || [], (o) => el("tr", { "data-host": o.host, "data-result": o.result },
        el("td", {}, o.host),
        el("td", {}, o.kind),
        el("td", {}, o.source ? o.source + "/" + o.dataset : "—"),
        el("td", { class: o.result }, o.result),
        el("td", {}, rel(o.end)),
        num(o.attempts),
        el("td", { class: "err" }, o.error || "")));
    } catch (e) {
      $("fleet-running").textContent = "fleet: " + e.message;
    }
  }

  function start() {
    setInterval(tick, 1000);
    fleet();
    setInterval(fleet, 10000);
    if (!window.EventSource) {
      poll();
      setInterval(poll, 2000);
      return;
    }
    const es = new EventSource("/api/events");
    es.addEventListener("status", (ev) => {
      render(JSON.parse(ev.data));
      connected(true, "live");
    });
    es.onerror = () => connected(false, "connection lost, reconnecting…");
  }

  start();
})();
