// The model page: model card from GET /v1/model, one input form for the model's kind (a table's also
// filled from a pasted CSV row), POST /v1/predict for one input, a whole file scored through
// POST /v1/predict/batch, and corrections to POST /v1/feedback. No framework, no build step.
"use strict";

const $ = (selector) => document.querySelector(selector);
const state = { model: null, image: null, requestId: null, generation: null, input: null, conversation: [] };
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
    ["Test bits per byte", metrics.test_bits_per_byte == null ? null : metrics.test_bits_per_byte.toFixed(3)],
    ["Context", model.context == null ? null : `${model.context.toLocaleString()} tokens`],
    ["Test NDCG@10", metrics["test_ndcg@10"] == null ? null : metrics["test_ndcg@10"].toFixed(4)],
    ["Users", model.users], ["Items", model.items], // a recommendation model
    ["Created", created],
  ].filter(([name, value]) => value != null
    || !["Test RMSE", "Test R2", "Predicts", "Test bits per byte", "Context", "Test NDCG@10", "Users", "Items"]
      .includes(name)
    && !(model.generates && ["Test accuracy", "Test F1 (macro)"].includes(name)));
  const list = element("dl");
  for (const [name, value] of rows) {
    list.append(element("dt", {}, name), element("dd", {}, value == null ? "—" : String(value)));
  }
  if (model.labels && model.labels.length) {
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

const GROUP_ABOVE = 12; // a form with more columns than this groups them by role (or kind)
const GROUP_NAMES = { number: "Numbers", category: "Categories" };

function renderTableForm(columns) {
  const form = $("#table-form");
  const fields = columns.map((column, i) => [column.role || column.kind, tableField(column, i)]);
  if (columns.length <= GROUP_ABOVE) {
    form.append(...fields.map(([, field]) => field));
    return;
  }
  const groups = new Map();
  for (const [role, field] of fields) {
    if (!groups.has(role)) groups.set(role, []);
    groups.get(role).push(field);
  }
  for (const [role, members] of groups) {
    const group = element("fieldset", { class: "group", "data-role": role });
    group.append(element("legend", {}, `${GROUP_NAMES[role] || role} (${members.length})`), ...members);
    form.append(group);
  }
}

// One column's label and input; a long name is cut short with an ellipsis and shown whole as a tooltip.
function tableField(column, i) {
  const id = `column-${i}`;
  const field = element("div", { class: "field" });
  const label = element("label", { for: id, title: column.name });
  // a long name breaks after its underscores, dots and dashes rather than anywhere
  for (const part of column.name.split(/(?<=[_.\-])/)) label.append(part, element("wbr"));
  field.append(label);
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
  return field;
}

// ---------- paste a row ----------

// One line of CSV (quotes as in RFC 4180), or of tab-separated values when it has tabs and no commas.
function splitLine(line) {
  if (line.includes("\t") && !line.includes(",")) return line.split("\t");
  const values = [];
  let value = "";
  let quoted = false;
  for (let i = 0; i < line.length; i += 1) {
    const c = line[i];
    if (quoted && c === '"' && line[i + 1] === '"') { value += '"'; i += 1; }
    else if (c === '"') quoted = !quoted;
    else if (c === "," && !quoted) { values.push(value); value = ""; }
    else value += c;
  }
  values.push(value);
  return values.map((v) => v.trim());
}

// The pasted row as column -> value, or throws a message naming what does not fit.
function pastedRow(text, columns) {
  const lines = text.split(/\r?\n/).filter((line) => line.trim());
  const names = columns.map((column) => column.name);
  if (!lines.length) throw new Error("paste a row first.");
  if (lines.length > 2) throw new Error(`${lines.length} lines pasted; paste one row (or a header line and one row).`);
  const values = splitLine(lines[lines.length - 1]);
  if (lines.length === 2) {
    const header = splitLine(lines[0]);
    if (header.length !== values.length) {
      throw new Error(`the header has ${header.length} names but the row ${values.length} values.`);
    }
    const missing = names.filter((name) => !header.includes(name));
    if (missing.length) throw new Error(`the header lacks the column(s) ${missing.join(", ")}.`);
    return Object.fromEntries(names.map((name) => [name, values[header.indexOf(name)]]));
  }
  if (values.length !== names.length) {
    const order = names.length <= 6 ? names.join(", ")
      : `${names.slice(0, 4).join(", ")}, … (${names.length - 4} more, as in the form below)`;
    throw new Error(`the row has ${values.length} values; the model takes ${names.length} columns, in this `
      + `order: ${order}. Or paste a header line above the row.`);
  }
  return Object.fromEntries(names.map((name, i) => [name, values[i]]));
}

function fillFromPaste() {
  const status = $("#paste-status");
  try {
    const row = pastedRow($("#paste-row").value, state.model.columns);
    const inputs = [...$("#table-form").querySelectorAll("[data-column]")];
    for (const input of inputs) {
      const value = row[input.dataset.column];
      if (input.dataset.kind === "number" && value !== "" && !Number.isFinite(Number(value))) {
        throw new Error(`column ${input.dataset.column}: ${JSON.stringify(value)} is not a number.`);
      }
      if (input.tagName === "SELECT" && ![...input.options].some((option) => option.value === value)) {
        const known = [...input.options].map((option) => option.value).join(", ");
        throw new Error(`column ${input.dataset.column}: ${JSON.stringify(value)} is not a category the `
          + `model knows (${known}).`);
      }
    }
    for (const input of inputs) input.value = row[input.dataset.column];
    status.className = "small ok";
    status.textContent = `Filled ${inputs.length} columns.`;
  } catch (err) {
    status.className = "small failed";
    status.textContent = `Not filled: ${err.message}`;
  }
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
    const input = currentInput();
    const answer = await api("/v1/predict", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ inputs: [input], top_k: topK }),
    });
    state.input = input; // what "Explain" explains
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
  $("#explain-status").textContent = "";
  $("#explanation").hidden = true;
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

