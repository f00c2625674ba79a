// The summary page of nnct view (nnct/analysis/view.py): fills the figures from D, the page's data, when a control changes.
function redraw() {
  const m = $('metric').value, comp = $('component').value, g = D.grids[m];
  $('table').textContent = D.tables[m];
  if (!g) return;
  const c = D.components.indexOf(comp), L = D.layers.length;
  if (D.heads) {
    const H = D.heads.length, z = grid(unpack(g.aie_head), c * L * H, L, H, H, 1);
    figure('grid', [{type: 'heatmap', z: z, x: D.heads, y: D.layers, colorscale: D.colourscales[comp], zmin: 0, zmax: finiteMax(z.flat()),
      hovertemplate: 'layer %{y} head %{x}<br>AIE %{z:.4g}<extra></extra>'}], {title: {text: 'AIE per head at ' + comp}});
    return;
  }
  const C = D.components.length, G = D.segments.length;
  const z = grid(unpack(g.aie), c, G, L, L * C, C), lo = grid(unpack(g.aie_low), c, G, L, L * C, C), hi = grid(unpack(g.aie_high), c, G, L, L * C, C);
  figure('grid', [{type: 'heatmap', z: z, x: D.layers, y: D.segments.map((s, i) => s + ' (n=' + g.n[i] + ')'), colorscale: D.colourscales[comp],
    zmin: 0, zmax: finiteMax(z.flat()), customdata: z.map((row, r) => row.map((_, k) => [lo[r][k], hi[r][k]])),
    hovertemplate: '%{y}, layer %{x}<br>AIE %{z:.4g}<br>95%% CI [%{customdata[0]:.4g}, %{customdata[1]:.4g}]<extra></extra>'}],
    {title: {text: 'AIE, restoring ' + comp + ' (' + m + ')'}});
}
fill('metric', D.metrics);
fill('component', D.components || []);
$('metric').addEventListener('change', redraw);
$('component').addEventListener('change', redraw);
redraw();
