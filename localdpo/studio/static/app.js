// localdpo studio: steer an answer (generate, stop, cut, correct, resume) and review the steer file.
"use strict";

const $ = (id) => document.getElementById(id);

// The answer being steered. `parts` is the assistant text before the live segment (model text kept and
// corrections); `tokens` are the live segment's pieces, indexed like the server's token indices.
const state = {
  session: null, segment: 0, parts: [], tokens: [], finished: true, complete: false, stopped: false,
  split: false, cut: null, suggestion: null, task: null, streamId: 0, stopRequested: false,
  pendingSave: null, confirmKey: null, generatedWith: null, draftKey: null,
};

const SERVER_GONE = "the studio server does not answer (stopped or restarted?): start `localdpo studio` again; " +
  "what you typed is kept in this browser";

async function api(path, { method = "GET", body } = {}) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
  } catch (error) { throw new Error(SERVER_GONE); }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(data.error || `${response.status} ${response.statusText}`);
    error.status = response.status;
    error.confirm = !!data.confirm;
    throw error;
  }
  return data;
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
  if (isError) log(text, true);
}

// Messages that stay: saves, warnings and errors, newest first.
function log(text, isError = false) {
  const item = document.createElement("li");
  item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  if (isError) item.className = "error";
  $("log").prepend(item);
  while ($("log").children.length > 8) $("log").lastChild.remove();
}

function number(id) { return Number($(id).value); }

function request() {
  return {
    prompt: $("prompt").value, system: $("system").value,
    temperature: number("temperature"), top_p: number("top-p"),
    max_new_tokens: number("max-tokens"), seed: number("seed"),
  };
}

// ---- drafts: everything typed and the answer's place survive a reload (localStorage, keyed by file) ----

const DRAFT_FIELDS = ["prompt", "system", "temperature", "top-p", "max-tokens", "seed", "task", "task-seed", "chosen"];

function persist() {
  if (!state.draftKey) return;
  const fields = Object.fromEntries(DRAFT_FIELDS.map((id) => [id, $(id).value]));
  fields.complete = $("complete").checked;
  const answer = { session: state.session, segment: state.segment, parts: state.parts, cut: state.cut,
    generatedWith: state.generatedWith, task: state.task };
  localStorage.setItem(state.draftKey, JSON.stringify({ fields, answer }));
}

async function restoreDraft() {
  const saved = localStorage.getItem(state.draftKey);
  if (!saved) return;
  const { fields, answer } = JSON.parse(saved);
  for (const id of DRAFT_FIELDS) if (fields[id] !== undefined) $(id).value = fields[id];
  $("complete").checked = !!fields.complete;
  if (!answer.session) { checkStale(); return; }
  const chosen = fields.chosen || "";
  Object.assign(state, { session: answer.session, parts: answer.parts || [], generatedWith: answer.generatedWith,
    task: answer.task });
  const ok = await stream(answer.segment, { restore: true });
  if (!ok) {
    Object.assign(state, { session: null, parts: [] });
    render();
    $("chosen").value = chosen;
    status("the answer's session is gone (the server restarted): your prompt and correction are kept; " +
      "Generate to answer again", true);
    persist();
    return;
  }
  $("chosen").value = chosen;
  $("complete").checked = !!fields.complete;
  if (answer.cut !== null && answer.cut !== undefined) setCut(answer.cut, { focus: false, keepText: true });
  checkStale();
  log("restored the draft of this steer file");
}

function checkStale() {
  const stale = !!state.session && !!state.generatedWith &&
    JSON.stringify(request()) !== JSON.stringify(state.generatedWith);
  $("stale").hidden = !stale;
  $("generate").textContent = stale ? "Generate (prompt changed)" : "Generate";
}

// ---- steering ----

async function generate() {
  if (state.session) api(`api/sessions/${state.session}/cancel`, { method: "POST" }).catch(() => {});
  const body = request();
  if (state.task && state.task.prompt === body.prompt) body.task = { name: state.task.task, seed: state.task.seed };
  state.pendingSave = null;
  try {
    const opened = await api("api/sessions", { method: "POST", body });
    Object.assign(state, { session: opened.session, parts: [], generatedWith: request() });
    $("chosen").value = "";
    $("complete").checked = false;
    checkStale();
    stream(opened.segment);
  } catch (error) { status(error.message, true); }
}

