// Charts drawn as SVG by hand (no library can be downloaded here): a time-series line chart and a bar chart.
// Each chart's <svg> carries data-points (how many values it draws), which the browser tests read.
import {h, s} from "./dom.js";

const W = 480;
const H = 200;
const PAD = {l: 52, r: 12, t: 12, b: 28};

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function tickFmt(maxY) {
  const step = maxY / 4;
  const digits = Number.isInteger(step) ? 0 : step >= 1 ? 1 : 2;
  return (v) => v.toFixed(digits);
}

function frame(title, maxY, points) {
  const fmt = tickFmt(maxY);
  const svg = s("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": title,
    "data-points": String(points), preserveAspectRatio: "xMidYMid meet"});
  for (let k = 0; k <= 4; k++) {
    const y = PAD.t + (H - PAD.t - PAD.b) * (1 - k / 4);
    svg.append(s("line", {x1: PAD.l, x2: W - PAD.r, y1: y, y2: y, class: "grid"}),
      s("text", {x: PAD.l - 6, y: y + 4, class: "tick", "text-anchor": "end"}, fmt(maxY * k / 4)));
  }
  return svg;
}

function legend(series) {
  return h("div", {class: "legend"}, series.map((se, i) =>
    h("span", {class: `key c${i}`}, h("i", {class: `swatch c${i}`}), se.name)));
}

/** series: [{name, points: [[t (ms), value], ...]}]; one shared y axis from 0. */
export function lineChart(title, series, {fmt = (v) => v.toFixed(2), max = null} = {}) {
  const all = series.flatMap((se) => se.points.filter((p) => Number.isFinite(p[1])));
  const maxY = max !== null ? max : niceMax(Math.max(0, ...all.map((p) => p[1])));
  const svg = frame(title, maxY, all.length);
  const ts = all.map((p) => p[0]);
  const t0 = Math.min(...ts);
  const t1 = Math.max(...ts);
  const x = (t) => PAD.l + (W - PAD.l - PAD.r) * (t1 > t0 ? (t - t0) / (t1 - t0) : 1);
  const y = (v) => PAD.t + (H - PAD.t - PAD.b) * (1 - Math.min(v, maxY) / maxY);
  series.forEach((se, i) => {
    const pts = se.points.filter((p) => Number.isFinite(p[1]));
    if (!pts.length) return;
    const d = pts.map((p, k) => `${k ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
    svg.append(s("path", {d, class: `line c${i}`}));
    const last = pts[pts.length - 1];
    svg.append(s("circle", {cx: x(last[0]), cy: y(last[1]), r: 3, class: `dot c${i}`},
      s("title", {}, `${se.name}: ${fmt(last[1])}`)));
  });
  if (all.length) {
    const span = (t1 - t0) / 1000;
    svg.append(s("text", {x: W - PAD.r, y: H - 8, class: "tick", "text-anchor": "end"}, "now"),
      s("text", {x: PAD.l, y: H - 8, class: "tick"}, span > 0 ? `-${Math.round(span)} s` : ""));
  } else {
    svg.append(s("text", {x: W / 2, y: H / 2, class: "empty", "text-anchor": "middle"}, "no data yet"));
  }
  return h("figure", {class: "chart-box"}, h("figcaption", {}, title), svg, legend(series));
}

/** bars: [{label, value, high?}] (high: a second mark, e.g. the p95). */
export function barChart(title, bars, {fmt = (v) => v.toFixed(1), names = ["p50", "p95"]} = {}) {
  const vals = bars.flatMap((b) => [b.value, b.high]).filter((v) => Number.isFinite(v));
  const maxY = niceMax(Math.max(0, ...vals));
  const svg = frame(title, maxY, bars.filter((b) => Number.isFinite(b.value)).length);
  const slot = (W - PAD.l - PAD.r) / Math.max(bars.length, 1);
  const y = (v) => PAD.t + (H - PAD.t - PAD.b) * (1 - Math.min(v, maxY) / maxY);
  bars.forEach((b, i) => {
    const x0 = PAD.l + slot * i + slot * 0.15;
    const bw = slot * 0.7;
    if (Number.isFinite(b.value)) {
      svg.append(s("rect", {x: x0, y: y(b.value), width: bw / 2, height: y(0) - y(b.value), class: "bar c0"},
        s("title", {}, `${b.label} ${names[0]}: ${fmt(b.value)}`)));
    }
    if (Number.isFinite(b.high)) {
      svg.append(s("rect", {x: x0 + bw / 2, y: y(b.high), width: bw / 2, height: y(0) - y(b.high), class: "bar c1"},
        s("title", {}, `${b.label} ${names[1]}: ${fmt(b.high)}`)));
    }
    svg.append(s("text", {x: x0 + bw / 2, y: H - 10, class: "tick", "text-anchor": "middle"}, b.label));
  });
  if (!vals.length) svg.append(s("text", {x: W / 2, y: H / 2, class: "empty", "text-anchor": "middle"}, "no data yet"));
  return h("figure", {class: "chart-box"}, h("figcaption", {}, title), svg,
    legend(names.map((name) => ({name}))));
}
