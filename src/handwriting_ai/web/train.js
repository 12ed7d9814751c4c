// Training: queue a job (POST /v1/train), follow its events live (SSE) into a progress bar, a
// per-epoch chart and a log, and list the jobs this browser started (ids kept in localStorage).

import { call, describe } from "./api.js";
import { renderChart } from "./chart.js";
import { followEvents } from "./sse.js";

const JOBS_KEY = "handwriting-ai.jobs";
const MAX_JOBS = 10;
const FINAL = new Set(["completed", "failed", "dead", "cancelled"]);
const $ = (id) => document.getElementById(id);

let watching = null; // {requestId, controller}
let afterFinal = () => {};

// --------------------------------------------------------------------------- recent jobs

function storedJobs() {
  try {
    const jobs = JSON.parse(localStorage.getItem(JOBS_KEY) || "[]");
    return Array.isArray(jobs) ? jobs.filter((job) => job && typeof job.request_id === "string") : [];
  } catch {
    return [];
  }
}

function remember(requestId, modelId) {
  const jobs = storedJobs().filter((job) => job.request_id !== requestId);
  jobs.unshift({ request_id: requestId, model_id: modelId, created: new Date().toISOString() });
  localStorage.setItem(JOBS_KEY, JSON.stringify(jobs.slice(0, MAX_JOBS)));
}

function renderJobs() {
  const list = $("jobs");
  const jobs = storedJobs();
  $("jobs-empty").hidden = jobs.length > 0;
  list.replaceChildren(
    ...jobs.map((job) => {
      const item = document.createElement("li");
      item.dataset.requestId = job.request_id;
      const model = document.createElement("span");
      model.className = "job-model";
      model.textContent = job.model_id;
      const id = document.createElement("code");
      id.textContent = job.request_id.slice(0, 12);
      id.title = job.request_id;
      const state = document.createElement("span");
      state.className = "job-status";
      state.textContent = "…";
      const watch = document.createElement("button");
      watch.type = "button";
      watch.className = "quiet";
      watch.textContent = "Watch";
      watch.setAttribute("aria-label", `Watch job ${job.request_id}`);
      watch.addEventListener("click", () => watchJob(job.request_id, job.model_id));
      item.append(model, id, state, watch);
      return item;
    }),
  );
}

export async function refreshJobs() {
  renderJobs();
  await Promise.all(
    [...$("jobs").children].map(async (item) => {
      const state = item.querySelector(".job-status");
      try {
        const { data } = await call(`/v1/train/${encodeURIComponent(item.dataset.requestId)}`);
        state.textContent = data.status;
        state.dataset.status = data.status;
      } catch (error) {
        state.textContent = error.code === "not_found" ? "expired" : describe(error);
        state.dataset.status = error.code === "not_found" ? "expired" : "unknown";
      }
    }),
  );
}

// --------------------------------------------------------------------------- one job, live

function pct(value) {
  return `${(value * 100).toFixed(1)}%`;
}

function logLine(text) {
  const item = document.createElement("li");
  item.textContent = text;
  $("job-log").append(item);
}

function setProgress(fraction) {
  const value = Math.min(Math.max(fraction, 0), 1);
  $("job-progress").value = value;
  $("job-percent").textContent = pct(value);
}

function setState(state, text) {
  $("job").dataset.state = state;
  $("job-state").textContent = text;
}

function jobView(requestId, modelId) {
  const view = { totalEpochs: 1, points: [] };
  $("job").hidden = false;
  $("job-title").textContent = `Training ${modelId} · request ${requestId}`;
  $("job-log").replaceChildren();
  $("job-cancel").hidden = false;
  setProgress(0);
  setState("queued", "Queued: waiting for a worker.");
  renderChart($("chart"), view.points, view.totalEpochs);
  return view;
}

