// DOM helpers. Every piece of text goes in through textContent (or a Text node): no
// string ever reaches innerHTML, and the page's Trusted Types CSP would refuse it.

/** el("td", {class: "num"}, "text", childNode, ...) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (value === true) {
      node.setAttribute(name, "");
    } else {
      node.setAttribute(name, String(value));
    }
  }
  append(node, children);
  return node;
}

export function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

/** A table: headers [{label, num}] and rows of cells (strings or nodes). */
export function table(caption, headers, rows) {
  const head = el("tr", {}, headers.map((h) => el("th", { scope: "col", class: h.num ? "num" : null }, h.label)));
  const body = rows.map((cells) =>
    el("tr", {}, cells.map((cell, i) => el("td", {
      class: headers[i] && headers[i].num ? "num" : null,
      "data-label": headers[i] ? headers[i].label : "", // shown beside the value on narrow screens
    }, cell ?? ""))));
  return el("div", { class: "table-wrap" },
    el("table", {}, el("caption", { class: "muted" }, caption), el("thead", {}, head), el("tbody", {}, body)));
}

/** A message line (role=alert for errors so screen readers announce it). */
export function message(text, kind = "error") {
  return el("p", { class: kind, role: kind === "error" ? "alert" : "status" }, text);
}

/** Run `work` with the button disabled and a loading label; errors go to `out`. */
export async function busy(button, label, work) {
  const original = button.textContent;
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  button.textContent = label;
  try {
    return await work();
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
    button.textContent = original;
  }
}

/** A button that asks for a second click before it acts (no native dialogs). */
export function confirmButton(label, confirmLabel, action, cls = "danger") {
  const button = el("button", { type: "button", class: "secondary" }, label);
  let armed = false;
  let timer = 0;
  button.addEventListener("click", async () => {
    if (!armed) {
      armed = true;
      button.className = cls;
      button.textContent = confirmLabel;
      timer = window.setTimeout(() => { armed = false; button.className = "secondary"; button.textContent = label; }, 5000);
      return;
    }
    window.clearTimeout(timer);
    await busy(button, "Working…", action);
  });
  return button;
}

/** A secret the API shows once (an API key, a webhook signing secret), with a copy
 * button, in `box`; "Done" removes it from the page for good. */
export function showOnce(box, secret, what, id) {
  const code = el("code", { id }, secret);
  const copied = el("span", { class: "ok", "aria-live": "polite" });
  const copy = el("button", { type: "button" }, "Copy");
  copy.addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(secret); copied.textContent = "Copied."; } catch { copied.textContent = "Select the secret and copy it."; }
  });
  const done = el("button", { type: "button", class: "secondary", onclick: () => clear(box) }, "Done");
  clear(box).append(el("div", { class: "secret", role: "region", "aria-label": "New secret" },
    el("strong", {}, `${what}: copy it now, it is shown only once.`), code, copy, done, copied));
  copy.focus();
}

export function formatDate(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toISOString().replace("T", " ").slice(0, 16) + " UTC";
}
