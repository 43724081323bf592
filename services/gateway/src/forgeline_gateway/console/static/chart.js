// A small line chart drawn as inline SVG: nice axis ticks, linear or log scale, a legend, a hover
// guide with the values at the nearest step, and a redraw whenever the data or the width changes.

import { h, metric, replace, svg } from "./ui.js";

const MARGIN = { top: 12, right: 16, bottom: 30, left: 58 };

/** A step of 1, 2 or 5 times a power of ten close to `span / count`. */
function niceStep(span, count) {
  const raw = span / Math.max(count, 1);
  const power = 10 ** Math.floor(Math.log10(raw));
  const fraction = raw / power;
  const nice = fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 5 ? 5 : 10;
  return nice * power;
}

function linearTicks(lo, hi, count) {
  if (lo === hi) {
    const pad = Math.abs(lo) * 0.1 || 1;
    lo -= pad;
    hi += pad;
  }
  const step = niceStep(hi - lo, count);
  const first = Math.floor(lo / step) * step;
  const last = Math.ceil(hi / step) * step;
  const ticks = [];
  for (let value = first; value <= last + step / 2; value += step) {
    ticks.push(Number(value.toPrecision(12)));
  }
  return { domain: [first, last], ticks };
}

function logTicks(lo, hi) {
  let first = Math.floor(Math.log10(lo));
  let last = Math.ceil(Math.log10(hi));
  if (first === last) last += 1;
  const every = Math.max(1, Math.ceil((last - first) / 6));
  const ticks = [];
  for (let p = first; p <= last; p += every) ticks.push(10 ** p);
  last = first + every * (ticks.length - 1);
  return { domain: [10 ** first, 10 ** last], ticks };
}

/** The index of the point of `points` (sorted by x) nearest to `x`. */
function nearest(points, x) {
  let lo = 0;
  let hi = points.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (points[mid].x < x) lo = mid;
    else hi = mid;
  }
  return Math.abs(points[lo].x - x) <= Math.abs(points[hi].x - x) ? lo : hi;
}

export class LineChart {
  /**
   * @param {object} options
   * @param {string} options.label  what the chart shows (its accessible name)
   * @param {number} [options.height]
   * @param {string} [options.xLabel]
   * @param {(v:number)=>string} [options.format]  how values are written
   * @param {string} [options.empty]  shown before the first point
   */
  constructor({ label, height = 260, xLabel = "step", format = metric, empty = "No points yet." }) {
    this.label = label;
    this.height = height;
    this.xLabel = xLabel;
    this.format = format;
    this.empty = empty;
    this.log = false;
    this.series = [];
    this.legend = h("div", { class: "chart-legend" });
    this.plot = h("div", { class: "chart-plot" });
    this.tip = h("div", { class: "chart-tip", hidden: true });
    this.el = h("div", { class: "chart", dataset: { points: "0" } }, this.legend, this.plot, this.tip);
    this.plot.style.height = `${height}px`;
    this.observer = new ResizeObserver(() => this.draw());
    this.observer.observe(this.plot);
  }

