// Healthy and available instances over the page's lifetime, all models together or
// the selected model, drawn by uPlot (vendored: uplot.min.js, see README.txt). A
// point is kept only when a count changes (drawn as steps), so a quiet fleet costs
// nothing; a long-lived page thins its oldest points rather than growing forever.

const ALL = "";
const MAX_POINTS = 4000;

class Series {
  constructor() {
    this.t = [];
    this.healthy = [];
    this.available = [];
  }

  add(t, healthy, available) {
    const n = this.t.length;
    if (n && this.healthy[n - 1] === healthy && this.available[n - 1] === available) return false;
    if (n && this.t[n - 1] === t) {
      this.healthy[n - 1] = healthy;
      this.available[n - 1] = available;
      return true;
    }
    this.t.push(t);
    this.healthy.push(healthy);
    this.available.push(available);
    if (this.t.length > MAX_POINTS) this.#thin();
    return true;
  }

  // Drop every other point of the oldest half: the old past gets coarser, the recent stays exact.
  #thin() {
    const half = this.t.length >> 1;
    for (const name of ["t", "healthy", "available"]) {
      this[name] = this[name].filter((_, i) => i >= half || i % 2 === 0);
    }
  }

  // The points, and one more at ``now`` so that the last step reaches the present.
  data(now) {
    const n = this.t.length;
    if (!n) return [[now], [null], [null]];
    return [
      [...this.t, now],
      [...this.healthy, this.healthy[n - 1]],
      [...this.available, this.available[n - 1]],
    ];
  }
}

export class Chart {
  constructor(box, title) {
    this.box = box;
    this.title = title;
    this.series = new Map([[ALL, new Series()]]);
    this.shown = ALL;
    this.plot = null;
  }

  #make() {
    const uPlot = globalThis.uPlot;
    if (!uPlot) return null;
    const stepped = uPlot.paths.stepped({ align: 1 });
    const plot = new uPlot(
      {
        width: Math.max(200, this.box.clientWidth),
        height: 180,
        legend: { live: false },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(1, Math.ceil(max * 1.1))] } },
        axes: [{ stroke: "#8b95a5" }, { stroke: "#8b95a5", size: 50 }],
        series: [
          {},
          { label: "healthy", stroke: "#3fb27f", width: 2, paths: stepped, points: { show: false } },
          { label: "available", stroke: "#4c8dff", width: 2, paths: stepped, points: { show: false }, dash: [6, 3] },
        ],
      },
      this.#data(),
      this.box,
    );
    new ResizeObserver(() => plot.setSize({ width: Math.max(200, this.box.clientWidth), height: 180 })).observe(
      this.box,
    );
    return plot;
  }

  #data() {
    return this.series.get(this.shown)?.data(Date.now() / 1000) ?? [[], [], []];
  }

  record(name, healthy, available) {
    let series = this.series.get(name);
    if (series === undefined) {
      series = new Series();
      this.series.set(name, series);
    }
    return series.add(Math.floor(Date.now() / 100) / 10, healthy, available);
  }

  recordAll(totals) {
    return this.record(ALL, totals.healthy, totals.available);
  }

  show(name) {
    this.shown = name ?? ALL;
    this.title.textContent = name ? `Healthy and available: ${name}` : "Healthy and available, all models";
    this.draw();
  }

  draw() {
    if (this.plot === null) this.plot = this.#make();
    this.plot?.setData(this.#data());
  }
}
