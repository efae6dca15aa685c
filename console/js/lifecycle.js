// The credit lifecycle in the console (DESIGN section 7): lots with expiry, alerts with
// a signed webhook, auto top-up with a saved card. Each part degrades to a short note
// when this deployment has no such route (404/405) or field, so the console works on an
// older API too. Money is always the API's string, sent back as the person typed it.
import { getJson, notAvailable, sendJson } from "./api.js";
import { busy, clear, el, formatDate, message, showOnce, table } from "./dom.js";

const WEEK_MS = 7 * 24 * 3600 * 1000;

function unavailable(what) {
  return el("p", { class: "muted unavailable" }, `${what} not available on this deployment.`);
}

function panel(id, title, ...children) {
  return el("section", { class: "panel", "aria-labelledby": id }, el("h2", { id }, title), ...children);
}

/** The field as the API gave it ("" for null), and back: "" is null. */
const shown = (value) => (value === null || value === undefined ? "" : String(value));
const given = (input) => (input.value.trim() === "" ? null : input.value.trim());

function moneyInput(id, value, placeholder) {
  return el("input", { id, inputmode: "decimal", autocomplete: "off", placeholder, value: shown(value) });
}

// ----------------------------------------------------------------------- lots

/** GET /credits `lots`, spent soonest-expiring first (the API's order). */
export function lotsPanel(credits) {
  if (!Array.isArray(credits.lots)) return panel("lots-h", "Credit lots", unavailable("Credit lots are"));
  if (credits.lots.length === 0) return panel("lots-h", "Credit lots", el("p", { class: "muted" }, "No credit lots yet."));
  const soon = Date.now() + WEEK_MS;
  const expiry = (lot) => {
    if (!lot.expires_at) return "never";
    const when = new Date(lot.expires_at).getTime();
    const text = formatDate(lot.expires_at);
    return when <= soon ? el("span", { class: "warn-text" }, `${text} (within 7 days)`) : text;
  };
  return panel("lots-h", "Credit lots",
    el("p", { class: "muted" }, "Usage spends the soonest-expiring credits first; credits without expiry last. What is left of a lot at its expiry leaves the balance."),
    table("Credits by lot", [{ label: "Source" }, { label: "Amount", num: true }, { label: "Remaining", num: true }, { label: "Expires" }],
      credits.lots.map((lot) => [lot.source, lot.amount, lot.remaining, expiry(lot)])));
}

// --------------------------------------------------------------------- alerts

/** "80, 100" -> [80, 100]; null when a part is not a whole percentage. */
export function percentsOf(text) {
  const parts = text.split(/[\s,]+/).filter(Boolean);
  if (!parts.every((p) => /^\d{1,3}$/.test(p))) return null;
  return parts.map((p) => parseInt(p, 10));
}

export async function alerts(main) {
  main.append(el("h1", {}, "Alerts"));
  const box = el("div", {}, el("p", { class: "loading", role: "status" }, "Loading alert settings…"));
  main.append(box);
  let current;
  try {
    current = await getJson("/credits/alerts");
  } catch (err) {
    clear(box).append(notAvailable(err) ? panel("alerts-h", "Alert settings", unavailable("Alerts are")) : message(err.message));
    return;
  }
  const status = el("div", { "aria-live": "polite" });
  const secretBox = el("div", { "aria-live": "polite" });
  const low = moneyInput("alert-low", current.low_balance, "off");
  const caps = el("input", { id: "alert-caps", autocomplete: "off", placeholder: "e.g. 80, 100",
    value: Array.isArray(current.cap_percent) ? current.cap_percent.join(", ") : "" });
  const hook = el("input", { id: "alert-webhook", inputmode: "url", autocomplete: "off", spellcheck: "false",
    placeholder: "https://example.com/hooks/llmcredits", value: shown(current.webhook_url) });
  const rotate = el("input", { type: "checkbox", id: "alert-rotate" });
  const secretState = el("p", { class: "muted", id: "alert-secret-state" });
  const save = el("button", { type: "submit" }, "Save alerts");
  const form = el("form", { class: "inline", id: "alerts-form" },
    el("label", { for: "alert-low" }, "Low balance below (credits)", low),
    el("label", { for: "alert-caps" }, "Monthly cap thresholds (% of cap)", caps),
    el("label", { for: "alert-webhook" }, "Webhook URL (optional)", hook),
    el("label", { class: "check", for: "alert-rotate" }, rotate, "Make a new signing secret"), save);
  const fill = (doc) => {
    low.value = shown(doc.low_balance);
    caps.value = Array.isArray(doc.cap_percent) ? doc.cap_percent.join(", ") : "";
    hook.value = shown(doc.webhook_url);
    rotate.checked = false;
    secretState.textContent = doc.webhook_secret_set
      ? "A signing secret is set (shown only when it was made). Tick \"Make a new signing secret\" if you lost it: the old one stops signing at once."
      : "A signing secret is made, and shown once, when you first save a webhook URL.";
  };
  fill(current);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    clear(status);
    const percents = percentsOf(caps.value);
    if (percents === null) {
      status.append(message("Monthly cap thresholds are whole percentages separated by commas, e.g. 80, 100."));
      return;
    }
    busy(save, "Saving…", async () => {
      try {
        const body = { low_balance: given(low), cap_percent: percents, webhook_url: given(hook) };
        if (rotate.checked) body.rotate_secret = true;
        const doc = await sendJson("PUT", "/credits/alerts", body);
        fill(doc);
        status.append(message("Alert settings saved.", "ok"));
        // Only the answer of the PUT that made the secret carries it.
        if (typeof doc.webhook_secret === "string" && doc.webhook_secret) {
          showOnce(secretBox, doc.webhook_secret, "Webhook signing secret", "webhook-secret");
        }
      } catch (err) {
        status.append(message(notAvailable(err) ? "Alerts are not available on this deployment." : err.message));
      }
    });
  });
  clear(box).append(panel("alerts-h", "Alert settings",
    el("p", { class: "muted" }, "Leave a field empty to turn that alert off. Alerts are sent once per crossing: balance.low when your available credits fall below the threshold and balance.recovered when they are back above it; cap.threshold once a month per percentage of your monthly cap; also topup.failed and credits.expiring (7 days ahead)."),
    form, secretState, status), secretBox,
  panel("verify-h", "Verifying webhook deliveries",
    el("p", {}, "Each delivery is a POST with the header ", el("code", {}, "LLMCredits-Signature: t=<unix time>,v1=<hex>"),
      ", where v1 is the HMAC-SHA256, keyed with your signing secret, of the time, a dot and the raw body (",
      el("code", {}, "t + \".\" + body"), "). Compare it in constant time, refuse old timestamps, and use the event id to drop repeats: deliveries are retried.")));
}

