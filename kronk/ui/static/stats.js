// Stats: per model, from GET /v1/stats every 2 s: TTFT p50/p95 and KV use / prefix reuse over time, decode
// tok/s by context-size bucket, requests. History lives in this page only (since it was opened).
import {api, isAbort} from "./api.js";
import {h, num} from "./dom.js";
import {barChart, lineChart} from "./charts.js";

const EVERY_MS = 2000;
const KEEP = 150; // samples per model (5 minutes)
const BUCKETS = ["0-512", "512-2k", "2k-8k", "8k-32k", "32k+"];

// HTTP requests the ingress counted for the model, or the generations its engines counted where that is more
// (requests for a pool model are not labelled with it at the ingress)
function requestsOf(a) {
  return Math.max((a.requests && a.requests.total) || 0, (a.engine && a.engine.requests) || 0);
}

export async function mount(view, ctx) {
  const stop = new AbortController();
  const history = new Map(); // model -> [{t, ttft50, ttft95, kv, reuse, requests, active}]
  const box = h("div", {class: "stats", id: "stats"});
  const note = h("span", {class: "muted small", id: "stats-updated"});
  view.append(h("section", {class: "page"}, h("div", {class: "title-row"}, h("h1", {}, "Stats"), note), box));

  function tile(label, value, role) {
    return h("div", {class: "tile"}, h("span", {class: "tile-value", "data-role": role}, value), h("span", {class: "tile-label"}, label));
  }

  function section(model, entry) {
    const a = entry.aggregate || {};
    const hist = history.get(model) || [];
    const ttft = a.ttft_s || {};
    const kv = a.kv || {};
    const req = a.requests || {};
    const tokens = a.tokens || {};
    const decode = a.decode_tok_s || {};
    const buckets = BUCKETS.filter((b) => decode[b]).map((b) => ({label: b, value: decode[b].p50, high: decode[b].p95}));
    return h("article", {class: "card model-stats", dataset: {model}},
      h("header", {}, h("h2", {}, model), h("span", {class: "muted small"}, `${entry.replicas ?? 0} replica(s)`)),
      h("div", {class: "tiles"},
        tile("requests", String(requestsOf(a)), "requests"),
        tile("errors", String(req.errors ?? 0), "errors"),
        tile("TTFT p50", ttft.count ? `${Math.round(ttft.p50 * 1000)} ms` : "–", "ttft-p50"),
        tile("TTFT p95", ttft.count ? `${Math.round(ttft.p95 * 1000)} ms` : "–", "ttft-p95"),
        tile("prefix reuse", a.prefix_cache_reuse_ratio != null ? `${num(100 * a.prefix_cache_reuse_ratio, 1)} %` : "–", "reuse"),
        tile("KV cache", kv.cells_total ? `${num(100 * (kv.usage || 0), 1)} %` : "–", "kv"),
        tile("tokens in / out", `${tokens.prompt ?? 0} / ${tokens.completion ?? 0}`, "tokens"),
        tile("active / waiting", `${a.active ?? 0} / ${a.waiting ?? 0}`, "active")),
      h("div", {class: "charts"},
        lineChart("Time to first token (ms)", [
          {name: "p50", points: hist.map((p) => [p.t, p.ttft50])},
          {name: "p95", points: hist.map((p) => [p.t, p.ttft95])}], {fmt: (v) => v.toFixed(0)}),
        barChart("Decode tok/s by context size (tokens)", buckets.length ? buckets : [{label: "0-512"}],
          {fmt: (v) => v.toFixed(0)}),
        lineChart("KV cache use and prefix reuse (%)", [
          {name: "KV used", points: hist.map((p) => [p.t, p.kv])},
          {name: "prefix reuse", points: hist.map((p) => [p.t, p.reuse])}], {fmt: (v) => v.toFixed(0), max: 100}),
        lineChart("Requests (total)", [{name: "requests", points: hist.map((p) => [p.t, p.requests])}],
          {fmt: (v) => v.toFixed(0)})));
  }

  async function tick() {
    let data;
    try {
      data = await api("/v1/stats", {signal: stop.signal});
    } catch (e) {
      if (!isAbort(e)) note.textContent = `cannot read the stats: ${e.message}`;
      return;
    }
    const t = Date.now();
    const names = Object.keys(data.models || {}).sort();
    for (const m of names) {
      const a = data.models[m].aggregate || {};
      const hist = history.get(m) || [];
      const ttft = a.ttft_s || {};
      hist.push({t, ttft50: ttft.count ? ttft.p50 * 1000 : NaN, ttft95: ttft.count ? ttft.p95 * 1000 : NaN,
        kv: a.kv && a.kv.cells_total ? 100 * (a.kv.usage || 0) : NaN,
        reuse: a.prefix_cache_reuse_ratio != null ? 100 * a.prefix_cache_reuse_ratio : NaN,
        requests: requestsOf(a)});
      history.set(m, hist.slice(-KEEP));
    }
    box.replaceChildren(...names.map((m) => section(m, data.models[m])));
    if (!names.length) box.append(h("p", {class: "muted"}, "No model is served yet."));
    note.textContent = `updated ${new Date(t).toLocaleTimeString()} · every ${EVERY_MS / 1000} s`;
  }

  await tick();
  const timer = setInterval(tick, EVERY_MS);
  return () => {
    clearInterval(timer);
    stop.abort();
  };
}
