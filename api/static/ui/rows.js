// The rows of the two lists: made once (the virtual lists reuse them) and filled
// from a record. A row that already shows its record as it is is left alone, so a
// frame writes to the DOM only where something changed.

import { addressOf, keyOf } from "./store.js";

export const MODEL_ROW_HEIGHT = 34;
export const INSTANCE_ROW_HEIGHT = 32;

function span(className = "") {
  const element = document.createElement("span");
  if (className) element.className = className;
  return element;
}

function button(action, label) {
  const element = document.createElement("button");
  element.type = "button";
  element.dataset.action = action;
  element.dataset.testid = action;
  element.textContent = label;
  return element;
}

function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

// -- models --------------------------------------------------------------------

export function createModelRow() {
  const row = document.createElement("div");
  row.className = "row model-cols";
  row.setAttribute("role", "row");
  row.dataset.testid = "model-row";
  row.tabIndex = 0;
  const name = span("name");
  const label = span("label");
  const bar = span("bar");
  const fill = span("fill");
  bar.append(fill);
  name.append(label, bar);
  row.append(name, span("num total"), span("num healthy"), span("num available"));
  row.cells = { label, fill, total: row.children[1], healthy: row.children[2], available: row.children[3] };
  return row;
}

export function updateModelRow(row, model, forced, selected) {
  const isSelected = model.name === selected;
  if (row.dataset.selected !== String(isSelected)) row.dataset.selected = String(isSelected);
  if (!forced && row.version === model.version) return;
  row.version = model.version;
  row.dataset.model = model.name;
  row.dataset.state =
    model.available === 0 ? "down" : model.available < model.total ? "degraded" : "ok";
  const cells = row.cells;
  setText(cells.label, model.name);
  cells.label.title = model.name;
  setText(cells.total, String(model.total));
  setText(cells.healthy, String(model.healthy));
  setText(cells.available, String(model.available));
  cells.fill.style.width = `${Math.round((100 * model.available) / (model.total || 1))}%`;
}

// -- instances -----------------------------------------------------------------

export function createInstanceRow(canAct) {
  const row = document.createElement("div");
  row.className = "row instance-cols";
  row.setAttribute("role", "row");
  row.dataset.testid = "instance-row";
  const cells = {};
  for (const name of ["address", "health", "service", "weight", "load", "age", "cooldown", "pins", "metadata"]) {
    cells[name] = span(name);
    row.append(cells[name]);
  }
  cells.weight.classList.add("num");
  cells.load.classList.add("num");
  const actions = span("actions");
  if (canAct) {
    cells.toggle = button("drain", "Drain");
    actions.append(cells.toggle, button("weight", "Weight"), button("deregister", "Deregister"), button("purge", "Purge"));
  }
  row.append(actions);
  row.cells = cells;
  return row;
}

export function updateInstanceRow(row, instance, forced, now) {
  if (!forced) return;
  const cells = row.cells;
  row.dataset.key = keyOf(instance);
  row.dataset.health = instance.healthy ? "healthy" : "unhealthy";
  row.dataset.enabled = String(instance.enabled);
  row.dataset.cooldown = String(instance.cooldown_until != null);
  setText(cells.address, addressOf(instance));
  // The state where it says more than health (starting, cooling), and why, on hover.
  const state = instance.state;
  setText(cells.health, state === "starting" || state === "cooling" ? state : instance.healthy ? "healthy" : "unhealthy");
  cells.health.title = instance.state_reason ?? "";
  setText(cells.service, instance.enabled ? "in service" : "drained");
  const pins = instance.overrides ?? {};
  setText(cells.weight, formatNumber(instance.weight));
  cells.weight.classList.toggle("pinned", "weight" in pins);
  cells.service.classList.toggle("pinned", "enabled" in pins);
  setText(cells.load, instance.queue_length == null ? "–" : String(instance.queue_length));
  setText(cells.cooldown, instance.cooldown_until ? clock(instance.cooldown_until) : "–");
  cells.cooldown.title = instance.cooldown_until ?? "";
  setText(cells.pins, compact(instance.overrides));
  cells.pins.title = cells.pins.textContent;
  setText(cells.metadata, compact(instance.metadata));
  cells.metadata.title = cells.metadata.textContent;
  if (cells.toggle) {
    const action = instance.enabled ? "drain" : "undrain";
    cells.toggle.dataset.action = action;
    cells.toggle.dataset.testid = action;
    setText(cells.toggle, instance.enabled ? "Drain" : "Undrain");
  }
  updateAge(row, instance, now);
}

export function updateAge(row, instance, now) {
  const text = instance.last_heartbeat ? age(now - Date.parse(instance.last_heartbeat)) : "never";
  setText(row.cells.age, text);
  row.cells.age.title = instance.last_heartbeat ?? "";
}

// -- formatting ----------------------------------------------------------------

export function age(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.floor(s / 60)} min ago`;
  if (s < 172800) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

function clock(iso) {
  const at = new Date(iso);
  return Number.isNaN(at.getTime()) ? iso : at.toLocaleTimeString();
}

function formatNumber(value) {
  return Number.isInteger(value) ? String(value) : String(Number(value.toFixed(3)));
}

export function compact(object) {
  if (object == null) return "–";
  const entries = Object.entries(object);
  if (!entries.length) return "–";
  return entries.map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" ");
}
