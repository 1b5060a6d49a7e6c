// localdpo studio, Train view: train on the steers in a separate process, follow it, stop it; compare the start
// and tuned models on one prompt; switch the model new answers are written by. Uses app.js's $, api, log.
"use strict";

const training = { loaded: false, following: false, compareId: 0 };

function percent(value) { return value === undefined ? "–" : `${(100 * value).toFixed(1)}%`; }
function fixed(value, digits) { return value === undefined ? "–" : value.toFixed(digits); }

// Read an NDJSON answer line by line; `onLine` gets each parsed object.
async function readLines(url, onLine) {
  let response;
  try { response = await fetch(url); } catch (error) { throw new Error(SERVER_GONE); }
  if (!response.ok) throw new Error((await response.json().catch(() => ({}))).error || response.statusText);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    let chunk;
    try { chunk = await reader.read(); } catch (error) { throw new Error(SERVER_GONE); }
    if (chunk.done) return;
    buffer += decoder.decode(chunk.value, { stream: true });
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      onLine(JSON.parse(buffer.slice(0, newline)));
      buffer = buffer.slice(newline + 1);
    }
  }
}

function trainStatus(text, isError = false) {
  $("train-status").textContent = text;
  $("train-status").classList.toggle("error", isError);
}

function showSplit(info) {
  $("train-split").textContent = info.steers < info.min_steers
    ? `${info.steers} steer(s) in the file: training needs at least ${info.min_steers} (one to train on, one held out)`
    : `${info.steers} steers: ${info.train_steers} to train on, ${info.held_out} held out ` +
      `(${Math.round(100 * info.hold_out_fraction)}%, a seeded split) for held-out preference accuracy and ` +
      `recurrence. Runs go to ${info.runs_dir}`;
}

function showRuns(runs, selected) {
  const select = $("tuned-run");
  const keep = selected || select.value;
  select.textContent = "";
  for (const run of runs) select.append(new Option(run, run));
  if (runs.includes(keep)) select.value = keep;
  for (const id of ["use-tuned", "compare-run"]) $(id).disabled = runs.length === 0;
}

function showActive(active) {
  $("active-model").textContent = active.tuned
    ? `New answers in Steer are written by the tuned model ${active.model}; their steers are recorded as ` +
      `rejected_by ${active.rejected_by}, round ${active.round}.`
    : `New answers in Steer are written by the start model ${active.model} (rejected_by ${active.rejected_by}).`;
  $("use-start").disabled = !active.tuned;
}

// One run's status (from the stream or /api/training): state, step, loss, evaluations, the log of a failure.
function showRun(run) {
  const where = `run ${run.run} (${run.method}, ${run.steps} steps, lr ${run.lr}, batch ${run.batch_size}; ` +
    `${run.train_steers} train / ${run.held_out} held out)`;
  const loss = run.loss === null ? "" : `, loss ${run.loss.toFixed(4)}`;
  const text = {
    preparing: `${where}: preparing (model, reference log-probs, the first evaluation)…`,
    training: `${where}: step ${run.step} / ${run.steps}${loss}`,
    evaluating: `${where}: step ${run.step} / ${run.steps}${loss}; final evaluation and saving the adapter…`,
    done: `${where}: done${loss}. Held-out preference accuracy ` +
      `${percent(run.final && run.final.preference_accuracy)}, recurrence ${percent(run.final && run.final.recurrence)}.`,
    stopped: `${where}: stopped at step ${run.step}: no adapter saved`,
    failed: `${where}: failed (the trainer's log is below)`,
  }[run.state];
  trainStatus(text, run.state === "failed");
  $("train-start").disabled = run.running;
  $("train-stop").disabled = !run.running;
  $("view-train").dataset.training = run.state;
  const body = $("train-evals").querySelector("tbody");
  body.textContent = "";
  for (const e of run.evals) {
    const row = body.insertRow();
    for (const value of [e.step, percent(e.preference_accuracy), percent(e.recurrence), percent(e.uptake),
      fixed(e.margin, 4), fixed(e.drift_kl, 5)]) row.insertCell().textContent = value;
  }
  $("train-evals").hidden = run.evals.length === 0;
  $("train-log").hidden = !run.log;
  $("train-log").textContent = run.log || "";
}

