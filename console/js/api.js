// The public API, relative to the console (`<base>/console/` -> `<base>/api/v1/llm`), so
// the same files work under an API Gateway stage prefix and locally.
import { token } from "./auth.js";

export const API_BASE = new URL("../api/v1/llm", document.baseURI).pathname;

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code || "";
  }
}

/** The API's own message (OpenAI error shape), else a plain description. */
async function errorOf(resp) {
  let text = "";
  try { text = await resp.text(); } catch { text = ""; }
  try {
    const doc = JSON.parse(text);
    const err = doc && doc.error;
    if (err && typeof err === "object" && err.message) return new ApiError(resp.status, String(err.message), err.code);
    if (doc && doc.message) return new ApiError(resp.status, String(doc.message));
  } catch { /* not JSON */ }
  return new ApiError(resp.status, `The server answered ${resp.status}${resp.statusText ? " " + resp.statusText : ""}.`);
}

/** A route this deployment does not have (yet): the gateway's 404, or 405 for a method. */
export function notAvailable(err) {
  return err instanceof ApiError && (err.status === 404 || err.status === 405);
}

export async function request(method, path, body, extraHeaders = {}) {
  const headers = { ...extraHeaders };
  const bearer = token();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(API_BASE + path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "The API could not be reached. Check your connection and try again.");
  }
  if (!resp.ok) throw await errorOf(resp);
  return resp;
}

/** JSON of a successful call; money stays the API's strings (we never do arithmetic on it). */
export async function getJson(path) {
  return (await request("GET", path)).json();
}

export async function sendJson(method, path, body, headers) {
  const resp = await request(method, path, body, headers);
  return resp.status === 204 ? null : resp.json();
}

export { errorOf };
