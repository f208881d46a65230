// The WebRTC peer both call pages build (talk.js: the agent; realtime.js: the engine): the
// microphone as the outgoing track, one data channel made before the offer (so the offer has
// its m=application), the remote track played by an <audio> element, and an offer carrying
// every ICE candidate (the daemon does not trickle; no STUN server). Each page posts the
// offer where it belongs and sets the answer with window.sipaiRtc.answer.
"use strict";

(function () {
  const GATHER_SECONDS = 5; // the longest wait for ICE candidates before offering anyway

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

  function release(microphone) {
    microphone.getTracks().forEach((track) => track.stop());
  }

  // The microphone and a connection sending it, with the data channel `label`, whose remote
  // audio plays in `audio`: {connection, channel, microphone}. Nothing is left open if it fails.
  async function open(label, audio) {
    const microphone = await navigator.mediaDevices.getUserMedia({ audio: true });
    try {
      const connection = new RTCPeerConnection({ iceServers: [] });
      connection.addEventListener("track", (added) => {
        audio.srcObject = added.streams[0] || new MediaStream([added.track]);
      });
      for (const track of microphone.getAudioTracks()) {
        connection.addTrack(track, microphone);
      }
      const channel = connection.createDataChannel(label);
      return { connection: connection, channel: channel, microphone: microphone };
    } catch (error) {
      release(microphone);
      throw error;
    }
  }

  // The connection's offer as SDP text, once its ICE candidates are gathered.
  async function offer(connection) {
    await connection.setLocalDescription(await connection.createOffer());
    await gathered(connection);
    return connection.localDescription.sdp;
  }

  // Set the SDP answer a 201 response carries.
  async function answer(connection, response) {
    await connection.setRemoteDescription({ type: "answer", sdp: await response.text() });
  }

  window.sipaiRtc = { open: open, offer: offer, answer: answer, release: release };
})();
