// Catalog: search and filter the server's catalog (family, size, capability, quantization), a card per model
// (context, size, what it can do), one click to pull (admin keys only; the pull runs in the server).
import {api} from "./api.js";
import {bytes, h} from "./dom.js";

const SIZES = [
  ["", "any size"], ["0-1", "under 1 GB"], ["1-4", "1–4 GB"], ["4-16", "4–16 GB"], ["16-", "over 16 GB"],
];
const GB = 1e9;

function inSize(entry, range) {
  if (!range) return true;
  const [lo, hi] = range.split("-");
  const gb = entry.size_bytes / GB;
  return gb >= Number(lo || 0) && (hi === "" || gb < Number(hi));
}

function context(n) {
  return n >= 1024 ? `${Math.round(n / 1024)}k` : String(n);
}

export async function pull(ctx, model) {
  try {
    const job = await api("/v1/models/pull", {method: "POST", body: {model}});
    ctx.toast(`Pulling ${job.model}`);
    ctx.navigate("#/downloads");
    return job;
  } catch (e) {
    ctx.toast(`Cannot pull ${model}: ${e.message}`, "error");
    return null;
  }
}

export async function mount(view, ctx) {
  let entries = [];
  try {
    entries = (await api("/v1/catalog")).data;
  } catch (e) {
    view.append(h("p", {class: "error"}, `Cannot read the catalog: ${e.message}`));
    return null;
  }
  const uniq = (f) => [...new Set(entries.flatMap(f))].sort();
  const select = (id, label, options) => h("select", {id, "aria-label": label, onchange: render},
    options.map(([v, t]) => h("option", {value: v}, t)));
  const q = h("input", {type: "search", id: "cat-search", placeholder: "Search models", "aria-label": "Search",
    oninput: render});
  const family = select("cat-family", "Family", [["", "all families"], ...uniq((e) => [e.family]).map((f) => [f, f])]);
  const size = select("cat-size", "Size", SIZES);
  const cap = select("cat-cap", "Capability", [["", "any capability"], ...uniq((e) => e.capabilities).map((c) => [c, c])]);
  const quant = select("cat-quant", "Quantization", [["", "any quantization"], ...uniq((e) => [e.quant]).map((c) => [c, c])]);
  const count = h("span", {class: "muted", id: "cat-count"});
  const grid = h("div", {class: "grid", id: "catalog"});

  function card(e) {
    return h("article", {class: "card model-card", dataset: {model: e.name}},
      h("header", {},
        h("h3", {}, e.name),
        e.present ? h("span", {class: "badge ok"}, "installed") : null,
        e.gated ? h("span", {class: "badge warn", title: "accept the license on the Hub and set hf_token"}, "gated") : null),
      h("p", {class: "desc"}, e.description || e.hf_repo),
      h("dl", {class: "facts"},
        h("dt", {}, "family"), h("dd", {}, e.family),
        h("dt", {}, "size"), h("dd", {}, bytes(e.size_bytes)),
        h("dt", {}, "quant"), h("dd", {}, e.quant),
        h("dt", {}, "context"), h("dd", {}, context(e.context_length)),
        e.kv_cache_type ? [h("dt", {}, "KV cache"), h("dd", {}, e.kv_cache_type)] : null,
        h("dt", {}, "license"), h("dd", {}, e.license)),
      h("div", {class: "chips"}, e.capabilities.map((c) => h("span", {class: `chip cap-${c}`}, c)), e.mmproj ? null : null),
      h("footer", {},
        h("span", {class: "muted small"}, e.hf_repo),
        e.present ? h("a", {class: "button ghost", href: `#/chat?model=${encodeURIComponent(e.name)}`}, "Chat")
          : ctx.me && ctx.me.admin ? h("button", {class: "pull", onclick: () => pull(ctx, e.name)}, "Pull") : null));
  }

  function render() {
    const text = q.value.trim().toLowerCase();
    const shown = entries.filter((e) =>
      (!text || `${e.name} ${e.description} ${e.family} ${e.hf_repo}`.toLowerCase().includes(text))
      && (!family.value || e.family === family.value) && inSize(e, size.value)
      && (!cap.value || e.capabilities.includes(cap.value)) && (!quant.value || e.quant === quant.value));
    count.textContent = `${shown.length} of ${entries.length} models`;
    grid.replaceChildren(...shown.map(card));
    if (!shown.length) grid.append(h("p", {class: "muted"}, "No model matches."));
  }

  const byRef = ctx.me && ctx.me.admin ? h("form", {class: "row ref", onsubmit: (ev) => {
    ev.preventDefault();
    const ref = ev.target.elements.ref.value.trim();
    if (ref) pull(ctx, ref);
  }}, h("input", {name: "ref", id: "pull-ref", placeholder: "or pull by reference: hf.co/org/repo/file.gguf",
    "aria-label": "Model reference", maxlength: 500}), h("button", {type: "submit", class: "ghost"}, "Pull")) : null;

  view.append(h("section", {class: "page"},
    h("div", {class: "title-row"}, h("h1", {}, "Catalog"), count),
    h("div", {class: "filters"}, q, family, size, cap, quant),
    byRef, grid));
  render();
  return null;
}
