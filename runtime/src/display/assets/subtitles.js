'use strict';
// The visitor's subtitle page. Its state is folded from the kiosk's event stream (/events): a
// `snapshot` on every (re)connection, then the pipeline's events (`tolk`) as `--events` prints
// them. The same folding runs on the server (display/hub.rs) to make the snapshots.

const NAMES = { en: 'English', fr: 'Français' };
const STATES = {
  listening: 'Listening · À l\u2019écoute',
  hearing: 'Hearing you · Je vous écoute',
  translating: 'Translating · Je traduis',
  speaking: 'Speaking · Je parle',
  paused: 'Paused · En pause',
};
const REPEAT = 'Sorry, please say that again. · Pardon, pouvez-vous répéter\u00a0?';
const SPEAK_NOW = 'Speak now · Parlez maintenant';

const $ = (id) => document.getElementById(id);
const view = {
  direction: 'en-fr', offered: [], listening: true, state: 'listening', history: 4, exchanges: [],
};
// Per utterance being spoken: when its first audio chunk came and how much audio it has.
const playing = new Map();
let speakingTimer = 0;
let messageTimer = 0;
let renderQueued = false;
let historyKey = '';

function langs(direction) {
  const [src, tgt] = String(direction).split('-');
  return { src, tgt };
}

function setState(state) {
  view.state = view.listening ? state : 'paused';
}

function find(utterance) {
  return view.exchanges.find((e) => e.utterance === utterance);
}

function showMessage(text) {
  const m = $('message');
  m.textContent = text;
  clearTimeout(messageTimer);
  messageTimer = setTimeout(() => { m.textContent = ''; }, 8000);
}

function apply(ev) {
  const e = ev.utterance === undefined ? undefined : find(ev.utterance);
  switch (ev.event) {
    case 'utterance_start':
      if (!e) {
        view.exchanges.unshift({
          utterance: ev.utterance, direction: ev.direction, heard_s: 0, text: '', done: false,
          not_understood: false,
        });
        view.exchanges.length = Math.min(view.exchanges.length, view.history);
      }
      setState('hearing');
      break;
    case 'utterance_end':
      if (e) e.heard_s = ev.end_s - ev.start_s;
      setState('translating');
      break;
    case 'subtitle_partial':
      if (e && !e.done) e.text = ev.text;
      break;
    case 'subtitle_final':
      if (e) { e.text = ev.text; e.done = true; }
      break;
    case 'not_understood':
      if (e) { e.text = ''; e.done = true; e.not_understood = true; }
      setState('listening');
      break;
    case 'audio_chunk': {
      const p = playing.get(ev.utterance) || { since: performance.now(), samples: 0 };
      p.samples += ev.samples;
      p.rate = ev.sample_rate;
      playing.set(ev.utterance, p);
      clearTimeout(speakingTimer);
      setState('speaking');
      break;
    }
    case 'utterance_done': {
      // The last chunk is out; it plays for as long as the audio lasts.
      const p = playing.get(ev.utterance);
      playing.delete(ev.utterance);
      const left = p ? p.since + (1000 * p.samples) / p.rate - performance.now() : 0;
      clearTimeout(speakingTimer);
      if (left > 0) {
        speakingTimer = setTimeout(() => {
          if (view.state === 'speaking') { setState('listening'); scheduleRender(); }
        }, left);
      } else {
        setState('listening');
      }
      break;
    }
    case 'utterance_dropped':
      // One that never got its text leaves the page.
      view.exchanges = view.exchanges.filter((x) => x.utterance !== ev.utterance || x.done);
      setState('listening');
      break;
    case 'direction_changed':
      view.direction = ev.direction;
      break;
    case 'direction_refused':
      showMessage(ev.reason);
      break;
    case 'listening_changed':
      view.listening = ev.listening;
      setState('listening');
      break;
    default:
      break;
  }
}

function exchangeNodes(ex, cls) {
  const { src } = langs(ex.direction);
  const source = document.createElement('p');
  source.className = 'source';
  source.textContent = ex.heard_s > 0
    ? `${NAMES[src] || src} · ${ex.heard_s.toFixed(1)} s`
    : `${NAMES[src] || src} · …`;
  const text = document.createElement('p');
  text.className = cls;
  text.textContent = ex.not_understood ? REPEAT : ex.text;
  return [source, text];
}

