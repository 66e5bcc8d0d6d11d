// The operator's dashboard: the registry's models and instances, live.
//
// State comes from one WebSocket on /api/v1/watch (watch.js), applied to the store
// (store.js) as it arrives; the DOM is brought up to date at most once per animation
// frame, and only where something changed (the virtual lists draw only the rows in
// view). /health is read every few seconds for the banners; the instance listing is
// never polled. Actions go through the API with the session's CSRF token (api.js),
// each after an in-page confirmation (dialog.js).

import { Api } from "./api.js";
import { Banners } from "./banners.js";
import { Chart } from "./chart.js";
import { Confirm } from "./dialog.js";
import { Feed, Messages } from "./feed.js";
import {
  INSTANCE_ROW_HEIGHT,
  MODEL_ROW_HEIGHT,
  createInstanceRow,
  createModelRow,
  updateAge,
  updateInstanceRow,
  updateModelRow,
} from "./rows.js";
import { Store, addressOf, keyOf } from "./store.js";
import { VirtualList } from "./virtual.js";
import { Watch } from "./watch.js";

const $ = (id) => document.getElementById(id);
// The roles that may drain, weigh, deregister and purge (README, "Security").
const ACTING_ROLES = new Set(["operator", "admin"]);
const TICK_MS = 1000;

const ACTIONS = {
  drain: (where) => ({
    title: "Drain this instance?",
    text: `Drain ${where}: selection stops picking it. It stays registered, and the pin holds over the worker's re-registrations until undrained.`,
    ok: "Drain",
    done: "Drained",
  }),
  undrain: (where) => ({
    title: "Undrain this instance?",
    text: `Undrain ${where}: release the operator's pin, so that it is back in service.`,
    ok: "Undrain",
    done: "Undrained",
  }),
  weight: (where, instance) => ({
    title: "Set the weight?",
    text: `Weight of ${where}: selection picks in proportion to it (0: never).`,
    ok: "Set weight",
    done: "Set the weight of",
    weight: instance.weight,
  }),
  deregister: (where) => ({
    title: "Deregister this instance?",
    text: `Deregister ${where}: it is marked unhealthy and stays listed until it beats again or is evicted.`,
    ok: "Deregister",
    done: "Deregistered",
    danger: true,
  }),
  purge: (where) => ({
    title: "Purge this instance?",
    text: `Purge ${where}: it is deleted from the registry. A worker that still beats registers it again.`,
    ok: "Purge",
    done: "Purged",
    danger: true,
  }),
};

class Dashboard {
  constructor() {
    this.api = new Api();
    this.store = new Store();
    this.session = null;
    this.canAct = false;
    this.filter = "";
    this.selected = selectedFromHash();
    this.scheduled = false;
    this.orderChanged = true; // the filter or the selection moved: lists re-sort
    this.stats = { applied: 0, rendered: 0, revision: null, resets: 0, frames: 0, models: 0, instances: 0 };
    window.__dashboard = this.stats;

    this.models = new VirtualList($("model-list"), {
      rowHeight: MODEL_ROW_HEIGHT,
      create: createModelRow,
      update: (row, model, forced) => updateModelRow(row, model, forced, this.selected),
    });
    this.instances = new VirtualList($("instance-list"), {
      rowHeight: INSTANCE_ROW_HEIGHT,
      create: () => createInstanceRow(this.canAct),
      update: (row, instance, forced) => updateInstanceRow(row, instance, forced, Date.now()),
    });
    this.chart = new Chart($("chart"), $("chart-title"));
    this.feed = new Feed($("feed"));
    this.messages = new Messages($("messages"));
    this.confirm = new Confirm($("confirm"));
    this.banners = new Banners(this.api, $("banners"), (answer) => this.#storageNote(answer));
    this.watch = new Watch(new URL("api/v1/watch", document.baseURI).href, {
      status: (state, detail) => this.#status(state, detail),
      reset: (instances, revision, kind) => {
        this.store.reset(instances, revision, kind);
        this.#schedule();
      },
      event: (event) => {
        this.store.apply(event);
        this.#schedule();
      },
      refused: () => this.#checkSession(),
    });
  }

  async start() {
    this.#wire();
    setInterval(() => this.#tick(), TICK_MS);
    let session = null;
    while (session === null) {
      try {
        session = await this.api.session();
      } catch (error) {
        if (error.status === 404) {
          session = { auth: false, role: null, name: null, csrf: null }; // a registry without sessions
        } else {
          this.#status("reconnecting", `the registry cannot be reached (${error.summary})`);
          await new Promise((resolve) => setTimeout(resolve, 2000));
        }
      }
    }
    this.#useSession(session);
  }

  // -- the session ---------------------------------------------------------------

  #useSession(session, why = "") {
    this.session = session;
    if (session.auth && !session.role) return this.#signedOut(why);
    if (session.role === "worker") {
      this.api.signOut().catch(() => {});
      return this.#signedOut("A worker's token can register and beat, not watch: sign in with an operator's or router's token.");
    }
    const canAct = !session.auth || ACTING_ROLES.has(session.role);
    if (canAct !== this.canAct) {
      this.canAct = canAct;
      this.instances.rebuild();
    }
    document.body.classList.toggle("read-only", !canAct);
    $("readonly").hidden = canAct;
    $("readonly").textContent = canAct ? "" : `read-only (${session.role})`;
    $("who").textContent = session.auth ? `${session.name ?? "?"} (${session.role})` : "no authentication";
    $("signout").hidden = !session.auth;
    $("signin").hidden = true;
    $("board").hidden = false;
    $("filter-box").hidden = false;
    this.watch.start();
    this.banners.start();
    if (this.selected) this.#select(this.selected);
  }

  #signedOut(why) {
    this.watch.stop();
    this.watch.forget();
    this.banners.stop();
    this.store.reset([], null, "snapshot");
    this.#schedule();
    $("board").hidden = true;
    $("filter-box").hidden = true;
    $("signout").hidden = true;
    $("who").textContent = "";
    $("signin").hidden = false;
    $("signin-error").hidden = !why;
    $("signin-error").textContent = why;
    this.#status("signed-out", "");
    $("signin-token").focus();
  }

