"""``kilnrt inspect PLAN --html OUT.html``: the engine as one self-contained interactive page.

The page holds everything it needs (no CDN, no network): the inspector's JSON
(:func:`kilnrt.engine.inspector.describe_engine`) in a ``<script type="application/json"
id="kilnrt-engine">`` element, a graph layout computed here (each layer one rank below the
deepest layer it reads from), and a small vanilla-JS renderer that draws it as SVG: one box
per engine layer (kind, tactic, precision; coloured by precision, or by time when times are
known), one edge per tensor, a details panel for the layer clicked (the ONNX nodes it
absorbed, tactic and timed candidates, input and output tensors with shapes, types and memory
formats, its time), a search box, zoom, and a layer table sortable by time. ``page.html#layer=3``
opens with layer 3 selected.
"""
from __future__ import annotations

import html
import json
from typing import Any, Mapping

from kilnrt.errors import ErrorCode, KilnError

BOX_W, BOX_H, GAP_X, GAP_Y = 230, 58, 30, 46


def read_profile(path: str) -> dict[str, float]:
    """Per-layer times in ms from a ``kilnrt exec --exportProfile`` (trtexec's) JSON file:
    ``[{"count": N}, {"name", "medianMs" | "averageMs", ...}, ...]``; also ``{name: ms}``."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"--layer-times: cannot read {path!r}: {exc}") from None
    if isinstance(data, dict) and all(isinstance(v, (int, float)) for v in data.values()):
        return {str(k): float(v) for k, v in data.items()}
    if isinstance(data, list):
        out = {}
        for rec in data:
            if isinstance(rec, dict) and "name" in rec:
                ms = rec.get("medianMs", rec.get("averageMs"))
                if isinstance(ms, (int, float)):
                    out[str(rec["name"])] = float(ms)
        if out:
            return out
    raise KilnError(ErrorCode.INVALID_ARGUMENT,
                    f"--layer-times: {path!r} is not a per-layer profile; give the JSON file of "
                    "kilnrt exec --exportProfile=FILE (trtexec's format) or a {\"layer\": ms} object")


def engine_graph(data: Mapping[str, Any]) -> dict[str, Any]:
    """Nodes (engine inputs, layers, engine outputs) with positions, and edges (one per tensor
    read), from :func:`describe_engine`'s dict."""
    producer: dict[str, str] = {}
    rank: dict[str, int] = {}
    nodes: list[dict[str, Any]] = []
    for t in data["io"]:
        if t["mode"] == "input":
            node_id = f"in:{t['name']}"
            producer[t["name"]] = node_id
            rank[node_id] = 0
            nodes.append({"id": node_id, "type": "input", "label": t["name"], "dtype": t["dtype"],
                          "shape": t["shape"]})
    edges = []
    for layer in data["layers"]:
        node_id = f"layer:{layer['index']}"
        sources = []
        for t in layer["inputs"]:
            src = producer.get(t["name"])
            if src is not None and src != node_id:
                sources.append(src)
                edges.append({"from": src, "to": node_id, "tensor": t["name"], "shape": t.get("shape"),
                              "dtype": t.get("dtype")})
        rank[node_id] = 1 + max((rank[s] for s in sources), default=0)
        for t in layer["outputs"]:
            producer[t["name"]] = node_id
        nodes.append({"id": node_id, "type": "layer", "layer": layer["index"], "label": layer["name"]})
    for t in data["io"]:
        if t["mode"] == "output":
            node_id = f"out:{t['name']}"
            src = producer.get(t["name"])
            rank[node_id] = 1 + (rank[src] if src is not None else 0)
            if src is not None:
                edges.append({"from": src, "to": node_id, "tensor": t["name"], "shape": t["shape"],
                              "dtype": t["dtype"]})
            nodes.append({"id": node_id, "type": "output", "label": t["name"], "dtype": t["dtype"],
                          "shape": t["shape"]})
    columns: dict[int, int] = {}
    for node in nodes:
        r = rank[node["id"]]
        node["rank"], node["col"] = r, columns.get(r, 0)
        columns[r] = node["col"] + 1
    widest = max(columns.values(), default=1)
    for node in nodes:           # centre each rank's row
        offset = (widest - columns[node["rank"]]) * (BOX_W + GAP_X) / 2
        node["x"] = round(GAP_X + offset + node["col"] * (BOX_W + GAP_X), 1)
        node["y"] = GAP_Y + node["rank"] * (BOX_H + GAP_Y)
    return {"nodes": nodes, "edges": edges, "box": [BOX_W, BOX_H],
            "width": GAP_X * 2 + widest * (BOX_W + GAP_X),
            "height": GAP_Y * 2 + (max(rank.values(), default=0) + 1) * (BOX_H + GAP_Y)}


