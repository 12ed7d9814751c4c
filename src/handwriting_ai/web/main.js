// The page's entry point: the API key prompt, the service line, and the three panels.

import { apiKey, call, describe, onUnauthorized, setApiKey } from "./api.js";
import { refreshModels, setupModels } from "./models.js";
import { setupRead } from "./read.js";
import { refreshJobs, setupTrain } from "./train.js";

const $ = (id) => document.getElementById(id);

function askForKey(text) {
  $("key-why").textContent = text;
  $("key-panel").hidden = false;
  $("key-toggle").setAttribute("aria-expanded", "true");
  $("api-key").focus();
}

async function checkService() {
  const line = $("service");
  try {
    const { data } = await call("/v1/models/active");
    line.textContent = data.model_loaded
      ? `Serving ${data.model_id} (${data.ensemble_size} model${data.ensemble_size === 1 ? "" : "s"})`
      : "No model loaded yet.";
    line.dataset.state = "ok";
  } catch (error) {
    line.textContent = error.code === "unauthorized" ? "Needs the API key." : describe(error);
    line.dataset.state = "error";
  }
}

function refreshAll() {
  checkService();
  refreshModels();
  refreshJobs();
}

function setupKey() {
  $("api-key").value = apiKey();
  onUnauthorized(() =>
    askForKey(
      apiKey()
        ? "The service refused this API key: type the right one."
        : "This service needs its API key. It stays in this tab only (session storage).",
    ),
  );
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey($("api-key").value.trim());
    $("key-panel").hidden = true;
    $("key-toggle").setAttribute("aria-expanded", "false");
    $("key-toggle").focus();
    refreshAll();
  });
  $("key-forget").addEventListener("click", () => {
    setApiKey("");
    $("api-key").value = "";
    refreshAll();
  });
  $("key-toggle").setAttribute("aria-expanded", "false");
  $("key-toggle").setAttribute("aria-controls", "key-panel");
  $("key-toggle").addEventListener("click", () => {
    const open = $("key-panel").hidden;
    $("key-panel").hidden = !open;
    $("key-toggle").setAttribute("aria-expanded", String(open));
    if (open) $("api-key").focus();
  });
}

setupKey();
setupRead();
setupTrain({ onJobEnded: () => refreshModels() });
setupModels();
refreshAll();
