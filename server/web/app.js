// dgasr caption page: microphone -> AudioWorklet -> /v1/listen, or a room's live transcript.
//
// DOM contract (style and test against it): each final is an element with class "final" and
// data-segment="N" (and data-speaker, data-stream in a room); the current draft is one element
// with class "partial" (one per publisher in a room), replaced in place and removed when its
// final arrives. URL: ?autostart=1 ?language=xx ?token=... ?room=NAME (big-screen view of a room)
// ?room=NAME&speaker=LABEL&publish=1 (speak into a room).
"use strict";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const transcript = $("transcript"), statusLine = $("status"), startButton = $("start");
const room = params.get("room"), publish = params.get("publish") === "1", speaker = params.get("speaker");
const roomView = room && !publish;
const finals = [];  // {segment, text, start, end, speaker} of everything captioned, for the downloads
let socket = null, capture = null, wanted = false, retries = 0, retryTimer = null;
// Microphone blocks (~100 ms each) captured while the socket is not open yet (connecting,
// reconnecting): sent first once it opens, so the first words are not lost. Bounded: the
// oldest go once more than HOLD_BLOCKS wait.
const HOLD_BLOCKS = 100;
const held = [];

function say(text, problem = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("problem", problem);
}

function wsUrl(path, query) {
  const q = new URLSearchParams(query);
  if (params.get("token")) q.set("token", params.get("token"));
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}?${q}`;
}

// Why a connection would be refused: the same URL over plain HTTP gets the handshake's answer.
async function preflight(url) {
  try {
    const answer = await fetch(url.replace(/^ws/, "http"));
    if (answer.status === 426) return null;  // all checks passed: it only wants the upgrade
    const body = await answer.json().catch(() => ({}));
    if (answer.status === 401) return "the access token is missing or wrong (add ?token=...)";
    if (answer.status === 503) return `server busy: ${body.message || "try again soon"}`;
    return body.message || `refused (HTTP ${answer.status})`;
  } catch (err) {
    return "server unreachable";
  }
}

function partialFor(stream) {
  const selector = stream ? `.partial[data-stream="${stream}"]` : ".partial";
  let el = transcript.querySelector(selector);
  if (!el) {
    el = document.createElement(roomView ? "div" : "span");
    el.className = "partial";
    if (stream) el.dataset.stream = stream;
    transcript.appendChild(el);
  }
  return el;
}

function label(el, who) {
  const tag = document.createElement("span");
  tag.className = "speaker";
  tag.textContent = who;
  el.prepend(tag);
}

const speakers = new Set();

function show(msg) {
  const stream = msg.stream || "";
  if (msg.speaker && !speakers.has(msg.speaker)) {
    speakers.add(msg.speaker);
    say(`room ${room}: ${[...speakers].join(", ")}`);
  }
  if (msg.type === "partial") {
    const el = partialFor(stream);
    el.textContent = msg.text;
    if (msg.speaker) label(el, msg.speaker);
    transcript.appendChild(el);  // drafts stay after the finals
  } else if (msg.type === "final") {
    const old = transcript.querySelector(stream ? `.partial[data-stream="${stream}"]` : ".partial");
    if (old) old.remove();
    if (!msg.text) return;
    const el = document.createElement(roomView ? "div" : "span");
    el.className = roomView ? "final line" : "final";
    el.dataset.segment = msg.segment;
    el.textContent = msg.text;
    if (msg.speaker) {
      el.dataset.speaker = msg.speaker;
      el.dataset.stream = stream;
      label(el, msg.speaker);
    }
    const firstPartial = transcript.querySelector(".partial");
    transcript.insertBefore(el, firstPartial);
    finals.push({segment: msg.segment, text: msg.text, start: msg.start, end: msg.end, speaker: msg.speaker});
    window.scrollTo(0, document.body.scrollHeight);
  } else if (msg.type === "error") {
    say(`server: ${msg.message}`, true);
  } else if (msg.type === "ready") {
    say(`listening (${msg.language || "automatic language"})`);
  } else if (msg.type === "room") {
    msg.speakers.forEach((s) => speakers.add(s));
    say(`room ${msg.room}: ${speakers.size ? [...speakers].join(", ") : "waiting for speakers"}`);
  }
}

async function openMic() {
  const choice = $("mic").value;
  const context = new AudioContext();  // ready before the microphone opens: no audio waits on it
  await context.audioWorklet.addModule("/static/worklet.js");
  const media = await navigator.mediaDevices.getUserMedia({audio: {
    deviceId: choice ? {exact: choice} : undefined, channelCount: 1,
    echoCancellation: false, noiseSuppression: false, autoGainControl: false}});
  const source = context.createMediaStreamSource(media);
  const node = new AudioWorkletNode(context, "dgasr-capture");
  node.port.onmessage = (e) => deliver(toPcm16(e.data));
  source.connect(node);
  await listMics();
  return {media, context, node};
}

async function listMics() {
  const select = $("mic"), keep = select.value;
  const devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "audioinput");
  select.replaceChildren(new Option("default", ""), ...devices.map((d, i) => new Option(d.label || `microphone ${i + 1}`, d.deviceId)));
  select.value = keep;
}

function deliver(pcm) {
  if (socket && socket.readyState === 1) socket.send(pcm);
  else if (wanted) { held.push(pcm); if (held.length > HOLD_BLOCKS) held.shift(); }
}

function toPcm16(block) {
  const out = new Int16Array(block.length);
  for (let i = 0; i < block.length; i++) out[i] = Math.max(-1, Math.min(1, block[i])) * 0x7fff;
  return out.buffer;
}

async function connect() {
  clearTimeout(retryTimer);
  let url;
  if (roomView) {
    url = wsUrl(`/v1/rooms/${encodeURIComponent(room)}`, {});
  } else {
    if (!capture) capture = await openMic();
    const query = {sample_rate: String(capture.context.sampleRate), encoding: "pcm_s16le"};
    if ($("language").value) query.language = $("language").value;
    if (room) { query.room = room; if (speaker) query.speaker = speaker; }
    url = wsUrl("/v1/listen", query);
  }
  const refusal = await preflight(url);
  if (refusal) return retry(refusal);
  say("connecting...");
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  socket = ws;
  ws.onopen = () => {
    retries = 0;
    if (!roomView) held.splice(0).forEach((pcm) => ws.send(pcm));
  };
  ws.onmessage = (e) => show(JSON.parse(e.data));
  ws.onclose = (e) => {
    if (socket === ws) socket = null;
    if (wanted) retry(e.reason || "connection lost");
    else say("stopped");
  };
}

function retry(why) {
  if (!wanted) return;
  const delay = Math.min(15, 2 ** retries++);
  say(`${why}; reconnecting in ${delay} s`, true);
  retryTimer = setTimeout(() => connect().catch((err) => retry(String(err.message || err))), delay * 1000);
}

async function start() {
  wanted = true;
  startButton.textContent = "Stop";
  startButton.classList.add("running");
  try { await connect(); } catch (err) { stop(); say(`microphone: ${err.message || err}`, true); }
}

function stop() {
  wanted = false;
  clearTimeout(retryTimer);
  startButton.textContent = "Start captions";
  startButton.classList.remove("running");
  if (socket && socket.readyState === 1) socket.send(JSON.stringify({type: "eos"}));  // finals still come, then closed
  held.length = 0;
  if (capture) {
    capture.media.getTracks().forEach((t) => t.stop());
    capture.context.close();
    capture = null;
  }
}

function stamp(seconds, comma) {
  const ms = Math.round(seconds * 1000), pad = (n, w = 2) => String(n).padStart(w, "0");
  const text = `${pad(Math.floor(ms / 3600000))}:${pad(Math.floor(ms / 60000) % 60)}:${pad(Math.floor(ms / 1000) % 60)}.${pad(ms % 1000, 3)}`;
  return comma ? text.replace(".", ",") : text;
}

function download(format) {
  const line = (f) => (f.speaker ? `${f.speaker}: ` : "") + f.text;
  let body;
  if (format === "txt") body = finals.map((f) => line(f) + "\n").join("");
  else if (format === "srt") body = finals.map((f, i) => `${i + 1}\n${stamp(f.start, true)} --> ${stamp(f.end, true)}\n${line(f)}\n\n`).join("");
  else body = "WEBVTT\n\n" + finals.map((f) => `${stamp(f.start)} --> ${stamp(f.end)}\n${line(f).replace(/&/g, "&amp;").replace(/</g, "&lt;")}\n\n`).join("");
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([body], {type: "text/plain"}));
  a.download = `captions.${format}`;
  a.click();
  URL.revokeObjectURL(a.href);
}

startButton.addEventListener("click", () => (wanted ? stop() : start()));
document.querySelectorAll("#downloads button").forEach((b) => b.addEventListener("click", () => download(b.dataset.format)));
if (params.get("language")) $("language").value = params.get("language");
if (roomView) {
  document.body.classList.add("room");
  document.title = `${room} - dgasr captions`;
  wanted = true;
  connect();
} else if (params.get("autostart") === "1") {
  start();
}
