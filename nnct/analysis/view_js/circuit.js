// The circuit page of nnct view (nnct/analysis/view.py): fills the figures from D, the page's data, when a control changes.
function u16(b64) { const bin = atob(b64), out = new Uint16Array(bin.length / 2); for (let i = 0; i < out.length; i++) out[i] = bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8); return out; }
function bits(b64) { const bin = atob(b64); return i => (bin.charCodeAt(i >> 3) >> (i & 7)) & 1; }
const SRC = u16(D.source), DST = u16(D.destination), SCORE = unpack(D.score);
const NAMES = {q: 'query', k: 'key', v: 'value', mlp: 'MLP', logits: 'logits'};
function drawGraph() {
  const step = +$('topn').value, n = D.counts[step], on = bits(D.masks[step]);
  let biggest = 1e-12; for (let i = 0; i < n; i++) if (on(i)) biggest = Math.max(biggest, Math.abs(SCORE[i]));
  const groups = new Map(), usedS = new Set(), usedD = new Set();
  let drawn = 0;
  for (let i = n - 1; i >= 0; i--) {  // the strongest last, on top
    if (!on(i)) continue;
    const s = SCORE[i], kind = D.dest_kind[DST[i]], w = 1 + Math.min(3, Math.floor(4 * Math.abs(s) / biggest)), sign = s >= 0 ? '+' : '-';
    const key = kind + sign + w;
    if (!groups.has(key)) groups.set(key, {kind: kind, sign: sign, w: w, x: [], y: []});
    const g = groups.get(key), a = D.source_xy[SRC[i]], b = D.dest_xy[DST[i]];
    g.x.push(a[0], b[0], null); g.y.push(a[1] + 0.12, b[1] - 0.12, null);
    usedS.add(SRC[i]); usedD.add(DST[i]); drawn++;
  }
  const traces = [];
  for (const g of groups.values()) traces.push({type: 'scatter', mode: 'lines', x: g.x, y: g.y, meta: 'edge', hoverinfo: 'skip',
    line: {color: D.kind_colours[g.kind], width: 0.6 * g.w, dash: g.sign === '+' ? 'solid' : 'dash'}, opacity: 0.7,
    name: NAMES[g.kind] + (g.sign === '-' ? ' (negative)' : ''), legendgroup: g.kind + g.sign, showlegend: false});
  const nx = [], ny = [], nt = [], ns = [];
  D.source_xy.forEach((p, i) => { nx.push(p[0]); ny.push(p[1]); nt.push(D.source_names[i]); ns.push(usedS.has(i) ? 8 : 3); });
  for (const j of usedD) if (['mlp', 'logits'].includes(D.dest_kind[j])) { const p = D.dest_xy[j]; nx.push(p[0]); ny.push(p[1]); nt.push(D.dest_names[j]); ns.push(8); }
  traces.push({type: 'scatter', mode: 'markers', x: nx, y: ny, text: nt, marker: {size: ns, color: ns.map(v => v > 3 ? 'black' : '#ccc')},
               hovertemplate: '%{text}<extra></extra>', showlegend: false, meta: 'nodes'});
  for (const kind of Object.keys(D.kind_colours)) traces.push({type: 'scatter', mode: 'lines', x: [null], y: [null], name: NAMES[kind], line: {color: D.kind_colours[kind]}});
  $('topn-label').textContent = 'top ' + n + ' of ' + D.total + ' edges: ' + drawn + ' after pruning' + (n === D.minimal ? ' (the minimal faithful circuit)' : '');
  figure('graph', traces, {title: {text: 'the top ' + n + ' edges, ' + drawn + ' after pruning'}});
}
function drawCurve() {
  const c = D.curve, traces = [];
  const line = (pts, name, mode, extra) => Object.assign({type: 'scatter', mode: mode, name: name, x: pts.map(p => p[0]), y: pts.map(p => p[2]),
    customdata: pts.map(p => p[1]), hovertemplate: 'top %{x} (%{customdata} after pruning)<br>F %{y:.4g}<extra>' + name + '</extra>'}, extra || {});
  const search = c.search.slice().sort((p, q) => p[0] - q[0]);
  traces.push(line(search, 'search', 'markers+lines', {line: {dash: 'dot'}}));
  traces.push(line(c.mib.filter(p => p[0] > 0), "MIB's grid", 'markers+lines'));
  if (c.verify) traces.push(line(c.verify.filter(p => p[0] > 0), 'verify', 'markers+lines'));
  const shapes = [];
  if (D.target !== null) shapes.push({type: 'line', xref: 'paper', x0: 0, x1: 1, y0: D.target, y1: D.target, line: {dash: 'dash', color: 'grey'}});
  if (c.random) {
    shapes.push({type: 'rect', xref: 'paper', x0: 0, x1: 1, y0: c.random.low, y1: c.random.high, fillcolor: 'rgba(120,120,120,0.2)', line: {width: 0}});
    traces.push({type: 'scatter', mode: 'markers', x: [c.random.edges], y: [c.random.mean], name: c.random.count + ' random circuits (95% band)',
                 error_y: {type: 'data', symmetric: false, array: [c.random.high - c.random.mean], arrayminus: [c.random.mean - c.random.low]},
                 marker: {color: 'grey'}});
  }
  figure('curve', traces, {shapes: shapes});
}
const range = $('topn');
range.max = D.counts.length - 1;
range.value = D.start;
range.addEventListener('input', drawGraph);
drawGraph(); drawCurve();