  /** Show `series`: `[{name, tone, points: [{x, y}], dots}]`, points sorted by x. */
  set(series) {
    this.series = series.map((s) => ({
      ...s,
      points: s.points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y)),
    }));
    const total = this.series.reduce((n, s) => n + s.points.length, 0);
    this.el.dataset.points = String(total);
    this.drawLegend();
    this.draw();
  }

  setLog(log) {
    this.log = log;
    this.draw();
  }

  destroy() {
    this.observer.disconnect();
  }

  drawLegend() {
    replace(
      this.legend,
      this.series.map((s) => {
        const last = s.points.length ? s.points[s.points.length - 1].y : null;
        return h(
          "span",
          { class: `legend-item tone-${s.tone}` },
          h("span", { class: "legend-swatch" }),
          h("span", { class: "legend-name", text: s.name }),
          h("span", { class: "legend-value", text: last === null ? "—" : this.format(last) }),
        );
      }),
    );
  }

  draw() {
    const width = this.plot.clientWidth;
    if (!width) return;
    const height = this.height;
    const visible = this.series.filter((s) => s.points.length);
    const points = visible.flatMap((s) => s.points);
    const usable = this.log ? points.filter((p) => p.y > 0) : points;
    if (!usable.length) {
      replace(this.plot, h("div", { class: "chart-empty", text: this.empty }));
      return;
    }
    const xs = usable.map((p) => p.x);
    const ys = usable.map((p) => p.y);
    let xLo = Math.min(...xs);
    let xHi = Math.max(...xs);
    if (xLo === xHi) {
      xLo = Math.max(0, xLo - 1);
      xHi += 1;
    }
    const y = this.log
      ? logTicks(Math.min(...ys), Math.max(...ys))
      : linearTicks(Math.min(...ys), Math.max(...ys), 4);
    const xTicks = linearTicks(xLo, xHi, Math.max(2, Math.floor(width / 90))).ticks.filter(
      (t) => t >= xLo && t <= xHi && Number.isInteger(t),
    );
    const inner = {
      left: MARGIN.left,
      right: width - MARGIN.right,
      top: MARGIN.top,
      bottom: height - MARGIN.bottom,
    };
    const sx = (x) => inner.left + ((x - xLo) / (xHi - xLo)) * (inner.right - inner.left);
    const [yLo, yHi] = y.domain;
    const sy = this.log
      ? (v) =>
          inner.bottom -
          ((Math.log10(v) - Math.log10(yLo)) / (Math.log10(yHi) - Math.log10(yLo))) *
            (inner.bottom - inner.top)
      : (v) => inner.bottom - ((v - yLo) / (yHi - yLo)) * (inner.bottom - inner.top);

    const root = svg("svg", {
      viewBox: `0 0 ${width} ${height}`,
      width,
      height,
      role: "img",
      "aria-label": this.ariaLabel(),
      class: "chart-svg",
    });
    const grid = svg("g", { class: "chart-grid" });
    for (const tick of y.ticks) {
      const py = sy(tick);
      grid.append(
        svg("line", { x1: inner.left, x2: inner.right, y1: py, y2: py }),
        svg("text", { x: inner.left - 8, y: py, class: "tick tick-y", "dominant-baseline": "middle", "text-anchor": "end" }, this.format(tick)),
      );
    }
    for (const tick of xTicks) {
      const px = sx(tick);
      grid.append(
        svg("line", { x1: px, x2: px, y1: inner.bottom, y2: inner.bottom + 4, class: "tick-mark" }),
        svg("text", { x: px, y: inner.bottom + 18, class: "tick tick-x", "text-anchor": "middle" }, String(tick)),
      );
    }
    grid.append(
      svg("line", { x1: inner.left, x2: inner.right, y1: inner.bottom, y2: inner.bottom, class: "axis" }),
      svg("text", { x: inner.right, y: height - 2, class: "axis-label", "text-anchor": "end" }, this.xLabel),
    );
    root.append(grid);

    const drawn = [];
    for (const series of visible) {
      const pts = this.log ? series.points.filter((p) => p.y > 0) : series.points;
      if (!pts.length) continue;
      const d = pts.map((p, i) => `${i ? "L" : "M"}${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join("");
      const group = svg("g", { class: `series tone-${series.tone}`, "data-series": series.name, "data-count": pts.length });
      group.append(svg("path", { d, class: "line" }));
      const dots = series.dots || pts.length === 1 ? pts : [pts[pts.length - 1]];
      for (const p of dots) group.append(svg("circle", { cx: sx(p.x), cy: sy(p.y), r: 3, class: "dot" }));
      root.append(group);
      drawn.push({ series, pts });
    }

    // Hover: a guide at the nearest step, with each series' value there.
    const guide = svg("line", { y1: inner.top, y2: inner.bottom, class: "guide", visibility: "hidden" });
    const marks = svg("g", { class: "marks" });
    const overlay = svg("rect", {
      x: inner.left,
      y: inner.top,
      width: Math.max(0, inner.right - inner.left),
      height: Math.max(0, inner.bottom - inner.top),
      class: "overlay",
    });
    root.append(guide, marks, overlay);
    overlay.addEventListener("pointermove", (event) => {
      const box = root.getBoundingClientRect();
      const px = event.clientX - box.left;
      const x = xLo + ((px - inner.left) / (inner.right - inner.left)) * (xHi - xLo);
      let best = null;
      for (const { pts } of drawn) {
        const p = pts[nearest(pts, x)];
        if (!best || Math.abs(p.x - x) < Math.abs(best - x)) best = p.x;
      }
      const rows = [];
      marks.replaceChildren();
      for (const { series, pts } of drawn) {
        const p = pts[nearest(pts, best)];
        if (p.x !== best) continue;
        marks.append(svg("circle", { cx: sx(p.x), cy: sy(p.y), r: 4, class: `mark tone-${series.tone}` }));
        rows.push(h("div", { class: `tip-row tone-${series.tone}` }, h("span", { class: "legend-swatch" }), `${series.name} `, h("strong", { text: this.format(p.y) })));
      }
      const gx = sx(best);
      guide.setAttribute("x1", gx);
      guide.setAttribute("x2", gx);
      guide.setAttribute("visibility", "visible");
      replace(this.tip, h("div", { class: "tip-title", text: `${this.xLabel} ${best}` }), rows);
      this.tip.hidden = false;
      const tipWidth = this.tip.offsetWidth;
      const left = gx + 12 + tipWidth > width ? gx - 12 - tipWidth : gx + 12;
      this.tip.style.left = `${Math.max(0, left)}px`;
      this.tip.style.top = `${this.legend.offsetHeight + inner.top}px`;
    });
    overlay.addEventListener("pointerleave", () => {
      guide.setAttribute("visibility", "hidden");
      marks.replaceChildren();
      this.tip.hidden = true;
    });
    replace(this.plot, root);
  }

  ariaLabel() {
    const parts = this.series
      .filter((s) => s.points.length)
      .map((s) => `${s.name} ${this.format(s.points[s.points.length - 1].y)} at ${this.xLabel} ${s.points[s.points.length - 1].x}`);
    return parts.length ? `${this.label}: ${parts.join(", ")}` : `${this.label}: no points yet`;
  }
}
