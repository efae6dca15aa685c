// The console's pages. Each renders into `main`; money is always the API's string.
import { API_BASE, errorOf, getJson, notAvailable, sendJson } from "./api.js";
import { token } from "./auth.js";
import { barChart, shareBar } from "./chart.js";
import { autoTopupPanel, lotsPanel } from "./lifecycle.js";
import { append, busy, clear, confirmButton, el, formatDate, message, showOnce, table } from "./dom.js";

const ENTRY_TYPES = ["purchase", "usage", "refund", "bonus", "adjustment", "chargeback", "expiry", "reinstatement"];
const POWER_LEVELS = ["eco", "balanced", "precision"];
const BYOK_PROVIDERS = ["openai", "anthropic", "openrouter", "groq", "huggingface", "together", "fireworks", "deepinfra"];

function loading(text) {
  return el("p", { class: "loading", role: "status" }, text);
}

function card(label, value, id) {
  return el("div", { class: "card" }, el("div", { class: "label", id: `${id}-label` }, label),
    el("div", { class: "value", id, "aria-labelledby": `${id}-label ${id}` }, value));
}

function randomKey() {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

// ------------------------------------------------------------------ dashboard

export async function dashboard(main) {
  main.append(el("h1", {}, "Dashboard"));
  const wait = loading("Loading your balance…");
  main.append(wait);
  const c = await getJson("/credits");
  wait.remove();
  main.append(el("div", { class: "cards" },
    card("Balance", c.balance, "balance"),
    card("Available", c.available, "available"),
    card("Held by running requests", c.held, "held"),
    card(`Spent in ${c.month}`, c.month_spent, "month-spent"),
    card("Monthly cap", c.monthly_cap ?? "none", "monthly-cap"),
    card("Tier", c.tier, "tier")));
  main.append(lotsPanel(c));
  main.append(capForm(c.monthly_cap));
}

function capForm(current) {
  const out = el("div", { "aria-live": "polite" });
  const input = el("input", { id: "cap", name: "cap", inputmode: "decimal", autocomplete: "off",
    placeholder: "e.g. 50.00", value: current ?? "" });
  const save = el("button", { type: "submit" }, "Save cap");
  const form = el("form", { class: "inline" },
    el("label", { for: "cap" }, "Monthly spending cap (credits)", input), save);
  const remove = el("button", { type: "button", class: "secondary" }, "Remove cap");
  const put = async (value) => {
    clear(out);
    try {
      const doc = await sendJson("PUT", "/credits/monthly-cap", { monthly_cap: value });
      const cap = doc && doc.monthly_cap !== undefined ? doc.monthly_cap : value;
      document.getElementById("monthly-cap").textContent = cap ?? "none";
      input.value = cap ?? "";
      out.append(message(cap ? `Monthly cap set to ${cap}.` : "Monthly cap removed.", "ok"));
    } catch (err) {
      out.append(message(err.message));
    }
  };
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = input.value.trim();
    busy(save, "Saving…", () => put(value === "" ? null : value));
  });
  remove.addEventListener("click", () => busy(remove, "Removing…", () => put(null)));
  form.append(remove);
  return el("section", { class: "panel", "aria-labelledby": "cap-h" },
    el("h2", { id: "cap-h" }, "Monthly cap"),
    el("p", { class: "muted" }, "Spending stops for the rest of the month once the cap is reached."),
    form, out);
}

// ---------------------------------------------------------------------- usage

export async function usage(main) {
  main.append(el("h1", {}, "Usage"));
  const body = el("div");
  // Names for the by-key breakdown (usage reports key ids only), read once alongside.
  const namesReady = keyNamesById();
  const tabs = el("div", { class: "tabs", role: "group", "aria-label": "Period" });
  const show = async (days) => {
    for (const b of tabs.querySelectorAll("button")) b.setAttribute("aria-pressed", String(b.dataset.days === String(days)));
    clear(body).append(loading(`Loading the last ${days} days…`));
    try {
      const [u, names] = await Promise.all([getJson(`/usage?days=${days}`), namesReady]);
      clear(body);
      renderUsage(body, u, days, names);
    } catch (err) {
      clear(body).append(message(err.message));
    }
  };
  for (const days of [7, 30, 90]) {
    tabs.append(el("button", { type: "button", class: "secondary", "data-days": days, "aria-pressed": "false",
      onclick: () => show(days) }, `${days} days`));
  }
  main.append(tabs, body);
  await show(7);
}

