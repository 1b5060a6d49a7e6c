// localdpo studio: steer an answer (generate, cut, correct, resume) and review the steer file.
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);

// The answer being steered. `parts` is the assistant text before the live segment (model text kept and
// corrections); `tokens` are the live segment's pieces, indexed like the server's token indices.
const state = {
  session: null, segment: 0, parts: [], tokens: [], finished: false, complete: false,
  cut: null, suggestion: null, task: null, streamId: 0,
};

async function api(path, { method = "GET", body } = {}) {
  const response = await fetch(path, {
    method,
    headers: { "X-Studio-Token": TOKEN, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function number(id) { return Number($(id).value); }

// ---- steering ----

async function generate() {
  if (state.session) api(`api/sessions/${state.session}/cancel`, { method: "POST" }).catch(() => {});
  const body = {
    prompt: $("prompt").value, system: $("system").value,
    temperature: number("temperature"), top_p: number("top-p"),
    max_new_tokens: number("max-tokens"), seed: number("seed"),
  };
  if (state.task && state.task.prompt === body.prompt) body.task = { name: state.task.task, seed: state.task.seed };
  try {
    const opened = await api("api/sessions", { method: "POST", body });
    state.session = opened.session;
    state.parts = [];
    stream(opened.segment);
  } catch (error) { status(error.message, true); }
}

async function stream(segment) {
  const streamId = ++state.streamId;
  Object.assign(state, { segment, tokens: [], finished: false, complete: false, cut: null, suggestion: null });
  $("chosen").value = "";
  $("complete").checked = false;
  render();
  status("generating…");
  $("stop").disabled = false;
  try {
    const response = await fetch(`api/sessions/${state.session}/segments/${segment}/stream`,
      { headers: { "X-Studio-Token": TOKEN } });
    if (!response.ok) throw new Error((await response.json()).error);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done || streamId !== state.streamId) break;
      buffer += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        onEvent(JSON.parse(buffer.slice(0, newline)));
        buffer = buffer.slice(newline + 1);
      }
    }
  } catch (error) { status(error.message, true); }
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
    state.finished = true;
    state.complete = event.complete;
    $("stop").disabled = true;
    $("answer").dataset.state = "finished";
    addEndMarker();
    if (event.error) status(`generation failed: ${event.error}`, true);
    else if (event.cancelled) status("cancelled");
    else status(`${event.tokens} tokens, ${event.complete ? "the model ended its answer" : "stopped at the token limit"}` +
      (state.cut === null ? ": click a token to cut there" : ""));
    markCut();
  }
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
  if (text.includes("\n")) span.classList.add("nl"); // shown with a ↵ mark (CSS), so it can be clicked
  const lead = keepsLeadingSpace(text);
  if (lead) span.append(Object.assign(document.createElement("span"), { className: "lead", textContent: " " }));
  span.append(Object.assign(document.createElement("span"), { className: "body", textContent: lead ? text.slice(1) : text }));
  span.title = `token ${i}: ${JSON.stringify(text)}`;
  span.addEventListener("click", () => setCut(i));
  $("live").append(span);
  if (state.cut !== null && i >= state.cut) span.classList.add("rejected");
}

function addEndMarker() {
  const end = document.createElement("span");
  end.className = "tok end";
  end.dataset.i = state.tokens.length;
  end.textContent = state.complete ? "⏎ end" : "… limit";
  end.title = "cut at the end: add text after what the model wrote";
  end.addEventListener("click", () => setCut(state.tokens.length));
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
  button.addEventListener("click", () => setCut(s.cut));
  box.append(button);
  box.hidden = false;
  markCut();
}

function setCut(cut) {
  const wasCut = state.cut;
  state.cut = cut;
  const s = state.suggestion;
  if (s && s.cut === cut && (wasCut !== cut || !$("chosen").value)) {
    $("chosen").value = s.chosen;
    $("complete").checked = s.chosen_complete;
  }
  $("correction").hidden = false;
  markCut();
  $("chosen").focus();
}

