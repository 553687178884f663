// A small Markdown subset for model answers, built as DOM nodes (text nodes only, never innerHTML): paragraphs,
// headings, fenced and indented code blocks, inline code, bold, italic, lists, block quotes, and links (http(s)
// only, rel=noopener; any other link is shown as its text).
import {h} from "./dom.js";

const INLINE = [
  ["code", /`([^`\n]+)`/],
  ["link", /\[([^\]\n]{1,500})\]\(([^()\s]{1,2000})\)/],
  ["bold", /\*\*([^*\n](?:[^\n]*?[^*\n])?)\*\*|__([^_\n](?:[^\n]*?[^_\n])?)__/],
  ["italic", /\*([^*\s](?:[^*\n]*?[^*\s])?)\*|(?<![A-Za-z0-9])_([^_\s](?:[^_\n]*?[^_\s])?)_(?![A-Za-z0-9])/],
];

export function safeHref(url) {
  try {
    const u = new URL(url);
    return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
  } catch {
    return null;
  }
}

/** Inline Markdown of one piece of text -> a list of nodes. */
export function inline(text, depth = 0) {
  const out = [];
  let rest = text;
  while (rest) {
    let best = null;
    for (const [kind, re] of INLINE) {
      const m = re.exec(rest);
      if (m && (best === null || m.index < best.m.index)) best = {kind, m};
    }
    if (best === null || depth > 8) {
      out.push(document.createTextNode(rest));
      break;
    }
    const {kind, m} = best;
    if (m.index > 0) out.push(document.createTextNode(rest.slice(0, m.index)));
    const inner = m[1] !== undefined ? m[1] : m[2];
    if (kind === "code") out.push(h("code", {}, inner));
    else if (kind === "bold") out.push(h("strong", {}, inline(inner, depth + 1)));
    else if (kind === "italic") out.push(h("em", {}, inline(inner, depth + 1)));
    else {
      const href = safeHref(m[2]);
      out.push(href ? h("a", {href, rel: "noopener noreferrer nofollow", target: "_blank"}, inline(m[1], depth + 1))
        : document.createTextNode(m[0]));
    }
    rest = rest.slice(m.index + m[0].length);
  }
  return out;
}

function withBreaks(lines) {
  const out = [];
  lines.forEach((line, i) => {
    if (i) out.push(h("br"));
    out.push(...inline(line));
  });
  return out;
}

const FENCE = /^\s{0,3}(```+|~~~+)\s*([\w+#.-]*)/;
const BULLET = /^\s{0,6}[-*+]\s+(.*)$/;
const ORDERED = /^\s{0,6}(\d{1,9})[.)]\s+(.*)$/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;

/** Markdown text -> a DocumentFragment. An unclosed code fence (a streaming answer) runs to the end. */
export function markdown(text) {
  const frag = document.createDocumentFragment();
  const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) { i++; continue; }
    const fence = FENCE.exec(line);
    if (fence) {
      const close = fence[1];
      const body = [];
      i++;
      while (i < lines.length && !lines[i].trim().startsWith(close)) body.push(lines[i++]);
      i++;
      const code = h("code", fence[2] ? {class: `lang-${fence[2]}`} : {}, body.join("\n"));
      frag.append(h("pre", fence[2] ? {"data-lang": fence[2]} : {}, code));
      continue;
    }
    const head = HEADING.exec(line);
    if (head) {
      frag.append(h(`h${Math.min(head[1].length + 2, 6)}`, {}, inline(head[2])));
      i++;
      continue;
    }
    if (/^( {4}|\t)/.test(line)) {
      const body = [];
      while (i < lines.length && (/^( {4}|\t)/.test(lines[i]) || !lines[i].trim())) body.push(lines[i++].replace(/^( {4}|\t)/, ""));
      while (body.length && !body[body.length - 1].trim()) body.pop();
      frag.append(h("pre", {}, h("code", {}, body.join("\n"))));
      continue;
    }
    if (BULLET.test(line) || ORDERED.test(line)) {
      const ordered = !BULLET.test(line);
      const re = ordered ? ORDERED : BULLET;
      const first = ordered ? ORDERED.exec(line)[1] : null;
      const list = h(ordered ? "ol" : "ul", ordered && first !== "1" ? {start: first} : {});
      while (i < lines.length && re.test(lines[i])) {
        const m = re.exec(lines[i]);
        const item = [ordered ? m[2] : m[1]];
        i++;
        while (i < lines.length && lines[i].trim() && !BULLET.test(lines[i]) && !ORDERED.test(lines[i])
               && /^\s+/.test(lines[i])) item.push(lines[i++].trim());
        list.append(h("li", {}, withBreaks(item)));
      }
      frag.append(list);
      continue;
    }
    if (/^\s{0,3}>/.test(line)) {
      const body = [];
      while (i < lines.length && /^\s{0,3}>/.test(lines[i])) body.push(lines[i++].replace(/^\s{0,3}>\s?/, ""));
      frag.append(h("blockquote", {}, markdown(body.join("\n"))));
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() && !FENCE.test(lines[i]) && !HEADING.test(lines[i])
           && !BULLET.test(lines[i]) && !ORDERED.test(lines[i]) && !/^\s{0,3}>/.test(lines[i])) para.push(lines[i++]);
    frag.append(h("p", {}, withBreaks(para)));
  }
  return frag;
}
