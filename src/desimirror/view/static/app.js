// desimirror's web view: one page, fed by the server's API (serve) or by the snapshot
// embedded in the file (report --html). It only reads; in live mode it asks again every
// few seconds and redraws in place, never reloading the page.
"use strict";

(function () {
  const CONFIG = window.DESIMIRROR || { mode: "live", refresh: 3 };
  const COLORS = {
    "done:sha256": "#1a9850", "done:composite": "#4dac6a", "done:etag": "#91cf60",
    "done:size": "#d9ef8b", "done:none": "#a6c48a", pending: "#c7cbd3", error: "#d73027",
    changed: "#fdae61", unsafe: "#8856a7", corrupt: "#7f0000", mismatch: "#f46d43",
    gone: "#4575b4",
  };
  const LABELS = {
    "done:sha256": "done, SHA-256 checked by the store", "done:composite": "done, composite SHA-256",
    "done:etag": "done, ETag = MD5", "done:size": "done, size only", "done:none": "done, unproven",
    pending: "pending", error: "failed", changed: "changed since the crawl",
    unsafe: "unsafe path", corrupt: "corrupt (published checksum mismatch)",
    mismatch: "wrong in the bucket", gone: "gone from the source",
  };
  const ORDER = Object.keys(COLORS);
  const view = { measure: "bytes", path: pathFromHash(), tree: null, summary: null };
  const source = CONFIG.mode === "report" ? snapshotSource(CONFIG.snapshot) : liveSource();
  let treemap = null;
  let throughput = null;

  // -- where the data comes from ---------------------------------------------------------

  function liveSource() {
    async function get(url) {
      const reply = await fetch(url, { cache: "no-store", credentials: "same-origin" });
      if (reply.status === 404) return null;
      if (!reply.ok) throw new Error(url + ": " + reply.status);
      return reply.json();
    }
    return {
      summary: () => get("api/summary"),
      tree: (path) => get("api/tree?path=" + encodeURIComponent(path)),
      quickTree: (path) => get("api/tree?quick=1&path=" + encodeURIComponent(path)),
      failures: (reason, text) =>
        get("api/failures?reason=" + encodeURIComponent(reason) + "&q=" + encodeURIComponent(text)),
    };
  }

  function snapshotSource(snapshot) {
    return {
      summary: async () => snapshot,
      tree: async (path) => snapshot.trees[path] || null,
      failures: async (reason, text) => {
        const needle = text.toLowerCase();
        const rows = snapshot.failures.failures.filter((f) =>
          (!reason || f.reason === reason) &&
          (!needle || f.path.toLowerCase().includes(needle) || f.error.toLowerCase().includes(needle)));
        return { count: rows.length, failures: rows };
      },
    };
  }

  // -- formatting ---------------------------------------------------------------------------

  function size(n) {
    const units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let i = 0;
    while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
    return i === 0 ? Math.round(n) + " B" : Number(n.toPrecision(3)) + " " + units[i];
  }
  const count = (n) => Number(n).toLocaleString("en-US");
  const percent = (part, whole) => (whole ? (100 * part / whole).toFixed(1) : "100.0") + "%";
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const s = Math.round(seconds);
    if (s < 90) return s + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " days";
  }
  const clock = (t) => new Date(t * 1000).toLocaleString();
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "dataset") Object.assign(node.dataset, v);
      else if (k === "onclick") node.addEventListener("click", v);
      else node.setAttribute(k, v);
    }
    for (const child of children) node.append(child);
    return node;
  }

  // -- totals -------------------------------------------------------------------------------

  function card(id, label, value, exact, detail) {
    return el("div", { class: "card", id: id, dataset: { value: String(exact) } },
      el("div", { class: "label" }, label),
      el("div", { class: "value" }, value),
      el("div", { class: "detail" }, detail || ""));
  }

  function drawTotals(summary) {
    const s = summary.status;
    document.getElementById("root").textContent = s.root || "";
    document.getElementById("selection").textContent =
      s.selection === "." ? "the whole tree is selected" : "selection: " + s.selection;
    document.getElementById("updated").textContent = CONFIG.mode === "report"
      ? "· exported " + clock(summary.generated) : "· updated " + new Date().toLocaleTimeString();
    const failed = Object.values(s.failed).reduce((a, b) => a + b, 0);
    const reasons = Object.entries(s.failed).map(([r, n]) => count(n) + " " + (LABELS[r] || r));
    const proofs = Object.entries(s.proof).map(([p, n]) => count(n) + " by " + p);
    const rate = s.bytes_per_second ? size(s.bytes_per_second) + "/s" : "—";
    const cards = [
      card("done-files", "files done", count(s.done_files), s.done_files,
        "of " + count(s.files) + " (" + percent(s.done_files, s.files) + ")"),
      card("done-bytes", "bytes done", size(s.done_bytes), s.done_bytes,
        "of " + size(s.bytes) + " (" + percent(s.done_bytes, s.bytes) + ")"),
      card("pending-files", "pending", count(s.pending_files), s.pending_files, size(s.pending_bytes)),
      card("failed-files", "not mirrored", count(failed), failed, reasons.join(", ") || "none"),
      card("rate", "rate (latest run)", rate, s.bytes_per_second,
        size(s.bytes_per_second_all_runs) + "/s over " + s.upload_runs + " run(s)"),
      card("eta", "ETA at that rate", duration(s.eta_seconds), s.eta_seconds ?? "",
        s.pending_files ? count(s.pending_files) + " files left" : "nothing left"),
      card("batches", "batches complete", count(s.batches_done), s.batches_done, "of " + count(s.batches)),
      card("content", "content proven", count(Object.values(s.proof).reduce((a, b) => a + b, 0)),
        "", proofs.join(", ") + (s.adopted_files ? "; " + count(s.adopted_files) + " adopted" : "")),
    ];
    if (s.gone_files) cards.push(card("gone-files", "gone", count(s.gone_files), s.gone_files,
      "mirrored, gone from the source"));
    for (const [i, text] of (summary.store_text || []).entries()) {
      cards.push(card("store-" + i, "store", "", "", text));
    }
    document.getElementById("totals").replaceChildren(...cards);
    const warning = document.getElementById("warning");
    warning.hidden = !s.partial_tree;
    warning.textContent = s.partial_tree ? "warning: " + s.partial_tree : "";
    document.getElementById("done-files").dataset.total = String(s.files);
    document.getElementById("done-bytes").dataset.total = String(s.bytes);
    drawReasons(s.failed);
  }

  // -- the tree -------------------------------------------------------------------------------

  const measureOf = (v) => (view.measure === "bytes" ? v[1] : v[0]);
  function doneOf(child) {
    let files = 0, bytes = 0;
    for (const [state, v] of Object.entries(child.states)) {
      if (state.startsWith("done:")) { files += v[0]; bytes += v[1]; }
    }
    return [files, bytes];
  }
  function orderedStates(states) {
    return Object.entries(states).sort((a, b) => ORDER.indexOf(a[0]) - ORDER.indexOf(b[0]));
  }

  function drawTree(tree) {
    const crumbs = document.getElementById("crumbs");
    const note = document.getElementById("tree-note");
    const body = document.querySelector("#children tbody");
    if (tree === null) {
      note.hidden = false;
      note.textContent = CONFIG.mode === "report"
        ? "This export holds the tree to " + CONFIG.snapshot.depth + " levels below the root; serve the db to go deeper."
        : "No directory " + JSON.stringify(view.path) + " in the tree.";
      body.replaceChildren();
      if (treemap) treemap.clear();
      crumbs.replaceChildren(el("a", { onclick: () => go("") }, "(root)"));
      return;
    }
    note.hidden = true;
    const parts = [];
    tree.crumbs.forEach((c, i) => {
      if (i) parts.push(el("span", { class: "sep" }, "/"));
      parts.push(i === tree.crumbs.length - 1 ? el("span", {}, c.name)
        : el("a", { onclick: () => go(c.path), dataset: { path: c.path } }, c.name));
    });
    crumbs.replaceChildren(...parts);
    const remaps = tree.remaps.map((r) => r.source + " → " + r.destination).join(", ");
    document.getElementById("key-line").textContent = tree.key
      ? "lands under s3://…/" + tree.key + "/" + (remaps ? "  (remaps: " + remaps + ")" : "")
      : "no bucket layout pinned yet (no upload ran)";
    body.replaceChildren(...tree.children.map((c) => row(c, tree.quick)));
    if (tree.more) {
      body.append(el("tr", { class: "more" }, el("td", {}, "… " + count(tree.more.count) + " more"),
        el("td", { class: "num" }, count(tree.more.files)), el("td", { class: "num" }, size(tree.more.bytes)),
        el("td", {}, ""), el("td", {}, stateBar(tree.more.states)), el("td", {}, "")));
    }
    drawTreemap(tree);
  }

  function row(child, quick) {
    const [doneFiles, doneBytes] = doneOf(child);
    if (quick) {
      return el("tr", { class: "counting", dataset: { quick: child.name, path: child.path } },
        el("td", { class: "path" }, child.kind === "dir" ? el("a", { onclick: () => go(child.path) }, child.name + "/") : child.name),
        el("td", { class: "num" }, "…"), el("td", { class: "num" }, size(child.bytes)),
        el("td", { class: "num" }, "…"), el("td", {}, "counting…"), el("td", {}, ""));
    }
    const name = child.kind === "dir"
      ? el("a", { onclick: () => go(child.path) }, child.name + "/")
      : el("span", {}, child.name + (child.kind === "link" ? " →" : ""));
    const key = child.remapped ? child.key : "";
    return el("tr", {
      dataset: {
        name: child.name, path: child.path, kind: child.kind, files: String(child.files),
        bytes: String(child.bytes), doneFiles: String(doneFiles), doneBytes: String(doneBytes),
        states: Object.keys(child.states).join(" "),
      },
    },
    el("td", { class: "path" }, name), el("td", { class: "num" }, count(child.files)),
    el("td", { class: "num", title: count(child.bytes) + " bytes" }, size(child.bytes)),
    el("td", { class: "num" }, percent(measureOf([doneFiles, doneBytes]), measureOf([child.files, child.bytes]))),
    el("td", {}, stateBar(child.states)), el("td", { class: "path" }, key ? "→ " + key : ""));
  }

  function stateBar(states) {
    const entries = orderedStates(states);
    const total = entries.reduce((a, [, v]) => a + measureOf(v), 0);
    const title = entries.map(([s, v]) => (LABELS[s] || s) + ": " + count(v[0]) + " files, " + size(v[1])).join("\n");
    const bar = el("span", { class: "bar", title: title || "nothing uploadable" });
    for (const [state, v] of entries) {
      if (!total || !measureOf(v)) continue;
      bar.append(el("i", { style: "width:" + (100 * measureOf(v) / total) + "%;background:" + (COLORS[state] || "#999") }));
    }
    return bar;
  }

  function drawTreemap(tree) {
    if (!window.echarts) return;
    if (!treemap) {
      treemap = echarts.init(document.getElementById("treemap"));
      treemap.on("click", (p) => { if (p.data && p.data.kind === "dir") go(p.data.path); });
      window.addEventListener("resize", () => treemap.resize());
    }
    // Each child is a rectangle of its size, cut into one block per state (done, pending,
    // failed, ...) in its colour; the largest block carries the child's name.
    const measured = (c) => (tree.quick ? c.bytes : measureOf([c.files, c.bytes]));
    const nodes = tree.children.filter((c) => measured(c) > 0).map((c) => {
      const states = orderedStates(c.states).filter(([st, v]) => st !== "gone" && measureOf(v) > 0);
      const [doneFiles, doneBytes] = doneOf(c);
      const done = tree.quick ? "…" : percent(measureOf([doneFiles, doneBytes]), measureOf([c.files, c.bytes]));
      const info = { path: c.path, kind: c.kind, done: done, states: states };
      const blocks = states.length ? states : [["pending", [c.files, c.bytes]]];
      const largest = Math.max(...blocks.map(([, v]) => measureOf(v)));
      let named = false;
      return {
        name: c.name, value: measured(c), ...info,
        children: blocks.map(([st, v]) => {
          const primary = !named && measureOf(v) === largest;
          named = named || primary;
          return {
            name: c.name, value: tree.quick ? c.bytes : measureOf(v), state: st, primary: primary,
            total: measured(c), ...info, itemStyle: { color: COLORS[st] || "#999" },
          };
        }),
      };
    });
    treemap.setOption({
      animation: false,
      tooltip: {
        formatter: (p) => {
          const d = p.data || {};
          const lines = [(d.path || "") + (d.kind === "dir" ? "/" : ""), d.done + " done"];
          for (const [st, v] of d.states || []) lines.push((LABELS[st] || st) + ": " + count(v[0]) + " files, " + size(v[1]));
          return lines.map((line) => echarts.format.encodeHTML(line)).join("<br>");
        },
      },
      series: [{
        type: "treemap", data: nodes, roam: false, nodeClick: false,
        breadcrumb: { show: false }, top: 4, left: 2, right: 2, bottom: 2,
        levels: [
          { itemStyle: { borderWidth: 0, gapWidth: 3 } },
          { itemStyle: { borderColor: "#fff", borderWidth: 0, gapWidth: 0 } },
          { itemStyle: { borderWidth: 0, gapWidth: 0 } },
        ],
        label: {
          show: true, color: "#1d2330", overflow: "truncate", lineHeight: 16,
          formatter: (p) => (!p.data.primary ? "" : p.data.name + (p.data.kind === "dir" ? "/" : "") + "\n" +
            (view.measure === "bytes" || tree.quick ? size(p.data.total) : count(p.data.total) + " files") +
            " · " + p.data.done + " done"),
        },
      }],
    }, true);
  }

  function drawLegend() {
    document.getElementById("legend").replaceChildren(...ORDER.map((s) =>
      el("span", {}, el("i", { style: "background:" + COLORS[s] }), LABELS[s])));
  }

  // -- throughput -----------------------------------------------------------------------------

  function drawThroughput(summary) {
    const runs = summary.runs;
    const step = summary.throughput.step;
    const s = summary.status;
    document.getElementById("runs-line").textContent = runs.length
      ? runs.length + " upload run(s); latest started " + clock(runs[runs.length - 1].started) +
        ", sent " + count(runs[runs.length - 1].files) + " files, " + size(runs[runs.length - 1].bytes) +
        "; ETA at the latest run's rate: " + duration(s.eta_seconds)
      : "no upload ran yet";
    if (!window.echarts) return;
    if (!throughput) {
      throughput = echarts.init(document.getElementById("throughput"));
      window.addEventListener("resize", () => throughput.resize());
    }
    const perStep = step === 60 ? "minute" : step / 60 + " min";
    const byRun = new Map();
    for (const p of summary.throughput.points) {
      const key = p.run === null ? "other" : "run " + p.run;
      if (!byRun.has(key)) byRun.set(key, []);
      byRun.get(key).push([p.t * 1000, p.bytes]);
    }
    const series = [...byRun.entries()].map(([name, points]) => ({
      name: name, type: "bar", stack: "bytes", data: points, barMaxWidth: 16,
    }));
    series.push({
      name: "files", type: "line", yAxisIndex: 1, showSymbol: false,
      data: summary.throughput.points.map((p) => [p.t * 1000, p.files]),
    });
    throughput.setOption({
      animation: false, legend: { top: 0, type: "scroll" },
      grid: { left: 60, right: 50, top: 30, bottom: 30 },
      tooltip: { trigger: "axis" },
      xAxis: { type: "time" },
      yAxis: [
        { type: "value", name: "bytes / " + perStep, axisLabel: { formatter: (v) => size(v) } },
        { type: "value", name: "files / " + perStep },
      ],
      series: series,
    }, true);
  }

  // -- failures -------------------------------------------------------------------------------

  function drawReasons(failed) {
    const select = document.getElementById("failure-reason");
    const have = new Set([...select.options].map((o) => o.value));
    for (const reason of Object.keys(failed)) {
      if (!have.has(reason)) select.append(el("option", { value: reason }, LABELS[reason] || reason));
    }
  }

  async function loadFailures() {
    const reason = document.getElementById("failure-reason").value;
    const text = document.getElementById("failure-filter").value;
    const found = await source.failures(reason, text);
    document.getElementById("failure-count").textContent = "(" + count(found.count) + ")";
    document.querySelector("#failures tbody").replaceChildren(...found.failures.map((f) =>
      el("tr", { dataset: { path: f.path, reason: f.reason } },
        el("td", { class: "path" }, f.path), el("td", {}, LABELS[f.reason] || f.reason),
        el("td", { class: "num" }, count(f.attempts)), el("td", {}, clock(f.at)),
        el("td", { class: "error" }, f.error))));
  }

  // -- navigation and refresh ----------------------------------------------------------------

  function pathFromHash() {
    const hash = decodeURIComponent(location.hash.replace(/^#/, ""));
    return hash.startsWith("/") ? hash.slice(1) : "";
  }

  function go(path) {
    location.hash = "/" + path;
  }

  // A directory first drawn from its sizes alone (one index lookup on the server), then
  // with the states below each child once they are summed; a late answer for a directory
  // left meanwhile is dropped.
  async function loadTree(quickFirst) {
    const path = view.path;
    if (quickFirst && source.quickTree) {
      const quick = await source.quickTree(path);
      if (path === view.path && (!view.tree || view.tree.path !== path || view.tree.quick)) {
        view.tree = quick;
        drawTree(quick);
      }
    }
    const full = await source.tree(path);
    if (path === view.path) {
      view.tree = full;
      drawTree(full);
    }
  }

  async function loadSummary() {
    view.summary = await source.summary();
    drawTotals(view.summary);
    drawThroughput(view.summary);
  }

  async function refresh(first) {
    await Promise.all([loadSummary(), loadTree(first), loadFailures()]);
    document.body.dataset.refreshed = String((Number(document.body.dataset.refreshed) || 0) + 1);
  }

  function schedule() {
    setTimeout(async () => {
      try { await refresh(); } catch (err) {
        document.getElementById("updated").textContent = "· not updated: " + err.message;
      }
      schedule();
    }, (CONFIG.refresh || 3) * 1000);
  }

  window.addEventListener("hashchange", () => { view.path = pathFromHash(); loadTree(true); });
  for (const button of document.querySelectorAll("[data-measure]")) {
    button.addEventListener("click", () => {
      view.measure = button.dataset.measure;
      for (const b of document.querySelectorAll("[data-measure]")) b.classList.toggle("active", b === button);
      if (view.tree) drawTree(view.tree);
    });
  }
  let typing = null;
  document.getElementById("failure-filter").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(loadFailures, 250);
  });
  document.getElementById("failure-reason").addEventListener("change", loadFailures);
  drawLegend();
  document.getElementById("totals").textContent = "counting…";
  refresh(true).then(() => { document.body.dataset.ready = "1"; }, (err) => {
    document.getElementById("updated").textContent = "· failed to load: " + err.message;
  }).finally(() => { if (CONFIG.mode === "live") schedule(); });
})();