/** id -> name of the caller's current API keys; null if the list cannot be read. */
async function keyNamesById() {
  try {
    const doc = await getJson("/keys");
    return new Map((doc.keys || []).map((k) => [k.id, k.name]));
  } catch {
    return null;
  }
}

function keyLabel(names, keyId) {
  if (!keyId) return "Signed in (console or login token)";
  if (names === null) return keyId;
  const name = names.get(keyId);
  return name === undefined ? `${keyId} (revoked)` : name;
}

/** Each row's share of the period's cost as a bar: the breakdowns' chart. */
function shareCell(cost, total, label) {
  return shareBar(cost, total, `${label}: ${cost} of ${total} credits`);
}

function renderUsage(body, u, days, names) {
  const t = u.totals || {};
  body.append(el("div", { class: "cards" },
    card("Cost", t.cost ?? "0.000000", "usage-cost"),
    card("Requests", String(t.requests ?? 0), "usage-requests"),
    card("Tokens", String(t.total_tokens ?? 0), "usage-tokens")));
  const byDay = Array.isArray(u.by_day) ? u.by_day : [];
  const heading = el("h2", { id: "by-day-h" });
  const chart = el("section", { class: "panel", "aria-labelledby": "by-day-h" }, heading);
  const plot = el("div");
  const metrics = { cost: ["Cost", (d) => d.cost, (d) => `${d.cost} credits`],
    requests: ["Requests", (d) => String(d.requests), (d) => `${d.requests} requests`],
    total_tokens: ["Tokens", (d) => String(d.total_tokens), (d) => `${d.total_tokens} tokens`] };
  const metricTabs = el("div", { class: "tabs", role: "group", "aria-label": "Chart shows" });
  const draw = (metric) => {
    const [label, value, caption] = metrics[metric];
    heading.textContent = `${label} by day, last ${days} days`;
    for (const b of metricTabs.querySelectorAll("button")) b.setAttribute("aria-pressed", String(b.dataset.metric === metric));
    clear(plot).append(barChart(byDay.map((d) => ({ label: d.date, value: value(d), caption: caption(d) })),
      { title: `${label} per day from ${u.start_date} to ${u.end_date}` }));
  };
  for (const [metric, [label]] of Object.entries(metrics)) {
    metricTabs.append(el("button", { type: "button", class: "secondary", "data-metric": metric, onclick: () => draw(metric) }, label));
  }
  chart.append(metricTabs, plot);
  draw("cost");
  chart.append(el("details", {}, el("summary", {}, "Daily figures as a table"),
    table("Cost per day", [{ label: "Day" }, { label: "Requests", num: true }, { label: "Tokens", num: true }, { label: "Cost", num: true }],
      byDay.map((d) => [d.date, String(d.requests), String(d.total_tokens), d.cost]))));
  body.append(chart);
  const models = Array.isArray(u.by_model) ? u.by_model : [];
  body.append(el("section", { class: "panel", "aria-labelledby": "by-model-h" }, el("h2", { id: "by-model-h" }, "By model"),
    models.length
      ? table("Usage by model", [{ label: "Model" }, { label: "Provider" }, { label: "Requests", num: true }, { label: "Tokens", num: true }, { label: "Cost", num: true }, { label: "Share of cost" }],
        models.map((m) => [m.model, m.provider, String(m.requests), String(m.total_tokens), m.cost, shareCell(m.cost, t.cost, m.model)]))
      : el("p", { class: "muted" }, "No usage in this period.")));
  const keys = Array.isArray(u.by_key) ? u.by_key : null;
  const keyPanel = el("section", { class: "panel", "aria-labelledby": "by-key-h" }, el("h2", { id: "by-key-h" }, "By API key"));
  if (keys === null) {
    keyPanel.append(el("p", { class: "muted" }, "This server does not report usage by key."));
  } else if (keys.length === 0) {
    keyPanel.append(el("p", { class: "muted" }, "No usage in this period."));
  } else {
    keyPanel.append(table("Usage by API key", [{ label: "Key" }, { label: "Requests", num: true }, { label: "Tokens", num: true }, { label: "Cost", num: true }, { label: "Share of cost" }],
      keys.map((k) => [keyLabel(names, k.key_id), String(k.requests), String(k.total_tokens), k.cost,
        shareCell(k.cost, t.cost, keyLabel(names, k.key_id))])));
  }
  body.append(keyPanel);
}