// Stream a segment's tokens. `from`: continue a segment already shown (finish); `restore`: after a reload.
// Resolves to false when the segment is not there (the server lost the session).
async function stream(segment, { from = 0, restore = false } = {}) {
  const streamId = ++state.streamId;
  if (from === 0) {
    Object.assign(state, { segment, tokens: [], cut: null, suggestion: null });
    if (!restore) { $("chosen").value = ""; $("complete").checked = false; }
    render();
  }
  Object.assign(state, { finished: false, complete: false, stopped: false, split: false, stopRequested: false });
  $("answer").dataset.state = "generating";
  if (state.cut === null) status("generating…");
  updateButtons();
  persist();
  try {
    let response;
    try {
      response = await fetch(`api/sessions/${state.session}/segments/${segment}/stream?from=${from}`);
    } catch (error) { throw new Error(SERVER_GONE); }
    if (!response.ok) {
      const message = (await response.json().catch(() => ({}))).error || response.statusText;
      if (restore && response.status === 404) return false;
      throw new Error(message);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      let chunk;
      try { chunk = await reader.read(); } catch (error) { throw new Error(SERVER_GONE); }
      if (chunk.done || streamId !== state.streamId) break;
      buffer += decoder.decode(chunk.value, { stream: true });
      // Layout is read once a chunk, not once a token: a long answer would otherwise reflow per token.
      const answer = $("answer");
      const following = answer.scrollHeight - answer.scrollTop - answer.clientHeight < 40;
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        onEvent(JSON.parse(buffer.slice(0, newline)));
        buffer = buffer.slice(newline + 1);
      }
      if (following) answer.scrollTop = answer.scrollHeight; // the box keeps its size: buttons below stay put
      if (state.cut !== null) showRejected();
    }
    if (streamId === state.streamId && !state.finished) throw new Error(SERVER_GONE);
  } catch (error) {
    state.finished = true;
    state.pendingSave = null;
    updateButtons();
    status(error.message, true);
  }
  return true;
}

function onEvent(event) {
  if (event.type === "token") {
    state.tokens[event.index] = event.text;
    addToken(event.index);
    if (state.cut === null) status(`generating… ${state.tokens.length} tokens`);
  } else if (event.type === "suggest") {
    state.suggestion = event;
    showSuggestion();
  } else if (event.type === "end") {
    onEnd(event);
  }
}

function onEnd(event) {
  Object.assign(state, { finished: true, complete: event.complete, stopped: event.stopped, split: event.split });
  state.tokens.length = event.tokens;
  $("answer").dataset.state = "finished";
  addEndMarker();
  updateButtons();
  if (event.error) { state.pendingSave = null; status(`generation failed: ${event.error}`, true); return; }
  const how = event.complete ? "the model ended its answer" : event.stopped ?
    (event.cancelled ? "cancelled" : "stopped") : "stopped at the token limit";
  if (state.pendingSave) {
    const pending = state.pendingSave;
    state.pendingSave = null;
    if (event.stopped) { status(`${how} after ${event.tokens} tokens: the waiting save was dropped, nothing saved`); log("a waiting save was dropped: nothing saved"); markCut(); return; }
    markCut();
    sendSave(pending);
    return;
  }
  if (state.cut === null && state.stopRequested) {
    const last = lastWholeToken();
    if (last !== null) {
      setCut(last, { focus: false });
      status(`${how} after ${event.tokens} tokens; the cut is before the last token: click the token where the ` +
        "mistake starts, or move the cut with Alt+← →");
      focusToken(last);
      return;
    }
  }
  if (state.cut === null) status(`${event.tokens} tokens, ${how}: click a token to cut there`);
  else markCut();
}

function lastWholeToken() {
  for (let i = state.tokens.length - 1; i >= 0; i--) if (state.tokens[i]) return i;
  return null;
}

function updateButtons() {
  const generating = !state.finished;
  $("stop").disabled = !generating || state.pendingSave !== null;
  $("save").disabled = generating || state.cut === null;
  $("finish").hidden = !(state.stopped || (generating && state.cut !== null));
  $("finish").disabled = generating;
  $("chosen").readOnly = state.pendingSave !== null;
  $("answer").classList.toggle("locked", state.pendingSave !== null);
}