// ---------- explain the prediction (POST /v1/explain) ----------

const shade = (value, scale) => { // red raises the explained number, blue lowers it
  const alpha = Math.min(1, Math.abs(value) / (scale || 1)) * 0.75;
  return value >= 0 ? `rgba(214, 39, 40, ${alpha})` : `rgba(31, 119, 180, ${alpha})`;
};

async function explain() {
  const status = $("#explain-status");
  const button = $("#explain");
  status.className = "";
  status.textContent = "Explaining…";
  button.disabled = true;
  try {
    const answer = await api("/v1/explain", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ inputs: [state.input] }),
    });
    renderExplanation(answer.explanations[0]);
    status.textContent = "";
  } catch (err) {
    status.className = "failed";
    status.textContent = `Could not explain: ${err.message}`;
  } finally {
    button.disabled = false;
  }
}

function renderExplanation(e) {
  const area = $("#explanation");
  const delta = e.convergence_delta == null ? "" : `, convergence delta ${e.convergence_delta.toExponential(1)}`;
  const parts = [element("p", { class: "muted small" },
    `${e.explains}: ${formatNumber(e.output)}, from ${formatNumber(e.baseline_output)} for ${e.baseline}; ` +
    `${e.method}${delta}. Red raises it, blue lowers it.`)];
  if (e.tokens) {
    const scale = Math.max(...e.tokens.map((t) => Math.abs(t.attribution)));
    const text = element("p", { class: "tokens" });
    const tok = (t, shown) => {
      const span = element("span", { class: "tok", title: t.attribution.toPrecision(3) }, shown);
      span.style.background = shade(t.attribution, scale);
      return span;
    };
    if (e.text != null) { // the text as typed, each token's characters shaded
      let at = 0;
      for (const t of [...e.tokens].sort((a, b) => a.start - b.start)) {
        if (t.start < at) continue;
        text.append(e.text.slice(at, t.start), tok(t, e.text.slice(t.start, t.end)));
        at = t.end;
      }
      text.append(e.text.slice(at));
    } else {
      e.tokens.forEach((t, i) => {
        const joined = t.token.startsWith("##");
        if (i > 0 && !joined) text.append(" ");
        text.append(tok(t, joined ? t.token.slice(2) : t.token));
      });
    }
    parts.push(text);
  }
  if (e.heatmap_png) {
    parts.push(element("img", { class: "heatmap", src: e.heatmap_png, alt: "the image and its heat map" }));
  }
  if (e.contributions) {
    const shown = e.contributions.slice(0, 10);
    const scale = Math.max(...shown.map((c) => Math.abs(c.contribution)));
    for (const c of shown) {
      const bar = element("div", { class: "bar", "data-column": c.column });
      const track = element("span", { class: "track" });
      const fill = element("span", { class: "fill" });
      fill.style.width = `${(100 * Math.abs(c.contribution)) / (scale || 1)}%`;
      fill.style.background = shade(c.contribution, Math.abs(c.contribution));
      track.append(fill);
      bar.append(element("span", { class: "name" }, `${c.column} = ${c.value}`), track,
        element("span", { class: "value" }, `${c.contribution >= 0 ? "+" : ""}${formatNumber(c.contribution)}`));
      parts.push(bar);
    }
  }
  area.replaceChildren(...parts);
  area.hidden = false;
}

