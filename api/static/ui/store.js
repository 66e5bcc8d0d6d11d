// What the dashboard knows: every instance by key, each model's counts kept up to
// date incrementally (an event costs O(1), however many instances there are), and
// what changed since the last frame, so that rendering touches only that.

export const keyOf = (instance) => `${instance.model_name}/${instance.host}:${instance.port}`;
export const addressOf = (instance) =>
  instance.host.includes(":") ? `[${instance.host}]:${instance.port}` : `${instance.host}:${instance.port}`;

// Selection picks from these: healthy, ready (not starting), enabled and not cooling
// down (the registry sends "restored", with cooldown_until null, when a cooldown ends).
export const isAvailable = (i) => i.healthy && i.ready !== false && i.enabled && i.cooldown_until == null;

// Events whose instance is gone from the registry.
const REMOVED = new Set(["evicted", "purged"]);
const FEED_LENGTH = 200;

class ModelSummary {
  constructor(name) {
    this.name = name;
    this.keys = new Set();
    this.total = 0;
    this.healthy = 0;
    this.enabled = 0;
    this.available = 0;
    this.version = 0; // bumped on every change: rows redraw only when it moved
  }

  count(instance, sign) {
    this.total += sign;
    this.healthy += instance.healthy ? sign : 0;
    this.enabled += instance.enabled ? sign : 0;
    this.available += isAvailable(instance) ? sign : 0;
    this.version += 1;
  }

  // Worst first: the smallest share available, then the most unavailable, then by name.
  static worstFirst(a, b) {
    const share = a.available / (a.total || 1) - b.available / (b.total || 1);
    if (share !== 0) return share;
    const down = b.total - b.available - (a.total - a.available);
    if (down !== 0) return down;
    return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
  }
}

export class Store {
  constructor() {
    this.instances = new Map();
    this.models = new Map();
    this.revision = null;
    this.feed = []; // newest last, at most FEED_LENGTH
    this.applied = 0; // events applied since the page opened (the benchmark reads it)
    this.resets = 0;
    this.#clearDirty();
  }

  #clearDirty() {
    this.dirtyModels = new Set();
    this.dirtyKeys = new Set();
    this.newFeed = 0;
    this.wasReset = false;
  }

  // What changed since the last call; the renderer takes it once per frame.
  takeChanges() {
    const changes = {
      models: this.dirtyModels,
      keys: this.dirtyKeys,
      feed: this.newFeed,
      reset: this.wasReset,
    };
    this.#clearDirty();
    return changes;
  }

  // A snapshot or a resync: the registry's whole state as of ``revision``.
  reset(instances, revision, kind) {
    const before = this.models;
    this.instances = new Map();
    this.models = new Map();
    for (const instance of instances) this.#put(instance);
    for (const name of before.keys()) if (!this.models.has(name)) this.dirtyModels.add(name);
    for (const name of this.models.keys()) this.dirtyModels.add(name);
    this.revision = revision;
    this.resets += 1;
    this.wasReset = true;
    if (kind === "resync") this.#note({ type: "resync", revision }, null, `${instances.length} instances`);
  }

  apply(event) {
    const instance = event.instance;
    if (instance) {
      const key = keyOf(instance);
      // "deregistered" keeps the instance (marked unhealthy); these delete it.
      if (REMOVED.has(event.type)) this.remove(key);
      else this.#put(instance);
      this.#note(event, instance);
    }
    if (typeof event.revision === "number") this.revision = event.revision;
    this.applied += 1;
  }

  remove(key) {
    const old = this.instances.get(key);
    if (old === undefined) return;
    this.instances.delete(key);
    const model = this.models.get(old.model_name);
    model.count(old, -1);
    model.keys.delete(key);
    if (model.total === 0) this.models.delete(old.model_name);
    this.dirtyModels.add(old.model_name);
    this.dirtyKeys.add(key);
  }

  // Load and time of the last beat from a listing read on request; an event newer
  // than the listing wins, so only these two fields are taken, and only forward.
  mergeBeats(instances) {
    for (const fresh of instances) {
      const key = keyOf(fresh);
      const known = this.instances.get(key);
      if (known === undefined || !fresh.last_heartbeat) continue;
      if (known.last_heartbeat && Date.parse(fresh.last_heartbeat) <= Date.parse(known.last_heartbeat)) continue;
      this.instances.set(key, { ...known, last_heartbeat: fresh.last_heartbeat, queue_length: fresh.queue_length });
      this.models.get(known.model_name).version += 1;
      this.dirtyModels.add(known.model_name);
      this.dirtyKeys.add(key);
    }
  }

  #put(instance) {
    const key = keyOf(instance);
    const old = this.instances.get(key);
    let model = this.models.get(instance.model_name);
    if (model === undefined) {
      model = new ModelSummary(instance.model_name);
      this.models.set(instance.model_name, model);
    }
    if (old !== undefined) model.count(old, -1);
    model.count(instance, +1);
    model.keys.add(key);
    this.instances.set(key, instance);
    this.dirtyModels.add(instance.model_name);
    this.dirtyKeys.add(key);
  }

  #note(event, instance, detail = "") {
    this.feed.push({
      at: Date.now(),
      type: event.type,
      revision: event.revision,
      model: instance?.model_name ?? null,
      key: instance ? keyOf(instance) : null,
      address: instance ? addressOf(instance) : null,
      detail,
    });
    if (this.feed.length > FEED_LENGTH * 2) this.feed.splice(0, this.feed.length - FEED_LENGTH);
    this.newFeed += 1;
  }

  recentFeed() {
    return this.feed.slice(-FEED_LENGTH);
  }

  // The models whose names contain ``filter`` (case-insensitive), worst first.
  modelOrder(filter) {
    const needle = filter.trim().toLowerCase();
    const shown = [];
    for (const model of this.models.values()) {
      if (!needle || model.name.toLowerCase().includes(needle)) shown.push(model);
    }
    return shown.sort(ModelSummary.worstFirst);
  }

  // One model's instances: unhealthy first, then drained, then cooling down, then by address.
  instanceOrder(name) {
    const model = this.models.get(name);
    if (model === undefined) return [];
    const rank = (i) =>
      !i.healthy ? 0 : i.ready === false ? 1 : !i.enabled ? 2 : i.cooldown_until != null ? 3 : 4;
    const rows = [];
    for (const key of model.keys) rows.push(this.instances.get(key));
    return rows.sort((a, b) => rank(a) - rank(b) || compareAddress(a, b));
  }

  totals() {
    let healthy = 0;
    let available = 0;
    for (const model of this.models.values()) {
      healthy += model.healthy;
      available += model.available;
    }
    return { total: this.instances.size, healthy, available };
  }
}

// Addresses in a natural order (10.0.0.9 before 10.0.0.10), by a key computed once
// per address: sorting a model of 10,000 instances compares plain strings.
const IPV4 = /^\d{1,3}(\.\d{1,3}){3}$/;
const sortKeys = new Map();
function sortKey(instance) {
  const address = `${instance.host}:${instance.port}`;
  let found = sortKeys.get(address);
  if (found === undefined) {
    const host = IPV4.test(instance.host)
      ? instance.host.split(".").map((part) => part.padStart(3, "0")).join(".")
      : instance.host;
    found = `${host}\u0000${String(instance.port).padStart(5, "0")}`;
    if (sortKeys.size > 200_000) sortKeys.clear();
    sortKeys.set(address, found);
  }
  return found;
}
function compareAddress(a, b) {
  const ka = sortKey(a);
  const kb = sortKey(b);
  return ka < kb ? -1 : ka > kb ? 1 : 0;
}