function render() {
  const answer = $("answer");
  answer.textContent = "";
  answer.dataset.state = state.finished ? "finished" : "generating";
  answer.dataset.segment = state.segment;
  for (const part of state.parts) {
    const span = document.createElement("span");
    span.className = part.kind;
    span.textContent = part.text;
    answer.append(span);
  }
  const live = document.createElement("span");
  live.id = "live";
  answer.append(live);
  state.tokens.forEach((_, i) => addToken(i));
  $("suggestion").hidden = true;
  $("correction").hidden = true;
  hideWarning();
}

// A cut before a token that starts with a space keeps that space before the cut (as Segment.split does on
// the server): the person types the word, not the space.
function keepsLeadingSpace(piece) { return piece.startsWith(" ") && piece.trim() !== ""; }

function rejectedText(cut) {
  const text = state.tokens.slice(cut).join("");
  return cut < state.tokens.length && keepsLeadingSpace(state.tokens[cut]) ? text.slice(1) : text;
}

function addToken(i) {
  const text = state.tokens[i];
  if (!text) return; // a token that completes no character yet: its text comes with the next one
  const span = document.createElement("span");
  span.className = "tok";
  span.dataset.i = i;
  span.tabIndex = $("live").querySelector(".tok") ? -1 : 0; // one tab stop; arrows move within the answer
  if (text.includes("\n")) span.classList.add("nl"); // shown with a ↵ mark (CSS), so it can be clicked
  const lead = keepsLeadingSpace(text);
  if (lead) span.append(Object.assign(document.createElement("span"), { className: "lead", textContent: " " }));
  span.append(Object.assign(document.createElement("span"), { className: "body", textContent: lead ? text.slice(1) : text }));
  span.title = `token ${i}: ${JSON.stringify(text)}`;
  span.addEventListener("click", () => cutAt(i, { focus: true }));
  $("live").append(span);
  if (state.cut !== null && i >= state.cut) span.classList.add("rejected");
}

function addEndMarker() {
  if ($("live").querySelector(".end")) $("live").querySelector(".end").remove();
  const end = document.createElement("span");
  end.className = "tok end";
  end.dataset.i = state.tokens.length;
  end.tabIndex = -1;
  end.textContent = state.complete ? "⏎ end" : state.stopped ? "■ stopped" : "… limit";
  end.title = "cut at the end: add text after what the model wrote";
  end.addEventListener("click", () => cutAt(state.tokens.length, { focus: true }));
  $("live").append(end);
}

function showSuggestion() {
  const s = state.suggestion;
  const box = $("suggestion");
  box.textContent = `Checker: first mistake ${JSON.stringify(s.found)} (expected ${JSON.stringify(s.expected)}) `;
  const button = document.createElement("button");
  button.type = "button";
  button.id = "cut-suggested";
  button.textContent = "Cut there";
  button.addEventListener("click", () => cutAt(s.cut, { focus: true }));
  box.append(button);
  box.hidden = false;
  markCut();
}

// A cut asked for by the person: refused while a save waits; while the model writes, it also stops it.
function cutAt(cut, { focus }) {
  if (state.pendingSave) {
    status("a save waits for the model to finish: Cancel (Esc) first to move the cut");
    return;
  }
  if (!state.finished && state.session) stopGeneration();
  setCut(cut, { focus });
}

function setCut(cut, { focus = true, keepText = false } = {}) {
  const wasCut = state.cut;
  state.cut = cut;
  const s = state.suggestion;
  if (!keepText && s && s.cut === cut && (wasCut !== cut || !$("chosen").value)) {
    $("chosen").value = s.chosen;
    $("complete").checked = s.chosen_complete;
  }
  $("correction").hidden = false;
  hideWarning();
  markCut();
  updateButtons();
  persist();
  if (focus) $("chosen").focus();
}

function moveCut(step) {
  if (state.cut === null) { const last = lastWholeToken(); if (last !== null) cutAt(last, { focus: false }); focusToken(state.cut); return; }
  const stops = [...document.querySelectorAll("#live .tok")].map((span) => Number(span.dataset.i));
  const at = stops.indexOf(state.cut);
  const next = stops[Math.min(Math.max((at < 0 ? 0 : at) + step, 0), stops.length - 1)];
  if (next !== undefined) { cutAt(next, { focus: false }); focusToken(next); }
}

