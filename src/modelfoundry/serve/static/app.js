// The model page: model card from GET /v1/model, one input form for the model's kind,
// POST /v1/predict for one input, and corrections to POST /v1/feedback. No framework, no build step.
"use strict";

const $ = (selector) => document.querySelector(selector);
const state = { model: null, image: null, requestId: null };
const KEY_STORAGE = "modelfoundry.apiKey";

// fetch + JSON; a non-2xx answer throws the server's {"error": {"field", "message"}} as one line.
async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new Error(`could not reach the server (${err.message}).`);
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = body && body.error;
    const message = error ? (error.field ? `${error.field}: ${error.message}` : error.message)
      : `the server answered ${response.status} ${response.statusText}.`;
    throw new Error(message);
  }
  return body;
}

function showError(message) {
  const area = $("#error");
  area.textContent = message ? `Error: ${message}` : "";
  area.hidden = !message;
}

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.textContent = text;
  return node;
}

const percent = (p) => `${(100 * p).toFixed(1)}%`;
const formatNumber = (x) => Number(x.toPrecision(6)).toLocaleString(undefined, { maximumFractionDigits: 6 });

// ---------- model card ----------

function renderCard(model) {
  const card = $("#model-card");
  const metrics = model.metrics || {};
  const created = model.created && !isNaN(Date.parse(model.created))
    ? new Date(model.created).toLocaleString() : model.created;
  const rows = [
    ["Version", model.version], ["Alias", model.alias], ["Run", model.run_id], ["Task", model.task],
    ["Model", model.model], ["Backend", model.backend],
    ["Test accuracy", metrics.test_accuracy == null ? null : percent(metrics.test_accuracy)],
    ["Test F1 (macro)", metrics.test_f1_macro == null ? null : metrics.test_f1_macro.toFixed(3)],
    ["Test RMSE", metrics.test_rmse == null ? null : formatNumber(metrics.test_rmse)],
    ["Test R2", metrics.test_r2 == null ? null : metrics.test_r2.toFixed(3)],
    ["Predicts", model.target ? `a number: ${model.target.column}` : null],
    ["Created", created],
  ].filter(([name, value]) => value != null || !["Test RMSE", "Test R2", "Predicts"].includes(name));
  const list = element("dl");
  for (const [name, value] of rows) {
    list.append(element("dt", {}, name), element("dd", {}, value == null ? "—" : String(value)));
  }
  if (model.labels.length) {
    list.append(element("dt", {}, "Labels"));
    const labels = element("dd", { class: "chips" });
    for (const label of model.labels) labels.append(element("span", { class: "chip" }, label));
    list.append(labels);
  }
  card.replaceChildren(element("h2", { id: "model-card-title" }, "Model"), list);
  card.removeAttribute("aria-busy");
  $("#title-task").textContent = `· ${model.task.replace(/_/g, " ")}`;
}

// ---------- inputs ----------

function renderTableForm(columns) {
  const form = $("#table-form");
  columns.forEach((column, i) => {
    const id = `column-${i}`;
    const field = element("div", { class: "field" });
    field.append(element("label", { for: id }, column.name));
    let input;
    if (column.kind === "category") {
      input = element("select", { id });
      for (const category of column.categories) {
        input.append(element("option", { value: category }, category));
      }
    } else {
      input = element("input", { id, type: "number", step: "any", inputmode: "decimal",
        placeholder: "number" });
    }
    input.dataset.column = column.name;
    input.dataset.kind = column.kind;
    field.append(input);
    form.append(field);
  });
}

function chooseImage(file) {
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    state.image = reader.result; // a data URL; the server accepts it as is
    const preview = $("#image-preview");
    preview.src = reader.result;
    preview.hidden = false;
  };
  reader.onerror = () => showError(`could not read ${file.name}.`);
  reader.readAsDataURL(file);
}

function setUpImageInput() {
  const zone = $("#drop-zone");
  $("#image-preview").addEventListener("error", (event) => { event.target.hidden = true; }); // not an image
  $("#image-input").addEventListener("change", (event) => chooseImage(event.target.files[0]));
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    $("#image-input").files = event.dataTransfer.files; // the picker names the dropped file
    chooseImage(event.dataTransfer.files[0]);
  });
}

// The one input of the model's kind, or throws a message naming what is missing.
function currentInput() {
  const kind = state.model.kind;
  if (kind === "text") {
    const text = $("#text-input").value;
    if (!text.trim()) throw new Error("type a text first.");
    return text;
  }
  if (kind === "image") {
    if (!state.image) throw new Error("choose or drop an image first.");
    return state.image;
  }
  const row = {};
  for (const input of $("#table-form").querySelectorAll("[data-column]")) {
    const value = input.value.trim();
    if (input.dataset.kind === "number") {
      if (value !== "" && !Number.isFinite(Number(value))) {
        throw new Error(`${input.dataset.column} must be a number.`);
      }
      row[input.dataset.column] = value === "" ? null : Number(value); // null: a missing value
    } else {
      row[input.dataset.column] = input.value;
    }
  }
  return row;
}