// -------------------------------------------------------------------- history

export async function history(main, { params }) {
  main.append(el("h1", {}, "History"));
  const filter = el("select", { id: "history-type" }, el("option", { value: "" }, "All types"),
    ENTRY_TYPES.map((t) => el("option", { value: t }, t)));
  // ?key_id= (the keys page links here): that key's entries only.
  let keyId = params.get("key_id") || "";
  const keyFilter = el("select", { id: "history-key" }, el("option", { value: "" }, "All"));
  const namesReady = keyNamesById().then((names) => {
    for (const [id, name] of names || []) keyFilter.append(el("option", { value: id }, name));
    if (keyId && !(names && names.has(keyId))) keyFilter.append(el("option", { value: keyId }, keyLabel(names, keyId)));
    keyFilter.value = keyId;
    return names;
  });
  const list = el("div");
  const more = el("button", { type: "button", class: "secondary", hidden: true }, "Load more");
  const status = el("div", { "aria-live": "polite" });
  let cursor = null;
  let rows = [];
  let generation = 0; // a reply to an older filter must not land under a newer one
  const headers = [{ label: "When" }, { label: "Type" }, { label: "Amount", num: true }, { label: "Balance after", num: true },
    { label: "Model" }, { label: "Tokens", num: true }, { label: "Details" }];
  const detail = (e, names) => {
    const m = e.metadata && typeof e.metadata === "object" ? e.metadata : {};
    const parts = [m.reason, e.key_id && `key ${keyLabel(names, e.key_id)}`, m.byok ? "own provider key" : null,
      m.usage_missing ? "usage missing: charged the hold" : null].filter(Boolean).map(String);
    const receipt = receiptLink(e.receipt_url || m.receipt_url);
    return el("span", {}, parts.join("; "), receipt && parts.length ? "; " : null, receipt);
  };
  const load = async (reset) => {
    const mine = reset ? ++generation : generation;
    clear(status);
    if (reset) { cursor = null; rows = []; clear(list).append(loading("Loading history…")); }
    const q = new URLSearchParams({ limit: "25" });
    if (filter.value) q.set("type", filter.value);
    if (keyId) q.set("key_id", keyId);
    if (cursor) q.set("cursor", cursor);
    try {
      const [page, names] = await Promise.all([getJson(`/credits/history?${q}`), namesReady]);
      if (mine !== generation) return;
      rows = rows.concat(page.items.map((e) => [formatDate(e.created_at), e.type, e.amount, e.balance_after,
        e.model || "", e.tokens === null || e.tokens === undefined ? "" : String(e.tokens), detail(e, names)]));
      cursor = page.next_cursor || null;
      clear(list).append(rows.length ? table("Ledger entries, newest first", headers, rows) : el("p", { class: "muted" }, "No entries."));
      more.hidden = !cursor;
    } catch (err) {
      if (mine !== generation) return;
      if (reset) clear(list);
      status.append(message(err.message));
    }
  };
  filter.addEventListener("change", () => load(true));
  keyFilter.addEventListener("change", () => { keyId = keyFilter.value; load(true); });
  more.addEventListener("click", () => busy(more, "Loading…", () => load(false)));
  main.append(el("form", { class: "inline", onsubmit: (ev) => ev.preventDefault() },
    el("label", { for: "history-type" }, "Type", filter), el("label", { for: "history-key" }, "API key", keyFilter)),
  list, more, status);
  await load(true);
}

/** A purchase's Stripe receipt: a link only for an http(s) URL (never javascript: etc.). */
function receiptLink(url) {
  if (typeof url !== "string") return null;
  let target;
  try { target = new URL(url); } catch { return null; }
  if (target.protocol !== "https:" && target.protocol !== "http:") return null;
  return el("a", { href: target.toString(), target: "_blank", rel: "noopener noreferrer" }, "Receipt");
}

// ------------------------------------------------------------------- API keys