function focusToken(i) {
  for (const span of document.querySelectorAll("#live .tok")) span.tabIndex = Number(span.dataset.i) === i ? 0 : -1;
  const span = document.querySelector(`#live .tok[data-i='${i}']`);
  if (span) span.focus();
}

function showRejected() {
  $("rejected-preview").textContent = rejectedText(state.cut) +
    (state.finished ? (state.complete ? "⏎" : state.stopped ? " ■ (stopped here)" : " … (token limit)") : " …(writing)");
}

function markCut() {
  for (const span of document.querySelectorAll("#live .tok")) {
    const i = Number(span.dataset.i);
    span.classList.toggle("rejected", state.cut !== null && i >= state.cut && !span.classList.contains("end"));
    span.classList.toggle("cut-at", state.cut === i);
    span.classList.toggle("suggested", !!state.suggestion && state.suggestion.cut === i);
  }
  if (state.cut !== null) {
    showRejected();
    if (!state.pendingSave) status(`cut after token ${state.cut}` + (state.finished ? "" : ": stopping the model…"));
  }
}

function stopGeneration() {
  if (state.finished || !state.session) return;
  state.stopRequested = true;
  api(`api/sessions/${state.session}/segments/${state.segment}/stop`, { method: "POST" })
    .catch((error) => status(error.message, true));
}

function stop() {
  if (state.finished) return;
  stopGeneration();
  status("stopping…");
}

// Esc / Cancel: drop whatever is pending (a waiting save, generation, prefill) and the cut.
function cancel() {
  const hadSave = state.pendingSave !== null;
  state.pendingSave = null;
  if (!state.finished && state.session) {
    api(`api/sessions/${state.session}/cancel`, { method: "POST" }).catch((error) => status(error.message, true));
  }
  state.cut = null;
  $("correction").hidden = true;
  markCut();
  updateButtons();
  persist();
  const message = hadSave ? "cancelled: the waiting save is dropped, nothing saved" : "cancelled";
  status(message);
  if (hadSave) log(message);
}

function saveBody() {
  return { segment: state.segment, cut: state.cut, chosen: $("chosen").value, chosen_complete: $("complete").checked };
}

function keyOf(body) { return JSON.stringify([state.session, body.segment, body.cut, body.chosen, body.chosen_complete]); }

function hideWarning() {
  $("warning").hidden = true;
  $("save").textContent = "Save steer";
  state.confirmKey = null;
}

function save() {
  if (state.cut === null || !state.finished || state.pendingSave) return;
  sendSave(saveBody());
}

// Let the model finish the rejected side, then save exactly this body (the cut and correction are locked).
async function finishThenSave() {
  if (state.cut === null || state.pendingSave) return;
  if (!state.finished) { status("the model is still writing: wait for it to stop, then finish"); return; }
  if (!state.stopped) { save(); return; } // it already wrote to its end: nothing to finish
  state.pendingSave = saveBody();
  state.finished = false; // from here on Cancel also stops the model
  $("answer").dataset.state = "generating";
  updateButtons();
  status("the model finishes the rejected side; the steer is saved then (Esc cancels)…");
  try {
    const finishing = await api(`api/sessions/${state.session}/segments/${state.segment}/finish`, { method: "POST" });
    $("live").querySelector(".end")?.remove();
    // Cancel came while the finish was being asked for: its stop may have reached the server first.
    if (!state.pendingSave) api(`api/sessions/${state.session}/cancel`, { method: "POST" }).catch(() => {});
    stream(state.segment, { from: finishing.from });
  } catch (error) {
    Object.assign(state, { pendingSave: null, finished: true });
    $("answer").dataset.state = "finished";
    updateButtons();
    status(error.message, true);
  }
}

async function sendSave(body) {
  const confirm = state.confirmKey === keyOf(body);
  $("save").disabled = true;
  status("saving…");
  try {
    const saved = await api(`api/sessions/${state.session}/steers`, { method: "POST", body: { ...body, confirm } });
    hideWarning();
    state.parts.push({ kind: "kept", text: saved.kept }, { kind: "correction", text: body.chosen });
    showCount(saved.steers);
    log(`saved steer ${saved.steer.id} (${saved.steers} in the file)`);
    if (saved.next_segment === null) {
      Object.assign(state, { tokens: [], cut: null, suggestion: null, finished: true });
      render();
      $("answer").dataset.state = "ended";
      $("chosen").value = "";
      status(`saved steer ${saved.steer.id}; the correction ended the answer`);
      persist();
    } else {
      await stream(saved.next_segment);
    }
  } catch (error) {
    if (error.confirm) {
      state.confirmKey = keyOf(body);
      $("warning").textContent = `${error.message}. Save again to save it anyway.`;
      $("warning").hidden = false;
      $("save").textContent = "Save anyway";
      status("not saved yet: read the warning");
    } else status(error.message, true);
  } finally { updateButtons(); }
}

