// "Talk to the agent": a call from this browser to the daemon's inbound agent over WebRTC.
// The page makes its offer with every ICE candidate in it (no trickle, no STUN server),
// posts it to POST /web/calls and sets the answer it gets back. The "sipai" data channel
// carries {"type": "hangup"} both ways; DELETE on the call's URL ends it too.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const GATHER_SECONDS = 5; // the longest wait for ICE candidates before offering anyway
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

  function gathered(connection) {
    if (connection.iceGatheringState === "complete") {
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const timer = window.setTimeout(resolve, GATHER_SECONDS * 1000);
      connection.addEventListener("icegatheringstatechange", () => {
        if (connection.iceGatheringState === "complete") {
          window.clearTimeout(timer);
          resolve();
        }
      });
    });
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
      microphone.getTracks().forEach((track) => track.stop());
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
      microphone = await navigator.mediaDevices.getUserMedia({ audio: true });
      pc = new RTCPeerConnection({ iceServers: [] });
      const connection = pc;
      watch(connection);
      for (const track of microphone.getAudioTracks()) {
        connection.addTrack(track, microphone);
      }
      channel = connection.createDataChannel("sipai");
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
      connection.addEventListener("track", (added) => {
        $("remote-audio").srcObject = added.streams[0] || new MediaStream([added.track]);
      });
      await connection.setLocalDescription(await connection.createOffer());
      await gathered(connection);
      state("calling");
      const response = await consoleApi.request(
        "POST", "/web/calls", connection.localDescription.sdp, "application/sdp",
      );
      if (connection !== pc) {
        return; // hung up meanwhile
      }
      if (response.status !== 201) {
        const detail = await consoleApi.detailOf(response);
        finish("refused");
        reason(detail);
        return;
      }
      callUrl = response.headers.get("Location");
      await connection.setRemoteDescription({ type: "answer", sdp: await response.text() });
      if (connection === pc) {
        state("connecting");
        $("hangup").disabled = false;
      }
    } catch (error) {
      if (pc !== null) {
        finish("failed");
      } else {
        if (microphone !== null) {
          microphone.getTracks().forEach((track) => track.stop());
          microphone = null;
        }
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
    await consoleApi.ready;
    $("talk").disabled = false;
  }

  start();
})();
