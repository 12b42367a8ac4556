'use strict';
// The operator's status page: /api/status every second; actions need the operator token
// (kept for this tab only).

const $ = (id) => document.getElementById(id);
const ms = (v) => (v === null || v === undefined ? '–' : `${Math.round(v)} ms`);
const when = (s) => (s ? new Date(s * 1000).toISOString().replace('T', ' ').slice(0, 19) + ' UTC' : '–');

function duration(s) {
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  return `${d ? `${d} d ` : ''}${h} h ${m} min ${s % 60} s`;
}

function set(id, text) {
  $(id).textContent = text === null || text === undefined || text === '' ? '–' : String(text);
}

function show(s) {
  set('device-id', s.device_id);
  set('site', s.site);
  const level = Math.max(-120, s.input_level_dbfs);
  set('level', level.toFixed(1));
  $('level-bar').style.width = `${Math.max(0, Math.min(100, ((level + 60) / 60) * 100))}%`;
  set('state', s.state);
  set('listening', s.listening ? 'yes' : 'no (paused)');
  set('direction', s.direction);
  const m = s.model;
  set('model-name', m.name);
  set('model-version', m.version);
  set('model-origin', m.origin.replace('_', ' '));
  set('model-slot', m.slot);
  set('model-keys', m.key_ids.join(', '));
  set('model-installed', when(m.installed_unix_s));
  set('model-kind', `${m.units} · ${m.strategy} · ${m.directions.join(', ')}`);
  const o = s.ota;
  set('ota-version', o.error ? `unreadable: ${o.error}` : o.highest_version);
  set('ota-pending', o.pending_job);
  set('ota-last', o.last_job ? `${o.last_job.job_id}: ${o.last_job.status}${o.last_job.reason ? ` (${o.last_job.reason})` : ''}` : '–');
  set('utterances', s.utterances);
  set('dropped', s.dropped);
  set('not-understood', s.not_understood);
  set('xruns', `${s.input_xruns} / ${s.output_xruns}`);
  const lat = (p) => `${ms(p.p50_ms)} / ${ms(p.p90_ms)} / ${ms(p.p99_ms)} (${p.count})`;
  set('lat-text', lat(s.first_text));
  set('lat-audio', lat(s.first_audio));
  set('rtf', s.rtf_last ? s.rtf_last.toFixed(3) : '–');
  set('clients', s.display_clients);
  set('uptime', duration(s.uptime_s));
  set('runtime', s.runtime_version);
  set('token-state', s.token_configured
    ? 'Actions need the operator token.'
    : 'Read-only: no operator token is configured (display.operator_token_file).');
  const row = $('op-switches');
  if (row.dataset.offered !== s.offered.join(',')) {
    row.replaceChildren(...s.offered.map((d) => {
      const b = document.createElement('button');
      b.type = 'button';
      b.dataset.direction = d;
      b.textContent = `Direction ${d}`;
      b.addEventListener('click', () => act('/api/operator/direction', { direction: d }));
      return b;
    }));
    row.dataset.offered = s.offered.join(',');
  }
}

async function refresh() {
  try {
    const r = await fetch('/api/status', { cache: 'no-store' });
    show(await r.json());
    document.body.dataset.online = 'true';
  } catch (err) {
    document.body.dataset.online = 'false';
  }
}

async function act(path, body) {
  const token = $('token').value.trim();
  sessionStorage.setItem('tolk-operator-token', token);
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  try {
    const r = await fetch(path, { method: 'POST', headers, body: JSON.stringify(body) });
    const answer = await r.json().catch(() => ({}));
    $('op-message').textContent = r.ok ? `done: ${JSON.stringify(answer)}` : `refused (${r.status}): ${answer.error || ''}`;
    $('op-message').dataset.status = String(r.status);
  } catch (err) {
    $('op-message').textContent = `the kiosk did not answer: ${err}`;
  }
  refresh();
}

$('token').value = sessionStorage.getItem('tolk-operator-token') || '';
$('pause').addEventListener('click', () => act('/api/operator/listening', { listening: false }));
$('resume').addEventListener('click', () => act('/api/operator/listening', { listening: true }));
refresh();
setInterval(refresh, 1000);
