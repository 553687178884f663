// kronk's browser UI: one page, hash routes (#/catalog, #/downloads, #/models, #/chat, #/stats, #/keys). Each page
// module exports mount(view, ctx) and returns a cleanup function that stops its streams and timers, so leaving
// a page never leaves a request behind (and never touches a pull: pulls run in the server's model manager).
import {api, ApiError, getKey, onApiError, setKey} from "./api.js";
import {add, clear, h} from "./dom.js";
import * as catalog from "./catalog.js";
import * as downloads from "./downloads.js";
import * as models from "./models.js";
import * as chat from "./chat.js";
import * as stats from "./stats.js";
import * as keys from "./keys.js";

const PAGES = {catalog, downloads, models, chat, stats, keys};
const view = document.getElementById("view");

const ctx = {
  me: null,           // {name, admin, keys_on} from GET /v1/auth/whoami
  keysOn: false,      // from GET /ui/config.json (no key needed)
  toast,
  confirm: confirmDialog,
  navigate(hash) { location.hash = hash; },
  params: new URLSearchParams(),
  async identify() {
    ctx.me = null;
    if (ctx.keysOn && !getKey()) return null;
    try {
      ctx.me = await api("/v1/auth/whoami");
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) setKey("");
      throw e;
    }
    showWho();
    return ctx.me;
  },
};

export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  const el = h("div", {class: `toast ${kind}`}, message);
  box.append(el);
  setTimeout(() => el.remove(), kind === "error" ? 8000 : 4000);
}

function confirmDialog(text, okLabel = "Delete", cancelLabel = "Cancel") {
  const dlg = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = okLabel;
  document.getElementById("confirm-cancel").textContent = cancelLabel;
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), {once: true});
    dlg.returnValue = "cancel";
    dlg.showModal();
  });
}

function showWho() {
  const who = document.getElementById("who");
  clear(who);
  if (!ctx.me) return;
  if (ctx.me.keys_on) add(who, h("span", {class: "badge"}, ctx.me.name), ctx.me.admin ? h("span", {class: "badge admin"}, "admin") : null);
}

let cleanup = null;
let generation = 0;

async function route() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [name, query] = raw.split("?");
  let page = PAGES[name] ? name : "catalog";
  ctx.params = new URLSearchParams(query || "");
  if (ctx.keysOn && !ctx.me) page = "keys";
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === page);
  document.title = `kronk · ${page[0].toUpperCase()}${page.slice(1)}`;
  if (cleanup) {
    try { cleanup(); } catch { /* a page's cleanup must not block the next page */ }
    cleanup = null;
  }
  const mine = ++generation;
  clear(view);
  view.dataset.page = page;
  const done = await PAGES[page].mount(view, ctx);
  if (mine !== generation) {
    if (typeof done === "function") done();  // the user moved on while the page was loading
    return;
  }
  cleanup = typeof done === "function" ? done : null;
}

onApiError((e) => {
  if (e.status === 401 && ctx.keysOn && view.dataset.page !== "keys") {
    setKey("");
    ctx.me = null;
    toast("The API key was refused: enter a valid key.", "error");
    ctx.navigate("#/keys");
  }
});

async function start() {
  try {
    ctx.keysOn = Boolean((await api("/ui/config.json")).keys_on);
    await ctx.identify();
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) toast(`Cannot reach the server: ${e.message}`, "error");
  }
  window.addEventListener("hashchange", route);
  await route();
}

start();