// ---------- score a file ----------

const PREVIEW_ROWS = 10;

function setUpBatch(model) {
  const batch = model.batch;
  const input = $("#batch-input");
  const zone = $("#batch-drop");
  input.accept = batch.suffixes.join(",");
  input.multiple = batch.multiple;
  const what = batch.multiple ? "images, or zips of images" : "a file";
  $("#batch-label").textContent = `Drop ${what} here, or choose`;
  const mb = batch.max_bytes / 2 ** 20;
  $("#batch-limits").textContent = `Up to ${batch.max_rows.toLocaleString()} inputs and `
    + `${mb.toLocaleString(undefined, { maximumFractionDigits: 1 })} MB per upload (this server's limits) · `
    + batch.suffixes.join(" ");
  input.addEventListener("change", () => {
    const files = [...input.files];
    input.value = ""; // choosing the same file again (fixed) scores it again
    scoreFiles(files);
  });
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    scoreFiles([...event.dataTransfer.files]);
  });
  $("#batch").hidden = false;
}

function batchError(message) {
  const area = $("#batch-error");
  area.textContent = message ? `Error: ${message}` : "";
  area.hidden = !message;
}

// Upload the files to POST /v1/predict/batch and follow its NDJSON answer: progress, the first rows,
// then the whole CSV (as the server wrote it: the same file `foundry predict --output` writes).
async function scoreFiles(files) {
  if (!files.length) return;
  const batch = state.model.batch;
  const bytes = files.reduce((sum, file) => sum + file.size, 0);
  const download = $("#batch-download");
  if (download.href) URL.revokeObjectURL(download.href);
  download.hidden = true;
  download.removeAttribute("href");
  $("#batch-run").hidden = false;
  $("#batch-preview").replaceChildren();
  $("#batch-notes").replaceChildren();
  batchError("");
  const progress = $("#batch-progress");
  const status = $("#batch-status");
  progress.removeAttribute("value"); // indeterminate while uploading
  if (bytes > batch.max_bytes) {
    status.textContent = "Not scored.";
    progress.value = 0;
    return batchError(`the upload is ${bytes.toLocaleString()} bytes; this server takes at most `
      + `${batch.max_bytes.toLocaleString()} bytes per upload. Split the file.`);
  }
  const name = files.length === 1 ? files[0].name : `${files.length} files`;
  status.textContent = `Uploading ${name}…`;
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  const csv = [];
  let total = 0;
  let done = 0;
  try {
    const response = await fetch("/v1/predict/batch", { method: "POST", body: form });
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      const error = body && body.error;
      throw new Error(error ? error.message : `the server answered ${response.status} ${response.statusText}.`);
    }
    let finished = false;
    for await (const message of ndjsonLines(response)) {
      if (message.error) throw new Error(message.error.message);
      if (message.finished) { finished = true; break; }
      if (message.csv === undefined) { // the first line: how many inputs, and notes on the file
        total = message.rows;
        progress.max = total;
        progress.value = 0;
        for (const note of message.notes) $("#batch-notes").append(element("li", {}, note));
        continue;
      }
      csv.push(message.csv);
      showPreview(message.rows, done);
      done = message.done;
      progress.value = done;
      status.textContent = `Scored ${done.toLocaleString()} of ${total.toLocaleString()} from ${name}…`;
    }
    if (!finished) throw new Error("the answer ended early; the server may have stopped. Try again.");
    status.textContent = `Scored all ${total.toLocaleString()} inputs of ${name}.`;
    download.href = URL.createObjectURL(new Blob(csv, { type: "text/csv" }));
    const stem = files.length === 1 ? files[0].name.replace(/\.[^.]*$/, "") : "files";
    download.download = `${stem}-predictions.csv`;
    download.hidden = false;
  } catch (err) {
    status.textContent = done ? `Stopped after ${done.toLocaleString()} of ${total.toLocaleString()}.`
      : "Not scored.";
    batchError(err.message);
  }
}

