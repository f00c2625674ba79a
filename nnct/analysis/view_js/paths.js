// The paths page of nnct view (nnct/analysis/view.py): fills the figures from D, the page's data, when a control changes.
function redraw() {
  const m = $('metric').value, z = D.grids[m];
  let big = 1e-9; for (const v of z.flat()) if (v !== null) big = Math.max(big, Math.abs(v));
  figure('grid', [{type: 'heatmap', z: z, x: D.heads.map(h => 'h' + h).concat(['MLP']), y: D.layers, colorscale: 'RdBu', zmin: -big, zmax: big,
    hovertemplate: 'layer %{y} %{x}<br>mean effect %{z:.4g}<extra></extra>'}], {title: {text: 'mean path effect on ' + m + ' per sender'}});
}
fill('metric', D.metrics);
$('metric').addEventListener('change', redraw);
redraw();
