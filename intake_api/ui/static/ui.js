// The operator UI's few behaviours: live parts refreshed by short polling (paused while the tab is
// hidden), confirmations, copy buttons, clickable rows and the remembered page size. No library.
"use strict";
const POLL_MS = 5000;

function refreshLive() {
  if (document.visibilityState !== "visible") return;
  document.querySelectorAll("[data-live]").forEach(async (el) => {
    try {
      const resp = await fetch(el.dataset.live, { headers: { Accept: "text/html" }, credentials: "same-origin" });
      if (resp.ok) el.innerHTML = await resp.text();
    } catch (e) { /* the next poll tries again */ }
  });
  document.querySelectorAll("[data-newrows]").forEach(async (el) => {
    try {
      const resp = await fetch(el.dataset.newrows, { credentials: "same-origin" });
      if (!resp.ok) return;
      const body = await resp.json();
      if (body.new > 0) {
        el.querySelector(".count").textContent = body.new > 100 ? "More than 100" : String(body.new);
        el.classList.add("show");
      }
    } catch (e) { /* the next poll tries again */ }
  });
}

document.addEventListener("visibilitychange", refreshLive);
setInterval(refreshLive, POLL_MS);

document.addEventListener("submit", (ev) => {
  const msg = ev.target.dataset.confirm;
  if (msg && !window.confirm(msg)) ev.preventDefault();
});

document.addEventListener("click", (ev) => {
  const copy = ev.target.closest("[data-copy]");
  if (copy) {
    const text = document.getElementById(copy.dataset.copy).textContent;
    navigator.clipboard.writeText(text).then(() => { copy.textContent = "Copied"; });
    return;
  }
  const row = ev.target.closest("tr[data-href]");
  if (row && !ev.target.closest("a, button, form, input, select")) window.location = row.dataset.href;
});

// Page size: remembered per listing in localStorage, applied when the URL does not name one.
document.addEventListener("DOMContentLoaded", () => {
  const select = document.querySelector("select[data-remember]");
  if (!select) return;
  const key = "batchman.limit." + select.dataset.remember;
  const url = new URL(window.location.href);
  const saved = window.localStorage.getItem(key);
  if (!url.searchParams.has("limit") && saved && saved !== select.value) {
    url.searchParams.set("limit", saved);
    window.location.replace(url.toString());
    return;
  }
  select.addEventListener("change", () => {
    window.localStorage.setItem(key, select.value);
    select.form.submit();
  });
});
