// The registry's HTTP API as the dashboard uses it: the session, /health, and an
// operator's changes. Every URL is relative to the page, so the dashboard works
// under a reverse proxy's path prefix too. Requests authenticate by the session
// cookie; a change carries the session's CSRF token, which the server requires of
// any state-changing request made with the cookie.

export class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }

  get summary() {
    return this.status ? `${this.status} ${this.code}: ${this.detail}` : this.detail;
  }
}

const SAFE = new Set(["GET", "HEAD"]);

export class Api {
  constructor(base = document.baseURI) {
    this.base = base;
    this.csrf = null;
  }

  url(path, params) {
    const url = new URL(path, this.base);
    for (const [name, value] of Object.entries(params ?? {})) url.searchParams.set(name, String(value));
    return url;
  }

  async request(method, path, { params, body } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (!SAFE.has(method) && this.csrf) headers["X-CSRF-Token"] = this.csrf;
    let answer;
    try {
      answer = await fetch(this.url(path, params), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "same-origin",
        cache: "no-store",
      });
    } catch {
      throw new ApiError(0, "unreachable", "the registry cannot be reached");
    }
    let data = null;
    try {
      data = await answer.json();
    } catch {
      // an answer without a JSON body: the status says enough
    }
    if (!answer.ok) {
      throw new ApiError(
        answer.status,
        data?.error ?? "http_error",
        data?.detail ?? `${method} ${path} answered ${answer.status} ${answer.statusText}`,
      );
    }
    return data;
  }

  // -- the session --------------------------------------------------------------

  async session() {
    return this.#remember(await this.request("GET", "api/v1/session"));
  }

  async signIn(token) {
    return this.#remember(await this.request("POST", "api/v1/session", { body: { token } }));
  }

  async signOut() {
    try {
      await this.request("DELETE", "api/v1/session");
    } finally {
      this.csrf = null;
    }
  }

  #remember(session) {
    this.csrf = session?.csrf ?? null;
    return session;
  }

  // -- health ---------------------------------------------------------------------

  // /health answers 503 with an error body when storage is away or the registry is
  // shutting down: that answer is what the banners show, not a failure.
  async health() {
    try {
      return { ok: true, status: 200, health: await this.request("GET", "health") };
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      return { ok: false, status: error.status, error };
    }
  }

  // -- an operator's changes (README, "The API") ---------------------------------

  static identity(instance) {
    return { model_name: instance.model_name, host: instance.host, port: instance.port };
  }

  // PATCH pins enabled/weight; null releases the pin.
  patch(instance, changes) {
    return this.request("PATCH", "api/v1/instances", { params: Api.identity(instance), body: changes });
  }

  deregister(instance, { purge = false } = {}) {
    const params = { ...Api.identity(instance), ...(purge ? { purge: "true" } : {}) };
    return this.request("DELETE", "api/v1/instances", { params });
  }

  // One read of a model's listing, on an operator's request: plain heartbeats (load,
  // time of the last beat) are not changes, so the watch does not carry them.
  listing(modelName) {
    return this.request("GET", "api/v1/instances", { params: { model_name: modelName } });
  }
}