function showCount(count) {
  $("steer-count").textContent = `${count} steer${count === 1 ? "" : "s"} in the file`;
}

async function draw() {
  const task = $("task").value;
  if (!task) { state.task = null; return; }
  try {
    state.task = await api("api/task-prompt", { method: "POST", body: { task, seed: number("task-seed") } });
    $("prompt").value = state.task.prompt;
    checkStale();
    persist();
    status(`task prompt ${state.task.prompt_id}: its checker will mark the first mistake`);
  } catch (error) { status(error.message, true); }
}

// ---- keyboard ----

function onKey(event) {
  const steering = !$("view-steer").hidden;
  if (!steering) return;
  const inChosen = document.activeElement === $("chosen");
  const inSetup = $("setup").contains(document.activeElement);
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    if (state.cut === null || inSetup) generate();
    else if (event.shiftKey) finishThenSave();
    else save();
  } else if (event.key === "Escape") {
    event.preventDefault();
    if (!state.finished && state.cut === null && !state.pendingSave) stop();
    else cancel();
  } else if (event.altKey && (event.key === "ArrowLeft" || event.key === "ArrowRight")) {
    event.preventDefault();
    moveCut(event.key === "ArrowLeft" ? -1 : 1);
  } else if (!inChosen && document.activeElement?.classList?.contains("tok")) {
    const i = Number(document.activeElement.dataset.i);
    if (event.key === "ArrowLeft" || event.key === "ArrowRight") {
      event.preventDefault();
      moveCut(event.key === "ArrowLeft" ? -1 : 1);
    } else if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      cutAt(i, { focus: true });
    }
  }
}

// ---- review ----

function tokenLine(side, view) {
  const line = document.createElement("div");
  line.className = `tokens ${side}`;
  const label = document.createElement("span");
  label.className = "label";
  label.textContent = `${side} (${view.scored} scored / ${view.length})`;
  line.append(label);
  for (const [text, scored] of view.tokens) {
    const span = document.createElement("span");
    span.className = scored ? `scored ${side}` : "plain";
    if (text.includes("\n")) span.classList.add("nl");
    span.textContent = text;
    line.append(span);
  }
  return line;
}

function promptText(prompt) {
  if (typeof prompt === "string") return prompt;
  return prompt.map((m) => `${m.role}: ${m.content}`).join("\n");
}

async function loadReview() {
  const list = $("review-list");
  try {
    const data = await api(`api/steers?span_mode=${encodeURIComponent($("span-mode").value)}`);
    list.textContent = "";
    $("review-count").textContent = `${data.steers.length} steers in ${data.steers_file}`;
    for (const row of data.steers) list.append(reviewCard(row));
  } catch (error) { $("review-count").textContent = error.message; }
}

function reviewCard(row) {
  const card = document.createElement("article");
  card.className = "steer";
  card.dataset.id = row.steer.id;
  const head = document.createElement("div");
  head.className = "head";
  head.textContent = `${row.steer.id} · line ${row.line}` +
    (row.prompt_tokens !== undefined ? ` · prompt ${row.prompt_tokens} tokens` : "") +
    (row.steer.chosen_complete ? " · ends the answer" : "");
  const edit = document.createElement("button");
  edit.type = "button"; edit.textContent = "Edit"; edit.className = "edit";
  const remove = document.createElement("button");
  remove.type = "button"; remove.textContent = "Delete"; remove.className = "delete";
  head.append(edit, remove);
  const prompt = document.createElement("pre");
  prompt.className = "prompt";
  prompt.textContent = promptText(row.steer.prompt);
  card.append(head, prompt);
  if (row.error) {
    const error = document.createElement("p");
    error.className = "error";
    error.textContent = row.error;
    card.append(error);
  } else {
    card.append(tokenLine("chosen", row.chosen), tokenLine("rejected", row.rejected));
  }
  remove.addEventListener("click", async () => {
    if (!confirm(`Delete steer ${row.steer.id}?`)) return;
    try {
      await api(`api/steers/${encodeURIComponent(row.steer.id)}?version=${row.version}`, { method: "DELETE" });
      loadReview();
    } catch (error) { log(error.message, true); alert(error.message); }
  });
  edit.addEventListener("click", () => {  // a second click closes the form, never opens a second one
    const open = card.querySelector(".edit-form");
    if (open) open.remove(); else card.append(editForm(row));
  });
  return card;
}

