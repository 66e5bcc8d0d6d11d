// Banners from /health (read every few seconds: it is one small object, not the
// listing): the start-up grace, self-preservation holding the checker back, storage
// that cannot be reached, a registry shutting down or gone, a checker that stopped.

const EVERY_MS = 3000;

function seconds(value) {
  return value >= 10 ? `${Math.round(value)} s` : `${Number(value).toFixed(1)} s`;
}

// What /health says, as banners: [{kind, level, text}].
export function bannersOf(answer) {
  if (!answer.ok) {
    const { status, code, detail } = answer.error;
    if (status === 0) return [{ kind: "unreachable", level: "error", text: "The registry cannot be reached." }];
    if (code === "storage_unavailable") {
      return [
        {
          kind: "storage",
          level: "error",
          text: `Storage outage: ${detail} The registry answers 503 until it is back, and marks nothing meanwhile.`,
        },
      ];
    }
    if (code === "shutting_down") {
      return [{ kind: "shutdown", level: "warn", text: "The registry is shutting down." }];
    }
    return [{ kind: "health", level: "error", text: `/health answered ${status} ${code}: ${detail}` }];
  }
  const health = answer.health;
  const shown = [];
  if (health.grace_remaining_s > 0) {
    shown.push({
      kind: "grace",
      level: "info",
      text:
        `Start-up grace: the checker marks no instance unhealthy for another ${seconds(health.grace_remaining_s)} ` +
        `(one heartbeat timeout, ${seconds(health.heartbeat_timeout_s)}, after a start), so that workers can beat first.`,
    });
  }
  const preservation = health.self_preservation ?? {};
  if (preservation.active) {
    const parts = [];
    if (preservation.expiry) {
      parts.push(
        `marking ${preservation.expiry.held} silent instances unhealthy (it marks them anyway in ` +
          `${seconds(preservation.expiry.marks_anyway_in_s)})`,
      );
    }
    if (preservation.eviction) {
      parts.push(
        `evicting ${preservation.eviction.held} unhealthy instances (it evicts anyway in ` +
          `${seconds(preservation.eviction.marks_anyway_in_s)})`,
      );
    }
    shown.push({
      kind: "self-preservation",
      level: "warn",
      text:
        `Self-preservation: so many instances went silent at once that the registry suspects a fault on its side, ` +
        `and is holding back ${parts.join(" and ") || "the checker"}.`,
    });
  }
  if (health.checker_running === false) {
    shown.push({
      kind: "checker",
      level: "error",
      text: "The checker is not running: silent instances are not being marked unhealthy.",
    });
  }
  return shown;
}

export class Banners {
  constructor(api, box, onHealth) {
    this.api = api;
    this.box = box;
    this.onHealth = onHealth;
    this.timer = null;
    this.running = false;
    this.generation = 0; // a read started before now() or stop() is not shown
    this.shown = "";
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.#schedule(0);
  }

  stop() {
    this.running = false;
    this.generation += 1;
    clearTimeout(this.timer);
    this.#show([]);
  }

  // Read now (after a reconnection, say) rather than at the next turn.
  now() {
    if (!this.running) return;
    this.generation += 1;
    this.#schedule(0);
  }

  #schedule(delay) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.#read(), delay);
  }

  async #read() {
    const generation = this.generation;
    const answer = await this.api.health();
    if (!this.running || generation !== this.generation) return;
    this.onHealth?.(answer);
    this.#show(bannersOf(answer));
    this.#schedule(EVERY_MS);
  }

  #show(banners) {
    const key = JSON.stringify(banners);
    if (key === this.shown) return;
    this.shown = key;
    this.box.replaceChildren(
      ...banners.map(({ kind, level, text }) => {
        const banner = document.createElement("div");
        banner.className = `banner ${level}`;
        banner.dataset.testid = "banner";
        banner.dataset.kind = kind;
        banner.setAttribute("role", level === "info" ? "status" : "alert");
        banner.textContent = text;
        return banner;
      }),
    );
  }
}
