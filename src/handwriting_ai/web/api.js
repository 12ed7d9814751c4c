// Calls to the service: the typed API key sent as X-Api-Key, error bodies read as
// {code, message, request_id}. Keys live in sessionStorage (this tab only), never in the page.

const API_KEY = "handwriting-ai.api-key";
const ADMIN_KEY = "handwriting-ai.admin-key";

const unauthorizedListeners = [];

export function apiKey() {
  return sessionStorage.getItem(API_KEY) || "";
}

export function setApiKey(value) {
  if (value) sessionStorage.setItem(API_KEY, value);
  else sessionStorage.removeItem(API_KEY);
}

export function adminKey() {
  return sessionStorage.getItem(ADMIN_KEY) || "";
}

export function setAdminKey(value) {
  if (value) sessionStorage.setItem(ADMIN_KEY, value);
  else sessionStorage.removeItem(ADMIN_KEY);
}

// Called with the ApiError of every 401 answered to the API key (not the admin key).
export function onUnauthorized(listener) {
  unauthorizedListeners.push(listener);
}

export function reportUnauthorized(error) {
  unauthorizedListeners.forEach((listener) => listener(error));
}

export class ApiError extends Error {
  constructor(status, code, message, requestId, retryAfterS) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
    this.retryAfterS = retryAfterS;
  }
}

export function keyHeaders(admin = false) {
  const key = admin ? adminKey() : apiKey();
  return key ? { "X-Api-Key": key } : {};
}

function retryAfter(response) {
  const value = Number(response.headers.get("Retry-After"));
  return Number.isFinite(value) && value > 0 ? value : null;
}

export async function errorOf(response) {
  const requestId = response.headers.get("X-Request-ID") || "";
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const ok = body && typeof body === "object" && typeof body.message === "string";
  const code = ok && typeof body.code === "string" ? body.code : `http_${response.status}`;
  const message = ok ? body.message : `The service answered HTTP ${response.status}.`;
  const id = ok && typeof body.request_id === "string" ? body.request_id : requestId;
  return new ApiError(response.status, code, message, id, retryAfter(response));
}

// One call: JSON in (`json`) or a FormData (`form`), JSON out as {data, requestId, status}.
// Throws ApiError for an error answer or an unreachable service.
export async function call(path, { method = "GET", json, form, admin = false, signal } = {}) {
  const headers = { Accept: "application/json", ...keyHeaders(admin) };
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body, signal, cache: "no-store" });
  } catch (error) {
    if (error && error.name === "AbortError") throw error;
    throw new ApiError(0, "unreachable", "The service could not be reached.", "", null);
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (error.status === 401 && !admin) reportUnauthorized(error);
    throw error;
  }
  const requestId = response.headers.get("X-Request-ID") || "";
  const data = response.status === 204 ? null : await response.json();
  return { data, requestId, status: response.status };
}

// A short sentence for an error, as the page shows it.
export function describe(error) {
  if (error instanceof ApiError) {
    const wait = error.retryAfterS ? ` Try again in ${error.retryAfterS} s.` : "";
    return `${error.message}${wait}`;
  }
  return String(error && error.message ? error.message : error);
}