async function followTraining() {
  if (training.following) return;
  training.following = true;
  let last = null;
  try {
    await readLines("api/training/stream", (run) => { last = run; showRun(run); });
  } catch (error) { trainStatus(error.message, true); }
  training.following = false;
  if (last && !last.running) {
    log(`training ${last.run}: ${last.state}` + (last.state === "stopped" ? ` at step ${last.step}` : ""),
      last.state === "failed");
    const info = await api("api/training").catch(() => null);
    if (info) showRuns(info.runs, last.state === "done" ? last.run : null);
  }
}

async function loadTraining() {
  try {
    const info = await api("api/training");
    if (!training.loaded) {
      training.loaded = true;
      for (const method of info.methods) $("train-method").append(new Option(method.name, method.name));
      $("train-method").value = "ldpo";
      $("train-steps").value = info.defaults.steps;
      $("train-steps").max = info.max_steps;
      $("train-lr").value = info.defaults.lr;
      $("train-batch").value = info.defaults.batch_size;
      training.methods = Object.fromEntries(info.methods.map((m) => [m.name, m.help]));
      showMethodHelp();
    }
    showSplit(info);
    showRuns(info.runs);
    showActive(info.active);
    if (info.current) {
      showRun(info.current);
      if (info.current.running) followTraining();
    } else {
      trainStatus("no training run yet");
      $("view-train").dataset.training = "none";
    }
  } catch (error) { trainStatus(error.message, true); }
}

function showMethodHelp() { $("method-help").textContent = training.methods[$("train-method").value] || ""; }

async function startTraining() {
  const body = { method: $("train-method").value, steps: Number($("train-steps").value),
    lr: Number($("train-lr").value), batch_size: Number($("train-batch").value) };
  try {
    const run = await api("api/training", { method: "POST", body });
    showRun(run);
    log(`training ${run.run} started`);
    followTraining();
  } catch (error) { trainStatus(error.message, true); }
}

async function stopTraining() {
  $("train-stop").disabled = true;
  trainStatus("stopping…");
  try { showRun(await api("api/training/stop", { method: "POST" })); } catch (error) { trainStatus(error.message, true); }
}

async function useModel(run) {
  const button = run ? $("use-tuned") : $("use-start");
  button.disabled = true;
  $("active-model").textContent = run ? `loading ${run}…` : "switching…";
  try {
    const active = await api("api/model", { method: "POST", body: run ? { run } : {} });
    showActive(active);
    showModelInfo(await api("api/info"));
    log(`new answers are written by ${active.model}: Generate again in Steer`);
  } catch (error) { trainStatus(error.message, true); }
  button.disabled = false;
}

async function compareAnswers() {
  const compareId = ++training.compareId;
  const body = { prompt: $("compare-prompt").value, run: $("tuned-run").value,
    max_new_tokens: Number($("compare-max").value) };
  $("compare-columns").dataset.state = "generating";
  try {
    const sides = await api("api/compare", { method: "POST", body });
    await Promise.all(["start", "tuned"].map(async (side) => {
      const out = $(`compare-${side}`);
      out.textContent = "";
      $(`compare-${side}-label`).textContent = sides[side].rejected_by;
      $(`compare-${side}-label`).parentElement.title = sides[side].rejected_by;
      await readLines(`api/sessions/${sides[side].session}/segments/0/stream`, (event) => {
        if (compareId !== training.compareId) return;
        if (event.type === "token") out.textContent += event.text;
        if (event.type === "end" && event.error) out.textContent += `\n[generation failed: ${event.error}]`;
      });
    }));
    if (compareId === training.compareId) $("compare-columns").dataset.state = "finished";
  } catch (error) {
    $("compare-columns").dataset.state = "finished";
    trainStatus(error.message, true);
  }
}

$("train-method").addEventListener("change", showMethodHelp);
$("train-start").addEventListener("click", startTraining);
$("train-stop").addEventListener("click", stopTraining);
$("use-tuned").addEventListener("click", () => useModel($("tuned-run").value));
$("use-start").addEventListener("click", () => useModel(null));
$("compare-run").addEventListener("click", compareAnswers);
