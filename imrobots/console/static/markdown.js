// Markdown as chat platforms render it in cards: CommonMark-like blocks (paragraphs whose
// lines join, lists that nest and continue, ordered lists keeping their start, headings,
// quotes, fenced code, rules, GFM tables) and inline code, bold, italics, strikethrough and
// links. Raw HTML is shown as text. Plain JS, no dependencies.
"use strict";

(function () {
  function escapeHtml(text) {
    return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }

  function safeUrl(url) {
    return /^(https?:|mailto:|dingtalk:)/i.test(url) ? url : null;
  }

  // Inline markup of one paragraph (its lines already joined with "\n").
  function inline(text) {
    const codes = [];
    let html = text.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g, (_, ticks, code) => {
      codes.push(`<code>${escapeHtml(code.trim() || code)}</code>`);
      return `\u0000${codes.length - 1}\u0000`;
    });
    html = escapeHtml(html);
    html = html.replace(/!\[([^\]]*)\]\(([^)\s]+)\)/g, (m, alt, url) => {
      const safe = safeUrl(url.replace(/&amp;/g, "&"));
      return safe ? `<a href="${escapeHtml(safe)}" target="_blank" rel="noopener">[image: ${alt || "image"}]</a>` : m;
    });
    html = html.replace(/\[([^\]]+)\]\(([^)\s]+)\)/g, (m, label, url) => {
      const safe = safeUrl(url.replace(/&amp;/g, "&"));
      return safe ? `<a href="${escapeHtml(safe)}" target="_blank" rel="noopener">${label}</a>` : m;
    });
    html = html.replace(/(^|[\s(])(https?:\/\/[^\s<)]+)/g, '$1<a href="$2" target="_blank" rel="noopener">$2</a>');
    html = html.replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>");
    html = html.replace(/__(?=\S)([\s\S]*?\S)__/g, "<strong>$1</strong>");
    html = html.replace(/(^|[^*\w])\*(?=\S)([^*]*?\S)\*(?!\*)/g, "$1<em>$2</em>");
    html = html.replace(/(^|[^_\w])_(?=\S)([^_]*?\S)_(?![_\w])/g, "$1<em>$2</em>");
    html = html.replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");
    // line breaks: two trailing spaces or a backslash break the line; other newlines are spaces
    html = html.replace(/( {2,}|\\)\n/g, "<br>").replace(/\n/g, " ");
    return html.replace(/\u0000(\d+)\u0000/g, (_, i) => codes[Number(i)]);
  }

  const LIST_ITEM = /^( {0,3})([-*+]|\d{1,9}[.)])[ \t]+(.*)$/;
  const FENCE = /^ {0,3}(`{3,}|~{3,})(.*)$/;
  const HEADING = /^ {0,3}(#{1,6})[ \t]+(.*?)[ \t#]*$/;
  const RULE = /^ {0,3}([-*_])([ \t]*\1){2,}[ \t]*$/;
  const QUOTE = /^ {0,3}> ?(.*)$/;
  const TABLE_RULE = /^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$/;

  function startsBlock(line) {
    return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || LIST_ITEM.test(line);
  }

  function cells(line) {
    return line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
  }

  function indentOf(line) {
    return line.match(/^[ \t]*/)[0].replace(/\t/g, "    ").length;
  }

  // Render a list starting at lines[i]; returns [html, next index].
  function list(lines, i) {
    const first = lines[i].match(LIST_ITEM);
    const ordered = /\d/.test(first[2]);
    const base = first[1].length;
    const start = ordered ? parseInt(first[2], 10) : 1;
    const items = [];
    let current = null;
    while (i < lines.length) {
      const line = lines[i];
      const m = line.match(LIST_ITEM);
      if (m && m[1].length === base && /\d/.test(m[2]) === ordered) {
        current = [m[3]];
        items.push(current);
        i += 1;
        continue;
      }
      if (line.trim() === "") {
        // a blank line ends the list unless the next line continues it (indented or an item)
        const next = lines[i + 1];
        if (next !== undefined && (indentOf(next) > base || (LIST_ITEM.test(next) && next.match(LIST_ITEM)[1].length === base))) {
          current.push("");
          i += 1;
          continue;
        }
        break;
      }
      if (indentOf(line) > base) { current.push(line.replace(/^\s{1,4}/, "")); i += 1; continue; }
      if (!startsBlock(line) && current && current[current.length - 1] !== "") { current.push(line.trim()); i += 1; continue; }
      break;
    }
    const tag = ordered ? "ol" : "ul";
    const attrs = ordered && start !== 1 ? ` start="${start}"` : "";
    const body = items.map((item) => {
      const html = blocks(item);
      // a tight item is one paragraph: show it without the <p>
      const tight = html.match(/^<p>([\s\S]*?)<\/p>([\s\S]*)$/);
      return `<li>${tight && !tight[1].includes("<p>") ? tight[1] + tight[2] : html}</li>`;
    }).join("");
    return [`<${tag}${attrs}>${body}</${tag}>`, i];
  }

  function blocks(lines) {
    const out = [];
    let i = 0;
    let paragraph = [];
    const flush = () => {
      if (paragraph.length) { out.push(`<p>${inline(paragraph.join("\n"))}</p>`); paragraph = []; }
    };
    while (i < lines.length) {
      const line = lines[i];
      let m;
      if ((m = line.match(FENCE))) {
        flush();
        const fence = m[1];
        const code = [];
        i += 1;
        while (i < lines.length && !lines[i].trim().startsWith(fence)) { code.push(lines[i]); i += 1; }
        i += 1;
        out.push(`<pre><code>${escapeHtml(code.join("\n"))}</code></pre>`);
        continue;
      }
      if (line.trim() === "") { flush(); i += 1; continue; }
      if ((m = line.match(HEADING))) {
        flush();
        const level = Math.min(m[1].length + 2, 6);
        out.push(`<h${level}>${inline(m[2])}</h${level}>`);
        i += 1;
        continue;
      }
      if (RULE.test(line) && !(paragraph.length && /^ {0,3}-+\s*$/.test(line))) {
        flush();
        out.push("<hr>");
        i += 1;
        continue;
      }
      if (QUOTE.test(line)) {
        flush();
        const quoted = [];
        while (i < lines.length && (m = lines[i].match(QUOTE))) { quoted.push(m[1]); i += 1; }
        out.push(`<blockquote>${blocks(quoted)}</blockquote>`);
        continue;
      }
      if (LIST_ITEM.test(line)) {
        flush();
        const [html, next] = list(lines, i);
        out.push(html);
        i = next;
        continue;
      }
      if (line.includes("|") && i + 1 < lines.length && TABLE_RULE.test(lines[i + 1])) {
        flush();
        const head = cells(line);
        const rows = [];
        i += 2;
        while (i < lines.length && lines[i].includes("|") && lines[i].trim() !== "") { rows.push(cells(lines[i])); i += 1; }
        const th = head.map((c) => `<th>${inline(c)}</th>`).join("");
        const tr = rows.map((r) => `<tr>${r.map((c) => `<td>${inline(c)}</td>`).join("")}</tr>`).join("");
        out.push(`<table><thead><tr>${th}</tr></thead><tbody>${tr}</tbody></table>`);
        continue;
      }
      paragraph.push(line.replace(/^\s+/, ""));
      i += 1;
    }
    flush();
    return out.join("");
  }

  window.renderMarkdown = function renderMarkdown(text) {
    return blocks(String(text || "").replace(/\r\n?/g, "\n").split("\n"));
  };
  window.escapeHtml = escapeHtml;
})();
