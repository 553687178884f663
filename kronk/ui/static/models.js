// Models: what is installed on the server's disk (size, quantization, context, KV type) and what is served:
// pinned models and pool models, loaded on how many replicas; load/unload and delete (admin keys only).
// The pool's state stream (/v1/models/events) keeps the page current.
import {api, isAbort, sse} from "./api.js";
import {bytes, h} from "./dom.js";

const QUANT = /(?:^|[-_.])((?:IQ|Q)\d(?:_[A-Z0-9]+)*|BF16|F16|F32)(?=[-_.]|$)/i;

function quantOf(manifest, entry) {
  if (entry && entry.quant) return entry.quant;
  const m = manifest && QUANT.exec(manifest.primary || "");
  return m ? m[1].toUpperCase() : "–";
}

export async function mount(view, ctx) {
  const stop = new AbortController();
  const table = h("div", {class: "grid models", id: "models"});
  const note = h("p", {class: "muted small"});
  view.append(h("section", {class: "page"}, h("div", {class: "title-row"}, h("h1", {}, "Models"), note), table));
  const admin = Boolean(ctx.me && ctx.me.admin);
  let busy = false;

  async function load() {
    const opts = {signal: stop.signal};
    const [served, store, catalog, stats] = await Promise.all([api("/v1/models", opts), api("/v1/store/models", opts),
      api("/v1/catalog", opts).catch(() => ({data: []})), api("/v1/stats", opts).catch(() => ({models: {}}))]);
    const manifests = new Map(store.data.map((m) => [m.name, m]));
    const entries = new Map(catalog.data.map((e) => [e.name, e]));
    const rows = served.data.map((card) => ({card, manifest: manifests.get(card.id), entry: entries.get(card.id),
      stat: stats.models[card.id]}));
    for (const [name, manifest] of manifests) {
      if (!rows.some((r) => r.card.id === name)) rows.push({card: {id: name, state: "installed"}, manifest, entry: entries.get(name)});
    }
    return rows;
  }

  function replicasOf(r) {
    if (r.card.pinned) return r.stat ? r.stat.replicas : r.card.state === "loaded" ? 1 : 0;
    return (r.card.loaded_on || []).filter((x) => x.state === "loaded").length;
  }

  async function act(label, fn) {
    if (busy) return;
    busy = true;
    try {
      await fn();
    } catch (e) {
      if (!isAbort(e)) ctx.toast(`${label}: ${e.message}`, "error");
    } finally {
      busy = false;
      render();
    }
  }

  function row(r) {
    const {card, manifest, entry, stat} = r;
    const settings = (card.loaded_on || []).map((x) => x.settings || {}).find((x) => x) || {};
    const ctxLen = settings.ctx_size || (stat && stat.stats && stat.stats.n_ctx_slot) || card.context_length
      || (manifest && manifest.context_length) || (entry && entry.context_length);
    const kv = settings.kv_cache_type || (manifest && manifest.kv_cache_type) || (entry && entry.kv_cache_type)
      || "auto (chosen at load)";
    const n = replicasOf(r);
    const pool = !card.pinned && card.served;
    const id = card.id;
    const enc = encodeURIComponent(id);
    return h("article", {class: "card model", dataset: {model: id, state: card.state || ""}},
      h("header", {},
        h("h3", {}, id),
        h("span", {class: `badge state-${card.state}`, "data-role": "state"}, card.state || "installed"),
        card.pinned ? h("span", {class: "badge", title: "served by its own deployment (the config pins it)"}, "pinned")
          : pool ? h("span", {class: "badge", title: "served on demand within the memory budget"}, "pool") : null),
      card.error ? h("p", {class: "error"}, card.error) : null,
      h("dl", {class: "facts"},
        h("dt", {}, "size"), h("dd", {}, manifest ? bytes(manifest.size_bytes) : entry ? `~${bytes(entry.size_bytes)}` : "–"),
        h("dt", {}, "quant"), h("dd", {}, quantOf(manifest, entry)),
        h("dt", {}, "context"), h("dd", {}, ctxLen ? String(ctxLen) : "–"),
        h("dt", {}, "KV type"), h("dd", {}, kv),
        h("dt", {}, "replicas"), h("dd", {"data-role": "replicas"}, `${n} loaded`),
        manifest && manifest.family ? [h("dt", {}, "family"), h("dd", {}, manifest.family)] : null),
      h("footer", {},
        card.served || card.pinned ? h("a", {class: "button ghost", href: `#/chat?model=${enc}`}, "Chat") : null,
        admin && pool && card.state !== "loaded" && card.state !== "loading" ? h("button", {class: "ghost load",
          onclick: () => act(`Cannot load ${id}`, () => api(`/v1/models/${enc}/load`, {method: "POST"}))}, "Load") : null,
        admin && pool && (card.state === "loaded" || card.state === "loading") ? h("button", {class: "ghost unload",
          onclick: () => act(`Cannot unload ${id}`, () => api(`/v1/models/${enc}/unload`, {method: "POST"}))}, "Unload") : null,
        admin && manifest ? h("button", {class: "danger delete", onclick: () => remove(id)}, "Delete") : null));
  }

  async function remove(id) {
    if (!(await ctx.confirm(`Delete ${id} from the server's disk? Pull it again to get it back.`, "Delete"))) return;
    await act(`Cannot delete ${id}`, async () => {
      await api(`/v1/models/${encodeURIComponent(id)}`, {method: "DELETE"});
      ctx.toast(`Deleted ${id}`);
    });
  }

  let pending = null;
  async function render() {
    if (pending) return pending;
    pending = (async () => {
      try {
        const rows = await load();
        table.replaceChildren(...rows.map(row));
        if (!rows.length) table.append(h("p", {class: "muted"}, "No model installed. Pull one from the ", h("a", {href: "#/catalog"}, "catalog"), "."));
        note.textContent = `${rows.length} models · updated ${new Date().toLocaleTimeString()}`;
      } catch (e) {
        if (!isAbort(e)) ctx.toast(`Cannot list the models: ${e.message}`, "error");
      } finally {
        pending = null;
      }
    })();
    return pending;
  }

  async function follow() {
    try {
      for await (const ev of sse("/v1/models/events", {signal: stop.signal})) {
        if (ev.data && ev.data.model) render();
      }
    } catch (e) {
      if (!isAbort(e)) note.textContent = `the model state stream ended (${e.message}); refreshing every 5 s`;
    }
  }

  await render();
  follow();
  const timer = setInterval(render, 5000); // the disk changes without events (pulls, deletes elsewhere)
  return () => {
    clearInterval(timer);
    stop.abort();
  };
}
