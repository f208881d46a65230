// The sipai console: the session, calls in progress pushed by server-sent events
// (/console/events), the call history (GET /calls), a call's detail (GET /call/{id}) and the
// place-call form (POST /call). Every unsafe request carries the session's CSRF token.
// talk.js (the "Talk to the agent" button) uses window.sipaiConsole.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const ENDED_ROW_SECONDS = 30; // an ended call stays this long in the live table

  const ready = fetch("/console/session", { credentials: "same-origin" }).then(async (r) => {
    if (r.status === 401) {
      window.location.assign("/login");
      throw new Error("not logged in");
    }
    if (!r.ok) {
      // No session (503 when every place is in use): the page says why, as the server does.
      const why = "No console session: " + (await detailOf(r));
      $("warning").textContent = why;
      $("warning").hidden = false;
      throw new Error(why);
    }
    return r.json();
  });

  // A request to the daemon; unsafe methods carry the CSRF token. `body` is sent as JSON
  // unless `type` names another content type (then it is sent as it is).
  async function request(method, path, body, type) {
    const session = await ready;
    const headers = {};
    if (method !== "GET" && method !== "HEAD") {
      headers["X-CSRF-Token"] = session.csrf;
    }
    let payload;
    if (body !== undefined) {
      headers["Content-Type"] = type || "application/json";
      payload = type ? body : JSON.stringify(body);
    }
    const response = await fetch(path, {
      method: method,
      headers: headers,
      body: payload,
      credentials: "same-origin",
    });
    if (response.status === 401 && session.auth === "token") {
      window.location.assign("/login");
    }
    return response;
  }

  async function detailOf(response) {
    try {
      const body = await response.json();
      return body.detail || JSON.stringify(body);
    } catch (error) {
      return "HTTP " + response.status;
    }
  }

  window.sipaiConsole = { ready: ready, request: request, detailOf: detailOf };

  function text(tag, value, className) {
    const el = document.createElement(tag);
    el.textContent = value === null || value === undefined ? "" : String(value);
    if (className) {
      el.className = className;
    }
    return el;
  }

  function badge(direction) {
    const cell = document.createElement("td");
    cell.appendChild(text("span", direction, "badge badge-" + direction));
    return cell;
  }

  function clock(epoch) {
    if (!epoch) {
      return "";
    }
    return new Date(epoch * 1000).toLocaleString();
  }

  function who(call) {
    if (call.direction === "outbound") {
      return call.extension || "";
    }
    return call.caller || call.extension || "";
  }

  // -- calls in progress ---------------------------------------------------------------

  const live = new Map(); // call_id -> its row in #live-rows

  function liveRow(event) {
    let row = live.get(event.call_id);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.callId = event.call_id;
      row.addEventListener("click", () => showDetail(event.call_id));
      live.set(event.call_id, row);
      $("live-rows").appendChild(row);
    }
    const lastWords = event.turn ? event.turn.role + ": " + event.turn.text : null;
    const previous = row.lastChild ? row.lastChild.textContent : "";
    row.dataset.direction = event.direction;
    row.replaceChildren(
      badge(event.direction),
      text("td", event.call_id),
      text("td", who(event)),
      text("td", event.call_status),
      text("td", clock(event.started_at)),
      text("td", lastWords === null ? previous : lastWords),
    );
    if (event.status !== "in_progress") {
      row.className = "status-ended";
      const ended = row;
      window.setTimeout(() => {
        if (live.get(event.call_id) === ended) {
          live.delete(event.call_id);
          ended.remove();
          liveEmpty();
        }
      }, ENDED_ROW_SECONDS * 1000);
      loadHistory(false);
    }
    liveEmpty();
  }

  function liveEmpty() {
    $("live-empty").hidden = live.size > 0;
  }

  function follow() {
    const source = new EventSource("/console/events");
    source.addEventListener("open", () => {
      $("feed-state").textContent = "live";
    });
    source.addEventListener("error", () => {
      $("feed-state").textContent = "reconnecting";
    });
    source.addEventListener("snapshot", (message) => {
      live.clear();
      $("live-rows").replaceChildren();
      for (const event of JSON.parse(message.data).calls) {
        liveRow(event);
      }
      liveEmpty();
    });
    source.addEventListener("call", (message) => liveRow(JSON.parse(message.data)));
    source.addEventListener("resync", () => loadHistory(false));
  }

  // -- history ---------------------------------------------------------------------------

  let nextBefore = null;

  async function loadHistory(more) {
    const direction = $("history-direction").value;
    let path = "/calls?limit=20&direction=" + encodeURIComponent(direction);
    if (more && nextBefore !== null) {
      path += "&before=" + nextBefore;
    }
    const response = await request("GET", path);
    if (!response.ok) {
      return;
    }
    const page = await response.json();
    const rows = page.calls.map((call) => {
      const row = document.createElement("tr");
      row.dataset.callId = call.call_id;
      row.dataset.direction = call.direction;
      row.addEventListener("click", () => showDetail(call.call_id));
      const duration = call.duration_seconds === undefined ? "" : call.duration_seconds + " s";
      row.append(
        badge(call.direction),
        text("td", call.call_id),
        text("td", who(call)),
        text("td", call.call_status),
        text("td", clock(call.started_at || call.created_at)),
        text("td", duration),
      );
      return row;
    });
    if (more) {
      $("history-rows").append(...rows);
    } else {
      $("history-rows").replaceChildren(...rows);
    }
    nextBefore = page.next_before;
    $("history-more").hidden = nextBefore === null;
  }

  // -- a call's detail -------------------------------------------------------------------

  const DETAIL_FIELDS = [
    "direction", "status", "call_status", "caller", "extension", "created_at", "answered_at",
    "ended_at", "duration_seconds", "sip_code", "end_cause", "error", "message",
    "message_played", "choice_response", "choice_raw_text",
  ];

  function flatten(prefix, value, out) {
    if (value !== null && typeof value === "object" && !Array.isArray(value)) {
      for (const [key, inner] of Object.entries(value)) {
        flatten(prefix ? prefix + "." + key : key, inner, out);
      }
    } else {
      out.push([prefix, Array.isArray(value) ? JSON.stringify(value) : value]);
    }
    return out;
  }

  async function showDetail(callId) {
    const response = await request("GET", "/call/" + encodeURIComponent(callId));
    if (!response.ok) {
      return;
    }
    const view = await response.json();
    $("detail").hidden = false;
    $("detail-id").textContent = view.call_id;
    const fields = [];
    for (const name of DETAIL_FIELDS) {
      if (view[name] !== undefined && view[name] !== null) {
        const value = name.endsWith("_at") ? clock(view[name]) : view[name];
        fields.push(text("dt", name), text("dd", value));
      }
    }
    $("detail-fields").replaceChildren(...fields);
    $("detail-transcript").replaceChildren(
      ...(view.transcript || []).map((turn) => {
        const item = document.createElement("li");
        item.append(text("span", turn.role, "role"), text("span", turn.text));
        return item;
      }),
    );
    const player = $("detail-recording");
    if (view.recording) {
      player.src = view.recording.url;
      player.hidden = false;
      $("detail-no-recording").hidden = true;
    } else {
      player.removeAttribute("src");
      player.hidden = true;
      $("detail-no-recording").hidden = false;
    }
    const box = $("detail-black-box").tBodies[0];
    box.replaceChildren(
      ...flatten("", view.black_box || {}, []).map(([key, value]) => {
        const row = document.createElement("tr");
        row.append(text("th", key), text("td", value));
        return row;
      }),
    );
    const hooks = $("detail-webhooks").tBodies[0];
    hooks.replaceChildren(...(view.webhooks || []).map(webhookRow));
  }

  // One webhook delivery: its kind and URL, its state, and every attempt made, oldest first,
  // each with its time, its HTTP status or error, and how long it took.
  function webhookRow(hook) {
    const row = document.createElement("tr");
    row.dataset.webhookKind = hook.kind;
    const attempts = document.createElement("ol");
    attempts.className = "attempts";
    for (const attempt of hook.attempts) {
      const outcome = attempt.error ? attempt.error : "HTTP " + attempt.status_code;
      const item = text(
        "li",
        clock(attempt.at) + " · " + outcome + " · " + Math.round(attempt.duration_ms) + " ms",
      );
      item.dataset.status = attempt.status_code === null ? "" : String(attempt.status_code);
      item.dataset.ms = String(attempt.duration_ms);
      if (attempt.error) {
        item.className = "error";
      }
      attempts.appendChild(item);
    }
    const cell = document.createElement("td");
    cell.append(attempts);
    row.append(text("td", hook.kind + " " + hook.url), text("td", hook.state), cell);
    return row;
  }

  // -- placing a call --------------------------------------------------------------------

  async function placeCall(submitted) {
    submitted.preventDefault();
    const body = {
      extension: $("place-extension").value,
      message: $("place-message").value,
    };
    if ($("place-callback").value.trim()) {
      body.callback_url = $("place-callback").value.trim();
    }
    const response = await request("POST", "/call", body);
    if (response.ok) {
      const placed = await response.json();
      $("place-result").className = "";
      $("place-result").textContent = "Queued as " + placed.call_id + ".";
    } else {
      $("place-result").className = "error";
      $("place-result").textContent = await detailOf(response);
    }
  }

  async function logout() {
    await request("POST", "/logout");
    window.location.assign("/login");
  }

  async function start() {
    let session;
    try {
      session = await ready;
    } catch (error) {
      return; // the banner says why
    }
    $("who").textContent = session.auth === "token" ? "token: " + session.token_name : "";
    $("logout").hidden = session.auth !== "token";
    if (session.warning) {
      $("warning").textContent = session.warning;
      $("warning").hidden = false;
    }
    $("logout").addEventListener("click", logout);
    $("place-form").addEventListener("submit", placeCall);
    $("history-direction").addEventListener("change", () => loadHistory(false));
    $("history-reload").addEventListener("click", () => loadHistory(false));
    $("history-more").addEventListener("click", () => loadHistory(true));
    $("detail-close").addEventListener("click", () => {
      $("detail").hidden = true;
    });
    follow();
    loadHistory(false);
  }

  start();
})();
