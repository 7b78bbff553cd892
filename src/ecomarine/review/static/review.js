// The review page: one item at a time, decided with the keyboard. All data is shown with
// textContent (never parsed as HTML): ids and file names are untrusted.
"use strict";

const state = { items: [], index: 0, reviewer: "", compareWith: null };
const $ = (id) => document.getElementById(id);

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  const data = await response.json();
  if (!response.ok) throw new Error(`${data.error}: ${data.detail}`);
  return data;
}

function photo(p, caption) {
  const figure = document.createElement("figure");
  if (p.token) {
    const img = document.createElement("img");
    img.src = `/api/photo/${encodeURIComponent(p.token)}`;
    img.alt = caption;
    img.loading = "lazy";
    img.addEventListener("click", () => compare(p, caption));
    figure.append(img);
  } else {
    const missing = document.createElement("span");
    missing.className = "missing";
    missing.textContent = "photo not available";
    figure.append(missing);
  }
  const cap = document.createElement("figcaption");
  cap.textContent = caption;
  figure.append(cap);
  return figure;
}

function describe(s) {
  if (!s) return "";
  const what = {
    confirm: `confirmed as ${s.individual_id}`,
    new_individual: `new individual ${s.individual_id}`,
    skip: "not sure (skipped)",
    not_cetacean: "not a cetacean",
  }[s.action];
  const conflict = s.conflict ? ` — CONFLICT between reviewers: ${s.reviewers.join(", ")}` : "";
  return `Decided: ${what} by ${s.reviewer}${conflict}`;
}

function render() {
  const items = state.items;
  const decided = items.filter((it) => it.state).length;
  $("progress").textContent = `${decided} of ${items.length} decided · reviewer ${state.reviewer}`;
  $("app").setAttribute("aria-busy", "false");
  if (!items.length) {
    $("title").textContent = "Nothing to review: no accepted photos in these results.";
    return;
  }
  const item = items[state.index];
  $("title").textContent = `${state.index + 1}/${items.length} · ${item.kind}: ${item.title}`;
  const p = item.p_known === null ? "" : ` · p(known) ${item.p_known.toFixed(2)}`;
  const set = item.candidate_set ? ` · candidate set: ${item.candidate_set.join(", ")}` : "";
  $("model").textContent = `Model says: ${item.model_says}${p}${set}`;
  $("state").textContent = describe(item.state);
  $("state").className = item.state && item.state.conflict ? "conflict" : "";
  $("query-photos").replaceChildren(...item.photos.map((ph) => photo(ph, ph.name)));
  const rows = item.candidates.map((c, k) => {
    const row = document.createElement("div");
    row.className = "candidate";
    row.dataset.individual = c.individual_id;
    if (item.state && item.state.individual_id === c.individual_id) row.classList.add("chosen");
    const label = document.createElement("div");
    label.className = "label";
    const key = document.createElement("span");
    key.className = "key";
    key.textContent = `${k + 1} `;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = c.individual_id;
    const info = document.createElement("div");
    const prob = c.probability === null ? "" : ` · p ${c.probability.toFixed(2)}`;
    info.textContent = `score ${c.score.toFixed(3)}${prob}${c.species ? " · " + c.species : ""}`;
    label.append(key, name, info);
    const pics = document.createElement("div");
    pics.className = "photos";
    pics.append(...c.photos.map((ph) => photo(ph, [ph.name, ph.date, ph.place].filter(Boolean).join(" · "))));
    row.append(label, pics);
    return row;
  });
  $("candidates").replaceChildren(...rows);
  $("compare").hidden = true;
}

function compare(p, caption) {
  const item = state.items[state.index];
  const query = item.photos.find((ph) => ph.token);
  if (!query || !p.token) return;
  $("compare-left").src = `/api/photo/${encodeURIComponent(query.token)}`;
  $("compare-left").alt = query.name;
  $("compare-left-cap").textContent = `query: ${query.name}`;
  $("compare-right").src = `/api/photo/${encodeURIComponent(p.token)}`;
  $("compare-right").alt = caption;
  $("compare-right-cap").textContent = caption;
  $("compare").hidden = false;
  $("compare").scrollIntoView({ block: "nearest" });
}

async function reload(keepIndex) {
  const data = await api("/api/queue");
  state.items = data.items;
  state.reviewer = data.reviewer;
  state.index = keepIndex === undefined ? data.start : Math.min(keepIndex, data.items.length - 1);
  render();
}

function nextUndecided(from) {
  const n = state.items.length;
  for (let k = 1; k <= n; k++) {
    const i = (from + k) % n;
    if (!state.items[i].state) return i;
  }
  return Math.min(from + 1, n - 1);
}

async function decide(action, individualId) {
  const item = state.items[state.index];
  $("message").textContent = "";
  try {
    await api("/api/decide", { item_id: item.item_id, action, individual_id: individualId ?? null });
    const here = state.index;
    await reload(here);
    state.index = nextUndecided(here);
    render();
  } catch (err) {
    $("message").textContent = String(err.message);
  }
}

async function undo() {
  $("message").textContent = "";
  try {
    const done = await api("/api/undo", {});
    const at = state.items.findIndex((it) => it.item_id === done.item_id);
    await reload(at >= 0 ? at : state.index);
    if (done.undone === null) $("message").textContent = "nothing to undo";
  } catch (err) {
    $("message").textContent = String(err.message);
  }
}

function askNewId() {
  const item = state.items[state.index];
  $("new-id").value = item.suggested_new_id;
  $("new-form").hidden = false;
  $("new-id").focus();
  $("new-id").select();
}

document.addEventListener("DOMContentLoaded", () => {
  $("new-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    $("new-form").hidden = true;
    decide("new_individual", $("new-id").value.trim());
  });
  $("new-cancel").addEventListener("click", () => { $("new-form").hidden = true; });
  document.addEventListener("keydown", (ev) => {
    if (ev.target === $("new-id")) {
      if (ev.key === "Escape") $("new-form").hidden = true;
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey || !state.items.length) return;
    const item = state.items[state.index];
    const key = ev.key.toLowerCase();
    if (/^[1-9]$/.test(key)) {
      const c = item.candidates[Number(key) - 1];
      if (c) decide("confirm", c.individual_id);
    } else if (key === "n") { ev.preventDefault(); askNewId(); }
    else if (key === "s") decide("skip");
    else if (key === "x") decide("not_cetacean");
    else if (key === "u") undo();
    else if (key === "arrowright" || key === "j") { state.index = Math.min(state.index + 1, state.items.length - 1); render(); }
    else if (key === "arrowleft" || key === "k") { state.index = Math.max(state.index - 1, 0); render(); }
    else if (key === "home") { state.index = 0; render(); }
    else if (key === "end") { state.index = state.items.length - 1; render(); }
    else if (key === "c") {
      const c = item.candidates[0];
      if (c && c.photos.length) compare(c.photos[0], c.individual_id);
    } else if (key === "escape") { $("compare").hidden = true; }
    else return;
    ev.preventDefault();
  });
  reload().catch((err) => { $("message").textContent = String(err.message); });
});
