// adds web demo: send the image and labels to /api/tag and draw one bar per returned tag.
"use strict";

const form = document.getElementById("tag-form");
const imageInput = document.getElementById("image-input");
const preview = document.getElementById("preview");
const statusLine = document.getElementById("status");
const results = document.getElementById("results");
const button = document.getElementById("tag-button");

function setStatus(text, isError) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", Boolean(isError));
}

function renderTags(tags) {
  results.replaceChildren();
  if (tags.length === 0) {
    const empty = document.createElement("p");
    empty.className = "empty";
    empty.textContent = "No tag above the threshold.";
    results.appendChild(empty);
    return;
  }
  for (const tag of tags) {
    const row = document.createElement("div");
    row.className = "tag-row";
    row.dataset.label = tag.label;
    row.dataset.score = String(tag.score);
    const label = document.createElement("span");
    label.className = "tag-label";
    label.textContent = tag.label;
    label.title = tag.label;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = (100 * Math.min(1, Math.max(0, tag.score))).toFixed(1) + "%";
    bar.appendChild(fill);
    const score = document.createElement("span");
    score.className = "tag-score";
    score.textContent = tag.score.toFixed(3);
    row.append(label, bar, score);
    results.appendChild(row);
  }
}

imageInput.addEventListener("change", () => {
  const file = imageInput.files[0];
  if (file) {
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
  }
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!imageInput.files[0]) {
    setStatus("Choose an image first.", true);
    return;
  }
  const body = new FormData(form);
  button.disabled = true;
  results.setAttribute("aria-busy", "true");
  results.dataset.state = "busy";
  setStatus("Tagging\u2026", false);
  const started = performance.now();
  try {
    const response = await fetch("/api/tag", { method: "POST", body });
    const data = await response.json();
    if (!response.ok) {
      throw new Error(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail));
    }
    renderTags(data.tags);
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    setStatus(`${data.tags.length} tag(s) from ${data.labels} label(s), ${data.image.width}\u00d7${data.image.height} px, ${seconds} s`, false);
    results.dataset.state = "done";
  } catch (error) {
    results.replaceChildren();
    results.dataset.state = "error";
    setStatus(String(error.message || error), true);
  } finally {
    button.disabled = false;
    results.removeAttribute("aria-busy");
  }
});

fetch("/api/info").then((r) => r.json()).then((info) => {
  const scorer = info.scorer === "adds" ? "ADDS head" : "training-free CLIP baseline";
  const vocab = info.vocabulary === "builtin" ? " (built-in vocabulary)" : "";
  document.getElementById("model-info").textContent =
    `${scorer} on ${info.model} (${info.pretrained ?? "random weights"}), ${info.device}, ` +
    `${info.input_size} px in ${info.crops} crop(s); ` +
    `default labels: ${info.vocabulary_size}${vocab}`;
}).catch(() => {
  document.getElementById("model-info").textContent = "";
});