// One event onto the view; true when it is the job's last.
function apply(view, type, e) {
  const kind = type.replace(/^digits\.train\./, "").replace(/\.v1$/, "");
  const redraw = () => renderChart($("chart"), view.points, view.totalEpochs);
  switch (kind) {
    case "started":
      view.totalEpochs = e.total_epochs;
      if (e.attempt > 1) view.points = []; // a retried attempt starts over
      setProgress(0);
      redraw();
      setState("running", `Training: epoch 1/${e.total_epochs}`);
      logLine(e.attempt > 1 ? `Started again (attempt ${e.attempt})` : "Started");
      return false;
    case "batch":
      view.totalEpochs = e.total_epochs;
      setProgress((e.epoch - 1 + e.batch / e.total_batches) / e.total_epochs);
      setState(
        "running",
        `Epoch ${e.epoch}/${e.total_epochs} · batch ${e.batch}/${e.total_batches} · ` +
          `loss ${e.avg_loss.toFixed(4)} · batch acc ${pct(e.batch_acc)}`,
      );
      return false;
    case "epoch":
      view.totalEpochs = e.total_epochs;
      view.points = view.points.filter((p) => p.epoch !== e.epoch);
      view.points.push({ epoch: e.epoch, loss: e.train_loss, valAcc: e.val_acc });
      view.points.sort((a, b) => a.epoch - b.epoch);
      setProgress(e.epoch / e.total_epochs);
      redraw();
      logLine(
        `Epoch ${e.epoch}/${e.total_epochs}: train_loss ${e.train_loss.toFixed(4)} · ` +
          `val_acc ${e.val_acc.toFixed(4)} · ${e.time_s.toFixed(1)} s`,
      );
      return false;
    case "best":
      logLine(`⭐ New best: val_acc ${e.val_acc.toFixed(4)} (epoch ${e.epoch})`);
      return false;
    case "upload":
      logLine(`📦 Uploaded to the API (HTTP ${e.status}, model ${Math.round(e.model_bytes / 1024)} kB)`);
      return false;
    case "prune":
      if (e.deleted_count > 0) logLine(`🧹 Pruned ${e.deleted_count} old run(s)`);
      return false;
    case "completed": {
      setProgress(1);
      const test = typeof e.test_acc === "number" ? ` · test_acc ${e.test_acc.toFixed(4)}` : "";
      const text = `✅ Completed: val_acc ${e.val_acc.toFixed(4)}${test} · version ${e.version ?? "?"}`;
      setState("completed", text);
      logLine(text);
      return true;
    }
    case "failed":
      if (e.will_retry) {
        logLine(`Attempt ${e.attempt} failed (${e.error_kind}): ${e.message}; it will be retried`);
        setState("queued", "Waiting to retry.");
        return false;
      }
      if (e.cancelled) {
        setState("cancelled", "⏹️ Cancelled by request.");
      } else {
        setState("failed", `❌ Failed (${e.error_kind}): ${e.message}`);
      }
      logLine($("job-state").textContent);
      return true;
    default:
      return false; // artifact, and types added later
  }
}

export async function watchJob(requestId, modelId) {
  if (watching) watching.controller.abort();
  const controller = new AbortController();
  watching = { requestId, controller };
  const view = jobView(requestId, modelId);
  try {
    await followEvents(`/v1/train/${encodeURIComponent(requestId)}/events`, {
      signal: controller.signal,
      onEvent: (type, data) => apply(view, type, data),
      onState: (text) => logLine(text),
    });
  } catch (error) {
    if (controller.signal.aborted) return;
    setState("unknown", describe(error));
  }
  if (controller.signal.aborted) return;
  if (FINAL.has($("job").dataset.state)) $("job-cancel").hidden = true;
  watching = null;
  refreshJobs();
  afterFinal();
}

// --------------------------------------------------------------------------- the form

async function submit(event) {
  event.preventDefault();
  const error = $("train-error");
  error.hidden = true;
  const modelId = $("train-model").value.trim();
  const job = {
    model_id: modelId,
    epochs: Number.parseInt($("train-epochs").value, 10),
    augment: $("train-augment").checked,
    use_feedback: $("train-feedback").checked,
  };
  const button = $("train-start");
  button.disabled = true;
  try {
    const { data } = await call("/v1/train", { method: "POST", json: job });
    remember(data.request_id, modelId);
    renderJobs();
    refreshJobs();
    watchJob(data.request_id, modelId);
  } catch (failure) {
    error.textContent = describe(failure);
    error.hidden = false;
  } finally {
    button.disabled = false;
  }
}

async function cancel() {
  if (!watching) return;
  try {
    await call(`/v1/train/${encodeURIComponent(watching.requestId)}/cancel`, { method: "POST" });
    logLine("Cancel requested.");
  } catch (error) {
    logLine(describe(error));
  }
}

export function setupTrain({ onJobEnded }) {
  afterFinal = onJobEnded;
  $("train-form").addEventListener("submit", submit);
  $("job-cancel").addEventListener("click", cancel);
  renderJobs();
}
