// Sign-in: OIDC authorization code with PKCE (S256). Tokens live in sessionStorage
// (this tab only, gone when it closes), never in localStorage.

const TOKEN = "llmcredits.token";
const EXPIRES = "llmcredits.token_expires";
const VERIFIER = "llmcredits.pkce_verifier";
const STATE = "llmcredits.pkce_state";
const RETURN_TO = "llmcredits.return_to";

function b64url(bytes) {
  let text = "";
  for (const b of new Uint8Array(bytes)) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomString(size = 32) {
  return b64url(crypto.getRandomValues(new Uint8Array(size)));
}

async function challengeOf(verifier) {
  return b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
}

/** The console page itself, without query or fragment: the registered redirect URI. */
export function redirectUri() {
  return window.location.origin + window.location.pathname;
}

function endpoint(url) {
  return new URL(url, window.location.origin).toString();
}

export function token() {
  const value = sessionStorage.getItem(TOKEN);
  const expires = Number(sessionStorage.getItem(EXPIRES) || "0");
  if (!value || (expires && Date.now() > expires)) return null;
  return value;
}

/** The token's subject, for display only (the API checks the token, not us). */
export function subject() {
  const value = token();
  if (!value) return "";
  try {
    const payload = JSON.parse(atob(value.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return typeof payload.sub === "string" ? payload.sub : "";
  } catch {
    return "";
  }
}

export async function signIn(config) {
  const verifier = randomString(32);
  const state = randomString(16);
  sessionStorage.setItem(VERIFIER, verifier);
  sessionStorage.setItem(STATE, state);
  sessionStorage.setItem(RETURN_TO, window.location.hash || "#/dashboard");
  const url = new URL(endpoint(config.authorization_endpoint));
  url.search = new URLSearchParams({
    response_type: "code",
    client_id: config.client_id,
    redirect_uri: redirectUri(),
    scope: config.scope || "openid",
    state,
    code_challenge: await challengeOf(verifier),
    code_challenge_method: "S256",
  }).toString();
  window.location.assign(url.toString());
}

/** Finish a sign-in if the URL carries ?code=&state= (or ?error=). Returns an error text or "". */
export async function completeSignIn(config) {
  const params = new URLSearchParams(window.location.search);
  if (!params.has("code") && !params.has("error")) return "";
  const expectedState = sessionStorage.getItem(STATE);
  const verifier = sessionStorage.getItem(VERIFIER);
  const returnTo = sessionStorage.getItem(RETURN_TO) || "#/dashboard";
  sessionStorage.removeItem(STATE);
  sessionStorage.removeItem(VERIFIER);
  sessionStorage.removeItem(RETURN_TO);
  // Drop code and state from the address bar and history whatever happens next.
  window.history.replaceState(null, "", redirectUri() + returnTo);
  if (params.has("error")) {
    return `Sign-in failed: ${params.get("error_description") || params.get("error")}`;
  }
  if (!expectedState || params.get("state") !== expectedState || !verifier) {
    return "Sign-in failed: the response does not match this tab's sign-in request. Try again.";
  }
  const resp = await fetch(endpoint(config.token_endpoint), {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code",
      code: params.get("code"),
      redirect_uri: redirectUri(),
      client_id: config.client_id,
      code_verifier: verifier,
    }),
  });
  let doc = {};
  try { doc = await resp.json(); } catch { doc = {}; }
  if (!resp.ok || typeof doc.access_token !== "string") {
    return `Sign-in failed: ${doc.error_description || doc.error || resp.status}`;
  }
  sessionStorage.setItem(TOKEN, doc.access_token);
  const lifetime = Number.isInteger(doc.expires_in) ? doc.expires_in : 3600;
  sessionStorage.setItem(EXPIRES, String(Date.now() + lifetime * 1000));
  return "";
}

export function signOut() {
  for (const key of [TOKEN, EXPIRES, VERIFIER, STATE, RETURN_TO]) sessionStorage.removeItem(key);
}