function renderSwitches() {
  const row = $('switches');
  const want = view.offered.join(',');
  if (row.dataset.offered !== want) {
    row.replaceChildren(...view.offered.map((d) => {
      const { src, tgt } = langs(d);
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'dir';
      b.dataset.direction = d;
      b.textContent = `${NAMES[src] || src} \u2192 ${NAMES[tgt] || tgt}`;
      b.addEventListener('click', () => switchDirection(d));
      return b;
    }));
    row.dataset.offered = want;
  }
  for (const b of row.children) {
    setAttr(b, 'aria-pressed', String(b.dataset.direction === view.direction));
  }
}

// DOM writes only where something changed: every write costs the kiosk a layout and a
// paint on the CPU the decoder runs on.
function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

function setData(el, key, value) {
  if (el.dataset[key] !== value) el.dataset[key] = value;
}

function setAttr(el, key, value) {
  if (el.getAttribute(key) !== value) el.setAttribute(key, value);
}

function render() {
  renderQueued = false;
  const { src, tgt } = langs(view.direction);
  setText($('lang-src'), NAMES[src] || src);
  setText($('lang-tgt'), NAMES[tgt] || tgt);
  setAttr($('flag-src'), 'src', `/assets/flag-${src}.svg`);
  setAttr($('flag-tgt'), 'src', `/assets/flag-${tgt}.svg`);
  if (document.documentElement.lang !== src) document.documentElement.lang = src;
  const st = $('state');
  setData(st, 'state', view.state);
  setText(st, STATES[view.state] || view.state);

  const cur = $('current');
  const [first, ...older] = view.exchanges;
  if (first) {
    const [source, text] = exchangeNodes(first, 'translation');
    setText($('current-source'), source.textContent);
    setText($('current-text'), text.textContent);
    setData(cur, 'utterance', String(first.utterance));
    setData(cur, 'direction', first.direction);
    setData(cur, 'final', String(first.done));
    if (cur.classList.contains('not-understood') !== first.not_understood) {
      cur.classList.toggle('not-understood', first.not_understood);
    }
  } else {
    setText($('current-source'), SPEAK_NOW);
    setText($('current-text'), '');
    setData(cur, 'utterance', '');
    setData(cur, 'final', 'true');
    cur.classList.remove('not-understood');
  }
  const key = JSON.stringify(older);
  if (key !== historyKey) {
    historyKey = key;
    $('history').replaceChildren(...older.map((ex) => {
      const li = document.createElement('li');
      li.dataset.utterance = String(ex.utterance);
      li.dataset.direction = ex.direction;
      li.append(...exchangeNodes(ex, 'translation'));
      return li;
    }));
  }
  renderSwitches();
}

// At most one render every RENDER_MS, however many events arrive meanwhile: tokens come
// every few milliseconds, a reader needs no more than ten updates a second, and each paint
// takes CPU from the translator on the same device (`make bench-screen`).
const RENDER_MS = 100;
function scheduleRender() {
  if (!renderQueued) {
    renderQueued = true;
    setTimeout(render, RENDER_MS);
  }
}

async function switchDirection(direction) {
  try {
    const r = await fetch('/api/direction', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ direction }),
    });
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      showMessage(body.error || `switch refused (${r.status})`);
    }
  } catch (err) {
    showMessage(`the kiosk did not answer: ${err}`);
  }
}

let retryMs = 1000;

function connect() {
  const es = new EventSource('/events');
  es.addEventListener('open', () => {
    document.body.dataset.online = 'true';
    retryMs = 1000;
  });
  es.addEventListener('snapshot', (m) => {
    const s = JSON.parse(m.data);
    view.direction = s.direction;
    view.offered = s.offered;
    view.listening = s.listening;
    view.state = s.state;
    view.history = s.history;
    view.exchanges = s.exchanges;
    playing.clear();
    document.body.dataset.connects = String(Number(document.body.dataset.connects || 0) + 1);
    document.body.dataset.online = 'true';
    historyKey = '';
    scheduleRender();
  });
  es.addEventListener('tolk', (m) => {
    apply(JSON.parse(m.data));
    scheduleRender();
  });
  es.addEventListener('error', () => {
    document.body.dataset.online = 'false';
    // The browser retries by itself unless the server refused the stream (e.g. 503).
    if (es.readyState === EventSource.CLOSED) {
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 10000);
    }
  });
}

render();
connect();
