// "Talk to the agent": a call from this browser to the daemon's inbound agent over WebRTC.
// The peer is rtc.js's: the page posts its offer to POST /web/calls and sets the answer
// it gets back. The "sipai" data channel
// carries {"type": "hangup"} both ways; DELETE on the call's URL ends it too.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const DISCONNECTED_SECONDS = 5; // a call disconnected this long is over
  const consoleApi = window.sipaiConsole;

  let pc = null;
  let channel = null;
  let microphone = null;
  let callUrl = null;
  let lost = null;

  function state(value) {
    $("call-state").textContent = value;
  }

  function reason(value) {
    $("talk-reason").textContent = value;
    $("talk-reason").hidden = !value;
  }

  // The call is over (`final` says how): release the microphone and the connection.
  function finish(final) {
    if (pc === null) {
      return;
    }
    const connection = pc;
    pc = null;
    window.clearTimeout(lost);
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
    callUrl = null;
    state(final);
    $("hangup").disabled = true;
    $("talk").disabled = false;
  }

  function watch(connection) {
    connection.addEventListener("connectionstatechange", () => {
      if (connection !== pc) {
        return;
      }
      const now = connection.connectionState;
      window.clearTimeout(lost);
      if (now === "connected") {
        state("connected");
      } else if (now === "disconnected") {
        state("reconnecting");
        lost = window.setTimeout(() => finish("ended"), DISCONNECTED_SECONDS * 1000);
      } else if (now === "failed") {
        finish("failed");
        reason("the connection failed (ICE or DTLS)");
      } else if (now === "closed") {
        finish("ended");
      }
    });
  }

  async function talk() {
    $("talk").disabled = true;
    reason("");
    state("starting");
    try {
      const peer = await window.sipaiRtc.open("sipai", $("remote-audio"));
      ({ connection: pc, channel: channel, microphone: microphone } = peer);
      const connection = pc;
      watch(connection);
      channel.addEventListener("message", (message) => {
        let said = null;
        try {
          said = JSON.parse(message.data);
        } catch (error) {
          return;
        }
        if (said && said.type === "hangup" && connection === pc) {
          finish("ended");
        }
      });
      channel.addEventListener("close", () => {
        if (connection === pc) {
          finish("ended");
        }
      });
      const post = (sdp) => {
        state("calling");
        return consoleApi.request("POST", "/web/calls", sdp, "application/sdp");
      };
      const drop = (url) => consoleApi.request("DELETE", url);
      const result = await window.sipaiRtc.call(connection, post, () => connection === pc, drop);
      if (result === null) {
        return; // hung up meanwhile
      }
      if (result.refused) {
        const detail = await consoleApi.detailOf(result.refused);
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
        $("talk").disabled = false;
      }
      reason(String(error));
    }
  }

  async function hangup() {
    const url = callUrl;
    if (channel !== null && channel.readyState === "open") {
      channel.send(JSON.stringify({ type: "hangup" }));
    }
    finish("ended");
    if (url) {
      await consoleApi.request("DELETE", url);
    }
  }

  async function start() {
    $("talk").addEventListener("click", talk);
    $("hangup").addEventListener("click", hangup);
    if (!window.isSecureContext || !navigator.mediaDevices) {
      reason(
        "The browser allows the microphone only in a secure context: open the console as " +
          "127.0.0.1 or localhost on this machine, or through HTTPS.",
      );
      return;
    }
    try {
      await consoleApi.ready;
    } catch (error) {
      return; // no session: console.js's banner says why
    }
    $("talk").disabled = false;
  }

  start();
})();
