// The confirmation every action asks for, in an in-page <dialog> (so a test, or a
// keyboard, can answer it): it names the action and the instance. The weight's
// dialog also asks for the new weight, or for releasing the operator's pin.

export class Confirm {
  constructor(dialog) {
    this.dialog = dialog;
    this.title = dialog.querySelector("#confirm-title");
    this.text = dialog.querySelector("#confirm-text");
    this.weightFields = dialog.querySelector("#confirm-weight");
    this.weight = dialog.querySelector("#confirm-weight-value");
    this.release = dialog.querySelector("#confirm-weight-release");
    this.error = dialog.querySelector("#confirm-error");
    this.ok = dialog.querySelector("#confirm-ok");
    this.release.addEventListener("change", () => {
      this.weight.disabled = this.release.checked;
    });
    // OK with a weight that is no number keeps the dialog open, saying why.
    this.ok.addEventListener("click", (event) => {
      if (!this.weightFields.hidden && !this.release.checked && this.#weightValue() === null) {
        event.preventDefault();
        this.error.textContent = "Give a number of 0 or more (0: never selected), or release the pin.";
        this.error.hidden = false;
      }
    });
  }

  #weightValue() {
    const value = this.weight.valueAsNumber;
    return Number.isFinite(value) && value >= 0 ? value : null;
  }

  // Resolves to null when cancelled; else {} (with ``weight``, a number or null, for the weight's dialog).
  ask({ title, text, ok = "OK", danger = false, weight }) {
    if (this.dialog.open) this.dialog.close("cancel");
    this.title.textContent = title;
    this.text.textContent = text;
    this.ok.textContent = ok;
    this.ok.classList.toggle("danger", danger);
    this.weightFields.hidden = weight === undefined;
    this.error.hidden = true;
    if (weight !== undefined) {
      this.weight.value = String(weight);
      this.release.checked = false;
      this.weight.disabled = false;
    }
    this.dialog.returnValue = "";
    return new Promise((resolve) => {
      this.dialog.addEventListener(
        "close",
        () => {
          if (this.dialog.returnValue !== "ok") return resolve(null);
          if (weight === undefined) return resolve({});
          return resolve({ weight: this.release.checked ? null : this.#weightValue() });
        },
        { once: true },
      );
      this.dialog.showModal();
      (weight === undefined ? this.ok : this.weight).focus();
    });
  }
}