// ---------- predict and feedback ----------

async function predict(event) {
  event.preventDefault();
  showError("");
  const button = $("#predict");
  button.disabled = true;
  try {
    const topK = Math.max(1, Math.min(state.model.labels.length, 5));
    const answer = await api("/v1/predict", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ inputs: [currentInput()], top_k: topK }),
    });
    renderResult(answer);
  } catch (err) {
    $("#result").hidden = true; // the last result was for another input
    showError(err.message);
  } finally {
    button.disabled = false;
  }
}

function renderResult(answer) {
  const prediction = answer.predictions[0];
  state.requestId = answer.request_id;
  const version = answer.model_version || "(not in the registry)";
  $("#result-version").textContent = `Answered by model ${version} · request ${answer.request_id}`;
  $("#feedback-status").textContent = "";
  $("#result").hidden = false;
  if (typeof prediction.prediction === "number") { // a regression model: one number, corrected by a number
    $("#result-label").textContent = formatNumber(prediction.prediction);
    $("#result-probability").textContent = state.model.target ? state.model.target.column : "";
    $("#probabilities").replaceChildren();
    $("#correct-value").value = String(Number(prediction.prediction.toPrecision(6)));
    return;
  }
  $("#result-label").textContent = prediction.label;
  $("#result-probability").textContent = percent(prediction.probability);
  const bars = [...prediction.top_k].sort((a, b) => b.probability - a.probability).map((item) => {
    const bar = element("div", { class: "bar", "data-label": item.label, title: item.label });
    const track = element("span", { class: "track" });
    const fill = element("span", { class: "fill" });
    fill.style.width = percent(item.probability);
    track.append(fill);
    bar.append(element("span", { class: "name" }, item.label), track,
      element("span", { class: "value" }, percent(item.probability)));
    return bar;
  });
  $("#probabilities").replaceChildren(...bars);
  $("#correct-label").value = prediction.label;
}

async function sendFeedback() {
  const status = $("#feedback-status");
  const button = $("#send-feedback");
  const key = $("#api-key").value.trim();
  const headers = { "Content-Type": "application/json" };
  if (key) headers["X-API-Key"] = key;
  const numeric = Boolean(state.model.target);
  const label = numeric ? Number($("#correct-value").value) : $("#correct-label").value;
  if (numeric && ($("#correct-value").value.trim() === "" || !Number.isFinite(label))) {
    status.className = "failed";
    status.textContent = "Not saved: type the right number first.";
    return;
  }
  status.className = "";
  status.textContent = "Sending…";
  button.disabled = true;
  try {
    const saved = await api("/v1/feedback", {
      method: "POST", headers,
      body: JSON.stringify({ request_id: state.requestId, index: 0, label }),
    });
    status.className = "ok";
    status.textContent = `Thanks — saved as feedback #${saved.feedback_id}`;
  } catch (err) {
    status.className = "failed";
    status.textContent = `Not saved: ${err.message}`;
  } finally {
    button.disabled = false;
  }
}

// ---------- start ----------

async function start() {
  $("#predict-form").addEventListener("submit", predict);
  $("#send-feedback").addEventListener("click", sendFeedback);
  const keyInput = $("#api-key");
  keyInput.value = localStorage.getItem(KEY_STORAGE) || "";
  keyInput.addEventListener("input", () => localStorage.setItem(KEY_STORAGE, keyInput.value.trim()));
  let model;
  try {
    model = await api("/v1/model");
  } catch (err) {
    $("#model-card").replaceChildren(element("h2", {}, "Model"),
      element("p", {}, "The model card could not be loaded."));
    showError(err.message);
    return;
  }
  state.model = model;
  renderCard(model);
  const areas = { text: "#text-area", image: "#image-area", table: "#table-form" };
  if (!areas[model.kind]) {
    return showError(`this page does not know inputs of kind ${model.kind}; use the API at /docs.`);
  }
  $(areas[model.kind]).hidden = false;
  if (model.kind === "table") renderTableForm(model.columns);
  if (model.kind === "image") setUpImageInput();
  for (const label of model.labels) $("#correct-label").append(element("option", { value: label }, label));
  if (model.target) { // regression: the correction is a number
    $("#correct-label").hidden = true;
    $("#correct-value").hidden = false;
    $("#correct-label-name").textContent = "Correct value";
    $("#correct-label-name").setAttribute("for", "correct-value");
  }
  $("#api-key-area").hidden = !model.feedback_requires_key;
  $("#predict").disabled = false;
}

start();