def _json_for_script(value: Any) -> str:
    """JSON that cannot end its ``<script>`` element early."""
    return json.dumps(value, default=str).replace("</", "<\\/").replace("<!--", "<\\!--")


def render_html(engine, timings: Mapping[str, float] | None = None, *, times_source: str | None = None) -> str:
    """The page for ``engine`` (``timings``: measured per-layer ms, from ``times_source``)."""
    from kilnrt.engine.inspector import describe_engine

    data = describe_engine(engine, timings)
    data["times_source"] = times_source if timings else None
    data["graph"] = engine_graph(data)
    title = f"kilnrt engine: {engine.name} ({len(engine.layers)} layers on {engine.device_name})"
    return (_PAGE.replace("%TITLE%", html.escape(title))
            .replace("%STYLE%", _STYLE).replace("%SCRIPT%", _SCRIPT)
            .replace("%DATA%", _json_for_script(data)))


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>%TITLE%</title>
<meta name="generator" content="kilnrt inspect --html"><style>%STYLE%</style></head>
<body>
<header><h1>%TITLE%</h1><div id="summary"></div>
<div id="controls"><input id="search" type="search" placeholder="find a layer, ONNX node or tactic">
<label>colour by <select id="colour"><option value="precision">precision</option>
<option value="time">time</option></select></label>
<button id="zoom-out" type="button">&minus;</button><button id="zoom-in" type="button">+</button>
<span id="legend"></span></div></header>
<main><div id="graph-wrap"><svg id="graph" xmlns="http://www.w3.org/2000/svg"></svg></div>
<aside id="details"><p class="hint">Click a layer for its details.</p></aside></main>
<section><h2>Layers</h2><table id="layers"><thead><tr>
<th data-key="index">#</th><th data-key="name">layer</th><th data-key="kind">kind</th>
<th data-key="tactic">tactic</th><th data-key="precision">precision</th>
<th data-key="origin_text">from ONNX nodes</th><th data-key="time">time ms</th></tr></thead>
<tbody></tbody></table></section>
<script type="application/json" id="kilnrt-engine">%DATA%</script>
<script>%SCRIPT%</script>
</body></html>
"""

_STYLE = """
body{font:13px system-ui,sans-serif;margin:0;color:#222}
header{padding:8px 14px;border-bottom:1px solid #ccc;position:sticky;top:0;background:#fff;z-index:2}
h1{font-size:16px;margin:0 0 4px}h2{font-size:15px;margin:12px 14px}
#summary{color:#555;margin-bottom:6px}#controls{display:flex;gap:8px;align-items:center;flex-wrap:wrap}
#search{width:280px}#legend span{display:inline-block;padding:1px 6px;margin-right:4px;border-radius:3px}
main{display:flex;height:70vh}#graph-wrap{flex:1;overflow:auto;border-right:1px solid #ccc;background:#fafafa}
aside{width:380px;overflow:auto;padding:8px 12px}aside table{border-collapse:collapse;width:100%}
aside td{border-top:1px solid #eee;padding:2px 4px;vertical-align:top;word-break:break-all}
.hint{color:#777}.node rect{stroke:#555;stroke-width:1;rx:6}.node{cursor:pointer}
.node text{font-size:11px;pointer-events:none}.node .kind{font-weight:600}
.node.io rect{fill:#fff;stroke-dasharray:4 2}.node.selected rect{stroke:#000;stroke-width:3}
.node.dim{opacity:.25}.edge{fill:none;stroke:#999;stroke-width:1.2}.edge.hot{stroke:#d33;stroke-width:2}
#layers{border-collapse:collapse;margin:0 14px 20px;font-size:12px}
#layers th{cursor:pointer;background:#eee;text-align:left;padding:3px 6px}
#layers td{border-top:1px solid #eee;padding:2px 6px}#layers tr:hover{background:#f4f4ff;cursor:pointer}
"""

_SCRIPT = r"""
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("kilnrt-engine").textContent);
  const g = data.graph, layers = data.layers, SVG = "http://www.w3.org/2000/svg";
  const [W, H] = g.box;
  const colours = {FLOAT: "#cfe2ff", HALF: "#c8f0d0", BF16: "#b8ece6", INT8: "#ffd9b0",
                   INT32: "#e6d8f5", INT64: "#e6d8f5", BOOL: "#eeeeee"};
  const timeOf = l => (l.time_ms !== null && l.time_ms !== undefined) ? l.time_ms : l.build_time_ms;
  const total = layers.reduce((s, l) => s + (timeOf(l) || 0), 0);
  const maxTime = layers.reduce((m, l) => Math.max(m, timeOf(l) || 0), 0);
  const text = (v) => (v === null || v === undefined) ? "" : String(v);
  const shape = (s) => s ? "[" + s.join(",") + "]" : "?";
  function el(name, attrs, parent) {
    const e = document.createElementNS(SVG, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function heat(t) {
    if (!t || !maxTime) return "#f0f0f0";
    const f = Math.min(1, t / maxTime);
    return "rgb(255," + Math.round(240 - 190 * f) + "," + Math.round(200 - 180 * f) + ")";
  }
  function fill(layer, mode) {
    return mode === "time" ? heat(timeOf(layer)) : (colours[layer.precision] || "#eeeeee");
  }
  const summary = document.getElementById("summary");
  summary.textContent = data.device + " (" + data.device_name + "), kilnrt " + data.kilnrt_version + ", " +
    layers.length + " layers; weights " + data.weights_bytes + " B" +
    (data.activation_bytes !== null ? ", activations " + data.activation_bytes + " B" : "") +
    (total ? "; layer times: " + total.toFixed(4) + " ms in all (" +
      (data.times_source || "build-time tactic timing") + ")" : "; no layer times (run with --profile)");

  const svg = document.getElementById("graph");
  let zoom = 1;
  function applyZoom() {
    svg.setAttribute("width", g.width * zoom); svg.setAttribute("height", g.height * zoom);
  }
  svg.setAttribute("viewBox", "0 0 " + g.width + " " + g.height);
  applyZoom();
  const byId = {};
  g.nodes.forEach(n => { byId[n.id] = n; });
  const edgeLayer = el("g", {}, svg), nodeLayer = el("g", {}, svg);
  const edgeEls = g.edges.map(e => {
    const a = byId[e.from], b = byId[e.to];
    const x1 = a.x + W / 2, y1 = a.y + H, x2 = b.x + W / 2, y2 = b.y, my = (y1 + y2) / 2;
    const p = el("path", {d: "M" + x1 + "," + y1 + " C" + x1 + "," + my + " " + x2 + "," + my + " " + x2 + "," + y2,
                          "class": "edge"}, edgeLayer);
    el("title", {}, p).textContent = e.tensor + " " + shape(e.shape) + " " + text(e.dtype);
    return {edge: e, el: p};
  });
  const nodeEls = g.nodes.map(n => {
    const grp = el("g", {"class": "node" + (n.type === "layer" ? "" : " io"),
                         transform: "translate(" + n.x + "," + n.y + ")"}, nodeLayer);
    const rect = el("rect", {width: W, height: H}, grp);
    const lines = [];
    if (n.type === "layer") {
      const l = layers[n.layer];
      const t = timeOf(l);
      lines.push([l.kind.toLowerCase() + (t ? "  " + t.toFixed(3) + " ms" : ""), "kind"]);
      lines.push([l.name, ""]);
      lines.push([l.tactic + " | " + text(l.precision), ""]);
    } else {
      lines.push([n.type, "kind"]); lines.push([n.label, ""]);
      lines.push([shape(n.shape) + " " + text(n.dtype), ""]);
    }
    lines.forEach((ln, i) => {
      const s = ln[0].length > 36 ? ln[0].slice(0, 35) + "\u2026" : ln[0];
      el("text", {x: 8, y: 16 + i * 15, "class": ln[1]}, grp).textContent = s;
    });
    el("title", {}, grp).textContent = n.type === "layer" ? layers[n.layer].name + "\nfrom " +
      layers[n.layer].origin_text : n.label;
    grp.addEventListener("click", () => select(n.id));
    return {node: n, el: grp, rect: rect};
  });
  function paint() {
    const mode = document.getElementById("colour").value;
    nodeEls.forEach(x => { if (x.node.type === "layer") x.rect.setAttribute("fill", fill(layers[x.node.layer], mode)); });
    const legend = document.getElementById("legend");
    legend.innerHTML = "";
    if (mode === "time") {
      const s = document.createElement("span");
      s.textContent = maxTime ? "light: fast, red: slowest (" + maxTime.toFixed(4) + " ms)" : "no times known";
      legend.appendChild(s);
    } else {
      const seen = new Set(layers.map(l => l.precision));
      Object.keys(colours).filter(k => seen.has(k)).forEach(k => {
        const s = document.createElement("span"); s.style.background = colours[k]; s.textContent = k;
        legend.appendChild(s);
      });
    }
  }
  function row(table, k, v) {
    const tr = table.insertRow(); tr.insertCell().textContent = k; tr.insertCell().textContent = v;
  }
  function tensorText(t) {
    return t.name + " " + shape(t.shape) + " " + text(t.dtype) + (t.format ? " " + t.format : "");
  }
  function select(id) {
    nodeEls.forEach(x => x.el.classList.toggle("selected", x.node.id === id));
    edgeEls.forEach(x => x.el.classList.toggle("hot", x.edge.from === id || x.edge.to === id));
    const n = byId[id], box = document.getElementById("details");
    box.innerHTML = "";
    const h = document.createElement("h3"); h.textContent = n.label; box.appendChild(h);
    const table = document.createElement("table"); box.appendChild(table);
    if (n.type !== "layer") {
      row(table, "engine " + n.type, shape(n.shape) + " " + text(n.dtype));
      return;
    }
    const l = layers[n.layer];
    row(table, "kind", l.kind); row(table, "tactic", l.tactic); row(table, "precision", text(l.precision));
    row(table, "ONNX nodes", l.origin.join("\n") || "(none)");
    const t = timeOf(l);
    row(table, "time", t ? t.toFixed(4) + " ms" + (l.time_ms !== null && l.time_ms !== undefined ? " (measured)" :
      " (build-time timing)") + (total ? ", " + (100 * t / total).toFixed(1) + "%" : "") : "unknown");
    l.inputs.forEach((x, i) => row(table, "input " + i, tensorText(x)));
    l.outputs.forEach((x, i) => row(table, "output " + i, tensorText(x)));
    Object.keys(l.candidates || {}).forEach(k => row(table, "candidate", k + ": " + Number(l.candidates[k]).toFixed(4) + " ms"));
    Object.keys(l.bucket_tactics || {}).forEach(k => row(table, "bucket " + k, l.bucket_tactics[k]));
    if (l.writes_into) row(table, "writes into", l.writes_into.tensor + " [" + l.writes_into.start + ":" +
      l.writes_into.end + "]");
    const node = nodeEls.find(x => x.node.id === id);
    if (node && node.el.scrollIntoView) node.el.scrollIntoView({block: "nearest", inline: "nearest"});
  }
  document.getElementById("search").addEventListener("input", (ev) => {
    const q = ev.target.value.trim().toLowerCase();
    nodeEls.forEach(x => {
      const l = x.node.type === "layer" ? layers[x.node.layer] : null;
      const hay = (x.node.label + " " + (l ? l.origin_text + " " + l.tactic + " " + l.kind : "")).toLowerCase();
      x.el.classList.toggle("dim", q !== "" && hay.indexOf(q) < 0);
    });
  });
  document.getElementById("colour").addEventListener("change", paint);
  document.getElementById("zoom-in").addEventListener("click", () => { zoom = Math.min(4, zoom * 1.25); applyZoom(); });
  document.getElementById("zoom-out").addEventListener("click", () => { zoom = Math.max(0.1, zoom / 1.25); applyZoom(); });
  const tbody = document.querySelector("#layers tbody");
  let sortKey = "index", sortDir = 1;
  function fillTable() {
    const rows = layers.slice().sort((a, b) => {
      const va = sortKey === "time" ? (timeOf(a) || 0) : a[sortKey], vb = sortKey === "time" ? (timeOf(b) || 0) : b[sortKey];
      return (va > vb ? 1 : va < vb ? -1 : 0) * sortDir;
    });
    tbody.innerHTML = "";
    rows.forEach(l => {
      const tr = tbody.insertRow();
      [l.index, l.name, l.kind.toLowerCase(), l.tactic, text(l.precision), l.origin_text,
       timeOf(l) ? timeOf(l).toFixed(4) : ""].forEach(v => { tr.insertCell().textContent = v; });
      tr.addEventListener("click", () => select("layer:" + l.index));
    });
  }
  document.querySelectorAll("#layers th").forEach(th => th.addEventListener("click", () => {
    const k = th.getAttribute("data-key");
    sortDir = (sortKey === k) ? -sortDir : (k === "time" ? -1 : 1); sortKey = k; fillTable();
  }));
  if (total) document.getElementById("colour").value = "time";
  paint(); fillTable();
  const wanted = /^#layer=(\d+)$/.exec(window.location.hash);   // a link to one layer: page.html#layer=3
  if (wanted && byId["layer:" + wanted[1]]) select("layer:" + wanted[1]);
  document.body.setAttribute("data-rendered", String(nodeEls.length));
})();
"""

__all__ = ["engine_graph", "read_profile", "render_html"]