// The records of a streamed answer, each ended by `separator`, as they arrive (a record split across reads is
// put back together; the decoder keeps a character split across reads whole).
async function* streamedRecords(response, separator) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    let end;
    while ((end = buffer.indexOf(separator)) >= 0) {
      yield buffer.slice(0, end);
      buffer = buffer.slice(end + separator.length);
    }
    if (done) return;
  }
}

// The JSON objects of a streamed NDJSON answer, as their lines arrive.
async function* ndjsonLines(response) {
  for await (const line of streamedRecords(response, "\n")) {
    if (line.trim()) yield JSON.parse(line);
  }
}

// The first PREVIEW_ROWS rows, with the columns of the CSV (input, label, probability / prediction).
function showPreview(rows, shown) {
  const table = $("#batch-preview");
  if (shown >= PREVIEW_ROWS || !rows.length) return;
  const columns = Object.keys(rows[0]);
  if (!table.rows.length) {
    const head = element("tr");
    for (const column of columns) head.append(element("th", { scope: "col" }, column));
    table.append(element("thead"));
    table.tHead.append(head);
    table.append(element("tbody"));
  }
  for (const row of rows.slice(0, PREVIEW_ROWS - shown)) {
    const line = element("tr");
    for (const column of columns) {
      const value = row[column];
      const cell = element("td", typeof value === "number" ? { class: "num" } : {}, String(value ?? ""));
      line.append(cell);
    }
    table.tBodies[0].append(line);
  }
}

// ---------- generate (a text generation model) ----------

