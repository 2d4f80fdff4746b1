(function(){
  window.__errors = window.__errors || [];
  window.addEventListener('error', function(e){ window.__errors.push(String(e.message || e)); mark(); });
  var D = JSON.parse(document.getElementById('headwise-data').textContent);
  var H = D.model.n_heads;
  var byId = {};
  D.heads.forEach(function(h){ byId[h.id] = h; });
  var current = null;
  var sentence = 0;  // the example sentence shown, kept across head selections

  function el(tag, attrs, text){
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function fmt(v, d){
    if (v === null || v === undefined || (typeof v === 'number' && !isFinite(v))) return '\u2014';
    if (typeof v === 'number')
      return (Math.abs(v) >= 100 || Number.isInteger(v)) ? String(v) : v.toFixed(d === undefined ? 3 : d);
    return String(v);
  }
  function kvTable(rows, head){
    var t = el('table', {'class': 'kv'});
    if (head){ var tr = el('tr'); head.forEach(function(c){ tr.appendChild(el('th', null, c)); }); t.appendChild(tr); }
    rows.forEach(function(r){
      var tr = el('tr');
      r.forEach(function(c){
        tr.appendChild(el('td', typeof c === 'number' ? {'class': 'num'} : null, fmt(c)));
      });
      t.appendChild(tr);
    });
    return t;
  }
  function mark(){
    var s = document.getElementById('status');
    if (!s) return;
    s.setAttribute('data-errors', String(window.__errors.length));
    s.setAttribute('data-selected', current ? current.id : '');
    s.setAttribute('data-sentence', String(sentence));
    s.textContent = window.__errors.length ? ('errors: ' + window.__errors.join(' | ')) : '';
  }

  function heatmap(head, exIndex){
    var wrap = document.getElementById('heatmap-wrap');
    wrap.innerHTML = '';
    var ex = D.examples[exIndex];
    if (!ex){ wrap.appendChild(el('p', {'class': 'muted'}, 'no example sentences were kept')); return; }
    var w = ex.weights[head.layer][head.head];
    var toks = ex.tokens, n = toks.length;
    var c = Math.max(9, Math.min(22, Math.floor(560 / n)));
    var pad = 8 + 6.2 * Math.min(14, Math.max.apply(null, toks.map(function(t){ return t.length; })));
    var size = pad + n * c + 4;
    var NS = 'http://www.w3.org/2000/svg';
    var svg = document.createElementNS(NS, 'svg');
    svg.setAttribute('width', size); svg.setAttribute('height', size);
    svg.setAttribute('id', 'heatmap'); svg.setAttribute('data-head', head.id);
    svg.setAttribute('font-size', Math.min(11, c - 1)); svg.setAttribute('font-family', 'ui-monospace,monospace');
    function short(t){ return t.length > 14 ? t.slice(0, 13) + '\u2026' : t; }
    for (var i = 0; i < n; i++){
      var ty = document.createElementNS(NS, 'text');
      ty.setAttribute('x', pad - 4); ty.setAttribute('y', pad + i * c + c * 0.72);
      ty.setAttribute('text-anchor', 'end');
      ty.textContent = short(toks[i]); svg.appendChild(ty);
      var tx = document.createElementNS(NS, 'text');
      var x = pad + i * c + c * 0.72;
      tx.setAttribute('x', x); tx.setAttribute('y', pad - 4); tx.setAttribute('text-anchor', 'start');
      tx.setAttribute('transform', 'rotate(-90 ' + x + ' ' + (pad - 4) + ')');
      tx.textContent = short(toks[i]); svg.appendChild(tx);
      for (var j = 0; j < n; j++){
        var v = w[i][j] / 1000;
        var r = document.createElementNS(NS, 'rect');
        r.setAttribute('x', pad + j * c); r.setAttribute('y', pad + i * c);
        r.setAttribute('width', c - 1); r.setAttribute('height', c - 1);
        var g = Math.round(255 - 225 * Math.sqrt(v));
        r.setAttribute('fill', 'rgb(' + g + ',' + g + ',' + Math.round(255 - 120 * Math.sqrt(v)) + ')');
        var tt = document.createElementNS(NS, 'title');
        tt.textContent = toks[i] + ' \u2192 ' + toks[j] + ': ' + v.toFixed(3);
        r.appendChild(tt); svg.appendChild(r);
      }
    }
    wrap.appendChild(svg);
    wrap.appendChild(el('p', {'class': 'muted'}, 'rows: query token (attends from); columns: key token ' +
      '(attends to); darker = more attention (square-root scale). Hover a cell for its weight.'));
  }

  // "Roles over training": one measure of every head against the step, selected head on top
  var TL = D.timeline;
  function tlChart(){
    var wrap = document.getElementById('tl-chart-wrap');
    var pick = document.getElementById('tl-measure');
    if (!TL || !wrap || !pick) return;
    wrap.innerHTML = '';
    var name = pick.value, steps = TL.steps;
    var lo = Infinity, hi = -Infinity;
    TL.heads.forEach(function(h){ h.measures[name].forEach(function(v){
      if (v !== null && isFinite(v)){ lo = Math.min(lo, v); hi = Math.max(hi, v); } }); });
    if (!isFinite(lo)){ wrap.appendChild(el('p', {'class': 'muted'}, 'no values of ' + name)); return; }
    if (hi - lo < 1e-9){ hi = lo + 1; }
    var W = 640, Hh = 220, L = 48, R = 12, T = 10, B = 28;
    var s0 = steps[0], s1 = steps[steps.length - 1] === s0 ? s0 + 1 : steps[steps.length - 1];
    function X(s){ return L + (s - s0) / (s1 - s0) * (W - L - R); }
    function Y(v){ return T + (1 - (v - lo) / (hi - lo)) * (Hh - T - B); }
    var NS = 'http://www.w3.org/2000/svg';
    var svg = document.createElementNS(NS, 'svg');
    svg.setAttribute('width', W); svg.setAttribute('height', Hh); svg.setAttribute('id', 'tl-chart');
    svg.setAttribute('data-measure', name); svg.setAttribute('font-size', '10');
    function line(x1, y1, x2, y2, c){
      var e = document.createElementNS(NS, 'line');
      e.setAttribute('x1', x1); e.setAttribute('y1', y1); e.setAttribute('x2', x2); e.setAttribute('y2', y2);
      e.setAttribute('stroke', c); svg.appendChild(e);
    }
    function text(x, y, s, anchor){
      var e = document.createElementNS(NS, 'text');
      e.setAttribute('x', x); e.setAttribute('y', y); e.setAttribute('text-anchor', anchor || 'middle');
      e.setAttribute('fill', '#666'); e.textContent = s; svg.appendChild(e);
    }
    line(L, Hh - B, W - R, Hh - B, '#999'); line(L, T, L, Hh - B, '#999');
    [lo, (lo + hi) / 2, hi].forEach(function(v){
      text(L - 4, Y(v) + 3, fmt(v, 2), 'end'); line(L - 3, Y(v), L, Y(v), '#999'); });
    [s0, steps[Math.floor((steps.length - 1) / 2)], steps[steps.length - 1]].forEach(function(s){
      text(X(s), Hh - B + 14, String(s)); });
    text((L + W - R) / 2, Hh - 2, 'step');
    var order = TL.heads.filter(function(h){ return !current || h.id !== current.id; });
    TL.heads.forEach(function(h){ if (current && h.id === current.id) order.push(h); });
    order.forEach(function(h){
      var sel = current && h.id === current.id;
      var pts = [];
      h.measures[name].forEach(function(v, i){ if (v !== null && isFinite(v)) pts.push(X(steps[i]) + ',' + Y(v)); });
      var last = h.primary[h.primary.length - 1] || 'other';
      var pl = document.createElementNS(NS, 'polyline');
      pl.setAttribute('points', pts.join(' ')); pl.setAttribute('fill', 'none');
      var col = last.split(':')[0] === 'other' ? '#333' : (D.role_colors[last.split(':')[0]] || '#333');
      pl.setAttribute('stroke', sel ? col : '#d0d0d0');
      pl.setAttribute('stroke-width', sel ? '2.5' : '1'); pl.setAttribute('data-head', h.id);
      var tt = document.createElementNS(NS, 'title'); tt.textContent = h.id + ': ' + name; pl.appendChild(tt);
      svg.appendChild(pl);
    });
    wrap.appendChild(svg);
    wrap.appendChild(el('p', {'class': 'muted'}, name + ' of every head at each evaluation' +
      (current ? '; ' + current.id + ' drawn in the colour of its last role (black: other)' : '')));
  }
  if (TL){
    var pick = document.getElementById('tl-measure');
    if (pick){
      if (TL.measures.indexOf('offset_-1') >= 0) pick.value = 'offset_-1';
      pick.addEventListener('change', tlChart);
    }
    var tlHeads = document.querySelectorAll('#timeline-grid th.tl-head');
    for (var i = 0; i < tlHeads.length; i++){
      tlHeads[i].addEventListener('click', function(ev){
        var id = ev.currentTarget.getAttribute('data-head');
        if (byId[id]) select(id);
      });
    }
  }

  function select(id){
    var h = byId[id];
    if (!h){ window.__errors.push('no head ' + id); mark(); return; }
    current = h;
    var cells = document.querySelectorAll('td.cell');
    for (var i = 0; i < cells.length; i++) cells[i].classList.toggle('selected', cells[i].id === 'cell-' + id);
    var rows = document.querySelectorAll('#timeline-grid tr.tl-row');
    for (var i = 0; i < rows.length; i++) rows[i].classList.toggle('selected', rows[i].id === 'tl-' + id);
    tlChart();
    var p = document.getElementById('panel');
    p.innerHTML = '';
    p.setAttribute('data-head', id);
    p.appendChild(el('h2', null, 'Layer ' + h.layer + ', head ' + h.head + ' (' + id + ')'));
    var roles = el('div', {'class': 'roles', 'id': 'head-roles'});
    roles.appendChild(document.createTextNode('primary: '));
    var prim = el('span', null, h.primary);
    prim.style.background = D.role_colors[h.role] || '#ccc';
    roles.appendChild(prim);
    if (h.roles.length > 1){
      roles.appendChild(document.createTextNode(' also: '));
      h.roles.slice(1).forEach(function(r){
        var s = el('span', null, r); s.style.background = '#eee'; roles.appendChild(s);
      });
    }
    p.appendChild(roles);
    var th = null;
    if (TL) TL.heads.forEach(function(x){ if (x.id === id) th = x; });
    if (th){  // its primary role over training, as runs of equal roles
      var segs = [];
      th.primary.forEach(function(r, i){
        if (r === null) return;
        var last = segs[segs.length - 1];
        if (last && last.role === r) last.to = TL.steps[i];
        else segs.push({role: r, from: TL.steps[i], to: TL.steps[i]});
      });
      var hist = el('div', {'class': 'roles', 'id': 'head-history'});
      hist.appendChild(document.createTextNode('over training (probe batch): '));
      segs.forEach(function(sg, k){
        if (k) hist.appendChild(document.createTextNode(' \u2192 '));
        var span = sg.from === sg.to ? 'step ' + sg.from : sg.from + '\u2013' + sg.to;
        var sp = el('span', null, sg.role + ' (' + span + ')');
        sp.style.background = D.role_colors[sg.role.split(':')[0]] || '#ccc';
        hist.appendChild(sp);
      });
      p.appendChild(hist);
    }

    p.appendChild(el('h3', null, 'Attention on an example sentence'));
    var sel = el('select', {'id': 'sentence'});
    D.examples.forEach(function(ex, k){
      var words = ex.words ? ex.words.join(' ') : ex.tokens.join(' ');
      var label = words.length > 90 ? words.slice(0, 89) + '\u2026' : words;
      sel.appendChild(el('option', {'value': String(k)}, (k + 1) + '. ' + label));
    });
    var chosen = sentence;
    if (!(chosen >= 0 && chosen < D.examples.length)) chosen = 0;
    sel.value = String(chosen);
    sel.addEventListener('change', function(){
      sentence = Number(sel.value);
      heatmap(current, sentence);
      mark();
    });
    if (D.examples.length) p.appendChild(sel);
    p.appendChild(el('div', {'id': 'heatmap-wrap'}));
    heatmap(h, chosen);

    p.appendChild(el('h3', null, 'Best relations in the syntax probe'));
    if (h.relations.length){
      p.appendChild(kvTable(h.relations.map(function(r){
        return [r.relation + (r.judged ? '' : ' (few)'), r.count, r.direction, r.accuracy,
                (r.baseline_offset === null ? '\u2014' : (r.baseline_offset > 0 ? '+' : '') + r.baseline_offset),
                r.baseline_accuracy,
                r.margin === null ? null : (r.margin >= 0 ? '+' : '') + r.margin.toFixed(3)];
      }), ['relation', 'n', 'direction', 'accuracy', 'offset', 'baseline', 'margin']));
    } else {
      p.appendChild(el('p', {'class': 'muted'}, 'no syntax probe (the input was not CoNLL-U)'));
    }

    p.appendChild(el('h3', null, 'Role evidence'));
    var ev = [];
    Object.keys(h.evidence).forEach(function(k){
      var v = h.evidence[k];
      if (v !== null && typeof v === 'object'){
        Object.keys(v).forEach(function(rel){
          ev.push(['syntactic:' + rel, v[rel].accuracy, 'margin ' + fmt(v[rel].margin)]);
        });
      } else ev.push([k, v, '']);
    });
    p.appendChild(kvTable(ev, ['test', 'value', '']));

    p.appendChild(el('h3', null, 'Measures'));
    var ms = Object.keys(h.measures).map(function(k){ return [k, h.measures[k]]; });
    p.appendChild(kvTable(ms, ['measure', 'value']));
    try { history.replaceState(null, '', '#select=' + id); } catch (e) { /* some file:// pages refuse */ }
    mark();
  }

  var cells = document.querySelectorAll('td.cell');
  for (var i = 0; i < cells.length; i++){
    cells[i].addEventListener('click', function(ev){ select(ev.currentTarget.id.slice(5)); });
  }
  var links = document.querySelectorAll('a.head-link');
  for (var i = 0; i < links.length; i++){
    links[i].addEventListener('click', function(ev){
      ev.preventDefault();
      select(ev.currentTarget.getAttribute('data-head'));
    });
  }
  // test and link hooks: #select=L2H3 selects a head at load, #click=L2H3 clicks its cell,
  // &sentence=K shows example sentence K (0-based)
  var m = /select=(L\d+H\d+)/.exec(location.hash);
  var k = /click=(L\d+H\d+)/.exec(location.hash);
  var sm = /sentence=(\d+)/.exec(location.hash);
  if (sm) sentence = Number(sm[1]);
  try {
    if (k && document.getElementById('cell-' + k[1])) {
      select(D.heads[0].id);
      document.getElementById('cell-' + k[1]).click();
    } else select(m ? m[1] : D.heads[0].id);
  } catch (e) { window.__errors.push(String(e && e.stack || e)); }
  document.body.setAttribute('data-ready', '1');
  mark();
})();