export async function keys(main) {
  main.append(el("h1", {}, "API keys"));
  main.append(el("p", { class: "muted" }, "Keys let server-side clients (e.g. the openai SDK) call chat, models, credits and usage. A key cannot manage keys, provider keys or purchases."));
  const secretBox = el("div", { "aria-live": "polite" });
  const listBox = el("div");
  const status = el("div", { "aria-live": "polite" });
  const grace = el("select", { id: "rotate-grace" }, el("option", { value: "0" }, "none (old secret stops now)"),
    el("option", { value: "3600" }, "1 hour"), el("option", { value: "86400" }, "24 hours"));

  const showSecret = (secret, what) => showOnce(secretBox, secret, what, "new-key-secret");

  const refresh = async () => {
    clear(status);
    let doc;
    try {
      doc = await getJson("/keys");
    } catch (err) {
      clear(listBox);
      if (notAvailable(err)) { listBox.append(el("p", { class: "muted" }, "API keys are not available on this deployment.")); return false; }
      status.append(message(err.message));
      return true;
    }
    const rows = doc.keys.map((k) => [
      k.name, el("code", {}, k.masked_key), k.limit ?? "none", k.limit_reset || "never", k.usage ?? "0.000000",
      k.limit_remaining ?? "", k.expires_at ? formatDate(k.expires_at) : "never",
      Array.isArray(k.power_levels) ? k.power_levels.join(", ") : "all", k.last_used_at ? formatDate(k.last_used_at) : "never",
      keyStatus(k), keyActions(k)]);
    clear(listBox).append(rows.length
      ? table("Your API keys", [{ label: "Name" }, { label: "Key" }, { label: "Limit", num: true }, { label: "Resets" },
        { label: "Used", num: true }, { label: "Remaining", num: true }, { label: "Expires" }, { label: "Power levels" },
        { label: "Last used" }, { label: "Status" }, { label: "Actions" }], rows)
      : el("p", { class: "muted" }, "No API keys yet."));
    return true;
  };

  const keyStatus = (k) => {
    if (!k.enabled) return "disabled";
    return k.grace_until ? `active; the previous secret works until ${formatDate(k.grace_until)}` : "active";
  };
  const act = (work) => async () => {
    clear(status);
    try { await work(); await refresh(); } catch (err) { status.append(message(err.message)); }
  };
  const keyActions = (k) => {
    const id = encodeURIComponent(k.id);
    const toggle = el("button", { type: "button", class: "secondary", "aria-label": `${k.enabled ? "Disable" : "Enable"} key ${k.name}` },
      k.enabled ? "Disable" : "Enable");
    toggle.addEventListener("click", () => busy(toggle, "Saving…", act(() => sendJson("PATCH", `/keys/${id}`, { enabled: !k.enabled }))));
    const rotate = confirmButton("Rotate", "Confirm rotate", act(async () => {
      const doc = await sendJson("POST", `/keys/${id}/rotate`, { grace_seconds: Number(grace.value) });
      showSecret(doc.key, `New secret for ${k.name}`);
    }), "");
    rotate.setAttribute("aria-label", `Rotate key ${k.name}`);
    const revoke = confirmButton("Revoke", "Confirm revoke", act(() => sendJson("DELETE", `/keys/${id}`)));
    revoke.setAttribute("aria-label", `Revoke key ${k.name}`);
    const entries = el("a", { href: `#/history?key_id=${id}`, "aria-label": `History of key ${k.name}` }, "History");
    return el("span", { class: "tabs" }, toggle, rotate, revoke, entries);
  };

  const name = el("input", { id: "key-name", required: true, maxlength: "100", autocomplete: "off" });
  const limit = el("input", { id: "key-limit", inputmode: "decimal", placeholder: "no limit", autocomplete: "off" });
  const reset = el("select", { id: "key-reset" }, ["never", "daily", "weekly", "monthly"].map((r) => el("option", { value: r }, r)));
  const expires = el("input", { id: "key-expires", type: "date" });
  const levels = POWER_LEVELS.map((p) => el("input", { type: "checkbox", id: `key-level-${p}`, value: p }));
  const create = el("button", { type: "submit" }, "Create key");
  const form = el("form", { class: "inline", id: "create-key" },
    el("label", { for: "key-name" }, "Name", name),
    el("label", { for: "key-limit" }, "Spending limit (credits)", limit),
    el("label", { for: "key-reset" }, "Limit resets", reset),
    el("label", { for: "key-expires" }, "Expires (optional)", expires),
    el("fieldset", { class: "field" }, el("legend", {}, "Power levels (none ticked: all)"),
      levels.map((box, i) => el("label", { class: "check", for: box.id }, box, POWER_LEVELS[i]))),
    create);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(create, "Creating…", async () => {
      clear(status);
      const body = { name: name.value.trim(), limit_reset: reset.value };
      if (limit.value.trim()) body.limit = limit.value.trim();
      if (expires.value) body.expires_at = `${expires.value}T23:59:59Z`;
      const chosen = levels.filter((b) => b.checked).map((b) => b.value);
      if (chosen.length) body.power_levels = chosen;
      try {
        const doc = await sendJson("POST", "/keys", body);
        showSecret(doc.key, `Secret of ${body.name}`);
        form.reset();
        await refresh();
      } catch (err) {
        status.append(message(notAvailable(err) ? "API keys are not available on this deployment." : err.message));
      }
    });
  });
  main.append(el("section", { class: "panel", "aria-labelledby": "create-key-h" }, el("h2", { id: "create-key-h" }, "Create a key"), form),
    secretBox, status,
    el("section", { class: "panel", "aria-labelledby": "keys-h" }, el("h2", { id: "keys-h" }, "Your keys"),
      el("form", { class: "inline", onsubmit: (ev) => ev.preventDefault() }, el("label", { for: "rotate-grace" }, "On rotation, the old secret keeps working for", grace)),
      listBox));
  listBox.append(loading("Loading keys…"));
  await refresh();
}

