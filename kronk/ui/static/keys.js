// Keys: with API keys on, the UI asks for one and keeps it in this tab's sessionStorage only (never
// localStorage, never a cookie); a key without the admin scope sees no pull, cancel, load/unload or delete.
import {ApiError, getKey, setKey} from "./api.js";
import {add, h, put} from "./dom.js";

export async function mount(view, ctx) {
  const status = h("div", {class: "card"});
  const error = h("p", {class: "error", id: "key-error", hidden: true});
  const input = h("input", {type: "password", id: "key-input", autocomplete: "off", spellcheck: "false",
    placeholder: "kronk-…", "aria-label": "API key"});

  function render() {
    put(status, 
      h("h2", {}, "Access"),
      !ctx.keysOn ? h("p", {}, "API keys are off: this server answers only pages from this machine (the Host and ",
        "Origin checks). Everything is open to you here.")
        : ctx.me ? h("p", {id: "key-status"}, "Signed in with the key ", h("strong", {}, ctx.me.name),
          ctx.me.admin ? " (admin: pulls, cancel, load/unload and delete are yours)."
            : " (no admin scope: pulls, cancel, load/unload and delete are hidden).")
          : h("p", {id: "key-status"}, "This server needs an API key. Make one with ", h("code", {}, "kronk key create"),
            " (", h("code", {}, "--admin"), " for pulls and deletes)."),
      ctx.me && ctx.keysOn ? h("button", {class: "ghost", id: "key-forget", onclick: forget}, "Forget the key") : null,
    );
  }

  async function use(ev) {
    ev.preventDefault();
    const key = input.value.trim();
    error.hidden = true;
    if (!key) return;
    setKey(key);
    try {
      await ctx.identify();
      input.value = "";
      render();
      ctx.toast(`Signed in as ${ctx.me.name}`);
      ctx.navigate(ctx.params.get("next") || "#/models");
    } catch (e) {
      setKey("");
      ctx.me = null;
      error.textContent = e instanceof ApiError && e.status === 401 ? "That key was refused: it is not a valid key for this server."
        : `Could not check the key: ${e.message}`;
      error.hidden = false;
      render();
    }
  }

  function forget() {
    setKey("");
    ctx.me = null;
    document.getElementById("who").replaceChildren();
    render();
  }

  render();
  const form = ctx.keysOn ? h("form", {class: "card", id: "key-form", onsubmit: use},
    h("h2", {}, "API key"),
    h("label", {for: "key-input"}, "Key (kept in this tab only, forgotten when it closes)"),
    h("div", {class: "row"}, input, h("button", {type: "submit", id: "key-submit"}, "Use key")),
    error) : null;
  add(view, h("section", {class: "page narrow"}, h("h1", {}, "Keys"), status, form));
  if (ctx.keysOn && !getKey()) input.focus();
}
