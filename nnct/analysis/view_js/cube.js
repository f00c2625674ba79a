// The cube page of nnct view (nnct/analysis/view.py): fills the figures from D, the page's data, when a control changes.
function state() {
  return {comp: $('component').value, answer: $('answer').value, metric: $('metric').value,
          variant: $('variant').value, segment: $('segment').value, example: $('example').value};
}
function average(s) { return D.averages[s.variant][s.answer][s.metric]; }
function segmentLabels(s) { const a = average(s); return D.segments[s.variant].map((g, i) => g + ' (n=' + a.n[i] + ')'); }
function drawAverage(s) {
  if (!D.components.length) return;
  const a = average(s), segs = D.segments[s.variant], C = D.components.length, L = D.layers.length;
  const c = D.components.indexOf(s.comp), st = [L * C, C];
  const z = grid(unpack(a.aie), c, segs.length, L, L * C, C);
  const lo = grid(unpack(a.aie_low), c, segs.length, L, L * C, C), hi = grid(unpack(a.aie_high), c, segs.length, L, L * C, C);
  const custom = z.map((row, r) => row.map((_, k) => [lo[r][k], hi[r][k]]));
  figure('average', [{type: 'heatmap', z: z, x: D.layers, y: segmentLabels(s), customdata: custom, colorscale: D.colourscales[s.comp],
    zmin: 0, zmax: finiteMax(z.flat()), colorbar: {title: {text: 'A' + s.metricLabel}},
    hovertemplate: 'segment %{y}<br>layer %{x}<br>AIE %{z:.4g}<br>95%% CI [%{customdata[0]:.4g}, %{customdata[1]:.4g}]<extra></extra>'}],
    {title: {text: 'AIE, restoring ' + D.component_titles[c] + ' (' + s.answer + ' answer)'}});
}
function drawLines(s) {
  if (!D.components.length) return;
  const a = average(s), segs = D.segments[s.variant], C = D.components.length, L = D.layers.length;
  const g = segs.indexOf(s.segment);
  if (g < 0) { figure('lines', []); return; }
  const mean = unpack(a.aie), low = unpack(a.aie_low), high = unpack(a.aie_high), traces = [];
  const comps = D.components.filter(c => D.severed.includes(c)).length > 1 ? D.components.filter(c => D.severed.includes(c)) : D.components;
  for (const comp of comps) {
    const c = D.components.indexOf(comp), at = k => g * L * C + k * C + c, colour = D.line_colours[comp] || '#444';
    const ks = D.layers.map((_, k) => k);
    traces.push({type: 'scatter', x: D.layers, y: ks.map(k => high[at(k)]), mode: 'lines', line: {width: 0}, showlegend: false, hoverinfo: 'skip'});
    traces.push({type: 'scatter', x: D.layers, y: ks.map(k => low[at(k)]), mode: 'lines', line: {width: 0}, fill: 'tonexty',
                 fillcolor: colour + '33', showlegend: false, hoverinfo: 'skip'});
    traces.push({type: 'scatter', x: D.layers, y: ks.map(k => mean[at(k)]), mode: 'lines', name: D.component_titles[c],
                 line: {color: colour}, hovertemplate: 'layer %{x}<br>AIE %{y:.4g}<extra>' + comp + '</extra>'});
  }
  figure('lines', traces, {title: {text: 'AIE by layer at ' + s.segment + ' (n=' + a.n[g] + '); bands: 95% CI'}});
}
function drawExample(s) {
  if (!D.components.length) return;
  const key = s.metric + '|' + s.answer, note = $('example-note');
  const i = D.examples.findIndex(e => e.id === s.example);
  if (!(key in D.effects) || i < 0) {
    note.textContent = i < 0 ? 'no example in this variant' : 'per-example heatmaps of ' + key + ' are left out of this page (size); the averages above hold';
    figure('example', []); return;
  }
  note.textContent = '';
  const e = D.examples[i], T = D.tokens, L = D.layers.length, C = D.components.length, c = D.components.indexOf(s.comp);
  const a = D.answers.indexOf(s.answer);
  const z = grid(unpack(D.effects[key]), i * T * L * C + c, e.tokens.length, L, L * C, C);
  // the corrupted rows outlined across the layers (a mark beside the labels would hide them)
  const shapes = e.corrupted.map((on, t) => on ? {type: 'rect', xref: 'paper', yref: 'y', x0: 0, x1: 1, y0: t - 0.5, y1: t + 0.5,
                                                     fillcolor: 'rgba(0,0,0,0)', line: {color: '#d62728', width: 1.5}} : null).filter(x => x);
  figure('example', [{type: 'heatmap', z: z, x: D.layers, y: e.tokens, colorscale: D.colourscales[s.comp], zmin: 0, zmax: D.zmax[key][c],
    meta: [e.p_clean[a], e.p_corrupt[a], e.answers[a]], colorbar: {title: {text: s.metricLabel}},
    hovertemplate: 'token %{y}<br>layer %{x}<br>value %{z:.4g}<br>p(%{meta[2]}) clean %{meta[0]:.4g}, corrupted %{meta[1]:.4g}<extra></extra>'}],
    {title: {text: e.id + ': restoring ' + D.component_titles[c] + ', p(' + JSON.stringify(e.answers[a]) + ') clean ' + e.p_clean[a] +
             ', corrupted ' + e.p_corrupt[a] + ' (* and red outline: corrupted)'}, shapes: shapes,
     height: Math.max(360, 22 * e.tokens.length + 120)});
}
function drawHeads(s) {
  const a = average(s);
  if (!a.aie_head && !a.aie_head_all_pos) return;
  const L = D.layers.length, H = D.heads.length, traces = [], segs = D.segments[s.variant], g = segs.indexOf(s.segment);
  if (a.aie_head && g >= 0) {
    const z = grid(unpack(a.aie_head), g * L * H, L, H, H, 1);
    traces.push({type: 'heatmap', z: z, x: D.heads, y: D.layers, colorscale: D.head_colourscale, zmin: 0, zmax: finiteMax(z.flat()), xaxis: 'x', yaxis: 'y',
                 colorbar: {x: 0.45}, hovertemplate: 'layer %{y} head %{x}<br>AIE %{z:.4g}<extra>' + s.segment + '</extra>'});
  }
  if (a.aie_head_all_pos) {
    const z = grid(unpack(a.aie_head_all_pos), 0, L, H, H, 1);
    traces.push({type: 'heatmap', z: z, x: D.heads, y: D.layers, colorscale: D.head_colourscale, zmin: 0, zmax: finiteMax(z.flat()), xaxis: 'x2', yaxis: 'y2',
                 hovertemplate: 'layer %{y} head %{x}<br>AIE %{z:.4g}<extra>all positions</extra>'});
  }
  figure('heads', traces, {title: {text: 'AIE per head: at ' + s.segment + ' (left), restored at all positions (right)'}});
}
function redraw() {
  const s = state();
  s.metricLabel = D.metric_labels[D.metrics.indexOf(s.metric)];
  drawAverage(s); drawLines(s); drawExample(s); drawHeads(s);
}
function onVariant() {
  const v = $('variant').value;
  const ex = D.examples.filter(e => v === 'all' || e.variant === v || (v === 'cf' && e.variant.startsWith('cf')));
  fill('example', ex.map(e => e.id));
  const segs = D.segments[v];
  fill('segment', segs);
  if (!segs.includes($('segment').value) || !$('segment').dataset.touched) {
    const focus = segs.includes(D.start_segment) ? D.start_segment : D.focus.find(g => segs.includes(g));
    if (focus) $('segment').value = focus;
  }
  redraw();
}
if (!D.components.length) for (const id of ['component', 'example']) $(id).parentElement.style.display = 'none';  // heads only
fill('component', D.components, D.component_titles);
fill('answer', D.answers);
fill('metric', D.metrics, D.metrics.map((m, i) => m + ' (' + D.metric_labels[i] + ')'));
fill('variant', D.variants);
for (const id of ['component', 'answer', 'metric', 'example']) $(id).addEventListener('change', redraw);
$('segment').addEventListener('change', () => { $('segment').dataset.touched = '1'; redraw(); });
$('variant').addEventListener('change', onVariant);
onVariant();
