// Chat: pick a model, streamed answers rendered as safe Markdown, conversations kept in this browser
// (localStorage), a system prompt, temperature and max tokens, a stop button that closes the request (the
// server cancels the generation and frees its slot), and per answer the TTFT, tok/s and cached prompt tokens.
import {api, isAbort, sse} from "./api.js";
import {h} from "./dom.js";
import {markdown} from "./md.js";

const STORE = "kronk.chats";
const CURRENT = "kronk.chat.current";
const MAX_CHATS = 50;

function loadChats() {
  try {
    const chats = JSON.parse(localStorage.getItem(STORE) || "[]");
    return Array.isArray(chats) ? chats : [];
  } catch {
    return [];
  }
}

function newChat(model) {
  return {id: `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`, title: "New chat", model,
    system: "", temperature: 0.7, max_tokens: 512, messages: [], updated: Date.now()};
}

export async function mount(view, ctx) {
  let chats = loadChats();
  let models = [];
  try {
    models = (await api("/v1/models")).data.filter((m) => m.served !== false).map((m) => m.id);
  } catch (e) {
    ctx.toast(`Cannot list the models: ${e.message}`, "error");
  }
  const wanted = ctx.params.get("model");
  let chat = chats.find((c) => c.id === localStorage.getItem(CURRENT));
  if (wanted && (!chat || chat.model !== wanted)) {
    chat = newChat(wanted);
    chats.unshift(chat);
  }
  if (!chat) {
    chat = chats[0] || newChat(models[0] || "");
    if (!chats.includes(chat)) chats.unshift(chat);
  }
  let running = null; // the AbortController of the answer being streamed

  function save() {
    chat.updated = Date.now();
    chats = [chat, ...chats.filter((c) => c.id !== chat.id)].slice(0, MAX_CHATS);
    try {
      localStorage.setItem(STORE, JSON.stringify(chats.filter((c) => c.messages.length || c === chat)));
      localStorage.setItem(CURRENT, chat.id);
    } catch { /* storage full: the chat goes on, unsaved */ }
    renderList();
  }

  // ---- the settings
  const modelSel = h("select", {id: "chat-model", "aria-label": "Model", onchange: () => { chat.model = modelSel.value; save(); }});
  const system = h("textarea", {id: "chat-system", rows: 3, placeholder: "System prompt (optional)", maxlength: 20000,
    oninput: () => { chat.system = system.value; save(); }});
  const temp = h("input", {type: "number", id: "chat-temperature", min: 0, max: 2, step: 0.1,
    onchange: () => { chat.temperature = Number(temp.value); save(); }});
  const maxTok = h("input", {type: "number", id: "chat-max-tokens", min: 1, max: 32768, step: 1,
    onchange: () => { chat.max_tokens = Math.max(1, Math.round(Number(maxTok.value))); save(); }});
  const settings = h("details", {class: "card settings", open: !window.matchMedia("(max-width: 700px)").matches},
    h("summary", {}, "Settings"),
    h("label", {for: "chat-model"}, "Model"), modelSel,
    h("label", {for: "chat-system"}, "System prompt"), system,
    h("div", {class: "row"},
      h("div", {}, h("label", {for: "chat-temperature"}, "Temperature"), temp),
      h("div", {}, h("label", {for: "chat-max-tokens"}, "Max tokens"), maxTok)));

  // ---- the conversation
  const list = h("nav", {class: "chat-list", id: "chat-list", "aria-label": "Conversations"});
  const log = h("div", {class: "messages", id: "messages"});
  const input = h("textarea", {id: "chat-input", rows: 2, placeholder: "Message (Enter sends, Shift+Enter: new line)",
    maxlength: 100000, onkeydown: (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); send(); }
    }});
  const sendBtn = h("button", {id: "chat-send", onclick: () => send()}, "Send");
  const stopBtn = h("button", {id: "chat-stop", class: "danger", hidden: true, onclick: () => running && running.abort()}, "Stop");

  function renderSettings() {
    const ids = [...new Set([...models, chat.model].filter(Boolean))];
    modelSel.replaceChildren(...ids.map((id) => h("option", {value: id, selected: id === chat.model}, id)));
    if (!chat.model && ids.length) chat.model = ids[0];
    system.value = chat.system || "";
    temp.value = String(chat.temperature ?? 0.7);
    maxTok.value = String(chat.max_tokens ?? 512);
  }

  function renderList() {
    list.replaceChildren(h("button", {class: "ghost", id: "chat-new", onclick: () => {
      if (running) return;
      chat = newChat(chat.model);
      chats.unshift(chat);
      save();
      renderAll();
    }}, "+ New chat"), ...chats.filter((c) => c.messages.length || c === chat).map((c) =>
      h("a", {href: "#/chat", class: c.id === chat.id ? "active" : "", onclick: (ev) => {
        ev.preventDefault();
        if (running) return;
        chat = c;
        save();
        renderAll();
      }}, c.title)));
  }

  function statsLine(st) {
    if (!st) return null;
    const parts = [];
    if (st.ttft_ms !== undefined) parts.push(h("span", {"data-role": "ttft"}, `TTFT ${Math.round(st.ttft_ms)} ms`));
    if (st.tok_s !== undefined) parts.push(h("span", {"data-role": "toks"}, `${st.tok_s.toFixed(1)} tok/s`));
    if (st.prompt_tokens !== undefined) {
      parts.push(h("span", {"data-role": "cached", "data-cached": String(st.cached_tokens ?? 0)},
        `${st.cached_tokens ?? 0} of ${st.prompt_tokens} prompt tokens cached`));
    }
    if (st.completion_tokens !== undefined) parts.push(h("span", {}, `${st.completion_tokens} tokens`));
    if (st.finish) parts.push(h("span", {"data-role": "finish"}, st.finish));
    return h("div", {class: "answer-stats"}, parts);
  }

  function bubble(m) {
    const body = h("div", {class: "body"});
    if (m.role === "assistant") body.append(markdown(m.content || ""));
    else body.textContent = m.content;
    return h("div", {class: `msg ${m.role}`, dataset: {role: m.role}}, body,
      m.error ? h("p", {class: "error"}, m.error) : null, statsLine(m.stats));
  }

  function renderLog() {
    log.replaceChildren(...chat.messages.map(bubble));
    if (!chat.messages.length) log.append(h("p", {class: "muted empty"}, "Say something to ", chat.model || "a model", "."));
    log.scrollTop = log.scrollHeight;
  }

  function renderAll() {
    renderSettings();
    renderList();
    renderLog();
  }

  async function send() {
    const text = input.value.trim();
    if (!text || running || !chat.model) return;
    input.value = "";
    chat.messages.push({role: "user", content: text});
    if (chat.title === "New chat") chat.title = text.slice(0, 40);
    const answer = {role: "assistant", content: "", stats: null};
    chat.messages.push(answer);
    save();
    renderLog();
    const el = log.lastElementChild;
    const body = el.querySelector(".body");
    el.classList.add("streaming");
    const messages = [...(chat.system ? [{role: "system", content: chat.system}] : []),
      ...chat.messages.slice(0, -1).filter((m) => m.content).map((m) => ({role: m.role, content: m.content}))];
    running = new AbortController();
    sendBtn.hidden = true;
    stopBtn.hidden = false;
    const t0 = performance.now();
    let tFirst = null;
    let tLast = null;
    let usage = null;
    let finish = null;
    let frame = 0;
    const paint = () => {
      frame = 0;
      body.replaceChildren(markdown(answer.content));
      log.scrollTop = log.scrollHeight;
    };
    try {
      const req = {model: chat.model, messages, stream: true, stream_options: {include_usage: true},
        temperature: Number(chat.temperature), max_tokens: Number(chat.max_tokens)};
      for await (const {data} of sse("/v1/chat/completions", {method: "POST", body: req, signal: running.signal})) {
        if (data === "[DONE]") break;
        if (data && data.error) throw new Error(data.error.message || "the model failed");
        if (data && data.usage) usage = data.usage;
        const choice = data && data.choices && data.choices[0];
        if (!choice) continue;
        const piece = (choice.delta && (choice.delta.content || choice.delta.reasoning_content)) || "";
        if (piece) {
          const now = performance.now();
          if (tFirst === null) tFirst = now;
          tLast = now;
          answer.content += piece;
          if (!frame) frame = requestAnimationFrame(paint);
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    } catch (e) {
      if (isAbort(e) || (running && running.signal.aborted)) finish = "stopped";
      else answer.error = e.message;
    } finally {
      if (frame) cancelAnimationFrame(frame);
      if (running && running.signal.aborted) finish = "stopped"; // the stream ends quietly when stopped
      const st = {};
      if (tFirst !== null) st.ttft_ms = tFirst - t0;
      if (usage) {
        st.prompt_tokens = usage.prompt_tokens;
        st.completion_tokens = usage.completion_tokens;
        st.cached_tokens = (usage.prompt_tokens_details && usage.prompt_tokens_details.cached_tokens) || 0;
        if (tLast > tFirst && usage.completion_tokens > 1) st.tok_s = (usage.completion_tokens - 1) / ((tLast - tFirst) / 1000);
      }
      if (finish) st.finish = finish;
      answer.stats = st;
      running = null;
      sendBtn.hidden = false;
      stopBtn.hidden = true;
      save();
      el.replaceWith(bubble(answer));
      log.scrollTop = log.scrollHeight;
      input.focus();
    }
  }

  view.append(h("section", {class: "page chat"},
    h("aside", {class: "chat-side"}, list, settings),
    h("div", {class: "chat-main"}, log,
      h("div", {class: "composer"}, input, sendBtn, stopBtn))));
  renderAll();
  save();
  return () => { if (running) running.abort(); };
}
