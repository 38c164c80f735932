// provisioner ops console: live rows and confirmations. Everything works without it.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // A table body with data-live is refreshed in place every 2 s from that URL (same
  // session cookie), only when its rows changed: no reload, no layout shift.
  for (const body of document.querySelectorAll("[data-live]")) {
    const url = body.getAttribute("data-live");
    let busy = false;
    setInterval(async () => {
      if (busy || document.hidden) return;
      busy = true;
      try {
        const r = await fetch(url, { credentials: "same-origin", redirect: "error" });
        if (r.ok) {
          const html = await r.text();
          if (html !== body.innerHTML) body.innerHTML = html;
        }
      } catch (_) {
        // The daemon restarting: the next tick tries again.
      } finally {
        busy = false;
      }
    }, 2000);
  }
  // Buttons with data-confirm ask before their form is sent.
  document.addEventListener("submit", (e) => {
    const button = e.submitter;
    const question = button && button.getAttribute("data-confirm");
    if (question && !window.confirm(question)) e.preventDefault();
  });
});
