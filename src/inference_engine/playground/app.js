// inference-engine playground: plain JavaScript, no build step, no request to any other host.
// It is an ordinary API client: every call goes to this page's own server with relative URLs
// (so it also works behind a path prefix), and errors are shown as the server words them.
"use strict";

(() => {
  const POLL_MS = 2000;
  const KEY_STORAGE = "inference-engine.playground.api-key";
  const MODES = [
    ["classify", "Classify"],
    ["zero_shot", "Zero-shot labels"],
    ["embed_image", "Embed image"],
  ];
  const EMBEDDING_PREVIEW = 8;

  const $ = (id) => document.getElementById(id);
  const state = {
    tasks: new Map(), // model name -> its tasks, from GET v1/models/{name}
    info: new Map(), // model name -> a line about it (handler and version, or why not ready)
    file: null,
    previewUrl: null,
    controller: null,
    pollTimer: null,
    pollInFlight: false,
    statusText: "",
  };

  /** An error the server answered with: its own {type, message, request_id} and the status. */
  class ApiError extends Error {
    constructor(error, status) {
      super(error.message);
      this.error = error;
      this.status = status;
    }
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function requestHeaders() {
    const headers = new Headers();
    const key = $("api-key").value.trim();
    if (key) headers.set("Authorization", "Bearer " + key);
    return headers;
  }

  async function serverError(response) {
    const text = await response.text().catch(() => "");
    try {
      const body = JSON.parse(text);
      if (body && body.error && typeof body.error.message === "string") return body.error;
    } catch (_) {
      // not the server's error body (a proxy in between?): show the text as it came
    }
    return {
      type: "http_" + response.status,
      message: text.slice(0, 500) || response.statusText,
      request_id: response.headers.get("x-request-id"),
    };
  }

  async function api(path, init = {}) {
    const response = await fetch(path, { ...init, headers: requestHeaders(), cache: "no-store" });
    if (!response.ok) throw new ApiError(await serverError(response), response.status);
    return response;
  }

  // -- models and tasks ------------------------------------------------------------------------

  async function loadModels() {
    let models;
    let preferred = null;
    try {
      const [list, info] = await Promise.all([
        api("v1/models").then((r) => r.json()),
        api("info").then((r) => r.json()).catch(() => ({})), // only for the default model's name
      ]);
      models = list.models;
      preferred = info.default_model || null;
    } catch (err) {
      showError(err);
      if (err instanceof ApiError && err.status === 401) {
        $("key").open = true; // the server wants a key: show where it goes
        $("api-key").focus();
      }
      return;
    }
    const select = $("model");
    const previous = select.value;
    select.replaceChildren(
      ...models.map((m) => {
        const option = element("option", "", `${m.name} (${m.state})`);
        option.value = m.name;
        return option;
      }),
    );
    if (!models.length) {
      $("model-info").textContent = "The server serves no model.";
      return;
    }
    const known = (name) => models.some((m) => m.name === name);
    const ready = models.find((m) => m.ready);
    select.value = known(previous) ? previous : known(preferred) ? preferred : (ready || models[0]).name;
    await selectModel();
  }

  async function selectModel() {
    const name = $("model").value;
    if (!name) return;
    if (!state.tasks.has(name)) {
      try {
        const detail = await (await api(`v1/models/${encodeURIComponent(name)}`)).json();
        if (detail.metadata) state.tasks.set(name, detail.metadata.tasks || ["classify"]);
        state.info.set(
          name,
          detail.ready
            ? `${detail.handler || ""} ${detail.version ? "· version " + detail.version : ""}`.trim()
            : `Not ready: ${detail.state}${detail.error ? " — " + detail.error : ""}`,
        );
      } catch (err) {
        state.info.set(name, err.error ? err.error.message : err.message);
      }
      if ($("model").value !== name) return; // another model was chosen meanwhile
    }
    $("model-info").textContent = state.info.get(name) || "";
    renderModes(state.tasks.get(name) || []);
  }

  function renderModes(tasks) {
    const fieldset = $("modes");
    const current = currentMode();
    const offered = MODES.filter(([task]) => tasks.includes(task));
    const chosen = offered.some(([task]) => task === current) ? current : (offered[0] || [null])[0];
    fieldset.replaceChildren(element("legend", "", "Task"));
    for (const [task, text] of offered) {
      const wrap = element("span");
      const input = element("input");
      input.type = "radio";
      input.name = "mode";
      input.id = "mode-" + task;
      input.value = task;
      input.checked = task === chosen;
      const label = element("label", "", " " + text);
      label.htmlFor = input.id;
      wrap.append(input, label);
      fieldset.append(wrap);
    }
    if (!offered.length) fieldset.append(element("p", "hint", "Nothing to try until the model is ready."));
    $("labels-field").hidden = chosen !== "zero_shot";
  }

  function currentMode() {
    const checked = document.querySelector('input[name="mode"]:checked');
    return checked ? checked.value : null;
  }

  function zeroShotLabels() {
    return $("labels").value.split(",").map((s) => s.trim()).filter(Boolean);
  }

  // -- the image ------------------------------------------------------------------------------

  function chooseFile(file) {
    if (!file) return;
    state.file = file;
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.previewUrl = URL.createObjectURL(file);
    $("preview").src = state.previewUrl;
    $("preview").hidden = false;
    $("preview-wrap").hidden = false;
    $("file-name").textContent = `${file.name || "pasted image"} · ${Math.ceil(file.size / 1024)} KiB`;
    $("run").disabled = false;
    run();
  }

  // -- running the model ----------------------------------------------------------------------

  async function run() {
    const name = $("model").value;
    const mode = currentMode();
    if (!state.file || !name) return;
    if (!mode) {
      showError(new Error(`model ${name} is not ready yet; wait for it in the status strip`));
      return;
    }
    const model = encodeURIComponent(name);
    let path = `v1/models/${model}/predict`;
    if (mode === "embed_image") {
      path = `v1/models/${model}/embed`;
    } else if (mode === "zero_shot") {
      const labels = zeroShotLabels();
      if (!labels.length) {
        clearResult();
        showError(new Error("type at least one label, separated by commas"));
        $("labels").focus();
        return;
      }
      const query = new URLSearchParams({ top_k: String(Math.min(labels.length, 1000)) });
      for (const label of labels) query.append("labels", label);
      path += "?" + query;
    }
    if (state.controller) state.controller.abort();
    const controller = new AbortController();
    state.controller = controller;
    clearResult();
    $("placeholder").hidden = true;
    setBusy(true);
    const form = new FormData();
    form.append("file", state.file, state.file.name || "pasted-image");
    try {
      const response = await api(path, { method: "POST", body: form, signal: controller.signal });
      const body = await response.json();
      if (state.controller !== controller) return;
      if (mode === "embed_image") renderEmbedding(body);
      else renderPredictions(body.predictions || []);
      renderTimings(body);
      renderAnsweredBy(body, response.headers, name);
      $("result").dataset.state = "done";
    } catch (err) {
      if (err.name === "AbortError" || state.controller !== controller) return;
      showError(err);
    } finally {
      if (state.controller === controller) {
        state.controller = null;
        setBusy(false);
      }
    }
  }

  function setBusy(busy) {
    $("result").setAttribute("aria-busy", String(busy));
    if (busy) $("result").dataset.state = "busy";
  }

  function clearResult() {
    $("error").hidden = true;
    $("predictions").replaceChildren();
    $("embedding").hidden = true;
    $("timings").hidden = true;
    $("answered-by").hidden = true;
    $("meta").hidden = true;
    $("result").dataset.state = "idle";
  }

  function showError(err) {
    const error = err instanceof ApiError ? err.error : { type: "error", message: String(err.message || err) };
    $("error-type").textContent = error.type;
    $("error-status").textContent = err instanceof ApiError ? `HTTP ${err.status}` : "";
    $("error-message").textContent = error.message;
    $("error").hidden = false;
    $("placeholder").hidden = true;
    if (error.request_id) {
      $("request-id").textContent = error.request_id;
      $("meta").hidden = false;
    }
    $("result").dataset.state = "error";
  }

  function renderPredictions(predictions) {
    $("predictions").replaceChildren(
      ...predictions.map((p) => {
        const row = element("li", "bar-row");
        row.dataset.score = String(p.score);
        const track = element("span", "bar-track");
        track.setAttribute("aria-hidden", "true");
        const fill = element("span", "bar-fill");
        fill.style.width = `${(Math.max(0, Math.min(1, p.score)) * 100).toFixed(2)}%`;
        track.append(fill);
        row.append(element("span", "bar-label", p.label), track, element("span", "bar-score", p.score.toFixed(4)));
        return row;
      }),
    );
  }

  function renderEmbedding(body) {
    const first = (body.embeddings && body.embeddings[0]) || [];
    $("dimension").textContent = String(body.dimension);
    $("modality").textContent = `${body.modality} embedding`;
    const shown = first.slice(0, EMBEDDING_PREVIEW).map((v) => v.toFixed(4));
    $("values").textContent = `[${shown.join(", ")}${first.length > EMBEDDING_PREVIEW ? ", …" : ""}]`;
    $("embedding").hidden = false;
  }

  function renderTimings(body) {
    const timings = body.timings_ms || {};
    for (const key of ["preprocess", "queue", "inference", "total"]) {
      $("t-" + key).textContent = typeof timings[key] === "number" ? `${timings[key].toFixed(1)} ms` : "–";
    }
    $("timings").hidden = false;
    $("request-id").textContent = body.request_id || "";
    $("meta").hidden = false;
  }

  /** Which model and version answered: a model with several versions splits its traffic
   * between them, so the same image may be answered by another version next time. */
  function renderAnsweredBy(body, headers, asked) {
    const version = body.model_version || headers.get("x-model-version");
    const model = body.model || asked;
    $("answered-by").textContent = version ? `model ${model} · version ${version}` : `model ${model}`;
    $("answered-by").hidden = false;
  }

  // -- the status strip: readiness from /ready, queue depth from /metrics ---------------------

  function queueDepths(text) {
    const depths = new Map();
    for (const match of text.matchAll(/^inference_engine_queue_depth\{([^}]*)\}\s+(\S+)/gm)) {
      const model = /(?:^|,)model="((?:[^"\\]|\\.)*)"/.exec(match[1]);
      // One queue per served version: the model's depth is their sum.
      if (model) depths.set(model[1], (depths.get(model[1]) || 0) + Number(match[2]));
    }
    return depths;
  }

  async function pollOnce() {
    state.pollTimer = null;
    if (document.hidden || state.pollInFlight) return;
    state.pollInFlight = true;
    try {
      const init = { headers: requestHeaders(), cache: "no-store" };
      const [ready, metrics] = await Promise.all([
        fetch("ready", init).then(async (r) => ({ status: r.status, body: await r.json().catch(() => null) })),
        fetch("metrics", init).then(async (r) => (r.ok ? r.text() : "")).catch(() => ""),
      ]);
      renderStatus(ready, queueDepths(metrics));
    } catch (_) {
      renderStatus(null, new Map());
    } finally {
      state.pollInFlight = false;
      schedulePoll(POLL_MS);
    }
  }

  function schedulePoll(delay) {
    if (state.pollTimer === null && !document.hidden) state.pollTimer = setTimeout(pollOnce, delay);
  }

  function renderStatus(ready, depths) {
    const chips = [];
    if (!ready || !ready.body || !ready.body.models) {
      const why = ready && ready.status === 401 ? "status needs the API key" : "server unreachable";
      chips.push(["chip not-ready", why, ""]);
    } else {
      for (const [name, value] of Object.entries(ready.body.models)) {
        const ok = value === "ready";
        let text = `${name} · ${ok ? "ready" : "not ready"}`;
        if (depths.has(name)) text += ` · queue ${depths.get(name)}`;
        if (depths.has(name + ":text")) text += ` (text ${depths.get(name + ":text")})`;
        chips.push([ok ? "chip ready" : "chip not-ready", text, ok ? "" : String(value)]);
        const option = Array.from($("model").options).find((o) => o.value === name);
        if (option) option.textContent = `${name} (${ok ? "ready" : "not ready"})`;
        if (ok && !state.tasks.has(name) && $("model").value === name) selectModel();
      }
    }
    const signature = JSON.stringify(chips);
    if (signature === state.statusText) return; // no churn for screen readers or layout
    state.statusText = signature;
    $("status").replaceChildren(
      ...chips.map(([className, text, title]) => {
        const chip = element("li", className, text);
        if (title) chip.title = title;
        return chip;
      }),
    );
  }

  // -- wiring ---------------------------------------------------------------------------------

  function wire() {
    const key = $("api-key");
    key.value = sessionStorage.getItem(KEY_STORAGE) || "";
    key.addEventListener("change", () => {
      if (key.value.trim()) sessionStorage.setItem(KEY_STORAGE, key.value.trim());
      else sessionStorage.removeItem(KEY_STORAGE);
      state.tasks.clear();
      clearResult();
      loadModels();
    });

    $("model").addEventListener("change", async () => {
      clearResult();
      await selectModel();
      run();
    });
    $("modes").addEventListener("change", () => {
      $("labels-field").hidden = currentMode() !== "zero_shot";
      if (currentMode() !== "zero_shot" || zeroShotLabels().length) run();
    });
    $("form").addEventListener("submit", (event) => {
      event.preventDefault();
      run();
    });

    const input = $("file");
    input.addEventListener("change", () => {
      chooseFile(input.files[0]);
      input.value = ""; // choosing the same file again still runs
    });

    const drop = $("drop");
    for (const type of ["dragenter", "dragover"]) {
      drop.addEventListener(type, (event) => {
        event.preventDefault();
        drop.classList.add("over");
      });
    }
    for (const type of ["dragleave", "dragend"]) drop.addEventListener(type, () => drop.classList.remove("over"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("over");
      chooseFile(event.dataTransfer.files[0]);
    });
    // A file dropped beside the zone must not navigate away from the page.
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());

    document.addEventListener("paste", (event) => {
      const items = event.clipboardData ? Array.from(event.clipboardData.items) : [];
      const item = items.find((i) => i.kind === "file");
      if (!item) return; // text pastes go where they always go
      event.preventDefault();
      chooseFile(item.getAsFile());
    });
    $("preview").addEventListener("error", () => {
      $("preview").hidden = true; // not an image this browser shows; the server still decides
    });

    // Poll only while the tab is visible: a forgotten background tab costs the server nothing.
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) {
        clearTimeout(state.pollTimer);
        state.pollTimer = null;
      } else {
        schedulePoll(0);
      }
    });
  }

  wire();
  loadModels();
  schedulePoll(0);
})();