// ----------------------------------------------------------------------- BYOK

export async function byok(main) {
  main.append(el("h1", {}, "Provider keys (BYOK)"));
  main.append(el("p", { class: "muted" }, "Requests routed to a provider you have an enabled key for use your key. Keys are encrypted at rest and only ever shown masked."));
  const status = el("div", { "aria-live": "polite" });
  const listBox = el("div", {}, loading("Loading provider keys…"));
  const refresh = async () => {
    const doc = await getJson("/byok/keys");
    const rows = doc.keys.map((k) => {
      const toggle = el("input", { type: "checkbox", id: `byok-enabled-${k.provider}`, checked: k.enabled });
      toggle.addEventListener("change", async () => {
        clear(status);
        toggle.disabled = true;
        try {
          await sendJson("PATCH", `/byok/keys/${encodeURIComponent(k.provider)}`, { enabled: toggle.checked });
          status.append(message(`${k.provider} key ${toggle.checked ? "enabled" : "disabled"}.`, "ok"));
        } catch (err) { toggle.checked = !toggle.checked; status.append(message(err.message)); }
        toggle.disabled = false;
      });
      const remove = confirmButton("Delete", "Confirm delete", async () => {
        clear(status);
        try { await sendJson("DELETE", `/byok/keys/${encodeURIComponent(k.provider)}`); await refresh(); status.append(message(`${k.provider} key deleted.`, "ok")); } catch (err) { status.append(message(err.message)); }
      });
      remove.setAttribute("aria-label", `Delete ${k.provider} key`);
      return [k.provider, el("code", {}, k.masked_key), el("label", { class: "check", for: toggle.id }, toggle, "enabled"),
        formatDate(k.updated_at || k.created_at), remove];
    });
    clear(listBox).append(rows.length
      ? table("Your provider keys", [{ label: "Provider" }, { label: "Key" }, { label: "Use it" }, { label: "Updated" }, { label: "" }], rows)
      : el("p", { class: "muted" }, "No provider keys."));
  };
  const provider = el("input", { id: "byok-provider", list: "byok-providers", required: true, autocomplete: "off" });
  const secret = el("input", { id: "byok-key", type: "password", required: true, autocomplete: "off", spellcheck: "false" });
  const add = el("button", { type: "submit" }, "Save key");
  const form = el("form", { class: "inline", id: "add-byok" },
    el("label", { for: "byok-provider" }, "Provider", provider),
    el("datalist", { id: "byok-providers" }, BYOK_PROVIDERS.map((p) => el("option", { value: p }))),
    el("label", { for: "byok-key" }, "API key", secret), add);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(add, "Saving…", async () => {
      clear(status);
      try {
        const doc = await sendJson("POST", "/byok/keys", { provider: provider.value.trim(), api_key: secret.value });
        form.reset();
        status.append(message(`Saved ${doc.provider} key ${doc.masked_key}.`, "ok"));
        await refresh();
      } catch (err) { status.append(message(err.message)); }
    });
  });
  main.append(el("section", { class: "panel", "aria-labelledby": "add-byok-h" }, el("h2", { id: "add-byok-h" }, "Add or replace a key"), form),
    status, el("section", { class: "panel", "aria-labelledby": "byok-h" }, el("h2", { id: "byok-h" }, "Your provider keys"), listBox));
  await refresh();
}

