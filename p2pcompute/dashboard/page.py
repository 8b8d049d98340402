"""The dashboard's single page: plain HTML, CSS and JavaScript, no external resources (works offline, and
nothing is loaded from a CDN that could be tampered with). It polls the JSON endpoints and redraws."""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>p2pcompute dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 18px;display:flex;gap:18px;align-items:baseline}
header h1{font-size:18px;margin:0}header span{opacity:.8}
nav a{color:#9cc3ff;margin-right:12px;text-decoration:none}
main{padding:12px 18px;display:grid;grid-template-columns:1fr 1fr;gap:14px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:10px 12px;overflow:auto}
section.wide{grid-column:1 / span 2}
h2{font-size:15px;margin:0 0 8px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #eef0f3;white-space:nowrap}
th{color:#5a6372;font-weight:600}
.ALIVE,.alive,.RUNNING,.FINISHED,.SUCCEEDED{color:#137333}.DEAD,.dead,.FAILED,.left{color:#b3261e;font-weight:600}
.suspect,.PENDING,.RESTARTING,.STOPPED{color:#a15c00}
.bar{background:#e6e9ee;border-radius:3px;height:8px;width:120px;display:inline-block;vertical-align:middle}
.bar i{display:block;height:8px;border-radius:3px;background:#3b73d9}
pre{background:#f1f3f6;padding:6px;max-height:220px;overflow:auto;font-size:12px;white-space:pre-wrap}
.counts span{display:inline-block;margin-right:14px;font-size:15px}
#login{display:none;padding:20px}#err{color:#b3261e}
</style></head><body>
<header><h1>p2pcompute</h1><span id="summary">connecting…</span>
<nav><a href="/api/timeline" download="timeline.json">timeline (Chrome trace)</a><a href="/metrics">metrics</a></nav></header>
<div id="login"><p>This dashboard needs the cluster token (you are not on the peer's machine).</p>
<input id="token" type="password" placeholder="cluster token" size="50"> <button onclick="login()">Log in</button>
<span id="loginerr"></span></div>
<main id="main">
<section class="wide"><h2>Peers</h2><table id="peers"><thead><tr><th>peer</th><th>state</th><th>address</th>
<th>CPU used/total</th><th>load</th><th>queued</th><th>workers</th><th>store</th><th>heard</th></tr></thead><tbody></tbody></table></section>
<section><h2>Tasks</h2><div class="counts" id="taskcounts"></div><table id="tasknames"><thead><tr><th>function</th><th>states</th></tr></thead><tbody></tbody></table></section>
<section><h2>Recent failures</h2><div id="failures">none</div></section>
<section><h2>Actors</h2><table id="actors"><thead><tr><th>actor</th><th>class</th><th>state</th><th>peer</th><th>pid</th><th>restarts</th></tr></thead><tbody></tbody></table></section>
<section><h2>Jobs</h2><table id="jobs"><thead><tr><th>job</th><th>state</th><th>peer</th><th>entry</th></tr></thead><tbody></tbody></table></section>
<section><h2>Objects and memory per peer</h2><table id="objects"><thead><tr><th>peer</th><th>objects</th><th>used</th><th>capacity</th><th>spilled</th></tr></thead><tbody></tbody></table></section>
<section><h2>Logs (this peer)</h2><select id="logsel" onchange="showLog()"></select><pre id="logtext"></pre></section>
<section class="wide"><h2>Timeline (last 60 s)</h2><div id="tlchart"></div><div id="timeline">The whole trace: <a href="/api/timeline" download="timeline.json">download</a> and open it in <a href="https://ui.perfetto.dev">Perfetto</a>.
<span id="tlinfo"></span></div></section>
</main><p id="err"></p>
<script>
"use strict";
const $=id=>document.getElementById(id);
function esc(s){return String(s==null?"-":s).replace(/[&<>"']/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]))}
function mib(n){return ((n||0)/1048576).toFixed(1)+" MiB"}
async function get(path){const r=await fetch(path,{credentials:"same-origin"});
 if(r.status===401){$("login").style.display="block";$("main").style.display="none";throw new Error("login needed")}
 if(!r.ok)throw new Error(path+": "+r.status);return r.json()}
async function login(){const r=await fetch("/api/login",{method:"POST",headers:{"Content-Type":"application/json"},
 body:JSON.stringify({token:$("token").value})});if(r.ok){$("login").style.display="none";$("main").style.display="grid";refresh()}
 else $("loginerr").textContent="wrong token"}
function rows(id,items,f){$(id).querySelector("tbody").innerHTML=items.map(f).join("")}
async function peers(){const c=await get("/api/cluster");const n=c.nodes;
 const alive=n.filter(x=>x.state==="ALIVE").length;
 $("summary").textContent=`${alive} of ${n.length} peers alive · served by ${c.peer}`+(c.table&&c.table.leader?` · table leader ${c.table.leader}`:"");
 rows("peers",n,x=>{const t=x.resources_total.CPU||0,a=x.resources_available.CPU||0,u=t-a,p=t?Math.round(100*u/t):0;
  return `<tr data-peer="${esc(x.node_id)}" data-state="${esc(x.membership_state)}"><td>${esc(x.node_id)}</td><td class="${esc(x.membership_state)}">${esc(x.membership_state)}</td>
  <td>${esc(String(x.address).split(" ").filter(s=>s.startsWith("tcp://"))[0]||String(x.address).split(" ")[0])}</td><td>${u}/${t}</td>
  <td><span class="bar"><i style="width:${p}%"></i></span> ${p}%</td><td>${x.queued}</td><td>${x.workers}</td>
  <td>${mib(x.store_used_bytes)} / ${mib(x.store_capacity_bytes)}</td><td>${x.last_heard_s==null?"-":x.last_heard_s+" s"}</td></tr>`})}
async function tasks(){const t=await get("/api/tasks");
 $("taskcounts").innerHTML=`<span>total <b>${t.total}</b></span>`+Object.entries(t.counts).map(([s,n])=>`<span class="${esc(s)}">${esc(s)} <b>${n}</b></span>`).join("");
 rows("tasknames",Object.entries(t.by_name),([name,c])=>`<tr><td>${esc(name)}</td><td>${Object.entries(c).map(([s,n])=>`<span class="${esc(s)}">${esc(s)}: ${n}</span>`).join(" ")}</td></tr>`);
 $("failures").innerHTML=t.failures.length?t.failures.map(f=>`<div><b>${esc(f.name)}</b> ${esc(f.task_id)} on ${esc(f.node_id)}: ${esc(f.error_type)}<pre>${esc(f.error_message)}</pre></div>`).join(""):"none";
 $("tlinfo").textContent=`(${t.total} task attempt(s) known)`}
async function actors(){rows("actors",await get("/api/actors"),a=>`<tr><td>${esc(a.actor_id)}</td><td>${esc(a.class_name)}</td><td class="${esc(a.state)}">${esc(a.state)}</td><td>${esc(a.node_id)}</td><td>${esc(a.pid)}</td><td>${a.num_restarts}</td></tr>`)}
async function jobs(){rows("jobs",await get("/api/jobs"),j=>`<tr><td>${esc(j.job_id)}</td><td class="${esc(j.state)}">${esc(j.state)}</td><td>${esc(j.peer)}</td><td>${esc(j.entry)}</td></tr>`)}
async function objects(){const o=await get("/api/objects");rows("objects",o.peers,p=>`<tr><td>${esc(p.peer)}</td><td>${p.store.objects||0}</td><td>${mib(p.store.used)}</td><td>${mib(p.store.capacity)}</td><td>${mib(p.store.spilled)}</td></tr>`)}
async function logList(){const l=await get("/api/logs");const s=$("logsel");const cur=s.value;
 s.innerHTML=l.map(f=>`<option value="${esc(f.name)}">${esc(f.name)} (${f.size} B)</option>`).join("");if(cur)s.value=cur;if(!cur&&l.length)showLog()}
async function showLog(){const n=$("logsel").value;if(!n)return;const r=await fetch("/api/logs/"+encodeURIComponent(n)+"?limit=200");$("logtext").textContent=await r.text()}
function hue(s){let h=0;for(const c of String(s))h=(h*31+c.charCodeAt(0))%360;return h}
async function timeline(){const ev=await get("/api/timeline");const names={},lanes=new Map();
 for(const e of ev){if(e.ph==="M"){names[e.name+":"+e.pid+":"+e.tid]=e.args.name;continue}
  if(e.ph!=="X"||e.cat==="phase")continue;const k=e.pid+":"+e.tid;if(!lanes.has(k))lanes.set(k,[]);lanes.get(k).push(e)}
 const now=Date.now()*1000,t0=now-60e6,W=1200,L=230,H=16;let y=0,svg="";
 for(const [k,evs] of [...lanes.entries()].sort()){const [pid,tid]=k.split(":");
  const vis=evs.filter(e=>e.ts+e.dur>=t0);if(!vis.length)continue;
  svg+=`<text x="0" y="${y+12}" font-size="11">${esc(names["thread_name:"+pid+":"+tid]||tid)}</text>`;
  for(const e of vis){const x=L+Math.max(0,(e.ts-t0))/60e6*(W-L),w=Math.max(1,Math.min(e.dur,e.ts+e.dur-t0)/60e6*(W-L));
   svg+=`<rect x="${x.toFixed(1)}" y="${y+2}" width="${w.toFixed(1)}" height="${H-4}" fill="hsl(${hue(e.name)},60%,55%)"><title>${esc(e.name)} ${esc(e.args.task_id)} ${(e.dur/1000).toFixed(1)} ms ${esc(e.args.state)}</title></rect>`}
  y+=H}
 $("tlchart").innerHTML=y?`<svg width="${W}" height="${y}" style="max-width:100%">${svg}</svg>`:"no task ran in the last 60 s"}
let tick=0;
async function refresh(){try{await peers();if(tick%2===0)await Promise.all([tasks(),actors(),jobs(),objects()]);if(tick%5===0)await Promise.all([logList(),timeline()]);$("err").textContent=""}
 catch(e){if(String(e).indexOf("login")<0)$("err").textContent=String(e)}tick++}
refresh();setInterval(refresh,1500);
</script></body></html>
"""
