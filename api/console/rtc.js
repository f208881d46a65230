// The WebRTC peer both call pages build (talk.js: the agent; realtime.js: the engine): the
// microphone as the outgoing track, one data channel made before the offer (so the offer has
// its m=application), the remote track played by an <audio> element, and an offer carrying
// every ICE candidate (the daemon does not trickle; no STUN server), posted where the page
// says, and the answer set.
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

  // Offer the connection through `post` (SDP text -> a fetch Response) and set the answer a
  // 201 carries: {location} (the call's URL) once answered, {refused: response} for another
  // status, or null when `live()` turned false meanwhile (the page hung up; nothing is set,
  // and a call a 201 made all the same is hung up at once with `drop(location)`, so that it
  // does not wait for the daemon's connect timeout).
  async function call(connection, post, live, drop) {
    const response = await post(await offer(connection));
    if (!live()) {
      const location = response.status === 201 ? response.headers.get("Location") : null;
      if (location) {
        try {
          await drop(location);
        } catch (error) {
          // unreachable daemon: the call ends by its connect timeout
        }
      }
      return null;
    }
    if (response.status !== 201) {
      return { refused: response };
    }
    await connection.setRemoteDescription({ type: "answer", sdp: await response.text() });
    return { location: response.headers.get("Location") };
  }

  window.sipaiRtc = { open: open, call: call, release: release };
})();
