// celeriac dashboard: live updates from the server's event stream, and the charts.
// Every value is written with textContent or setAttribute, never as HTML.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = ["#2f7dd1", "#d9822b", "#7a52c7", "#2a9d8f", "#c2437a", "#6b8e23"];
  const body = document.body;
  const base = body.dataset.base || "";

  // -- formatting ------------------------------------------------------------------------

  function pad(n, width) { return String(n).padStart(width || 2, "0"); }

  const FORMATS = {
    seconds: (v) => v == null ? "-" : v < 1 ? (v * 1000).toFixed(v < 0.01 ? 2 : 1) + " ms" : v.toFixed(2) + " s",
    clock: (v) => v ? new Date(v * 1000).toTimeString().slice(0, 8) : "-",
    when: (v) => {
      if (!v) { return "-"; }
      const d = new Date(v * 1000);
      return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
        d.toTimeString().slice(0, 8) + "." + pad(d.getMilliseconds(), 3);
    },
    ago: (v) => v == null ? "-" : v.toFixed(1) + " s ago",
    list: (v) => Array.isArray(v) ? v.join(", ") : "-",
    count: (v) => Array.isArray(v) ? String(v.length) : "-",
    percent: (v) => v == null ? "" : Math.round(v * 100) + "%",
    json: (v) => JSON.stringify(v),
  };

  function lookup(data, path) {
    return path.split(".").reduce((value, key) => value == null ? undefined : value[key], data);
  }

  // Write one value into one element, as its data-fmt says.
  function put(el, value, data) {
    const fmt = el.dataset.fmt;
    if (el.tagName === "PROGRESS") {
      el.hidden = value == null;
      el.value = value == null ? 0 : value;
    } else if (el.tagName === "INPUT") {
      el.value = value == null ? "" : value;
    } else if (fmt === "badge") {
      el.textContent = value == null ? "" : value;
      el.className = "badge " + (el.dataset.prefix || "state-") + value;
    } else if (fmt === "history") {
      el.replaceChildren(...(value || []).map((h) => {
        const line = document.createElement("div");
        line.textContent = FORMATS.clock(h.at) + " " + h.event + " (" + h.reason + "), delivery " + h.deliveries;
        return line;
      }));
    } else if (el.tagName === "A" && el.dataset.href !== undefined) {
      el.textContent = value == null ? "?" : value;
      el.setAttribute("href", base + el.dataset.href + encodeURIComponent(value || ""));
    } else {
      let text = FORMATS[fmt] ? FORMATS[fmt](value) : value == null ? (el.tagName === "PRE" ? "" : "-") : String(value);
      if (el.dataset.more && lookup(data, el.dataset.more)) { text += "+"; }
      if (el.textContent !== text) { el.textContent = text; }
    }
  }

  // -- tables: rows matched by key, updated in place, added from a <template> -----------------

  function rowKey(tbody, item) {
    const cols = (tbody.dataset.keyCols || "").split(",").filter(Boolean);
    if (cols.length) { return cols.map((c) => item[c]).join("|"); }
    return String(item.hostname || item.uuid || item.id || item.name || "");
  }

  function freshActionIds(root) {
    root.querySelectorAll("[data-action-id]").forEach((input) => {
      const bytes = new Uint8Array(12);
      crypto.getRandomValues(bytes);
      input.value = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    });
  }

  function syncRows(tbody, items, data) {
    const existing = new Map();
    Array.from(tbody.children).forEach((row) => existing.set(row.dataset.key, row));
    const template = document.getElementById(tbody.dataset.template);
    items.forEach((item, index) => {
      const key = rowKey(tbody, item);
      let row = existing.get(key);
      if (!row) {
        if (!template) { return; }
        row = template.content.firstElementChild.cloneNode(true);
        row.dataset.key = key;
        freshActionIds(row);
        bindForms(row);
      }
      existing.delete(key);
      row.querySelectorAll("[data-col]").forEach((el) => put(el, item[el.dataset.col], data));
      if (tbody.children[index] !== row) { tbody.insertBefore(row, tbody.children[index] || null); }
    });
    existing.forEach((row) => row.remove());
  }

  function syncPairs(tbody, mapping) {
    const rows = Object.keys(mapping || {}).sort().map((name) => {
      const row = document.createElement("tr");
      const label = document.createElement("td");
      const value = document.createElement("td");
      label.textContent = name;
      value.textContent = String(mapping[name]);
      value.className = "num";
      row.append(label, value);
      return row;
    });
    tbody.replaceChildren(...rows);
  }

  // -- the workflow tree ------------------------------------------------------------------

  function treeNode(node, current) {
    const li = document.createElement("li");
    const link = document.createElement("a");
    link.className = "mono" + (node.uuid === current ? " here" : "");
    link.setAttribute("href", base + "/tasks/" + encodeURIComponent(node.uuid));
    link.textContent = (node.name || "?") + " " + node.uuid.slice(0, 8);
    const badge = document.createElement("span");
    badge.className = "badge state-" + node.state;
    badge.textContent = node.state;
    li.append(link, " ", badge);
    if (node.children && node.children.length) {
      const list = document.createElement("ul");
      node.children.forEach((child) => list.append(treeNode(child, current)));
      li.append(list);
    }
    return li;
  }

  // -- charts ---------------------------------------------------------------------------------

  function svg(name, attributes, text) {
    const el = document.createElementNS(SVG, name);
    Object.keys(attributes).forEach((key) => el.setAttribute(key, attributes[key]));
    if (text !== undefined) { el.textContent = text; }
    return el;
  }

  function niceMax(value) {
    if (value <= 1) { return 1; }
    const step = Math.pow(10, Math.floor(Math.log10(value)));
    return [1, 2, 5, 10].map((m) => m * step).find((m) => m >= value);
  }

  // Draw lines [{label, color, points: [[x, y], ...]}] over x in [x0, x1].
  function drawLines(chart, lines, x0, x1) {
    const width = 600, height = 180, left = 40, right = 8, top = 8, bottom = 22;
    const top_value = niceMax(Math.max(0, ...lines.flatMap((l) => l.points.map((p) => p[1]))));
    const sx = (x) => left + (x - x0) / Math.max(1, x1 - x0) * (width - left - right);
    const sy = (y) => height - bottom - y / top_value * (height - top - bottom);
    const parts = [];
    [0, top_value / 2, top_value].forEach((v) => {
      parts.push(svg("line", {x1: left, x2: width - right, y1: sy(v), y2: sy(v), class: "grid"}));
      parts.push(svg("text", {x: left - 4, y: sy(v) + 4, class: "axis", "text-anchor": "end"},
        Number.isInteger(v) ? String(v) : v.toFixed(1)));
    });
    [[x0, "-" + Math.round(x1 - x0) + " s"], [x1, "now"]].forEach(([x, label], i) => {
      parts.push(svg("text", {x: sx(x), y: height - 6, class: "axis", "text-anchor": i ? "end" : "start"}, label));
    });
    lines.forEach((line) => {
      const points = line.points.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" ");
      parts.push(svg("polyline", {points: points, fill: "none", stroke: line.color, "stroke-width": 2,
        class: "series", "data-label": line.label}));
    });
    chart.replaceChildren(...parts);
  }

  function drawRate(series) {
    const chart = document.querySelector("svg[data-chart=rate]");
    if (!chart || !series || !series.length) { return; }
    const x0 = series[0][0], x1 = series[series.length - 1][0];
    drawLines(chart, [
      {label: "succeeded", color: "#2e9e4f", points: series.map((s) => [s[0], s[1]])},
      {label: "failed", color: "#d64545", points: series.map((s) => [s[0], s[2]])},
    ], x0, x1);
    chart.dataset.total = String(series.reduce((sum, s) => sum + s[1] + s[2], 0));
  }

  function drawDepths(history, now) {
    const chart = document.querySelector("svg[data-chart=depths]");
    if (!chart || !history) { return; }
    const names = Array.from(new Set(history.flatMap((h) => Object.keys(h[1])))).sort();
    const x1 = now || (history.length ? history[history.length - 1][0] : 0);
    const lines = names.map((name, i) => ({label: name, color: COLORS[i % COLORS.length],
      points: history.map((h) => [h[0], h[1][name] || 0])}));
    drawLines(chart, lines, x1 - 120, x1);
    const legend = document.getElementById("depth-legend");
    if (legend) {
      legend.replaceChildren(...lines.map((line) => {
        const item = document.createElement("span");
        item.className = "key";
        item.style.borderColor = line.color;
        item.textContent = line.label;
        return item;
      }));
    }
  }

  // -- applying one update ------------------------------------------------------------------

  function update(data) {
    if (!data) { return; }
    document.querySelectorAll("[data-field]").forEach((el) => put(el, lookup(data, el.dataset.field), data));
    document.querySelectorAll("tbody[data-rows]").forEach((tbody) => {
      const items = lookup(data, tbody.dataset.rows);
      if (Array.isArray(items)) { syncRows(tbody, items, data); }
    });
    document.querySelectorAll("tbody[data-pairs]").forEach((tbody) => {
      const mapping = lookup(data, tbody.dataset.pairs);
      if (mapping) { syncPairs(tbody, mapping); }
    });
    const tree = document.querySelector("[data-tree]");
    if (tree && data.tree) {
      const list = document.createElement("ul");
      list.className = "tree";
      list.append(treeNode(data.tree, tree.dataset.current));
      tree.replaceChildren(list);
    }
    if (data.series) { drawRate(data.series); }
    if (data.depth_history) { drawDepths(data.depth_history, data.now); }
    body.dataset.updated = String(Date.now());
  }

  // -- forms: confirm, and never sent twice from one page ---------------------------------------

  function bindForms(root) {
    root.querySelectorAll("form[method=post]").forEach((form) => {
      form.addEventListener("submit", (event) => {
        if (form.dataset.sent || (form.dataset.confirm && !window.confirm(form.dataset.confirm))) {
          event.preventDefault();
          return;
        }
        form.dataset.sent = "1";
        form.querySelectorAll("button").forEach((button) => { button.disabled = true; });
      });
    });
  }

  // -- the stream -----------------------------------------------------------------------------

  function connect() {
    const url = body.dataset.stream;
    const live = document.getElementById("live");
    if (!url || !window.EventSource) { return; }
    const source = new EventSource(url);
    source.onopen = () => { if (live) { live.textContent = "live"; live.className = "live on"; } };
    source.onerror = () => { if (live) { live.textContent = "reconnecting…"; live.className = "live off"; } };
    source.addEventListener(body.dataset.view, (event) => update(JSON.parse(event.data)));
  }

  document.addEventListener("DOMContentLoaded", () => {
    bindForms(document);
    const initial = document.getElementById("initial");
    if (initial) {
      drawRate(JSON.parse(initial.dataset.series || "[]"));
      drawDepths(JSON.parse(initial.dataset.depthHistory || "[]"));
    }
    connect();
  });
})();