// ------------------------------------------------------------------------ buy

export async function buy(main, { pageUrl }) {
  main.append(el("h1", {}, "Buy credits"));
  const status = el("div", { "aria-live": "polite" });
  const amount = el("input", { id: "buy-amount", inputmode: "decimal", value: "25.00", required: true, autocomplete: "off",
    "aria-describedby": "buy-help" });
  const pay = el("button", { type: "submit" }, "Continue to payment");
  // One Idempotency-Key per visit: a double click opens one Checkout Session, not two.
  const idempotencyKey = `console-${randomKey()}`;
  const form = el("form", { class: "inline", id: "buy-form" }, el("label", { for: "buy-amount" }, "Amount (USD)", amount), pay);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(pay, "Opening checkout…", async () => {
      clear(status);
      try {
        const doc = await sendJson("POST", "/credits/purchase", {
          amount: amount.value.trim(),
          success_url: `${pageUrl}?checkout=success#/dashboard`,
          cancel_url: `${pageUrl}?checkout=cancel#/buy`,
        }, { "Idempotency-Key": `${idempotencyKey}-${amount.value.trim()}` });
        const target = new URL(doc.checkout_url);
        if (target.protocol !== "https:" && target.protocol !== "http:") throw new Error("Unexpected checkout address.");
        window.location.assign(target.toString());
      } catch (err) { status.append(message(err.message)); }
    });
  });
  main.append(el("section", { class: "panel" }, form,
    el("p", { id: "buy-help", class: "muted" }, "You pay on Stripe Checkout; credits arrive when Stripe confirms the payment (1 credit = 1 USD)."),
    status), autoTopupPanel(pageUrl));
}

// --------------------------------------------------------------------- models

export async function models(main) {
  main.append(el("h1", {}, "Models"));
  const level = el("select", { id: "models-level" }, el("option", { value: "" }, "All power levels"), POWER_LEVELS.map((p) => el("option", { value: p }, p)));
  const box = el("div", {}, loading("Loading models…"));
  const show = async () => {
    clear(box).append(loading("Loading models…"));
    try {
      const doc = await getJson(`/models${level.value ? `?power_level=${encodeURIComponent(level.value)}` : ""}`);
      const rows = doc.data.map((m) => {
        const p = m.pricing || {};
        return [m.id, m.provider, (m.power_levels || []).join(", "), p.prompt ?? "", p.completion ?? "", p.unit ?? "", m.allowed ? "yes" : "no (tier)"];
      });
      const tier = doc.data.length && doc.data[0].pricing ? doc.data[0].pricing.tier : "";
      clear(box).append(table(`Prices for your tier${tier ? ` (${tier})` : ""}, at the shown power level`,
        [{ label: "Model" }, { label: "Provider" }, { label: "Power levels" }, { label: "Prompt", num: true }, { label: "Completion", num: true }, { label: "Per" }, { label: "You may use it" }], rows));
    } catch (err) { clear(box).append(message(err.message)); }
  };
  level.addEventListener("change", show);
  main.append(el("form", { class: "inline", onsubmit: (ev) => ev.preventDefault() }, el("label", { for: "models-level" }, "Power level", level)), box);
  await show();
}

// ----------------------------------------------------------------- playground

