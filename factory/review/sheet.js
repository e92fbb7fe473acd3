"use strict";
// Review sheet behaviour: filters, decisions (buttons and keys), CSV export. Manifest values are only ever read from
// data attributes and written with textContent/dataset: never parsed as HTML or code.

// One CSV cell of the decisions export. A cell a spreadsheet would evaluate (first character =, +, -, @, tab or CR:
// OWASP "CSV injection") gets a leading ' so it stays text; one already starting with ' gets one too, so that
// `review apply` (factory/review/apply.py, decode_cell) strips exactly one and reads back the original value.
function csvField(value) {
  if (/^[=+\-@\t\r']/.test(value)) value = "'" + value;
  return /[",\r\n]/.test(value) ? '"' + value.replace(/"/g, '""') + '"' : value;
}

(function () {
  const body = document.body;
  const cards = Array.from(document.querySelectorAll("article.sku"));
  const storeKey = "adfactory-review:" + body.dataset.date + ":" + body.dataset.runId;
  const filters = { category: "", reason: "" };
  let current = null;

  function load() {
    let saved = {};
    try { saved = JSON.parse(localStorage.getItem(storeKey) || "{}"); } catch (err) { saved = {}; }
    for (const card of cards) {
      const s = saved[card.dataset.sku];
      if (s) {
        card.dataset.decision = s.decision || "";
        card.querySelector(".note").value = s.note || "";
      }
    }
  }

  function save() {
    const out = {};
    for (const card of cards) {
      const note = card.querySelector(".note").value;
      if (card.dataset.decision || note) out[card.dataset.sku] = { decision: card.dataset.decision, note: note };
    }
    try { localStorage.setItem(storeKey, JSON.stringify(out)); } catch (err) { /* private mode: no persistence */ }
  }

  function visible() { return cards.filter((c) => !c.hidden); }

  function refresh() {
    let approve = 0, reject = 0;
    for (const card of cards) {
      const d = card.dataset.decision;
      card.querySelector(".state").textContent = d === "approve" ? "approved" : d === "reject" ? "rejected" : "";
      if (d === "approve") approve += 1;
      if (d === "reject") reject += 1;
      const reasons = card.dataset.reasons.split(" ");
      card.hidden = (filters.category !== "" && card.dataset.category !== filters.category) ||
        (filters.reason !== "" && !reasons.includes(filters.reason));
    }
    document.getElementById("n-approve").textContent = approve;
    document.getElementById("n-reject").textContent = reject;
    document.getElementById("n-open").textContent = cards.length - approve - reject;
    document.getElementById("n-shown").textContent = visible().length;
    if (current && current.hidden) select(visible()[0] || null);
  }

  function select(card) {
    if (current) current.classList.remove("current");
    current = card;
    if (card) {
      card.classList.add("current");
      card.focus({ preventScroll: true });
      card.scrollIntoView({ block: "nearest" });
    }
  }

  function move(step) {
    const list = visible();
    if (!list.length) return;
    const i = list.indexOf(current);
    select(list[Math.min(Math.max(i + step, 0), list.length - 1)] || list[0]);
  }

  function decide(card, decision, advance) {
    if (!card) return;
    card.dataset.decision = decision;
    save();
    refresh();
    if (advance) move(1);
  }

  function exportCsv() {
    const lines = ["sku_id,decision,note"];
    for (const card of cards) {
      if (!card.dataset.decision) continue;
      const note = card.querySelector(".note").value.replace(/[\r\n]+/g, " ");
      lines.push([card.dataset.sku, card.dataset.decision, note].map(csvField).join(","));
    }
    const blob = new Blob([lines.join("\n") + "\n"], { type: "text/csv;charset=utf-8" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "decisions-" + body.dataset.date + ".csv";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }

  for (const card of cards) {
    card.addEventListener("click", () => { if (current !== card) select(card); });
    card.querySelector("button.approve").addEventListener("click", (ev) => { ev.stopPropagation(); select(card); decide(card, "approve", false); });
    card.querySelector("button.reject").addEventListener("click", (ev) => { ev.stopPropagation(); select(card); decide(card, "reject", false); });
    card.querySelector(".note").addEventListener("input", save);
  }
  for (const chip of document.querySelectorAll("button.chip")) {
    chip.addEventListener("click", () => {
      const kind = chip.dataset.filter;
      filters[kind] = chip.dataset.value;
      for (const other of document.querySelectorAll('button.chip[data-filter="' + kind + '"]')) {
        other.classList.toggle("active", other === chip);
      }
      refresh();
    });
  }
  document.getElementById("export").addEventListener("click", exportCsv);
  document.addEventListener("keydown", (ev) => {
    const tag = (ev.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "textarea") {
      if (ev.key === "Escape") ev.target.blur();
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const actions = {
      j: () => move(1), ArrowDown: () => move(1), k: () => move(-1), ArrowUp: () => move(-1),
      a: () => decide(current, "approve", true), r: () => decide(current, "reject", true),
      u: () => decide(current, "", false), n: () => current && current.querySelector(".note").focus(),
    };
    const action = actions[ev.key];
    if (action) { ev.preventDefault(); action(); }
  });

  load();
  refresh();
  select(visible()[0] || null);
})();
