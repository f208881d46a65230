// The embedded engine over WebRTC, the way a browser app talks to OpenAI's realtime API:
//   1. its server side mints a single-use ephemeral key: POST /v1/realtime/client_secrets
//      (here the console session does it, with the session's CSRF token);
//   2. the page offers a call with that key: POST /v1/realtime/calls with
//      "Authorization: Bearer ek_...", "Content-Type: application/sdp" and the SDP offer as
//      the body; 201 answers with the SDP answer (and the call's URL in Location);
//   3. the engine's voice arrives as the remote audio track, the microphone goes out as the
//      local one, and the realtime events (JSON, as on the /v1/realtime WebSocket, minus the
//      audio deltas) travel on the "oai-events" data channel.
// The peer itself is rtc.js's. Differences from OpenAI's sample: the offer carries every ICE
// candidate (the daemon does not trickle), so the page waits for gathering before posting
// it; and a key opens one session only (a second offer with it gets 401).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const KEY_SECONDS = 600; // how long a minted key may wait for its call
  const SESSION = { type: "realtime" }; // the engine's defaults; instructions etc. go here

  let csrf = null;
  let pc = null;
  let channel = null;
  let microphone = null;
  let callUrl = null;

  function state(value) {
    $("call-state").textContent = value;
  }

  function reason(value) {
    $("call-reason").textContent = value;
    $("call-reason").hidden = !value;
  }

  async function detailOf(response) {
    try {
      const body = await response.json();
      return body.detail || (body.error && body.error.message) || JSON.stringify(body);
    } catch (error) {
      return "HTTP " + response.status;
    }
  }

  function showEvent(event) {
    const item = document.createElement("li");
    item.dataset.type = String(event.type);
    item.textContent = String(event.type);
    if (event.type === "error" && event.error) {
      item.textContent += ": " + String(event.error.message);
    }
    $("events").appendChild(item);
  }

  // Step 1: a key for one session, minted by whoever may use the API (here: this console
  // session). A browser app without a console gets it from its own server instead.
  async function mintKey() {
    const response = await fetch("/v1/realtime/client_secrets", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify({
        expires_after: { anchor: "created_at", seconds: KEY_SECONDS },
        session: SESSION,
      }),
      credentials: "same-origin",
    });
    if (response.status !== 200) {
      throw new Error("minting a key: " + (await detailOf(response)));
    }
    const secret = await response.json();
    $("key").textContent =
      secret.value.slice(0, 7) + "... (expires " +
      new Date(secret.expires_at * 1000).toLocaleTimeString() + ")";
    $("key").dataset.value = secret.value;
    return secret.value;
  }

  function finish(final) {
    if (pc === null) {
      return;
    }
    const connection = pc;
    pc = null;
    if (channel !== null) {
      channel.close();
      channel = null;
    }
    connection.close();
    if (microphone !== null) {
      window.sipaiRtc.release(microphone);
      microphone = null;
    }
    $("remote-audio").srcObject = null;
    state(final);
    $("respond").disabled = true;
    $("hangup").disabled = true;
    $("connect").disabled = false;
  }

  async function connect() {
    $("connect").disabled = true;
    reason("");
    state("minting a key");
    try {
      const key = await mintKey();
      state("offering");
      // Step 3's channel is made with the peer, before the offer, so the offer has its
      // m=application.
      const peer = await window.sipaiRtc.open("oai-events", $("remote-audio"));
      ({ connection: pc, channel: channel, microphone: microphone } = peer);
      const connection = pc;
      connection.addEventListener("connectionstatechange", () => {
        if (connection !== pc) {
          return;
        }
        const now = connection.connectionState;
        if (now === "connected") {
          state("connected");
        } else if (now === "failed") {
          finish("failed");
          reason("the connection failed (ICE or DTLS)");
        } else if (now === "closed") {
          finish("ended");
        }
      });
      channel.addEventListener("open", () => {
        $("respond").disabled = false;
      });
      channel.addEventListener("message", (message) => {
        try {
          showEvent(JSON.parse(message.data));
        } catch (error) {
          reason("not a JSON event: " + String(message.data).slice(0, 80));
        }
      });
      channel.addEventListener("close", () => {
        if (connection === pc) {
          finish("ended");
        }
      });
      // Step 2: the offer, authorised by the key alone.
      const post = (sdp) => fetch("/v1/realtime/calls", {
        method: "POST",
        headers: { Authorization: "Bearer " + key, "Content-Type": "application/sdp" },
        body: sdp,
        credentials: "omit",
      });
      const result = await window.sipaiRtc.call(connection, post, () => connection === pc, end);
      if (result === null) {
        return; // hung up meanwhile
      }
      if (result.refused) {
        const detail = await detailOf(result.refused);
        finish("refused");
        reason(detail);
        return;
      }
      callUrl = result.location;
      if (connection === pc) {
        state("connecting");
        $("hangup").disabled = false;
      }
    } catch (error) {
      if (pc !== null) {
        finish("failed");
      } else {
        state("failed");
        $("connect").disabled = false;
      }
      reason(String(error && error.message ? error.message : error));
    }
  }

  function respond() {
    if (channel !== null && channel.readyState === "open") {
      channel.send(JSON.stringify({ type: "response.create" }));
    }
  }

  // A session ends with a POST to its URL's /hangup.
  function end(url) {
    return fetch(url + "/hangup", {
      method: "POST",
      headers: { "X-CSRF-Token": csrf },
      credentials: "same-origin",
    });
  }

  async function hangup() {
    const url = callUrl;
    callUrl = null;
    finish("ended");
    if (url) {
      await end(url);
    }
  }

  async function start() {
    $("connect").addEventListener("click", connect);
    $("respond").addEventListener("click", respond);
    $("hangup").addEventListener("click", hangup);
    if (!window.isSecureContext || !navigator.mediaDevices) {
      reason(
        "The browser allows the microphone only in a secure context: open this page as " +
          "127.0.0.1 or localhost on this machine, or through HTTPS.",
      );
      return;
    }
    const response = await fetch("/console/session", { credentials: "same-origin" });
    if (response.status === 401) {
      window.location.assign("/login");
      return;
    }
    if (!response.ok) {
      reason("console session: " + (await detailOf(response)));
      return;
    }
    csrf = (await response.json()).csrf;
    $("connect").disabled = false;
  }

  start();
})();
