// The hover heatmap component (st.components.v2): the image, the prompt's words along it, and a canvas that shows
// one word's map over the image. Everything a hover needs is in `data`, so a hover never talks to the server.
// Hovers count after DWELL_MS on a word and go to Python in one batch at most every FLUSH_MS; a pin or unpin is
// sent at once. See ui/hover/__init__.py for the data and the events.

const DWELL_MS = 300;
const FLUSH_MS = 1000;
const RESEND = 30;
// instance -> {hovered, mount, seq, recent, waiting, lastFlush}: what survives a re-mount with new data (a pin, a
// filter) or a visit to another page, so a hover still waiting to be sent is sent by the next mount.
const memory = new Map();
// Streamlit calls this function again when the data changes but runs the returned cleanup only on unmount, so
// each call tears down the previous one in the same place first.
const teardowns = new WeakMap(); // parentElement -> teardown

function greyPixels(png, width, height) {
  return new Promise((resolve, reject) => {
    const picture = new Image();
    picture.onload = () => {
      const scratch = document.createElement("canvas");
      scratch.width = width;
      scratch.height = height;
      const context = scratch.getContext("2d", { willReadFrequently: true });
      context.drawImage(picture, 0, 0, width, height);
      const rgba = context.getImageData(0, 0, width, height).data;
      const grey = new Uint8Array(width * height);
      for (let i = 0; i < grey.length; i++) grey[i] = rgba[4 * i];
      resolve(grey);
    };
    picture.onerror = reject;
    picture.src = "data:image/png;base64," + png;
  });
}

function colouredMap(grey, table, width, height) {
  const pixels = new ImageData(width, height);
  for (let i = 0; i < grey.length; i++) {
    const level = 3 * grey[i];
    pixels.data[4 * i] = table[level];
    pixels.data[4 * i + 1] = table[level + 1];
    pixels.data[4 * i + 2] = table[level + 2];
    pixels.data[4 * i + 3] = 255;
  }
  return pixels;
}