function editForm(row) {
  const form = document.createElement("div");
  form.className = "edit-form";
  const fields = {};
  for (const name of ["prefix", "rejected", "chosen"]) {
    const label = document.createElement("label");
    label.textContent = name;
    const area = document.createElement("textarea");
    area.rows = 2;
    area.value = row.steer[name];
    area.name = name;
    label.append(area);
    form.append(label);
    fields[name] = area;
  }
  const complete = document.createElement("input");
  complete.type = "checkbox";
  complete.checked = row.steer.chosen_complete;
  const check = document.createElement("label");
  check.className = "check";
  check.append(complete, " chosen ends the answer");
  const saveButton = document.createElement("button");
  saveButton.type = "button"; saveButton.textContent = "Save edit"; saveButton.className = "primary";
  const error = document.createElement("p");
  error.className = "error";
  let confirmKey = null;  // a warned edit is saved when the same edit is sent again
  saveButton.addEventListener("click", async () => {
    const body = { version: row.version, chosen_complete: complete.checked };
    for (const [name, area] of Object.entries(fields)) body[name] = area.value;
    const key = JSON.stringify(body);
    try {
      await api(`api/steers/${encodeURIComponent(row.steer.id)}`, {
        method: "PUT", body: { ...body, confirm: confirmKey === key },
      });
      loadReview();
    } catch (e) {
      confirmKey = e.confirm ? key : null;
      error.textContent = e.confirm ? `${e.message}. Save the edit again to save it anyway.` : e.message;
      saveButton.textContent = e.confirm ? "Save edit anyway" : "Save edit";
    }
  });
  form.append(check, saveButton, error);
  return form;
}

// ---- start ----

function showView(name) {
  for (const view of ["steer", "review", "train"]) {
    $(`view-${view}`).hidden = name !== view;
    $(`tab-${view}`).classList.toggle("active", name === view);
  }
  if (name === "review") loadReview();
  if (name === "train") loadTraining();  // train.js
}

function showModelInfo(info) {
  $("model-info").textContent = `model ${info.model} · steers → ${info.steers_file}`;
  $("model-info").title = `rejected_by ${info.rejected_by}, round ${info.round}`;
}

async function start() {
  // The token came in the address once; the server has put it in an HttpOnly cookie: out of the address bar
  // (and so out of the browser's history), as Jupyter does.
  if (new URLSearchParams(location.search).has("token")) history.replaceState(null, "", location.pathname);
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", stop);
  $("save").addEventListener("click", save);
  $("finish").addEventListener("click", finishThenSave);
  $("uncut").addEventListener("click", cancel);
  $("draw").addEventListener("click", draw);
  $("tab-steer").addEventListener("click", () => showView("steer"));
  $("tab-review").addEventListener("click", () => showView("review"));
  $("tab-train").addEventListener("click", () => showView("train"));
  $("reload").addEventListener("click", loadReview);
  $("span-mode").addEventListener("change", loadReview);
  document.addEventListener("keydown", onKey);
  for (const id of DRAFT_FIELDS) $(id).addEventListener("input", () => { checkStale(); persist(); });
  for (const id of ["chosen", "complete"]) $(id).addEventListener("input", hideWarning);
  $("complete").addEventListener("change", persist);
  try {
    const info = await api("api/info");
    showModelInfo(info);
    $("tab-train").hidden = !info.training;
    showCount(info.steers);
    for (const task of info.tasks) $("task").append(new Option(`${task.name}: ${task.description}`, task.name));
    for (const mode of info.span_modes) $("span-mode").append(new Option(mode, mode));
    $("max-tokens").max = info.token_limit;
    $("max-tokens").value = Math.min(info.defaults.max_new_tokens, info.token_limit);
    state.draftKey = `localdpo-studio:${info.steers_file}`;
    await restoreDraft();
  } catch (error) { status(error.message, true); }
}

start();