  async #signIn(token) {
    try {
      const session = await this.api.signIn(token);
      $("signin-token").value = "";
      this.#useSession(session);
    } catch (error) {
      $("signin-error").textContent =
        error.status === 401 ? "That token is unknown, revoked or expired." : error.summary;
      $("signin-error").hidden = false;
    }
  }

  async #signOut() {
    try {
      await this.api.signOut();
    } catch (error) {
      this.messages.error(`Signing out failed: ${error.summary}`);
    }
    this.#signedOut("");
  }

  // A watch that could not open, or a 401: is the session still there?
  async #checkSession() {
    if (!this.session?.auth) return;
    let session;
    try {
      session = await this.api.session();
    } catch {
      return; // the registry is away: the watch keeps retrying
    }
    if (!session.role) this.#useSession(session, "Your session ended (its token was revoked or expired): sign in again.");
  }

  // -- the page's controls -------------------------------------------------------

  #wire() {
    $("signin-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.#signIn($("signin-token").value.trim());
    });
    $("signout").addEventListener("click", () => this.#signOut());
    $("filter").addEventListener("input", (event) => {
      this.filter = event.target.value;
      this.orderChanged = true;
      this.#schedule();
    });
    const models = $("model-list");
    models.addEventListener("click", (event) => {
      const row = event.target.closest(".vrow");
      if (row?.item) this.#select(row.item.name);
    });
    models.addEventListener("keydown", (event) => {
      const row = event.target.closest(".vrow");
      if (row?.item && (event.key === "Enter" || event.key === " ")) {
        event.preventDefault();
        this.#select(row.item.name);
      }
    });
    $("instance-list").addEventListener("click", (event) => {
      const button = event.target.closest("button[data-action]");
      const row = button?.closest(".vrow");
      if (row?.item) this.#act(button.dataset.action, row.item);
    });
    $("feed").addEventListener("click", (event) => {
      const item = event.target.closest("li[data-model]");
      if (item) this.#select(item.dataset.model);
    });
    $("refresh-loads").addEventListener("click", () => this.#refreshLoads());
    window.addEventListener("hashchange", () => {
      const name = selectedFromHash();
      if (name !== this.selected) this.#select(name);
    });
  }

  #select(name) {
    const changed = name !== this.selected;
    this.selected = name;
    if (changed) $("instance-list").scrollTop = 0;
    const hash = name ? `#model=${encodeURIComponent(name)}` : "";
    if (location.hash !== hash) history.replaceState(null, "", hash || location.pathname + location.search);
    this.chart.show(name);
    $("refresh-loads").hidden = !name;
    this.orderChanged = true;
    this.#schedule();
  }

  async #refreshLoads() {
    const name = this.selected;
    if (!name) return;
    try {
      const answer = await this.api.listing(name);
      this.store.mergeBeats(answer.instances ?? []);
      this.#schedule();
    } catch (error) {
      this.messages.error(`Reading ${name}'s listing failed: ${error.summary}`);
    }
  }

  async #act(kind, instance) {
    const where = `${instance.model_name} ${addressOf(instance)}`;
    const ask = ACTIONS[kind]?.(where, instance);
    if (!ask) return;
    const answer = await this.confirm.ask(ask);
    if (answer === null) return;
    try {
      if (kind === "drain") await this.api.patch(instance, { enabled: false });
      else if (kind === "undrain") await this.api.patch(instance, { enabled: null });
      else if (kind === "weight") await this.api.patch(instance, { weight: answer.weight });
      else if (kind === "deregister") await this.api.deregister(instance);
      else if (kind === "purge") {
        await this.api.deregister(instance, { purge: true });
        this.store.remove(keyOf(instance));
        this.#schedule();
      }
      this.messages.notice(`${ask.done} ${where}.`);
    } catch (error) {
      this.messages.error(`${ask.ok} ${where} was refused: ${error.summary}`);
      if (error.status === 401) this.#checkSession();
    }
  }

  // -- the connection ------------------------------------------------------------

  #status(state, detail) {
    const element = $("conn");
    element.dataset.state = state;
    element.textContent = state === "signed-out" ? "signed out" : detail ? `${state}: ${detail}` : state;
    element.title = detail;
    document.body.dataset.conn = state;
    if (state === "live") this.banners.now();
  }

  #storageNote(answer) {
    const health = answer.ok ? answer.health : null;
    $("storage").textContent = health
      ? `storage: ${health.storage}${health.durable ? "" : " (not durable: lost on restart)"}`
      : "";
  }

  // -- rendering -----------------------------------------------------------------

  #schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => this.#flush());
  }

  // Once per frame: whatever the events of the frame changed, drawn once.
  #flush() {
    this.scheduled = false;
    const store = this.store;
    const changes = store.takeChanges();
    const reorder = this.orderChanged || changes.reset;
    this.orderChanged = false;
    if (reorder || changes.models.size) {
      const order = store.modelOrder(this.filter);
      this.models.setItems(order);
      const all = store.models.size;
      $("models-count").textContent =
        order.length === all ? `${all} models` : `${order.length} of ${all} models`;
      this.#chart(changes);
    }
    const selected = this.selected;
    if (selected && (reorder || changes.models.has(selected))) this.#showInstances(selected);
    if (!selected && reorder) {
      $("instances-title").textContent = "Instances";
      $("instances-count").textContent = "";
      $("instances-empty").textContent = "Pick a model on the left.";
      $("instances-empty").hidden = false;
      this.instances.setItems([]);
    }
    if (changes.feed) this.feed.show(store.recentFeed(), changes.feed);
    Object.assign(this.stats, {
      applied: store.applied,
      rendered: store.applied,
      revision: store.revision,
      resets: store.resets,
      frames: this.stats.frames + 1,
      models: store.models.size,
      instances: store.instances.size,
    });
  }

  #showInstances(name) {
    const order = this.store.instanceOrder(name);
    this.instances.setItems(order);
    $("instances-title").textContent = name;
    const model = this.store.models.get(name);
    $("instances-count").textContent = model
      ? `${model.total} instances, ${model.healthy} healthy, ${model.available} available`
      : "no instances";
    $("instances-empty").hidden = order.length > 0;
    $("instances-empty").textContent = "This model has no instances now.";
  }

  #chart(changes) {
    let drawn = false;
    for (const name of changes.models) {
      const model = this.store.models.get(name);
      drawn = this.chart.record(name, model?.healthy ?? 0, model?.available ?? 0) || drawn;
    }
    drawn = this.chart.recordAll(this.store.totals()) || drawn;
    if (drawn) this.chart.draw();
  }

  // Every second: the ages of the rows in view, and the chart's time axis.
  #tick() {
    if (document.hidden) return;
    const now = Date.now();
    for (const [row, instance] of this.instances.visible()) updateAge(row, instance, now);
    this.chart.draw();
  }
}

function selectedFromHash() {
  const match = /^#model=(.*)$/.exec(location.hash);
  if (!match) return null;
  try {
    return decodeURIComponent(match[1]) || null;
  } catch {
    return null;
  }
}

new Dashboard().start();
