"""The explorer's page: one HTML string with inline CSS and JS (nothing fetched from elsewhere).

The script talks only to the app's own ``/api/*`` endpoints (:mod:`tracer.ui.app`) and writes
every string from them through ``textContent``, never as HTML.
"""

from __future__ import annotations

__all__ = ["PAGE"]

PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tracer explorer</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1em 1.5em;color:#1d2430}
h1{font-size:1.4em;margin:.2em 0}.sub{color:#556;margin:0 0 .8em}
form{display:grid;grid-template-columns:7em 1fr;gap:.45em .8em;max-width:1100px;align-items:center}
form input[type=text],form input[type=search]{padding:5px;font-size:1em;width:100%;box-sizing:border-box}
#bench{position:relative}#bench-list{position:absolute;z-index:5;background:#fff;border:1px solid #ccd;max-height:18em;
overflow:auto;width:100%;display:none}#bench-list div{padding:3px 6px;cursor:pointer;font-size:.9em}
#bench-list div:hover{background:#eef3fb}.methods label{margin-right:1em;white-space:nowrap}
button{padding:5px 14px;font-size:1em;cursor:pointer}#status{color:#556;margin:.6em 0}
.err{color:#b42318}.results{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:.8em}
.col{border:1px solid #d5d9e0;border-radius:5px;padding:.5em}.col h3{margin:.1em 0}.meta{color:#556;font-size:.85em}
.hit{border-top:1px solid #eee;padding:3px 0;font-size:.88em}.hit.pro{background:#e6f4ea}
.hit .id{font-family:monospace}.hit .score{float:right;font-family:monospace}.ok{color:#1a7f37;font-weight:700}
.tp{font-family:monospace;margin-left:.6em;padding:0 .3em;border-radius:3px}.tp.pos{background:#d1f0da}
.tp.neg{background:#f7d7d4}.txt{color:#333}.pill{background:#f2f4f7;border-radius:3px;padding:0 .3em}
.tgt{background:#fff3c4}
</style></head><body>
<h1>tracer explorer</h1><p class="sub" id="index-info">loading…</p>
<form id="form" autocomplete="off">
<label for="bench-search" id="bench-label">benchmark</label>
<div id="bench"><input id="bench-search" type="search" placeholder="search the benchmark queries (words, relation, id)">
<div id="bench-list"></div></div>
<label for="prompt">prompt</label><input id="prompt" type="text" placeholder="Marie Curie was born in">
<label for="target">target</label><input id="target" type="text" placeholder=" Warsaw">
<span>methods</span><div class="methods" id="methods"></div>
<label for="candidates">candidates</label>
<div><select id="candidates"></select> <label for="k">k</label> <input id="k" type="number" min="1" value="10"
style="width:4em"> <button type="submit" id="trace-btn">Trace</button></div>
</form>
<div id="status"></div><div id="fact"></div><div class="results" id="results"></div>
<script>
(function(){
const $=id=>document.getElementById(id);
const el=(tag,cls,text)=>{const e=document.createElement(tag);if(cls)e.className=cls;if(text!==undefined)e.textContent=text;return e;};
let INFO=null,QUERY=null,LAST=null;
const PREFERRED=['tracin_cos','influence','bm25'];
async function api(path,body){
  const r=await fetch(path,body===undefined?{}:{method:'POST',headers:{'Content-Type':'application/json'},body:JSON.stringify(body)});
  const j=await r.json();if(!r.ok)throw new Error(j.error||r.statusText);return j;
}
function fmt(x){return (Math.abs(x)>=1e4||(Math.abs(x)<1e-3&&x!==0))?x.toExponential(3):x.toFixed(4);}
async function init(){
  INFO=await api('/api/info');
  $('index-info').textContent='index '+INFO.name+' · fingerprint '+INFO.fingerprint+' · '+INFO.n_documents+
    ' documents · answered by '+(INFO.source==='server'?'a tracer server (gRPC)':'the index, in-process')+
    (INFO.tail_patch?' · tail-patch available':' · no tail-patch');
  for(const m of INFO.methods){const l=el('label'),c=el('input');c.type='checkbox';c.value=m;c.name='method';
    c.checked=PREFERRED.includes(m);l.appendChild(c);l.appendChild(document.createTextNode(' '+m));$('methods').appendChild(l);}
  if(![...document.querySelectorAll('input[name=method]')].some(c=>c.checked)){const c=document.querySelector('input[name=method]');if(c)c.checked=true;}
  for(const c of INFO.candidates){const o=el('option',null,c);o.value=c;if(c==='union')o.selected=true;$('candidates').appendChild(o);}
  $('k').max=INFO.max_k;
  if(!INFO.n_queries){$('bench').style.display='none';$('bench-label').style.display='none';}
}
let timer=null;
$('bench-search').addEventListener('input',()=>{clearTimeout(timer);timer=setTimeout(searchBench,150);});
$('bench-search').addEventListener('focus',searchBench);
document.addEventListener('click',e=>{if(!$('bench').contains(e.target))$('bench-list').style.display='none';});
let SEQ=0;
async function searchBench(){
  const seq=++SEQ;
  const j=await api('/api/queries?limit=40&q='+encodeURIComponent($('bench-search').value));
  if(seq!==SEQ)return;  // a newer search, or a pick, came since
  const list=$('bench-list');list.replaceChildren();
  for(const q of j.queries){const d=el('div');d.dataset.qid=q.query_id;
    d.appendChild(el('b',null,q.query_id+' '));d.appendChild(document.createTextNode(q.prompt+' →'+q.target+'  ('+(q.relation||'')+')'));
    d.onclick=()=>pick(q);list.appendChild(d);}
  list.appendChild(el('div','meta',j.n_matching+' matching'));list.style.display='block';
}
function pick(q){SEQ++;clearTimeout(timer);QUERY=q;$('prompt').value=q.prompt;$('target').value=q.target;$('bench-list').style.display='none';
  $('bench-search').value=q.query_id;}
$('form').addEventListener('submit',async e=>{
  e.preventDefault();
  const methods=[...document.querySelectorAll('input[name=method]:checked')].map(c=>c.value);
  const body={prompt:$('prompt').value,target:$('target').value,methods:methods,candidates:$('candidates').value,
    k:parseInt($('k').value||'10',10)};
  if(QUERY&&QUERY.prompt===body.prompt&&QUERY.target===body.target)body.query_id=QUERY.query_id;
  $('status').className='';$('status').textContent='tracing…';$('results').replaceChildren();$('fact').replaceChildren();
  try{const t0=performance.now();LAST=await api('/api/trace',body);render(LAST);
    $('status').textContent='done in '+Math.round(performance.now()-t0)+' ms';$('status').dataset.done='1';}
  catch(err){$('status').className='err';$('status').textContent=err.message;}
});
function render(res){
  const f=$('fact');f.appendChild(document.createTextNode(res.prompt));f.appendChild(el('span','tgt',res.target));
  if(res.proponents.length)f.appendChild(el('span','meta','   known proponents: '+res.proponents.join(', ')));
  for(const [m,r] of Object.entries(res.results)){
    const col=el('div','col');col.dataset.method=m;col.appendChild(el('h3',null,m));
    if(r.error){col.appendChild(el('div','err',r.error));$('results').appendChild(col);continue;}
    const meta=el('div','meta',r.n_candidates+' '+r.candidates+' candidates · '+r.ms+' ms');
    if(r.hits.some(h=>h.proponent!==null))meta.textContent+=' · '+r.hits.filter(h=>h.proponent).length+' ✓ in the top '+r.hits.length;
    col.appendChild(meta);
    if(INFO.tail_patch&&r.hits.length){const b=el('button','tp-btn','causal check (tail-patch)');
      b.onclick=()=>tailPatch(m,r,col,b);col.appendChild(b);}
    for(const h of r.hits){const d=el('div','hit'+(h.proponent?' pro':''));d.dataset.doc=h.doc_id;d.dataset.score=String(h.score);
      d.appendChild(el('span','score',fmt(h.score)));
      d.appendChild(el('span','id',h.rank+'. '));
      if(h.proponent)d.appendChild(el('span','ok','✓ '));
      d.appendChild(el('span','id',h.doc_id));
      d.appendChild(el('span','tpv'));
      d.appendChild(el('div','txt',h.text));col.appendChild(d);}
    $('results').appendChild(col);
  }
}
async function tailPatch(m,r,col,btn){
  btn.disabled=true;btn.textContent='stepping…';
  try{const j=await api('/api/tail_patch',{prompt:LAST.prompt,target:LAST.target,doc_ids:r.hits.slice(0,20).map(h=>h.doc_id)});
    for(const d of col.querySelectorAll('.hit')){const v=j.deltas[d.dataset.doc];if(v===undefined)continue;
      const s=d.querySelector('.tpv');s.className='tpv tp '+(v>0?'pos':'neg');s.textContent='Δ log p '+(v>0?'+':'')+v.toFixed(3);}
    btn.replaceWith(el('div','meta tp-note','Δ log p(target) after one SGD step on each hit (lr '+j.lr+', checkpoint '+
      j.checkpoint+')'+(j.baseline_mean!==null&&j.baseline_mean!==undefined?' · mean for random examples: '+
      (j.baseline_mean>0?'+':'')+j.baseline_mean.toFixed(3):'')+' · '+Math.round(j.ms)+' ms'));
    col.dataset.tailpatch='1';}
  catch(err){btn.textContent=err.message;btn.className='err';}
}
init().catch(err=>{$('index-info').className='err';$('index-info').textContent=err.message;});
})();
</script></body></html>
"""
