// The training chart: loss (left axis) and validation accuracy (right axis, 0–100%) per epoch,
// drawn as inline SVG built node by node (no library, no markup strings).

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 400;
const HEIGHT = 200;
const LEFT = 44;
const RIGHT = 44;
const TOP = 12;
const BOTTOM = 30;

function node(name, attributes, parent) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (parent) parent.append(element);
  return element;
}

function text(parent, x, y, content, className, anchor = "middle") {
  const element = node("text", { x, y, class: className, "text-anchor": anchor }, parent);
  element.textContent = content;
  return element;
}

// A round upper bound for the loss axis: 0.5, 1, 2, 2.5, 5 × 10^n.
function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

// points: [{epoch, loss, valAcc}] in epoch order; totalEpochs: the job's.
export function renderChart(svg, points, totalEpochs) {
  svg.replaceChildren();
  const epochs = Math.max(totalEpochs || 1, ...points.map((p) => p.epoch), 1);
  const maxLoss = niceMax(Math.max(0, ...points.map((p) => p.loss)));
  const plotW = WIDTH - LEFT - RIGHT;
  const plotH = HEIGHT - TOP - BOTTOM;
  const x = (epoch) => LEFT + (epochs === 1 ? plotW / 2 : ((epoch - 1) / (epochs - 1)) * plotW);
  const yLoss = (loss) => TOP + plotH - (Math.min(loss, maxLoss) / maxLoss) * plotH;
  const yAcc = (acc) => TOP + plotH - Math.min(Math.max(acc, 0), 1) * plotH;

  const axes = node("g", { class: "axes" }, svg);
  node("rect", { x: LEFT, y: TOP, width: plotW, height: plotH, class: "plot" }, axes);
  for (const fraction of [0, 0.5, 1]) {
    const y = TOP + plotH - fraction * plotH;
    node("line", { x1: LEFT, x2: LEFT + plotW, y1: y, y2: y, class: "grid" }, axes);
    text(axes, LEFT - 6, y + 4, String(+(fraction * maxLoss).toFixed(2)), "tick loss", "end");
    text(axes, LEFT + plotW + 6, y + 4, `${fraction * 100}%`, "tick acc", "start");
  }
  const labelEvery = Math.ceil(epochs / 10);
  for (let epoch = 1; epoch <= epochs; epoch += labelEvery) {
    text(axes, x(epoch), HEIGHT - BOTTOM + 16, String(epoch), "tick");
  }
  text(axes, LEFT + plotW / 2, HEIGHT - 2, "epoch", "axis-label");

  const series = [
    ["loss", (p) => yLoss(p.loss), (p) => `epoch ${p.epoch}: loss ${p.loss.toFixed(4)}`],
    ["acc", (p) => yAcc(p.valAcc), (p) => `epoch ${p.epoch}: val acc ${(p.valAcc * 100).toFixed(2)}%`],
  ];
  for (const [name, y, label] of series) {
    const group = node("g", { class: `series ${name}` }, svg);
    if (points.length > 1) {
      const path = points.map((p) => `${x(p.epoch).toFixed(1)},${y(p).toFixed(1)}`).join(" ");
      node("polyline", { points: path, class: "line" }, group);
    }
    for (const p of points) {
      const circle = node("circle", { cx: x(p.epoch), cy: y(p), r: 4, class: "point", "data-epoch": p.epoch }, group);
      node("title", {}, circle).textContent = label(p);
    }
  }
}
