// Ferry console: live job steps (server-sent events) and a periodic
// refresh of the machines table. No framework, no build step.
"use strict";

const terminal = new Set(["succeeded", "partial", "failed", "cancelled"]);

function badge(state) {
  const b = document.createElement("span");
  b.className = "badge " + state;
  b.textContent = state;
  return b;
}

// stepRow finds or adds the table row of a step.
function stepRow(tbody, name) {
  for (const tr of tbody.rows) {
    if (tr.dataset.step === name) return tr;
  }
  const tr = tbody.insertRow();
  tr.dataset.step = name;
  for (const cls of ["step", "state", "progress", "note"]) tr.insertCell().className = cls;
  tr.cells[0].textContent = name;
  return tr;
}

function showJob(j) {
  const sec = document.getElementById("job");
  sec.dataset.state = j.state;
  document.getElementById("job-state").replaceWith(Object.assign(badge(j.state), { id: "job-state" }));
  document.getElementById("job-error").textContent = j.error || "";
  const tbody = document.querySelector("#steps tbody");
  for (const s of j.steps || []) {
    const tr = stepRow(tbody, s.name);
    tr.dataset.state = s.state;
    tr.cells[1].replaceChildren(badge(s.state));
    const p = document.createElement("progress");
    p.max = 1;
    p.value = s.progress || 0;
    tr.cells[2].replaceChildren(p, " " + (Math.round((s.progress || 0) * 1000) / 10) + "%");
    tr.cells[3].textContent = (s.note || "") + (s.error ? " " + s.error : "");
  }
}

function followJob() {
  const sec = document.getElementById("job");
  if (!sec || terminal.has(sec.dataset.state)) return;
  const live = document.getElementById("live");
  let updates = 0;
  const es = new EventSource(location.pathname.replace(/\/$/, "") + "/events");
  live.textContent = "live";
  es.addEventListener("job", (ev) => {
    updates++;
    showJob(JSON.parse(ev.data));
    live.textContent = "live · " + updates + " updates";
    live.dataset.updates = String(updates);
  });
  es.addEventListener("end", () => {
    es.close();
    live.textContent = "ended · " + updates + " updates";
    live.dataset.ended = "true";
  });
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) live.textContent = "disconnected: reload the page";
  };
}

// refreshMachines re-reads the overview every 10 s and swaps its table, so
// RPO and health stay current without a reload.
function refreshMachines() {
  if (!document.getElementById("machines")) return;
  setInterval(async () => {
    try {
      const r = await fetch(location.href, { credentials: "same-origin", redirect: "manual" });
      if (r.type === "opaqueredirect") {
        location.reload(); // the session ended: show the login form
        return;
      }
      if (!r.ok) return;
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      const fresh = doc.getElementById("machines");
      if (fresh) document.getElementById("machines").replaceWith(document.adoptNode(fresh));
    } catch (e) {
      // A failed refresh keeps the table as it was; the next one retries.
    }
  }, 10000);
}

document.addEventListener("DOMContentLoaded", () => {
  followJob();
  refreshMachines();
});