function markCut() {
  for (const span of document.querySelectorAll("#live .tok")) {
    const i = Number(span.dataset.i);
    span.classList.toggle("rejected", state.cut !== null && i >= state.cut && !span.classList.contains("end"));
    span.classList.toggle("cut-at", state.cut === i);
    span.classList.toggle("suggested", !!state.suggestion && state.suggestion.cut === i);
  }
  if (state.cut !== null) {
    $("rejected-preview").textContent = rejectedText(state.cut) +
      (state.finished ? (state.complete ? "⏎" : "") : " …(still generating)");
    status(`cut after token ${state.cut}` + (state.finished ? "" : ": the model finishes the rejected side meanwhile"));
  }
}

async function save() {
  if (state.cut === null) return;
  const chosen = $("chosen").value;
  const body = { segment: state.segment, cut: state.cut, chosen, chosen_complete: $("complete").checked };
  $("save").disabled = true;
  status(state.finished ? "saving…" : "saving once the rejected continuation is finished…");
  try {
    const saved = await api(`api/sessions/${state.session}/steers`, { method: "POST", body });
    state.parts.push({ kind: "kept", text: saved.kept }, { kind: "correction", text: chosen });
    status(`saved steer ${saved.steer.id}`);
    if (saved.next_segment === null) {
      Object.assign(state, { tokens: [], cut: null, suggestion: null, finished: true });
      render();
      $("answer").dataset.state = "ended";
      status(`saved steer ${saved.steer.id}; the correction ended the answer`);
    } else {
      await stream(saved.next_segment);
    }
  } catch (error) { status(error.message, true); }
  finally { $("save").disabled = false; }
}

async function draw() {
  const task = $("task").value;
  if (!task) { state.task = null; return; }
  try {
    state.task = await api("api/task-prompt", { method: "POST", body: { task, seed: number("task-seed") } });
    $("prompt").value = state.task.prompt;
    status(`task prompt ${state.task.prompt_id}: its checker will mark the first mistake`);
  } catch (error) { status(error.message, true); }
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
    } catch (error) { alert(error.message); }
  });
  edit.addEventListener("click", () => card.append(editForm(row)));
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
  saveButton.addEventListener("click", async () => {
    const body = { version: row.version, chosen_complete: complete.checked };
    for (const [name, area] of Object.entries(fields)) body[name] = area.value;
    try {
      await api(`api/steers/${encodeURIComponent(row.steer.id)}`, { method: "PUT", body });
      loadReview();
    } catch (e) { error.textContent = e.message; }
  });
  form.append(check, saveButton, error);
  return form;
}

// ---- start ----

function showView(name) {
  $("view-steer").hidden = name !== "steer";
  $("view-review").hidden = name !== "review";
  $("tab-steer").classList.toggle("active", name === "steer");
  $("tab-review").classList.toggle("active", name === "review");
  if (name === "review") loadReview();
}

async function start() {
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => { if (!state.finished) setCut(state.tokens.length); });
  $("save").addEventListener("click", save);
  $("uncut").addEventListener("click", () => { state.cut = null; $("correction").hidden = true; markCut(); });
  $("draw").addEventListener("click", draw);
  $("tab-steer").addEventListener("click", () => showView("steer"));
  $("tab-review").addEventListener("click", () => showView("review"));
  $("reload").addEventListener("click", loadReview);
  $("span-mode").addEventListener("change", loadReview);
  try {
    const info = await api("api/info");
    $("model-info").textContent = `model ${info.model} · steers → ${info.steers_file}`;
    for (const task of info.tasks) $("task").append(new Option(`${task.name}: ${task.description}`, task.name));
    for (const mode of info.span_modes) $("span-mode").append(new Option(mode, mode));
    $("max-tokens").max = info.token_limit;
    $("max-tokens").value = Math.min(info.defaults.max_new_tokens, info.token_limit);
  } catch (error) { status(error.message, true); }
}

start();
