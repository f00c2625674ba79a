// The edits page of nnct view (nnct/analysis/view.py): fills the figures from D, the page's data, when a control changes.
function redraw() {
  const m = $('metric').value, v = D.by_layer[m];
  figure('bylayer', [{type: 'scatter', mode: 'markers+lines', x: D.layers, y: v.map(p => p[0]), name: m,
    error_y: {type: 'data', symmetric: false, array: v.map(p => p[2] === null ? 0 : p[2] - p[0]), arrayminus: v.map(p => p[1] === null ? 0 : p[0] - p[1])},
    customdata: v.map(p => p[3]), hovertemplate: 'layer %{x}<br>mean %{y:.4g} (n=%{customdata})<extra>' + m + '</extra>'}],
    {title: {text: m + ' by edited layer (mean, 95% CI over edits)'}});
}
function sortBy(th) {
  const table = th.closest('table'), k = th.cellIndex, body = table.tBodies[0], rows = Array.from(body.rows);
  const asc = th.dataset.order !== 'asc';
  table.querySelectorAll('th').forEach(h => delete h.dataset.order);
  th.dataset.order = asc ? 'asc' : 'desc';
  const key = r => { const c = r.cells[k]; return c.dataset.value !== undefined ? parseFloat(c.dataset.value) : c.textContent; };
  rows.sort((a, b) => { const x = key(a), y = key(b); const d = (typeof x === 'number' && typeof y === 'number') ? (isNaN(x) ? 1 : isNaN(y) ? -1 : x - y) : String(x).localeCompare(String(y)); return asc ? d : -d; });
  rows.forEach(r => body.appendChild(r));
}
document.querySelectorAll('table.sortable th').forEach(th => th.addEventListener('click', () => sortBy(th)));
fill('metric', D.metrics);
if (D.metrics.includes('efficacy')) $('metric').value = 'efficacy';
$('metric').addEventListener('change', redraw);
redraw();
