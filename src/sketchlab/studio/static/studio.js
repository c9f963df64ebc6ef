// sketchlab studio: the page. Plain script, no dependencies, no build step (works offline).
//
// The pad is a 256 x 256 box in raw units (QuickDraw's simplified frame, the data the models
// learned from); drawings travel to the JSON API as [[xs, ys], ...] in those units.
"use strict";

(() => {
  const BOX = 256;
  const RDP_EPSILON = 1.0;          // raw units: QuickDraw simplified its drawings with 2.0
  const MS_PER_POINT = 9;           // animation speed
  const INK = "#1d2430", MODEL_INK = "#d9480f", MUTED = "#9aa1ab";

  const $ = (id) => document.getElementById(id);
  const state = {
    models: [], limits: {}, model: null,
    strokes: [], masks: [], history: [],
    current: null, maskStart: null, maskNow: null, tool: "draw",
    a: null, b: null, result: null, tiles: [], running: 0,
  };
  window.sketchlabStudio = state;   // for scripts and tests that drive the page

  // ---- small helpers ---------------------------------------------------------------------------
  function setStatus(text, kind) {
    const el = $("status");
    el.textContent = text;
    el.className = kind || "";
  }

  function pointsOf(strokes) {
    let n = 0;
    for (const [xs] of strokes) n += xs.length;
    return n;
  }

  function bounds(strokeSets) {
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const strokes of strokeSets) {
      for (const [xs, ys] of strokes) {
        for (let i = 0; i < xs.length; i++) {
          x0 = Math.min(x0, xs[i]); x1 = Math.max(x1, xs[i]);
          y0 = Math.min(y0, ys[i]); y1 = Math.max(y1, ys[i]);
        }
      }
    }
    if (!isFinite(x0)) return { x0: 0, y0: 0, x1: BOX, y1: BOX };
    return { x0, y0, x1, y1 };
  }

  // A transform that fits `b` into a size x size square with a margin, keeping the aspect.
  function fit(b, size, margin) {
    // at least 10 raw units across, so a dot is not magnified into a blob
    const w = Math.max(b.x1 - b.x0, 10), h = Math.max(b.y1 - b.y0, 10);
    const s = (size - 2 * margin) / Math.max(w, h);
    return { s, dx: size / 2 - s * (b.x0 + b.x1) / 2, dy: size / 2 - s * (b.y0 + b.y1) / 2 };
  }

  // Ramer-Douglas-Peucker on one stroke (as sketch-rnn's data was simplified).
  function rdp(xs, ys, eps) {
    const n = xs.length;
    if (n < 3) return [xs.slice(), ys.slice()];
    const keep = new Uint8Array(n);
    keep[0] = keep[n - 1] = 1;
    const stack = [[0, n - 1]];
    while (stack.length) {
      const [a, b] = stack.pop();
      const ax = xs[a], ay = ys[a], bx = xs[b], by = ys[b];
      const dx = bx - ax, dy = by - ay, len = Math.hypot(dx, dy);
      let worst = -1, far = 0;
      for (let i = a + 1; i < b; i++) {
        const d = len > 0 ? Math.abs(dy * (xs[i] - ax) - dx * (ys[i] - ay)) / len
                          : Math.hypot(xs[i] - ax, ys[i] - ay);
        if (d > far) { far = d; worst = i; }
      }
      if (worst >= 0 && far > eps) {
        keep[worst] = 1;
        stack.push([a, worst], [worst, b]);
      }
    }
    const ox = [], oy = [];
    for (let i = 0; i < n; i++) if (keep[i]) { ox.push(xs[i]); oy.push(ys[i]); }
    return [ox, oy];
  }

  const round = (v) => Math.round(v * 100) / 100;

  // ---- the pad -----------------------------------------------------------------------------------
  const pad = $("pad");
  const pctx = pad.getContext("2d");

  function sizePad() {
    const dpr = window.devicePixelRatio || 1;
    const css = pad.clientWidth || 512;
    pad.width = Math.round(css * dpr);
    pad.height = Math.round(css * dpr);
    drawPad();
  }

  function strokePath(ctx, xs, ys, t, upto) {
    const n = upto === undefined ? xs.length : Math.min(upto, xs.length);
    if (n <= 0) return;
    ctx.beginPath();
    ctx.moveTo(xs[0] * t.s + t.dx, ys[0] * t.s + t.dy);
    if (n === 1) ctx.lineTo(xs[0] * t.s + t.dx + 0.01, ys[0] * t.s + t.dy);
    for (let i = 1; i < n; i++) ctx.lineTo(xs[i] * t.s + t.dx, ys[i] * t.s + t.dy);
    ctx.stroke();
  }

  function drawPad() {
    const t = { s: pad.width / BOX, dx: 0, dy: 0 };
    pctx.setTransform(1, 0, 0, 1, 0, 0);
    pctx.fillStyle = "#fff";
    pctx.fillRect(0, 0, pad.width, pad.height);
    pctx.lineCap = "round";
    pctx.lineJoin = "round";
    pctx.lineWidth = Math.max(2, pad.width / 180);
    pctx.strokeStyle = INK;
    for (const [xs, ys] of state.strokes) strokePath(pctx, xs, ys, t);
    if (state.current) strokePath(pctx, state.current[0], state.current[1], t);
    const rects = state.masks.slice();
    if (state.maskStart && state.maskNow) rects.push(rectOf(state.maskStart, state.maskNow));
    for (const m of rects) {
      pctx.fillStyle = "rgba(220, 38, 38, 0.18)";
      pctx.strokeStyle = "rgba(220, 38, 38, 0.8)";
      pctx.lineWidth = 1.5;
      const x = m.x0 * t.s, y = m.y0 * t.s, w = (m.x1 - m.x0) * t.s, h = (m.y1 - m.y0) * t.s;
      pctx.fillRect(x, y, w, h);
      pctx.setLineDash([6, 4]);
      pctx.strokeRect(x, y, w, h);
      pctx.setLineDash([]);
      pctx.strokeStyle = INK;
      pctx.lineWidth = Math.max(2, pad.width / 180);
    }
    const n = pointsOf(state.strokes);
    $("pad-count").textContent = state.strokes.length
      ? `${state.strokes.length} strokes, ${n} points` + (state.masks.length ? `, ${state.masks.length} masks` : "")
      : "";
  }

  function rawPoint(ev) {
    const r = pad.getBoundingClientRect();
    const x = (ev.clientX - r.left) * BOX / r.width, y = (ev.clientY - r.top) * BOX / r.height;
    return [Math.min(Math.max(x, 0), BOX), Math.min(Math.max(y, 0), BOX)];
  }

  function rectOf(p, q) {
    return { x0: Math.min(p[0], q[0]), y0: Math.min(p[1], q[1]),
             x1: Math.max(p[0], q[0]), y1: Math.max(p[1], q[1]) };
  }

  pad.addEventListener("pointerdown", (ev) => {
    if (ev.pointerType === "mouse" && ev.button !== 0) return;
    ev.preventDefault();
    pad.setPointerCapture(ev.pointerId);
    const p = rawPoint(ev);
    if (state.tool === "mask") { state.maskStart = p; state.maskNow = p; }
    else state.current = [[p[0]], [p[1]]];
    drawPad();
  });

  pad.addEventListener("pointermove", (ev) => {
    if (!state.current && !state.maskStart) return;
    ev.preventDefault();
    const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [ev];
    for (const e of (events.length ? events : [ev])) {
      const p = rawPoint(e);
      if (state.maskStart) { state.maskNow = p; continue; }
      const [xs, ys] = state.current;
      if (Math.hypot(p[0] - xs[xs.length - 1], p[1] - ys[ys.length - 1]) >= 0.5) {
        xs.push(p[0]); ys.push(p[1]);
      }
    }
    drawPad();
  });

  function endPointer(ev) {
    if (state.maskStart) {
      const m = rectOf(state.maskStart, state.maskNow || state.maskStart);
      state.maskStart = state.maskNow = null;
      if (m.x1 - m.x0 > 1 && m.y1 - m.y0 > 1) { state.masks.push(m); state.history.push("mask"); }
    } else if (state.current) {
      const [xs, ys] = rdp(state.current[0], state.current[1], RDP_EPSILON);
      state.current = null;
      state.strokes.push([xs.map(round), ys.map(round)]);
      state.history.push("stroke");
    }
    if (ev && pad.hasPointerCapture(ev.pointerId)) pad.releasePointerCapture(ev.pointerId);
    drawPad();
  }
  pad.addEventListener("pointerup", endPointer);
  pad.addEventListener("pointercancel", endPointer);

  function undo() {
    const last = state.history.pop();
    if (last === "mask") state.masks.pop();
    else if (last === "stroke") state.strokes.pop();
    drawPad();
  }
  $("undo").addEventListener("click", undo);
  document.addEventListener("keydown", (ev) => {
    if ((ev.ctrlKey || ev.metaKey) && ev.key.toLowerCase() === "z") { ev.preventDefault(); undo(); }
  });
  $("clear").addEventListener("click", () => {
    state.strokes = []; state.masks = []; state.history = []; drawPad();
  });

  function setTool(tool) {
    state.tool = tool;
    for (const name of ["draw", "mask"]) {
      const b = $(`tool-${name}`);
      b.classList.toggle("on", name === tool);
      b.setAttribute("aria-pressed", String(name === tool));
    }
    pad.classList.toggle("masking", tool === "mask");
  }
  $("tool-draw").addEventListener("click", () => setTool("draw"));
  $("tool-mask").addEventListener("click", () => setTool("mask"));

  // Put a drawing on the pad (a result to keep working on): moved into the pad's box if outside.
  function toPad(strokes) {
    const b = bounds([strokes]);
    let dx = 0, dy = 0, s = 1;
    if (b.x0 < 0 || b.y0 < 0 || b.x1 > BOX || b.y1 > BOX) {
      s = Math.min(1, (BOX - 24) / Math.max(b.x1 - b.x0, b.y1 - b.y0, 1e-6));
      dx = BOX / 2 - s * (b.x0 + b.x1) / 2;
      dy = BOX / 2 - s * (b.y0 + b.y1) / 2;
    }
    state.strokes = strokes.map(([xs, ys]) => [xs.map((x) => round(x * s + dx)),
                                               ys.map((y) => round(y * s + dy))]);
    state.masks = [];
    state.history = state.strokes.map(() => "stroke");
    drawPad();
  }

  // ---- A and B ------------------------------------------------------------------------------------
  function drawThumb(canvas, strokes) {
    const ctx = canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!strokes) return;
    const t = fit(bounds([strokes]), canvas.width, 4);
    ctx.lineWidth = 1.5; ctx.lineCap = "round"; ctx.lineJoin = "round"; ctx.strokeStyle = INK;
    for (const [xs, ys] of strokes) strokePath(ctx, xs, ys, t);
  }
  for (const which of ["a", "b"]) {
    $(`set-${which}`).addEventListener("click", () => {
      if (!state.strokes.length) { setStatus("draw something first", "error"); return; }
      state[which] = state.strokes.map(([xs, ys]) => [xs.slice(), ys.slice()]);
      drawThumb($(`thumb-${which}`), state[which]);
      updateButtons();
    });
  }

  // ---- models and settings ------------------------------------------------------------------------
  const ACTIONS = ["complete", "reconstruct", "heal", "sample", "interpolate"];

  function currentModel() {
    return state.models.find((m) => m.id === $("model").value) || null;
  }

  function updateButtons() {
    const m = currentModel();
    for (const action of ACTIONS) {
      const button = $(`do-${action}`);
      const can = !!m && m.actions.includes(action);
      const others = state.models.filter((o) => o.actions.includes(action)).map((o) => o.id);
      button.disabled = !can || (action === "interpolate" && !(state.a && state.b));
      button.title = can ? "" : `${m ? m.id : "this model"} cannot ${action}` +
        (others.length ? `; try ${others.join(", ")}` : "");
      if (can && action === "interpolate" && !(state.a && state.b)) {
        button.title = "set drawings A and B first (buttons above the pad)";
      }
    }
    const comp = $("component");
    comp.innerHTML = "";
    comp.append(new Option("any", ""));
    if (m && m.components) for (let k = 0; k < m.components; k++) comp.append(new Option(String(k), String(k)));
    $("component-label").hidden = !(m && m.sample_by.includes("component"));
    const cat = $("category");
    cat.innerHTML = "";
    cat.append(new Option("any", ""));
    if (m) for (const c of m.categories) cat.append(new Option(c, c));
    $("category-label").hidden = !(m && m.sample_by.includes("category"));
  }

  async function api(path, body) {
    const init = body === undefined ? {} : {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
    };
    const res = await fetch(`/api/${path}`, init);
    let data;
    try { data = await res.json(); } catch (e) { data = { error: `HTTP ${res.status}` }; }
    if (!res.ok) {
      const err = new Error(data.error || `HTTP ${res.status}`);
      err.status = res.status;
      throw err;
    }
    return data;
  }

  function common() {
    const seed = Math.max(0, Math.floor(Number($("seed").value) || 0));
    return { model: $("model").value, temperature: Number($("temperature").value), seed };
  }

  async function run(action, body) {
    const button = $(`do-${action}`);
    button.disabled = true;
    state.running += 1;
    setStatus(`${action}: working…`, "busy");
    try {
      const data = await api(action, body);
      show(data);
      setStatus(`${action}: ${data.sketches.length} sketches in ${data.elapsed_ms} ms`);
    } catch (err) {
      setStatus(`${action}: ${err.message}`, "error");
      $("results").dataset.state = "error";
    } finally {
      state.running -= 1;
      updateButtons();
    }
  }

  function needDrawing() {
    if (state.strokes.length) return true;
    setStatus("draw something first", "error");
    return false;
  }

  $("do-complete").addEventListener("click", () => {
    if (needDrawing()) run("complete", { ...common(), sketch: state.strokes, n: Number($("complete-n").value) });
  });
  $("do-reconstruct").addEventListener("click", () => {
    if (needDrawing()) run("reconstruct", { ...common(), sketch: state.strokes, n: Number($("reconstruct-n").value) });
  });
  $("do-heal").addEventListener("click", () => {
    if (!needDrawing()) return;
    const body = { ...common(), sketch: state.strokes, masks: state.masks };
    const strength = $("strength").value;
    if (strength !== "") body.strength = Number(strength);
    run("heal", body);
  });
  $("do-sample").addEventListener("click", () => {
    const body = { ...common(), n: Number($("sample-n").value) };
    if ($("component").value !== "" && !$("component-label").hidden) body.component = Number($("component").value);
    if ($("category").value !== "" && !$("category-label").hidden) body.category = $("category").value;
    run("sample", body);
  });
  $("do-interpolate").addEventListener("click", () => {
    run("interpolate", { ...common(), a: state.a, b: state.b, steps: Number($("steps").value) });
  });

  $("temperature").addEventListener("input", () => {
    $("temperature-value").textContent = Number($("temperature").value).toFixed(2);
  });
  $("reseed").addEventListener("click", () => {
    $("seed").value = String(Math.floor(Math.random() * 1e6));
  });
  $("model").addEventListener("change", updateButtons);

  // ---- results -----------------------------------------------------------------------------------
  const TILE = 160;

  function describeSettings(data) {
    const s = data.settings || {};
    const parts = [];
    for (const [k, v] of Object.entries(s)) {
      if (v === null || v === undefined || (Array.isArray(v) && !v.length)) continue;
      parts.push(`${k} ${Array.isArray(v) ? v.length : v}`);
    }
    return parts.join(" · ");
  }

  function show(data) {
    state.result = data;
    const results = $("results");
    results.innerHTML = "";
    results.dataset.state = "drawing";
    const m = data.model;
    const caption = $("caption");
    caption.textContent = "";
    const b = document.createElement("b");
    b.textContent = data.action;
    caption.append(b, ` · ${m.id} (${m.kind}) · ${describeSettings(data)} · ${data.elapsed_ms} ms`);
    $("result-downloads").hidden = false;

    const tiles = [];
    const label = (i, sk) => {
      const bits = [];
      bits.push({ complete: "candidate", reconstruct: "redraw", heal: "after", sample: "sample",
                  interpolate: "step" }[data.action] + ` ${i + 1}`);
      if (sk.component !== null && sk.component !== undefined) bits.push(`component ${sk.component}`);
      if (sk.category) bits.push(sk.category);
      return bits.join(" · ");
    };
    if (data.action === "heal") tiles.push({ strokes: data.before, label: "before (masked)", muted: true });
    if (data.action === "reconstruct") tiles.push({ strokes: data.input, label: "drawn", muted: true });
    data.sketches.forEach((sk, i) => {
      if (data.corrupted) {       // heal: what the model was given, its own corruption applied
        tiles.push({ strokes: data.corrupted[i].strokes, muted: true,
                     label: `corrupted ${i + 1} (strength ${data.settings.strength})` });
      }
      tiles.push({ strokes: sk.strokes, label: label(i, sk), category: sk.category,
                   prefix: data.action === "complete" ? data.prefix_strokes : 0 });
    });
    // Inputs and results that share the drawing's frame share one view, so they line up.
    const shared = ["complete", "heal", "reconstruct"].includes(data.action)
      ? bounds(tiles.map((t) => t.strokes).concat(data.input ? [data.input] : [])) : null;
    state.tiles = tiles;
    let pending = tiles.length;
    const done = () => { pending -= 1; if (pending === 0) results.dataset.state = "done"; };
    if (!pending) results.dataset.state = "done";
    tiles.forEach((tile, i) => {
      tile.frame = shared || bounds([tile.strokes]);
      results.append(makeTile(tile, i, data));
      animate(tile, done);
    });
  }

  function makeTile(tile, index, data) {
    const box = document.createElement("div");
    box.className = "tile";
    box.dataset.index = String(index);
    const canvas = document.createElement("canvas");
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(TILE * dpr);
    canvas.height = Math.round(TILE * dpr);
    tile.canvas = canvas;
    const label = document.createElement("p");
    label.className = "label";
    label.textContent = tile.label;
    if (tile.muted) label.classList.add("before");
    const links = document.createElement("div");
    links.className = "links";
    const add = (text, fn, title) => {
      const b = document.createElement("button");
      b.type = "button"; b.textContent = text; b.title = title;
      b.addEventListener("click", fn);
      links.append(b);
    };
    add("replay", () => animate(tile, () => {}), "draw it again, stroke by stroke");
    add("svg", () => download(`${fileStem(data, index)}.svg`, new Blob([toSVG(tile)], { type: "image/svg+xml" })), "download as SVG");
    add("png", () => toPNG(tile).then((blob) => download(`${fileStem(data, index)}.png`, blob)), "download as PNG");
    add("ndjson", () => download(`${fileStem(data, index)}.ndjson`, new Blob([ndjsonLine(tile, data) + "\n"], { type: "application/x-ndjson" })), "download as QuickDraw ndjson");
    add("to pad", () => toPad(tile.strokes), "put it on the pad to keep drawing");
    box.append(canvas, label, links);
    return box;
  }

  function renderTile(ctx, tile, size, upto) {
    const t = fit(tile.frame, size, size * 0.06);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, size, size);
    ctx.lineCap = "round"; ctx.lineJoin = "round";
    ctx.lineWidth = Math.max(1.5, size / 110);
    let left = upto === undefined ? Infinity : upto;
    tile.strokes.forEach(([xs, ys], k) => {
      const isPrefix = k < (tile.prefix || 0);
      ctx.strokeStyle = tile.muted ? MUTED : isPrefix ? INK : MODEL_INK;
      if (isPrefix) { strokePath(ctx, xs, ys, t); return; }   // the drawing shows at once
      if (left <= 0) return;
      strokePath(ctx, xs, ys, t, left);
      left -= xs.length;
    });
  }

  function animate(tile, onDone) {
    const ctx = tile.canvas.getContext("2d");
    const size = tile.canvas.width;
    const total = tile.strokes.slice(tile.prefix || 0).reduce((n, [xs]) => n + xs.length, 0);
    const duration = Math.min(3000, Math.max(300, total * MS_PER_POINT));
    const token = {};
    tile.animation = token;
    const start = performance.now();
    const step = (now) => {
      if (tile.animation !== token) return;      // replaced by a replay
      const upto = Math.ceil(total * Math.min(1, (now - start) / duration));
      renderTile(ctx, tile, size, upto);
      if (upto < total) requestAnimationFrame(step);
      else onDone();
    };
    requestAnimationFrame(step);
  }

  // ---- downloads ---------------------------------------------------------------------------------
  function fileStem(data, index) {
    const safe = (s) => String(s).replace(/[^A-Za-z0-9._-]+/g, "-");
    return `${safe(data.model.id)}-${data.action}-${index + 1}`;
  }

  function download(name, blob) {
    const url = URL.createObjectURL(blob);
    const a = document.createElement("a");
    a.href = url; a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  function toSVG(tile, size = 256) {
    const t = fit(bounds([tile.strokes]), size, size * 0.05);
    const lines = tile.strokes.map(([xs, ys], k) => {
      const colour = tile.muted ? MUTED : k < (tile.prefix || 0) ? INK : (tile.prefix ? MODEL_INK : INK);
      const pts = xs.map((x, i) => `${(x * t.s + t.dx).toFixed(2)},${(ys[i] * t.s + t.dy).toFixed(2)}`);
      if (pts.length === 1) pts.push(pts[0]);
      return `  <polyline points="${pts.join(" ")}" stroke="${colour}"/>`;
    });
    return `<?xml version="1.0" encoding="UTF-8"?>\n` +
      `<svg xmlns="http://www.w3.org/2000/svg" width="${size}" height="${size}" viewBox="0 0 ${size} ${size}">\n` +
      `  <rect width="100%" height="100%" fill="#fff"/>\n` +
      `  <g fill="none" stroke-width="2" stroke-linecap="round" stroke-linejoin="round">\n` +
      lines.map((l) => "  " + l).join("\n") + `\n  </g>\n</svg>\n`;
  }

  function toPNG(tile, size = 512) {
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = size;
    renderTile(canvas.getContext("2d"), { ...tile, frame: bounds([tile.strokes]) }, size);
    return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  }

  function ndjsonLine(tile, data) {
    return JSON.stringify({
      word: tile.category || "sketch",
      drawing: tile.strokes,
      sketchlab: { model: data.model, action: data.action, settings: data.settings },
    });
  }

  $("all-ndjson").addEventListener("click", () => {
    const data = state.result;
    if (!data) return;
    const lines = data.sketches.map((sk) => ndjsonLine({ strokes: sk.strokes, category: sk.category }, data));
    download(`${fileStem(data, -1).replace(/-0$/, "")}.ndjson`, new Blob([lines.join("\n") + "\n"], { type: "application/x-ndjson" }));
  });

  // ---- start -------------------------------------------------------------------------------------
  async function start() {
    sizePad();
    window.addEventListener("resize", sizePad);
    try {
      const data = await api("models");
      state.models = data.models;
      state.limits = data.limits;
      const select = $("model");
      for (const m of data.models) select.append(new Option(`${m.id} (${m.kind})`, m.id));
      const firstCompleter = data.models.find((m) => m.actions.includes("complete"));
      if (firstCompleter) select.value = firstCompleter.id;
      updateButtons();
      setStatus(`${data.models.length} models loaded`);
      document.body.dataset.ready = "true";
    } catch (err) {
      setStatus(`cannot list the models: ${err.message}`, "error");
    }
  }
  start();
})();