/** The literal text of usage.cost in a raw SSE data line: exact, never a JS number. */
export function costLiteral(raw) {
  const match = /"usage"\s*:\s*\{[\s\S]*?"cost"\s*:\s*"?(-?\d+(?:\.\d+)?)"?/.exec(raw);
  return match ? match[1] : null;
}

export async function playground(main) {
  main.append(el("h1", {}, "Playground"));
  // A free-text model id (any of GET /models, or "auto"), with the allowed ones suggested.
  const model = el("input", { id: "pg-model", list: "pg-models", value: "auto", required: true, autocomplete: "off",
    spellcheck: "false", "aria-describedby": "pg-model-help" });
  const suggestions = el("datalist", { id: "pg-models" }, el("option", { value: "auto" }, "routed for you by power level"));
  const level = el("select", { id: "pg-level" }, POWER_LEVELS.map((p) => el("option", { value: p }, p)));
  const prompt = el("textarea", { id: "pg-prompt", required: true, rows: "4" }, "Say hello in five words.");
  const send = el("button", { type: "submit" }, "Send");
  const reply = el("div", { class: "reply", id: "pg-reply", "aria-live": "polite", "aria-label": "Reply" });
  const meta = el("div", { id: "pg-meta", "aria-live": "polite" });
  const form = el("form", { id: "pg-form" },
    el("div", { class: "inline" }, el("label", { for: "pg-model" }, "Model", model), suggestions,
      el("label", { for: "pg-level" }, "Power level", level)),
    el("p", { id: "pg-model-help", class: "muted" }, "\"auto\" picks a model for the power level; or type a model id from Models."),
    el("p", {}, el("label", { for: "pg-prompt" }, "Message"), prompt), send);
  main.append(el("section", { class: "panel" }, form), el("h2", {}, "Reply"), reply, meta);
  try {
    const doc = await getJson("/models");
    const allowed = doc.data.filter((m) => m.allowed);
    append(suggestions, allowed.map((m) => el("option", { value: m.id })));
    const levels = new Set(allowed.flatMap((m) => m.power_levels || []));
    for (const opt of level.options) opt.disabled = levels.size > 0 && !levels.has(opt.value);
    // Keep the person's choice if it is allowed; else the first level their tier has.
    const first = Array.from(level.options).find((o) => !o.disabled);
    if (first && level.selectedOptions[0] && level.selectedOptions[0].disabled) level.value = first.value;
  } catch (err) { meta.append(message(err.message)); }
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(send, "Streaming…", () => stream(model.value.trim(), level.value, prompt.value, reply, meta));
  });
}

async function stream(model, level, text, reply, meta) {
  clear(reply);
  clear(meta).append(loading("Waiting for the first tokens…"));
  const headers = { "Content-Type": "application/json", Accept: "text/event-stream", Authorization: `Bearer ${token()}` };
  let resp;
  try {
    resp = await fetch(`${API_BASE}/chat/completions`, {
      method: "POST", headers,
      body: JSON.stringify({ model, power_level: level, stream: true, stream_options: { include_usage: true },
        messages: [{ role: "user", content: text }] }),
    });
  } catch {
    clear(meta).append(message("The API could not be reached."));
    return;
  }
  if (!resp.ok) {
    clear(meta).append(message((await errorOf(resp)).message));
    return;
  }
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let cost = null;
  let tokens = null;
  let servedBy = "";
  let failure = "";
  const handle = (data) => {
    if (data === "[DONE]") return;
    let chunk;
    try { chunk = JSON.parse(data); } catch { return; }
    if (chunk.error) { failure = String(chunk.error.message || "The stream failed."); return; }
    if (chunk.model) servedBy = String(chunk.model);
    for (const choice of chunk.choices || []) {
      const piece = choice.delta && choice.delta.content;
      if (typeof piece === "string") reply.append(document.createTextNode(piece));
    }
    if (chunk.usage) {
      cost = costLiteral(data) ?? cost;
      tokens = chunk.usage.total_tokens ?? tokens;
    }
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (value) buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data) handle(data);
    }
    if (done) break;
  }
  if (buffer.trim().startsWith("data:")) handle(buffer.trim().slice(5).trimStart());
  clear(meta);
  if (failure) meta.append(message(failure));
  cost = cost ?? resp.headers.get("X-Credits-Charged");
  const parts = [];
  if (servedBy) parts.push(`Model: ${servedBy}`);
  if (tokens !== null) parts.push(`Tokens: ${tokens}`);
  meta.append(el("p", { id: "pg-cost" }, cost !== null ? `Cost: ${cost} credits` : "Cost: not reported"),
    el("p", { class: "muted" }, parts.join(" · ")));
  const remaining = resp.headers.get("X-Credits-Remaining");
  if (remaining) meta.append(el("p", { class: "muted" }, `Balance available: ${remaining}`));
}