function element(tag, className, parent) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (parent) parent.appendChild(node);
  return node;
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  teardowns.get(parentElement)?.();
  if (!data || !data.maps) return;
  const instance = data.instance || "hover";
  if (!memory.has(instance)) {
    memory.set(instance, { hovered: null, mount: Math.random().toString(36).slice(2), seq: 0, recent: [],
                           waiting: false, lastFlush: 0 });
  }
  const kept = memory.get(instance);
  const [mapWidth, mapHeight] = data.map_size;
  const [imageWidth, imageHeight] = data.aspect;
  const table = new Uint8Array(data.colours.match(/../g).map((hex) => parseInt(hex, 16)));

  const root = element("div", "attune-hover");
  root.dataset.version = data.version || "";
  root.dataset.serverPinned = data.pinned || ""; // the pin as the last run drew it
  const frame = element("div", "attune-hover-frame", root);
  frame.style.aspectRatio = `${imageWidth} / ${imageHeight}`;
  frame.style.width = `min(100%, ${Math.round((data.height * imageWidth) / imageHeight)}px)`;
  const picture = element("img", "attune-hover-image", frame);
  picture.src = data.image;
  picture.alt = "the version's image";
  const overlay = element("canvas", "attune-hover-overlay", frame);
  overlay.width = mapWidth;
  overlay.height = mapHeight;
  overlay.style.opacity = String(data.opacity);
  const context = overlay.getContext("2d", { willReadFrequently: true });
  const label = element("div", "attune-hover-label", frame);
  const words = element("div", "attune-hover-words", root);
  words.setAttribute("aria-label", "The prompt's words: hover or focus one to see its heatmap, click to pin it");

  const spans = new Map();
  for (const piece of data.pieces) {
    const span = element("span", piece.word ? "attune-hover-word" : "attune-hover-text", words);
    span.textContent = piece.text;
    if (!piece.word) continue;
    const info = data.maps[piece.word];
    span.dataset.word = piece.word;
    span.tabIndex = 0;
    span.setAttribute("role", "button");
    span.style.setProperty("--shade", String(0.08 + 0.72 * info.shade));
    if (info.shade > 0.55) span.classList.add("attune-hover-strong");
    if (info.unknown) span.classList.add("attune-hover-unknown");
    span.title = info.unknown ? "unknown to this model" : `total attention ${info.total.toPrecision(3)}`;
    if (!spans.has(piece.word)) spans.set(piece.word, []);
    spans.get(piece.word).push(span);
  }

  const coloured = new Map();
  const ready = Promise.all(
    Object.entries(data.maps).map(async ([word, info]) => {
      coloured.set(word, colouredMap(await greyPixels(info.png, mapWidth, mapHeight), table, mapWidth, mapHeight));
    }),
  );

  let hovered = kept.hovered && data.maps[kept.hovered] ? kept.hovered : null;
  let pinned = data.pinned || null;
  let dwellTimer = null;
  let flushTimer = null;
  let alive = true;

  // Each batch repeats the last RESEND events: Streamlit keeps only the newer of two batches that reach the server
  // before a run takes them, so a batch may be lost; Python logs each (mount, seq) once.
  function flush() {
    clearTimeout(flushTimer);
    flushTimer = null;
    if (!alive || !kept.waiting) return;
    kept.waiting = false;
    kept.lastFlush = Date.now();
    setTriggerValue("events", { mount: kept.mount, events: kept.recent });
  }

  function scheduleFlush() {
    if (!flushTimer) flushTimer = setTimeout(flush, Math.max(0, kept.lastFlush + FLUSH_MS - Date.now()));
  }

  function queue(event, now) {
    kept.recent = [...kept.recent, { ...event, seq: ++kept.seq, version: data.version || null }].slice(-RESEND);
    kept.waiting = true;
    if (now) flush();
    else scheduleFlush();
  }

  function draw(startedAt) {
    const shown = hovered || pinned;
    delete overlay.dataset.latencyMs;
    delete overlay.dataset.frameMs;
    root.dataset.pinned = pinned || "";
    for (const [word, group] of spans) {
      for (const span of group) {
        span.classList.toggle("attune-hover-shown", word === shown);
        span.classList.toggle("attune-hover-pinned", word === pinned);
        span.setAttribute("aria-pressed", word === pinned ? "true" : "false");
      }
    }
    if (!shown) {
      context.clearRect(0, 0, mapWidth, mapHeight);
      overlay.dataset.drawn = "";
      label.textContent = "hover a word";
      return;
    }
    label.textContent = data.maps[shown].label + (shown === pinned ? " · pinned" : "");
    const paint = () => {
      if (!alive || (hovered || pinned) !== shown) return;
      context.putImageData(coloured.get(shown), 0, 0);
      overlay.dataset.drawn = shown;
      if (startedAt !== undefined) { // for the tests: event -> map on the canvas, and -> the frame that shows it
        overlay.dataset.latencyMs = (performance.now() - startedAt).toFixed(1);
        requestAnimationFrame(() => {
          overlay.dataset.frameMs = (performance.now() - startedAt).toFixed(1);
        });
      }
    };
    if (coloured.has(shown)) paint();
    else ready.then(paint);
  }

  function enter(word, how, startedAt) {
    if (!alive || hovered === word) return;
    hovered = kept.hovered = word;
    clearTimeout(dwellTimer);
    dwellTimer = setTimeout(() => {
      if (hovered === word) queue({ action: "hover", word, via: how });
    }, DWELL_MS);
    draw(startedAt);
  }

  function leave(word) {
    if (!alive || hovered !== word) return;
    hovered = kept.hovered = null;
    clearTimeout(dwellTimer);
    draw();
  }

  function togglePin(word) {
    const unpin = pinned === word;
    pinned = unpin ? null : word;
    clearTimeout(dwellTimer); // a click is a pin, not also a hover
    queue({ action: unpin ? "unpin" : "pin", word }, true);
    draw(performance.now());
  }

  function unpinAll() {
    if (!pinned) return false;
    const word = pinned;
    pinned = null;
    queue({ action: "unpin", word }, true);
    draw();
    return true;
  }

  const target = (event) => event.target.closest && event.target.closest(".attune-hover-word");
  words.addEventListener("pointerover", (event) => {
    const span = target(event);
    if (span) enter(span.dataset.word, "pointer", event.timeStamp);
  });
  words.addEventListener("pointerout", (event) => {
    const span = target(event);
    if (span && !(event.relatedTarget && span.contains(event.relatedTarget))) leave(span.dataset.word);
  });
  words.addEventListener("focusin", (event) => {
    const span = target(event);
    if (span) enter(span.dataset.word, "keyboard", event.timeStamp);
  });
  words.addEventListener("focusout", (event) => {
    const span = target(event);
    if (span) leave(span.dataset.word);
  });
  words.addEventListener("mousedown", (event) => {
    if (target(event)) event.preventDefault(); // a click pins without taking the focus: focus is the keyboard's hover
  });
  words.addEventListener("click", (event) => {
    const span = target(event);
    if (span) togglePin(span.dataset.word);
  });
  words.addEventListener("keydown", (event) => {
    const span = target(event);
    if (span && (event.key === "Enter" || event.key === " ")) {
      event.preventDefault();
      togglePin(span.dataset.word);
    }
  });
  // Escape unpins when the focus is on one of the words or on nothing (not while it closes, say, a dropdown)
  const onEscape = (event) => {
    if (event.key !== "Escape" || !pinned) return;
    const active = root.getRootNode().activeElement;
    if ((active && root.contains(active)) || !document.activeElement || document.activeElement === document.body) {
      unpinAll();
    }
  };
  document.addEventListener("keydown", onEscape, true);

  parentElement.appendChild(root);
  draw();
  ready.then(() => {
    root.dataset.ready = "true";
  });
  if (kept.waiting) scheduleFlush(); // hovers the previous mount had not sent yet
  if (kept.refocus && spans.has(kept.refocus)) spans.get(kept.refocus)[0].focus({ preventScroll: true });
  kept.refocus = null;

  const teardown = () => {
    // Unmounted (another page) or re-mounted with new data: hovers not sent yet wait in `memory` for the next mount.
    const active = root.getRootNode().activeElement;
    kept.refocus = active && root.contains(active) ? active.dataset.word || null : null; // a keyboard pin keeps focus
    alive = false;
    clearTimeout(flushTimer);
    clearTimeout(dwellTimer);
    document.removeEventListener("keydown", onEscape, true);
    root.remove();
    teardowns.delete(parentElement);
  };
  teardowns.set(parentElement, teardown);
  return teardown;
}
