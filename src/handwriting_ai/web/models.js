// Models: the registry (GET /v1/models): the served ensemble, every stored model's versions with
// their accuracy and the gate's decision; with the admin key typed in, the registry's actions
// (serve, unserve, rollback, pin, unpin, promote a version) as buttons.

import { adminKey, call, describe, setAdminKey } from "./api.js";

const $ = (id) => document.getElementById(id);

function el(name, className, content) {
  const element = document.createElement(name);
  if (className) element.className = className;
  if (content !== undefined && content !== null) element.textContent = String(content);
  return element;
}

function acc(value) {
  return typeof value === "number" ? `${(value * 100).toFixed(2)}%` : "–";
}

function actionButton(label, path, describedAs) {
  const button = el("button", "quiet", label);
  button.type = "button";
  button.setAttribute("aria-label", describedAs);
  button.addEventListener("click", () => act(path, describedAs));
  return button;
}

async function act(path, what) {
  const summary = $("models-summary");
  showError("");
  summary.textContent = `${what}…`;
  try {
    const { data } = await call(path, { method: "POST", admin: true });
    const changed = data.changed ? "done" : "nothing to change";
    summary.textContent = `${what}: ${changed}. Served now: ${data.served.join(", ")}.`;
    await refreshModels({ keepSummary: true });
  } catch (error) {
    summary.textContent = "";
    showError(`${what}: ${describe(error)}`);
  }
}

function showError(text) {
  const box = $("models-error");
  box.textContent = text;
  box.hidden = !text;
}

function versionsTable(model, admin) {
  const table = el("table", "versions");
  const head = table.createTHead().insertRow();
  const columns = ["Version", "Status", "Val acc", "Test acc", "Decision", "Reason"];
  for (const name of admin ? [...columns, "Action"] : columns) {
    const cell = el("th", "", name);
    cell.scope = "col";
    head.append(cell);
  }
  const body = table.createTBody();
  for (const version of [...model.versions].reverse()) {
    const row = body.insertRow();
    row.dataset.version = version.version;
    const values = [
      version.version,
      version.status,
      acc(version.val_acc),
      acc(version.test_acc),
      version.decision ?? "–",
      version.reason || "",
    ];
    for (const value of values) row.insertCell().textContent = value;
    if (admin) {
      const cell = row.insertCell();
      if (version.status !== "current") {
        const path = `/v1/admin/models/${encodeURIComponent(model.model_id)}/versions/${encodeURIComponent(version.version)}/promote`;
        cell.append(actionButton("Promote", path, `Promote ${model.model_id} ${version.version}`));
      }
    }
  }
  return table;
}

function modelCard(model, admin) {
  const card = el("article", "model");
  card.dataset.modelId = model.model_id;
  const title = el("h3", "", model.model_id);
  if (model.served) title.append(" ", el("span", "badge served", "served"));
  if (model.pinned) title.append(" ", el("span", "badge", `pinned ${model.pinned}`));
  card.append(title);
  const facts = el("dl", "facts");
  for (const [name, value] of [
    ["current", model.current],
    ["previous", model.previous],
    ["loaded here", model.loaded_version],
  ]) {
    facts.append(el("dt", "", name), el("dd", "", value ?? "–"));
  }
  card.append(facts);
  if (admin) {
    const base = `/v1/admin/models/${encodeURIComponent(model.model_id)}`;
    const actions = el("div", "row actions");
    actions.append(
      model.served
        ? actionButton("Unserve", `${base}/unserve`, `Unserve ${model.model_id}`)
        : actionButton("Serve", `${base}/serve`, `Serve ${model.model_id}`),
    );
    if (model.previous) actions.append(actionButton("Roll back", `${base}/rollback`, `Roll back ${model.model_id}`));
    actions.append(
      model.pinned
        ? actionButton("Unpin", `${base}/unpin`, `Unpin ${model.model_id}`)
        : actionButton("Pin", `${base}/pin`, `Pin ${model.model_id}`),
    );
    card.append(actions);
  }
  if (model.versions.length) card.append(versionsTable(model, admin));
  return card;
}

function fillModelIds(models) {
  const list = $("model-ids");
  list.replaceChildren(
    ...models.map((model) => {
      const option = document.createElement("option");
      option.value = model.model_id;
      return option;
    }),
  );
}

let last = null; // the latest listing, drawn again when the admin key changes

function render(listing) {
  const admin = Boolean(adminKey());
  $("models-list").replaceChildren(...listing.models.map((model) => modelCard(model, admin)));
}

export async function refreshModels({ keepSummary = false } = {}) {
  if (!keepSummary) $("models-summary").textContent = "Loading…";
  try {
    const { data } = await call("/v1/models");
    last = data;
    showError("");
    if (!keepSummary) {
      $("models-summary").textContent = `Served: ${data.served.join(", ") || "none"} · registry in ${data.store}`;
    }
    fillModelIds(data.models);
    render(data);
  } catch (error) {
    $("models-summary").textContent = "";
    showError(describe(error));
  }
}

export function setupModels() {
  const input = $("admin-key");
  input.value = adminKey();
  input.addEventListener("input", () => {
    setAdminKey(input.value.trim());
    if (last) render(last);
  });
  $("admin-form").addEventListener("submit", (event) => {
    event.preventDefault(); // Enter in the key field: the actions are already offered
    refreshModels();
  });
  $("models-refresh").addEventListener("click", () => refreshModels());
}
