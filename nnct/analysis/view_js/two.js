// The two page of nnct view (nnct/analysis/view.py): fills the figures from D, the page's data, when a control changes.
function redraw() {
  const m = $('metric').value, comp = $('component').value, c = D.components.indexOf(comp), C = D.components.length;
  const G = D.segments.length, grids = D.values[m].map((b64, side) => grid(unpack(b64), c, G, D.layers[side].length, D.layers[side].length * C, C));
  const hi = Math.max(finiteMax(grids[0].flat()), finiteMax(grids[1].flat()));
  const traces = grids.map((z, side) => ({type: 'heatmap', z: z, x: D.layers[side], y: D.segments, colorscale: D.colourscales[comp],
    zmin: 0, zmax: hi, xaxis: side ? 'x2' : 'x', yaxis: side ? 'y2' : 'y', showscale: side === 1, colorbar: {x: 0.64},
    hovertemplate: D.names[side] + '<br>%{y}, layer %{x}<br>AIE %{z:.4g}<extra></extra>'}));
  if (D.same_layers) {
    const diff = grids[1].map((row, r) => row.map((v, k) => (v === null || grids[0][r][k] === null) ? null : v - grids[0][r][k]));
    let big = 1e-6; for (const v of diff.flat()) if (v !== null) big = Math.max(big, Math.abs(v));
    traces.push({type: 'heatmap', z: diff, x: D.layers[0], y: D.segments, colorscale: 'RdBu', reversescale: true, zmin: -big, zmax: big,
                 xaxis: 'x3', yaxis: 'y3', colorbar: {x: 1.0}, hovertemplate: 'B - A<br>%{y}, layer %{x}<br>%{z:.4g}<extra></extra>'});
  }
  const marks = (D.verified[m] || {});
  for (const side of Object.keys(marks)) {
    const xs = [], ys = [], share = [];  // a mark's size: the share of examples whose cell was patched exactly too
    marks[side].forEach((row, g) => row.forEach((cols, k) => {
      if (cols[c]) { xs.push(D.layers[side][k]); ys.push(D.segments[g]); share.push(cols[c]); }
    }));
    traces.push({type: 'scatter', mode: 'markers', x: xs, y: ys, xaxis: side === '1' ? 'x2' : 'x', yaxis: side === '1' ? 'y2' : 'y',
                 marker: {symbol: 'circle-open', color: 'black', size: share.map(v => 2 + 8 * v)}, customdata: share,
                 name: 'verified exactly', hovertemplate: 'verified exactly in %{customdata:.0%} of the examples<extra></extra>'});
  }
  figure('compare', traces, {title: {text: 'A: ' + D.captions[0] + ' | B: ' + D.captions[1] + ' (' + m + ', ' + D.component_titles[c] + ')'}});
}
fill('metric', D.metrics);
fill('component', D.components, D.component_titles);
$('metric').addEventListener('change', redraw);
$('component').addEventListener('change', redraw);
redraw();
