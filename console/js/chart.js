// A small SVG bar chart, drawn with DOM calls (no library, no inline styles).
// Bar heights are display-only numbers; every text a person reads (labels, the
// accessible table next to the chart, <title> tooltips) is the API's money string.

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

/**
 * barChart([{label: "2026-12-01", value: "0.001200", caption: "0.001200 credits"}], {title})
 * `value` is the API's decimal string; only its magnitude (for the bar) is a float.
 */
/** A bar's height unit from a decimal string: its digits to 6 places as a count of
 * millionths (string arithmetic; the money string itself is never parsed as a float). */
function magnitude(value) {
  const match = /^(\d+)(?:\.(\d{0,6}))?/.exec(String(value ?? ""));
  if (!match) return 0;
  const millionths = `${match[1]}${(match[2] || "").padEnd(6, "0")}`.replace(/^0+(?=\d)/, "");
  return Math.min(Number.MAX_SAFE_INTEGER, Number(millionths));
}

export function barChart(points, { title = "", width = 720, height = 220 } = {}) {
  const pad = { top: 12, right: 8, bottom: 28, left: 8 };
  const root = svg("svg", {
    class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": title, preserveAspectRatio: "none",
  });
  root.append(svg("title", {}, title));
  const magnitudes = points.map((p) => magnitude(p.value));
  const max = Math.max(...magnitudes, 0);
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const step = points.length ? plotW / points.length : plotW;
  const barW = Math.max(1, step * 0.7);
  root.append(svg("line", { class: "axis", x1: pad.left, x2: width - pad.right,
    y1: pad.top + plotH, y2: pad.top + plotH }));
  points.forEach((p, i) => {
    const h = max > 0 ? (magnitudes[i] / max) * plotH : 0;
    const x = pad.left + i * step + (step - barW) / 2;
    const bar = svg("rect", { class: "bar", x: x.toFixed(2), y: (pad.top + plotH - h).toFixed(2),
      width: barW.toFixed(2), height: Math.max(h, 0).toFixed(2) });
    bar.append(svg("title", {}, `${p.label}: ${p.caption}`));
    root.append(bar);
  });
  // Label the first, middle and last day so narrow screens stay readable.
  const labelled = new Set([0, Math.floor((points.length - 1) / 2), points.length - 1]);
  points.forEach((p, i) => {
    if (!labelled.has(i)) return;
    const anchor = i === 0 ? "start" : i === points.length - 1 ? "end" : "middle";
    const x = i === 0 ? pad.left : i === points.length - 1 ? width - pad.right : pad.left + i * step + step / 2;
    root.append(svg("text", { x: x.toFixed(2), y: height - 8, "text-anchor": anchor }, p.label));
  });
  return root;
}

/** A one-row bar: `part` of `whole` (both the API's decimal strings), for a table cell. */
export function shareBar(part, whole, label, { width = 120, height = 12 } = {}) {
  const total = magnitude(whole);
  const filled = total > 0 ? Math.min(1, magnitude(part) / total) * width : 0;
  const root = svg("svg", { class: "share", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": label, width, height });
  root.append(svg("title", {}, label));
  root.append(svg("rect", { class: "share-track", x: 0, y: 0, width, height, rx: 2 }));
  root.append(svg("rect", { class: "bar", x: 0, y: 0, width: filled.toFixed(2), height, rx: 2 }));
  return root;
}