// POST /v1/completions (or, for a model with a chat template, /v1/chat/completions with the conversation so
// far) with stream: true, read as server-sent events (`data: {...}` lines, then `data: [DONE]`); each piece
// is appended as it comes. Stop aborts the request, and the server stops decoding it.
async function generate(event) {
  event.preventDefault();
  showError("");
  const chat = Boolean(state.model.chat);
  const prompt = $("#prompt").value;
  if (!prompt.trim()) return showError(chat ? "type a message first." : "type a prompt first.");
  const messages = chat ? [...state.conversation, { role: "user", content: prompt }] : null;
  const button = $("#generate-button");
  const stop = $("#stop-button");
  const controller = new AbortController();
  state.generation = { prompt, messages, text: "", id: null };
  let answer = $("#answer");
  if (chat) {
    $("#conversation").append(element("li", { class: "user" }, prompt));
    answer = element("li", { class: "assistant" });
    $("#conversation").append(answer);
    $("#conversation").hidden = false;
    $("#prompt").value = "";
  }
  answer.textContent = "";
  $("#answer-meta").textContent = "Generating…";
  $("#vote-status").textContent = "";
  $("#better-answer").value = "";
  $("#answer-area").hidden = false;
  button.disabled = true;
  stop.hidden = false;
  stop.onclick = () => controller.abort();
  const sampling = { stream: true, max_tokens: Number($("#max-tokens").value), temperature: Number($("#temperature").value) };
  let finish = null;
  try {
    const response = await fetch(chat ? "/v1/chat/completions" : "/v1/completions", {
      method: "POST", headers: { "Content-Type": "application/json" }, signal: controller.signal,
      body: JSON.stringify(chat ? { messages, ...sampling } : { prompt, ...sampling }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      const error = body && body.error;
      throw new Error(error ? `${error.field || error.param}: ${error.message}` : `the server answered ${response.status}.`);
    }
    for await (const chunk of serverEvents(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      state.generation.id = chunk.id;
      for (const choice of chunk.choices) {
        state.generation.text += chat ? (choice.delta.content || "") : choice.text;
        answer.textContent = state.generation.text;
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    const why = { stop: "the model ended it", length: "the token limit" }[finish] || finish;
    $("#answer-meta").textContent = `Done (${why}) · answer ${state.generation.id}`;
  } catch (err) {
    if (err.name === "AbortError") {
      $("#answer-meta").textContent = "Stopped.";
    } else {
      $("#answer-meta").textContent = "";
      showError(err.message);
    }
  } finally {
    button.disabled = false;
    stop.hidden = true;
    // the conversation goes on from what was shown, a stopped answer included
    if (chat) state.conversation = [...messages, { role: "assistant", content: state.generation.text }];
  }
}

// A chat starts again: the turns so far are forgotten (feedback already sent stays stored).
function newConversation() {
  state.conversation = [];
  state.generation = null;
  $("#conversation").replaceChildren();
  $("#conversation").hidden = true;
  $("#answer-area").hidden = true;
  $("#prompt").focus();
}

// The JSON of each `data:` line of a server-sent event stream, until `data: [DONE]`.
async function* serverEvents(response) {
  for await (const event of streamedRecords(response, "\n\n")) {
    for (const line of event.split("\n")) {
      if (!line.startsWith("data: ")) continue;
      const data = line.slice(6);
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

// A vote and/or a better answer for the last answer, stored by POST /v1/feedback under its id (or with the
// prompt and answer sent whole, when the answer was stopped before its id came).
async function sendVote(vote) {
  const status = $("#vote-status");
  const generation = state.generation;
  const typed = $("#better-answer").value;
  const better = typed.trim() ? typed : ""; // as typed: a continuation's leading space is part of it
  if (!vote && !better) {
    status.className = "failed";
    status.textContent = "Not saved: type a better answer first.";
    return;
  }
  const key = $("#gen-api-key").value.trim();
  const headers = { "Content-Type": "application/json" };
  if (key) headers["X-API-Key"] = key;
  const body = generation.id
    ? { request_id: generation.id, index: 0 }
    : { input: generation.messages ? { messages: generation.messages } : { prompt: generation.prompt }, predicted: generation.text };
  if (vote) body.vote = vote;
  if (better) body.better_answer = better;
  status.className = "";
  status.textContent = "Sending…";
  try {
    const saved = await api("/v1/feedback", { method: "POST", headers, body: JSON.stringify(body) });
    status.className = "ok";
    status.textContent = `Thanks — saved as feedback #${saved.feedback_id}`;
  } catch (err) {
    status.className = "failed";
    status.textContent = `Not saved: ${err.message}`;
  }
}

function setUpGeneration(model) {
  $("#predict-card").hidden = true;
  $("#generate").hidden = false;
  $("#max-tokens").max = String(model.max_new_tokens_limit);
  $("#generate-form").addEventListener("submit", generate);
  if (model.chat) { // a chat template: the box holds a conversation
    state.conversation = [];
    $("#generate-title").textContent = "Chat";
    $("#prompt-label").textContent = "Message";
    $("#prompt").placeholder = "Type a message; the model answers it";
    $("#prompt").rows = 3;
    $("#generate-button").textContent = "Send";
    $("#answer-title").hidden = true;
    $("#answer").hidden = true;
    $("#new-chat").hidden = false;
    $("#new-chat").addEventListener("click", newConversation);
    $("#prompt").addEventListener("keydown", (e) => { // Enter sends, Shift+Enter is a new line
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("#generate-form").requestSubmit(); }
    });
  }
  $("#vote-up").addEventListener("click", () => sendVote("up"));
  $("#vote-down").addEventListener("click", () => sendVote("down"));
  $("#send-better").addEventListener("click", () => sendVote(null));
  const keyInput = $("#gen-api-key");
  keyInput.value = localStorage.getItem(KEY_STORAGE) || "";
  keyInput.addEventListener("input", () => localStorage.setItem(KEY_STORAGE, keyInput.value.trim()));
  $("#gen-api-key-area").hidden = !model.feedback_requires_key;
  $("#generate-button").disabled = false;
}

// ---------- recommendation: a user's history and recommendations; a like is a new interaction ----------

async function recommend(event) {
  event.preventDefault();
  showError("");
  const user = $("#recommend-user").value.trim();
  const k = Number($("#recommend-k").value);
  try {
    const answer = await api("/v1/recommend", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user, k }),
    });
    $("#recommend-note").textContent = answer.note || "";
    const named = (item) => (item.title ? `${item.item} · ${item.title}` : item.item);
    $("#recommend-history").replaceChildren(
      ...(answer.history || []).map((item) => element("li", {}, named(item))));
    $("#recommend-items").replaceChildren(...answer.items.map((item) => {
      const like = element("button", { type: "button", class: "secondary" }, "Like");
      like.addEventListener("click", () => sendLike(answer.user, item.item, like));
      const row = element("li", {}, `${named(item)} `);
      row.append(like);
      return row;
    }));
  } catch (err) {
    showError(err.message);
  }
}

async function sendLike(user, item, button) {
  const headers = { "Content-Type": "application/json" };
  const key = $("#api-key").value.trim();
  if (key) headers["X-API-Key"] = key;
  try {
    await api("/v1/feedback", {
      method: "POST", headers, body: JSON.stringify({ input: { user, item }, label: "like" }),
    });
    button.disabled = true;
    button.textContent = "Liked";
    $("#like-status").textContent = `Stored: ${user} likes ${item} (a new interaction for the next retrain).`;
  } catch (err) {
    showError(err.message);
  }
}

// ---------- start ----------

async function start() {
  $("#predict-form").addEventListener("submit", predict);
  $("#send-feedback").addEventListener("click", sendFeedback);
  $("#explain").addEventListener("click", explain);
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
  if (model.generates) return setUpGeneration(model);
  if (model.kind === "interactions") { // recommendation: its own form instead of Try it
    $("#predict-form").closest("section").hidden = true;
    $("#recommend-area").hidden = false;
    $("#recommend-form").addEventListener("submit", recommend);
    $("#recommend-k").max = model.items;
    return;
  }
  const areas = { text: "#text-area", image: "#image-area", table: "#table-form" };
  if (!areas[model.kind]) {
    return showError(`this page does not know inputs of kind ${model.kind}; use the API at /docs.`);
  }
  $(areas[model.kind]).hidden = false;
  if (model.kind === "table") {
    renderTableForm(model.columns);
    $("#paste-area").hidden = false;
    $("#paste-fill").addEventListener("click", fillFromPaste);
  }
  if (model.batch) setUpBatch(model);
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
