// Reading: send the drawing or a photo to POST /v1/read, show the answer (digit, confidence, ten
// bars, the 28×28 image the model saw), and send a correction to POST /v1/feedback.
// Service text is only ever set as textContent.

import { call, describe } from "./api.js";
import { createPad } from "./draw.js";

const AUTO_READ_DELAY_MS = 600;
const $ = (id) => document.getElementById(id);

let sequence = 0; // only the latest read's answer is shown
let lastRead = null; // {requestId, digit} of the reading on screen

function percent(value) {
  return `${(value * 100).toFixed(1)}%`;
}

function showError(text) {
  const box = $("read-error");
  box.textContent = text;
  box.hidden = !text;
}

function buildBars() {
  const bars = $("bars");
  for (let digit = 0; digit < 10; digit += 1) {
    const item = document.createElement("li");
    item.className = "bar";
    const label = document.createElement("span");
    label.className = "bar-label";
    label.textContent = String(digit);
    const track = document.createElement("span");
    track.className = "bar-track";
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    track.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    item.append(label, track, value);
    bars.append(item);
  }
}

function buildCorrections() {
  const box = $("corrections");
  for (let digit = 0; digit < 10; digit += 1) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "digit-button";
    button.dataset.label = String(digit);
    button.textContent = String(digit);
    button.setAttribute("aria-label", `It was a ${digit}`);
    button.addEventListener("click", () => sendCorrection(digit));
    box.append(button);
  }
}

function showReading(answer, requestId) {
  $("digit").textContent = String(answer.digit);
  $("confidence").textContent = `${percent(answer.confidence)} confident · ${answer.model_id}`;
  $("uncertain").hidden = !answer.uncertain;
  const items = $("bars").children;
  answer.probs.forEach((p, digit) => {
    const item = items[digit];
    item.classList.toggle("best", digit === answer.digit);
    // CSSOM, not a style attribute: allowed by the page's Content-Security-Policy.
    item.querySelector(".bar-fill").style.width = percent(Math.min(Math.max(p, 0), 1));
    item.querySelector(".bar-value").textContent = percent(p);
    item.title = `${digit}: ${percent(p)}`;
  });
  const visual = $("visual");
  if (typeof answer.visual_png_b64 === "string" && answer.visual_png_b64) {
    visual.src = `data:image/png;base64,${answer.visual_png_b64}`;
    visual.hidden = false;
  } else {
    visual.removeAttribute("src");
    visual.hidden = true;
  }
  lastRead = { requestId: answer.request_id || requestId, digit: answer.digit };
  $("feedback").textContent = "";
  for (const button of $("corrections").children) button.disabled = false;
  $("reading").hidden = false;
}

async function read(blob, filename) {
  const mine = ++sequence;
  const form = new FormData();
  form.append("file", blob, filename);
  form.append("visualize", "true");
  $("read-status").textContent = "Reading…";
  showError("");
  try {
    const { data, requestId } = await call("/v1/read", { method: "POST", form });
    if (mine !== sequence) return;
    $("read-status").textContent = "";
    showReading(data, requestId);
  } catch (error) {
    if (mine !== sequence) return;
    $("read-status").textContent = "";
    showError(describe(error));
  }
}

async function sendCorrection(label) {
  if (lastRead === null) return;
  const feedback = $("feedback");
  const buttons = [...$("corrections").children];
  buttons.forEach((button) => (button.disabled = true));
  feedback.textContent = "Sending…";
  try {
    const { data } = await call("/v1/feedback", {
      method: "POST",
      json: { request_id: lastRead.requestId, label },
    });
    const saved = data && Number.isInteger(data.label) ? data.label : label;
    feedback.textContent = `Thanks — saved as a ${saved}.`;
  } catch (error) {
    feedback.textContent = describe(error);
    // Worth another try unless the reading is gone or already corrected.
    if (!["not_found", "conflict"].includes(error.code)) {
      buttons.forEach((button) => (button.disabled = false));
    }
  }
}

function readFile(file) {
  if (!file) return;
  // The service judges the format by the bytes; this only spares an obvious mistake an upload.
  if (file.type && !file.type.startsWith("image/")) {
    showError("Choose a PNG or JPEG image.");
    return;
  }
  read(file, file.name || "photo");
}

export function setupRead() {
  buildBars();
  buildCorrections();
  let timer = null;
  const pad = createPad($("pad"), {
    onStrokeEnd: () => {
      clearTimeout(timer);
      timer = setTimeout(readDrawing, AUTO_READ_DELAY_MS);
    },
  });
  $("pad").addEventListener("pointerdown", () => clearTimeout(timer));

  async function readDrawing() {
    clearTimeout(timer);
    if (pad.isEmpty()) {
      showError("Draw a digit first.");
      return;
    }
    read(await pad.toBlob(), "drawing.png");
  }

  $("read-drawing").addEventListener("click", readDrawing);
  $("clear-pad").addEventListener("click", () => {
    clearTimeout(timer);
    pad.clear();
  });
  $("photo").addEventListener("change", (event) => {
    readFile(event.target.files[0]);
    event.target.value = ""; // choosing the same photo again reads it again
  });

  const drop = $("read");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("dragging");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("dragging");
    readFile(event.dataTransfer.files[0]);
  });
}
