// Shared by every nnct view page: the page's data (D) and figures (F), float16 unpacking, controls' helpers.
const D = JSON.parse(document.getElementById('nnct-data').textContent);
const F = JSON.parse(document.getElementById('nnct-figures').textContent);
const CONFIG = {displaylogo: false, responsive: true};
function half(h) {
  const s = (h & 0x8000) ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
  if (e === 0) return s * Math.pow(2, -14) * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * Math.pow(2, e - 15) * (1 + f / 1024);
}
const UNPACKED = new Map();
function unpack(b64) {
  if (UNPACKED.has(b64)) return UNPACKED.get(b64);
  const bin = atob(b64), out = new Array(bin.length / 2);
  for (let i = 0; i < out.length; i++) {
    const v = half(bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8));
    out[i] = Number.isNaN(v) ? null : v;
  }
  UNPACKED.set(b64, out);
  return out;
}
function grid(flat, offset, rows, cols, rowStride, colStride) {
  const z = [];
  for (let r = 0; r < rows; r++) {
    const row = [];
    for (let c = 0; c < cols; c++) row.push(flat[offset + r * rowStride + c * colStride]);
    z.push(row);
  }
  return z;
}
function $(id) { return document.getElementById(id); }
function fill(id, values, labels) {
  const el = $(id), keep = el.value;
  el.innerHTML = '';
  values.forEach((v, i) => { const o = document.createElement('option'); o.value = v; o.textContent = labels ? labels[i] : v; el.appendChild(o); });
  if (values.includes(keep)) el.value = keep;
}
function figure(name, data, extra) {
  const f = F[name];
  return Plotly.react('fig-' + name, data, Object.assign({}, f.layout, extra || {}), CONFIG);
}
function finiteMax(values) {
  let hi = 0;
  for (const v of values) if (v !== null && v > hi) hi = v;
  return hi > 0 ? hi : 1e-6;
}
