// Downloads: every pull job the server's model manager knows (running and recent), with live progress from
// each running job's Server-Sent Events. The page only watches: leaving it, reloading or closing the tab stops
// its streams, never a pull; coming back shows each job where it is now.
import {api, isAbort, sse} from "./api.js";
import {ago, bytes, duration, h, put} from "./dom.js";

const ACTIVE = new Set(["queued", "running"]);
const MAX_STREAMS = 3; // the browser keeps ~6 connections per server: leave room for the rest of the UI
const HINTS = {
  gated_repo: "The repo is gated: accept its license on the Hugging Face Hub, then set the server's Hugging Face "
    + "token (KRONK_HF_TOKEN or HF_TOKEN, the hf_token setting) and pull again.",
  insufficient_storage: "Not enough disk space: free some (delete models under Models) or point models_dir at a "
    + "bigger disk.",
  hub_error: "The hub could not be reached or answered an error: check the network (and the hf_endpoint setting), "
    + "then pull again; a pull resumes where it stopped.",
  repo_not_found: "The Hub has no such repo or file: check the name (or the catalog entry).",
  checksum_mismatch: "The file did not match its checksum; it was thrown away. Pull again.",
  size_mismatch: "The file did not have the announced size; it was thrown away. Pull again.",
  pull_cancelled: "Cancelled.",
};

export async function mount(view, ctx) {
  const stop = new AbortController();
  const rows = new Map();      // job id -> {el, job}
  const streams = new Map();   // job id -> AbortController
  const list = h("div", {class: "jobs", id: "jobs"});
  const empty = h("p", {class: "muted", id: "jobs-empty"}, "No pulls yet. Pull a model from the ",
    h("a", {href: "#/catalog"}, "catalog"), ".");
  view.append(h("section", {class: "page"}, h("h1", {}, "Downloads"), empty, list));

  function update(job) {
    let row = rows.get(job.id);
    if (!row) {
      row = {el: h("article", {class: "card job", dataset: {job: job.id}})};
      rows.set(job.id, row);
    }
    row.job = job;
    const total = job.bytes_total || 0;
    const done = job.bytes_done || 0;
    const pct = total ? Math.min(100, (100 * done) / total) : 0;
    const active = ACTIVE.has(job.status);
    const err = job.status === "failed" ? h("div", {class: "error job-error"},
      h("strong", {}, job.error || "The pull failed."),
      HINTS[job.error_code] ? h("p", {}, HINTS[job.error_code]) : null,
      job.error_code ? h("span", {class: "muted small"}, ` (${job.error_code})`) : null) : null;
    row.el.dataset.status = job.status;
    put(row.el, 
      h("header", {},
        h("h3", {}, job.model),
        h("span", {class: `badge status-${job.status}`, "data-role": "status"}, job.status),
        job.phase && active ? h("span", {class: "muted small"}, job.phase) : null,
        h("span", {class: "muted small grow"}, job.ref !== job.model ? job.ref : ""),
        active && ctx.me && ctx.me.admin ? h("button", {class: "ghost danger cancel", onclick: () => cancel(job)}, "Cancel")
          : null,
        job.status === "succeeded" ? h("a", {class: "button ghost", href: `#/chat?model=${encodeURIComponent(job.model)}`},
          "Chat") : null),
      total || active ? h("progress", {max: 100, value: job.status === "succeeded" ? 100 : pct, "aria-label": "progress"})
        : null,
      h("div", {class: "job-facts"},
        h("span", {"data-role": "bytes", "data-done": String(done), "data-total": String(total)},
          total || done || active ? [`${bytes(done)} of ${total ? bytes(total) : "?"}`, total ? ` (${pct.toFixed(1)}%)` : ""]
            : null),
        active ? h("span", {"data-role": "rate"}, `${bytes(job.rate_bps || 0)}/s`) : null,
        active ? h("span", {"data-role": "eta"}, `ETA ${duration(job.eta_s)}`) : null,
        job.file && active ? h("span", {class: "muted small"}, job.file) : null,
        h("span", {class: "muted small"}, job.finished_at ? `ended ${ago(job.finished_at)}` : `started ${ago(job.created_at)}`)),
      err);
  }

  function place() {
    const jobs = [...rows.values()].map((r) => r.job).sort((a, b) =>
      (ACTIVE.has(b.status) - ACTIVE.has(a.status)) || (b.created_at - a.created_at));
    list.replaceChildren(...jobs.map((j) => rows.get(j.id).el));
    empty.hidden = jobs.length > 0;
  }

  async function watch(id) {
    const ctl = new AbortController();
    streams.set(id, ctl);
    stop.signal.addEventListener("abort", () => ctl.abort(), {once: true});
    try {
      for await (const {data} of sse(`/v1/models/pull/${encodeURIComponent(id)}?stream=true`, {signal: ctl.signal})) {
        if (data && typeof data === "object" && data.id) {
          const was = rows.get(id) && rows.get(id).job.status;
          update(data);
          if (was !== data.status) place();
        }
      }
    } catch (e) {
      if (!isAbort(e)) ctx.toast(`Lost the progress of a pull: ${e.message}`, "error");
    } finally {
      streams.delete(id);
    }
  }

  async function refresh() {
    let jobs;
    try {
      jobs = (await api("/v1/models/pull", {signal: stop.signal})).data;
    } catch (e) {
      if (!isAbort(e)) ctx.toast(`Cannot list the pulls: ${e.message}`, "error");
      return;
    }
    for (const job of jobs) {
      if (!streams.has(job.id)) update(job); // a streamed job's row is the stream's (fresher)
    }
    place();
    for (const job of jobs) {
      if (ACTIVE.has(job.status) && !streams.has(job.id) && streams.size < MAX_STREAMS) watch(job.id);
    }
  }

  async function cancel(job) {
    if (!(await ctx.confirm(`Cancel the pull of ${job.model}? What is downloaded so far stays for a later pull.`, "Cancel the pull",
      "Keep pulling"))) return;
    try {
      update(await api(`/v1/models/pull/${encodeURIComponent(job.id)}`, {method: "DELETE"}));
      place();
    } catch (e) {
      ctx.toast(`Cannot cancel: ${e.message}`, "error");
    }
  }

  await refresh();
  const timer = setInterval(refresh, 3000); // pulls started elsewhere (the CLI, another tab) show up too
  return () => {
    clearInterval(timer);
    stop.abort();
  };
}
