// The drawing pad: pointer events (mouse, finger, pen), a smoothed stroke whose width follows a
// pen's pressure, dark ink on white paper, exported as a PNG blob.

const INK = "#111";
const PAPER = "#fff";
const BASE_WIDTH_CSS_PX = 18; // at the pad's 280 px: an MNIST-like stroke after scaling to 28 px

export function createPad(canvas, { onStrokeEnd } = {}) {
  const context = canvas.getContext("2d");
  const cssSide = canvas.width;
  const scale = Math.min(Math.max(window.devicePixelRatio || 1, 1), 2);
  canvas.width = canvas.height = Math.round(cssSide * scale);
  let drawn = false;
  let last = null; // the previous point of the stroke in progress, or null
  let activePointer = null;

  function clear() {
    context.fillStyle = PAPER;
    context.fillRect(0, 0, canvas.width, canvas.height);
    drawn = false;
  }

  function pointOf(event) {
    const box = canvas.getBoundingClientRect();
    const pressure = event.pointerType === "pen" && event.pressure > 0 ? event.pressure : 0.5;
    return {
      x: ((event.clientX - box.left) / box.width) * canvas.width,
      y: ((event.clientY - box.top) / box.height) * canvas.height,
      width: BASE_WIDTH_CSS_PX * scale * (0.6 + 0.8 * pressure),
    };
  }

  function dot(point) {
    context.fillStyle = INK;
    context.beginPath();
    context.arc(point.x, point.y, point.width / 2, 0, Math.PI * 2);
    context.fill();
  }

  // A quadratic curve through the midpoints: smooth without lagging behind the pointer.
  function segment(from, to) {
    const mid = { x: (from.x + to.x) / 2, y: (from.y + to.y) / 2 };
    context.strokeStyle = INK;
    context.lineCap = "round";
    context.lineJoin = "round";
    context.lineWidth = (from.width + to.width) / 2;
    context.beginPath();
    context.moveTo(from.midX ?? from.x, from.midY ?? from.y);
    context.quadraticCurveTo(from.x, from.y, mid.x, mid.y);
    context.stroke();
    to.midX = mid.x;
    to.midY = mid.y;
  }

  canvas.addEventListener("pointerdown", (event) => {
    if (activePointer !== null || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    activePointer = event.pointerId;
    canvas.setPointerCapture(event.pointerId);
    last = pointOf(event);
    dot(last);
    drawn = true;
  });

  canvas.addEventListener("pointermove", (event) => {
    if (event.pointerId !== activePointer || last === null) return;
    event.preventDefault();
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    for (const each of events.length ? events : [event]) {
      const point = pointOf(each);
      segment(last, point);
      last = point;
    }
  });

  function end(event) {
    if (event.pointerId !== activePointer) return;
    if (last !== null && last.midX !== undefined) {
      // The stroke's last half-segment, from the last midpoint to where the pointer left.
      context.beginPath();
      context.moveTo(last.midX, last.midY);
      context.lineTo(last.x, last.y);
      context.stroke();
    }
    activePointer = null;
    last = null;
    if (onStrokeEnd) onStrokeEnd();
  }
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);

  clear();
  return {
    clear,
    isEmpty: () => !drawn,
    toBlob: () =>
      new Promise((resolve, reject) => {
        canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("no image"))), "image/png");
      }),
  };
}