// ----------------------------------------------------------------- auto top-up

/** The auto top-up settings and the saved card, for the Buy credits page. */
export function autoTopupPanel(pageUrl) {
  const body = el("div", {}, el("p", { class: "loading", role: "status" }, "Loading auto top-up…"));
  const section = panel("topup-h", "Auto top-up", body);
  loadAutoTopup(body, pageUrl);
  return section;
}

async function loadAutoTopup(body, pageUrl) {
  let current;
  try {
    current = await getJson("/credits/auto-topup");
  } catch (err) {
    clear(body).append(notAvailable(err) ? unavailable("Auto top-up is") : message(err.message));
    return;
  }
  const status = el("div", { "aria-live": "polite" });
  const enabled = el("input", { type: "checkbox", id: "topup-enabled", checked: current.enabled === true });
  const threshold = moneyInput("topup-threshold", current.threshold, "e.g. 5.00");
  const amount = moneyInput("topup-amount", current.amount, "e.g. 25.00");
  const limit = moneyInput("topup-limit", current.monthly_limit, "e.g. 100.00");
  const save = el("button", { type: "submit" }, "Save auto top-up");
  let state = topupState(current);
  const form = el("form", { class: "inline", id: "topup-form" },
    el("label", { class: "check", for: "topup-enabled" }, enabled, "Top up automatically"),
    el("label", { for: "topup-threshold" }, "When available credits fall below", threshold),
    el("label", { for: "topup-amount" }, "Buy (USD)", amount),
    el("label", { for: "topup-limit" }, "At most per month (USD)", limit), save);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    busy(save, "Saving…", async () => {
      clear(status);
      try {
        const doc = await sendJson("PUT", "/credits/auto-topup", {
          enabled: enabled.checked, threshold: given(threshold), amount: given(amount), monthly_limit: given(limit) });
        enabled.checked = doc.enabled === true;
        threshold.value = shown(doc.threshold);
        amount.value = shown(doc.amount);
        limit.value = shown(doc.monthly_limit);
        const fresh = topupState(doc);
        state.replaceWith(fresh);
        state = fresh;
        status.append(message(doc.enabled ? `Auto top-up on: ${doc.amount} when available falls below ${doc.threshold}.` : "Auto top-up is off.", "ok"));
      } catch (err) {
        status.append(message(notAvailable(err) ? "Auto top-up is not available on this deployment." : err.message));
      }
    });
  });
  const saved = current.payment_method;
  const hasCard = Boolean(saved && typeof saved === "object");
  const card = el("button", { type: "button", class: "secondary", id: "save-card" },
    hasCard ? "Replace the saved card" : "Save a card for auto top-up");
  card.addEventListener("click", () => busy(card, "Opening checkout…", async () => {
    clear(status);
    try {
      const doc = await sendJson("POST", "/credits/payment-method", {
        success_url: `${pageUrl}?setup=success#/buy`, cancel_url: `${pageUrl}?setup=cancel#/buy` });
      const target = new URL(doc.checkout_url);
      if (target.protocol !== "https:" && target.protocol !== "http:") throw new Error("Unexpected checkout address.");
      window.location.assign(target.toString());
    } catch (err) {
      status.append(message(notAvailable(err) ? "Saving a card is not available on this deployment." : err.message));
    }
  }));
  clear(body).append(
    el("p", { class: "muted" }, "With a saved card, a payment of the chosen amount is made when your available credits fall below the threshold, never past the monthly limit. Three failed payments in a row turn it off (you get a topup.failed alert)."),
    el("p", { id: "topup-card" }, hasCard ? `Saved card: ${saved.brand || "card"} ending ${saved.last4 || "?"}.` : "No card saved yet."),
    el("p", {}, card, " ", el("span", { class: "muted" }, "(Stripe Checkout; replaces a card saved before)")),
    form, state, status);
}

/** This month's top-ups and the failure count, as far as the API reports them. */
function topupState(doc) {
  const lines = [];
  if (doc.month && doc.month_topped_up !== undefined) {
    lines.push(`Topped up in ${doc.month}: ${doc.month_topped_up}${doc.monthly_limit ? ` of at most ${doc.monthly_limit}` : ""}.`);
  }
  if (doc.in_flight) lines.push("A top-up is being charged now.");
  if (Number.isInteger(doc.consecutive_failures) && doc.consecutive_failures > 0) {
    lines.push(`${doc.consecutive_failures} failed top-up(s) in a row; three turn auto top-up off.`);
  }
  return el("div", { id: "topup-state" }, lines.map((line) => el("p", { class: "muted" }, line)));
}
