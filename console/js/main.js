// Boot: read the sign-in settings, finish a sign-in redirect, then route by #/page.
import { ApiError } from "./api.js";
import { completeSignIn, redirectUri, signIn, signOut, subject, token } from "./auth.js";
import { clear, el, message } from "./dom.js";
import { alerts } from "./lifecycle.js";
import * as views from "./views.js";

const PAGES = {
  dashboard: ["Dashboard", views.dashboard],
  usage: ["Usage", views.usage],
  history: ["History", views.history],
  keys: ["API keys", views.keys],
  byok: ["Provider keys", views.byok],
  buy: ["Buy credits", views.buy],
  alerts: ["Alerts", alerts],
  models: ["Models", views.models],
  playground: ["Playground", views.playground],
};

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const notice = document.getElementById("notice");
const signOutButton = document.getElementById("sign-out");
let config = null;
let generation = 0;

function showNotice(text, warn = false) {
  notice.textContent = text;
  notice.className = warn ? "notice warn" : "notice";
  notice.hidden = !text;
}

function showSignIn(error) {
  nav.hidden = true;
  signOutButton.hidden = true;
  document.getElementById("user").textContent = "";
  document.title = "Sign in - llmcredits console";
  const button = el("button", { type: "button", id: "sign-in" }, "Sign in");
  button.addEventListener("click", () => {
    button.disabled = true;
    signIn(config).catch((err) => { button.disabled = false; clear(main).append(message(String(err.message || err))); });
  });
  clear(main).append(el("div", { class: "signin" }, el("h1", {}, "llmcredits console"),
    el("p", {}, "Your balance, usage, keys and purchases."), error ? message(error) : null, button));
  button.focus();
}

async function route(focus) {
  const mine = ++generation;
  const [name, query = ""] = (window.location.hash.replace(/^#\/?/, "") || "dashboard").split("?");
  const page = PAGES[name] || PAGES.dashboard;
  for (const link of nav.querySelectorAll("a")) {
    if (link.getAttribute("href") === `#/${name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${page[0]} - llmcredits console`;
  const view = el("div");
  clear(main).append(view);
  try {
    await page[1](view, { config, pageUrl: redirectUri(), params: new URLSearchParams(query) });
  } catch (err) {
    if (mine !== generation) return;
    if (err instanceof ApiError && err.status === 401) {
      signOut();
      showSignIn("Your session has ended. Sign in again.");
      return;
    }
    view.append(message(err.message || String(err)));
  }
  if (focus && mine === generation) main.focus();
}

async function boot() {
  try {
    const resp = await fetch("config.json", { cache: "no-store" });
    const doc = await resp.json();
    if (!resp.ok) throw new Error(doc.error ? doc.error.message : `config.json: ${resp.status}`);
    config = doc;
  } catch (err) {
    clear(main).append(message(`The console is not configured: ${err.message}`));
    return;
  }
  const params = new URLSearchParams(window.location.search);
  // Where Stripe Checkout sends the person back: a purchase, or saving a card.
  const returns = {
    checkout: { success: ["Payment received: your credits are added as soon as Stripe confirms it.", false],
      cancel: ["Checkout was cancelled; nothing was charged.", true] },
    setup: { success: ["Card saved: auto top-up can use it once Stripe confirms it.", false],
      cancel: ["Saving a card was cancelled; nothing was saved.", true] },
  };
  const returned = Object.keys(returns).find((name) => params.has(name));
  let error = "";
  try {
    error = await completeSignIn(config);
  } catch (err) {
    error = `Sign-in failed: ${err.message}`;
  }
  if (returned) {
    window.history.replaceState(null, "", redirectUri() + window.location.hash);
    const [text, warn] = returns[returned][params.get(returned) === "success" ? "success" : "cancel"];
    showNotice(text, warn);
  }
  if (!token()) {
    showSignIn(error);
    return;
  }
  nav.hidden = false;
  signOutButton.hidden = false;
  document.getElementById("user").textContent = subject();
  signOutButton.addEventListener("click", () => {
    signOut();
    showNotice("");
    showSignIn("");
  });
  window.addEventListener("hashchange", () => route(true));
  await route(false);
}

boot();
