// A list that keeps in the DOM only the rows in view (plus a few either side): a
// model of 10,000 instances costs about forty row elements, reused as it scrolls.
// Rows have one fixed height; the spacer's height gives the scrollbar its range.

const OVERSCAN = 6;

export class VirtualList {
  // create() makes an empty row element; update(row, item, forced) fills it, and may
  // skip work when the row already shows that item as it is.
  constructor(viewport, { rowHeight, create, update }) {
    this.viewport = viewport;
    this.rowHeight = rowHeight;
    this.create = create;
    this.update = update;
    this.items = [];
    this.rows = [];
    this.spacer = document.createElement("div");
    this.spacer.className = "vspacer";
    viewport.append(this.spacer);
    this.scheduled = false;
    viewport.addEventListener("scroll", () => this.#schedule(), { passive: true });
    new ResizeObserver(() => this.#schedule()).observe(viewport);
  }

  setItems(items) {
    this.items = items;
    this.spacer.style.height = `${items.length * this.rowHeight}px`;
    this.render(false);
  }

  // Make the rows again (after what create() builds changed, e.g. the role).
  rebuild() {
    for (const row of this.rows) row.remove();
    this.rows = [];
    this.render(true);
  }

  // Fill the rows in view. forced: every row redraws, even one that shows its item already.
  render(forced) {
    const { scrollTop, clientHeight } = this.viewport;
    const height = this.rowHeight;
    const first = Math.max(0, Math.floor(scrollTop / height) - OVERSCAN);
    const last = Math.min(this.items.length, Math.ceil((scrollTop + clientHeight) / height) + OVERSCAN);
    const needed = Math.max(0, last - first);
    while (this.rows.length < needed) {
      const row = this.create();
      row.classList.add("vrow");
      this.rows.push(row);
      this.viewport.append(row);
    }
    // Rows past those in view leave the DOM: what a page (or a test) finds is what it shows.
    for (const row of this.rows.splice(needed)) row.remove();
    for (let n = 0; n < this.rows.length; n += 1) {
      const row = this.rows[n];
      const index = first + n;
      if (row.index !== index) {
        row.index = index;
        row.style.transform = `translateY(${index * height}px)`;
      }
      const item = this.items[index];
      this.update(row, item, forced || row.item !== item);
      row.item = item;
    }
  }

  // The rows in view, with their items (for the ticking ages).
  *visible() {
    for (const row of this.rows) if (row.item !== undefined) yield [row, row.item];
  }

  scrollToIndex(index) {
    const top = index * this.rowHeight;
    if (top < this.viewport.scrollTop || top + this.rowHeight > this.viewport.scrollTop + this.viewport.clientHeight) {
      this.viewport.scrollTop = top;
    }
  }

  #schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      this.render(false);
    });
  }
}
