/*
 * Outpost status page. Everything comes from the daemon (no CDN): a live stream
 * (/api/events, server-sent events, authenticated by the sign-in cookie) with a
 * full `snapshot` every few seconds, `outlet` on every reading and `record` on
 * every journal record. The stream reconnects by itself; while it is down the
 * page says "disconnected" and keeps the last values.
 */
'use strict'
;(() => {
  const WINDOW_MS = 5 * 60 * 1000
  const COLORS = ['#1f6feb', '#1a7f37', '#b54708', '#7c3aed', '#b42318', '#0e7490', '#a21caf', '#4d7c0f']
  const $ = (id) => document.getElementById(id)
  const { el, api } = window.Outpost
  let snap = null
  const statuses = new Map()
  const series = new Map() // outlet -> [{t, a, w}]
  let sessions = []
  let quantity = 'power'
  let es = null
  let lastMessage = 0

  // ---------------------------------------------------------------- formatting

  function money(minor, currency, digits) {
    if (!currency) return String(minor)
    const d = Number.isInteger(digits) ? digits : 2
    try {
      return new Intl.NumberFormat(undefined, { style: 'currency', currency, minimumFractionDigits: d, maximumFractionDigits: d }).format(
        minor / 10 ** d,
      )
    } catch (_) {
      return currency + ' ' + (minor / 10 ** d).toFixed(d)
    }
  }
  function digitsOf(currency) {
    for (const o of snap ? snap.outlets : []) if (o.currency === currency) return o.digits
    try {
      return new Intl.NumberFormat('en', { style: 'currency', currency }).resolvedOptions().maximumFractionDigits
    } catch (_) {
      return 2
    }
  }
  const kwh = (wh) => (wh / 1000).toFixed(wh < 10000 ? 3 : 1) + ' kWh'
  function dur(s) {
    s = Math.round(s)
    if (s < 60) return s + ' s'
    const m = Math.floor(s / 60)
    if (m < 60) return m + ' min ' + String(s % 60).padStart(2, '0') + ' s'
    return Math.floor(m / 60) + ' h ' + String(m % 60).padStart(2, '0') + ' min'
  }
  function ago(iso) {
    if (!iso) return '—'
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000)
    if (s < 90) return Math.round(s) + ' s ago'
    if (s < 5400) return Math.round(s / 60) + ' min ago'
    if (s < 172800) return Math.round(s / 3600) + ' h ago'
    return Math.round(s / 86400) + ' days ago'
  }
  /** Today: the time only (narrow phone columns); earlier: the date too. */
  function time(iso) {
    const d = new Date(iso)
    const today = d.toDateString() === new Date().toDateString()
    return d.toLocaleString(
      undefined,
      today ? { hour: '2-digit', minute: '2-digit', second: '2-digit' } : { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' },
    )
  }

  // ---------------------------------------------------------------- rendering

  function renderHeader() {
    $('site').textContent = snap.site.name || snap.site.id
    $('meta').textContent = `site ${snap.site.id} · outpost ${snap.version} · journal #${snap.journal.head}`
    const h = $('halted')
    h.hidden = !snap.halted
    h.textContent = snap.halted
      ? `The journal cannot write: every relay is open and nothing is charged until the daemon restarts (${snap.halted}).`
      : ''
  }

  function renderOutlets() {
    const box = $('outlets')
    box.replaceChildren()
    for (const o of snap.outlets) {
      const s = statuses.get(o.id) || o.status
      const state = s ? s.state : 'unknown'
      const card = el('article', { class: 'card s-' + state, 'data-outlet': o.id, 'data-state': state })
      card.append(el('h3', {}, el('span', {}, o.id), el('span', { class: 'state' }, state)))
      card.append(el('div', { class: 'name' }, o.name || ''))
      card.append(
        el(
          'div',
          { class: 'live' },
          el('div', {}, el('span', { class: 'big amps' }, s ? s.currentA.toFixed(1) : '—'), el('span', { class: 'unit' }, ' A')),
          el('div', {}, el('span', { class: 'big watts' }, s ? (s.powerW / 1000).toFixed(2) : '—'), el('span', { class: 'unit' }, ' kW')),
        ),
      )
      const sess = el('div', { class: 'session' })
      if (s?.sessionId && s.queuedSince) {
        sess.append(el('div', {}, 'Waiting: ', el('b', {}, s.userId || '?'), ' · circuit ', s.circuit || '?', ' is full'))
        sess.append(
          el('div', { class: 'unit' }, 'waiting ' + dur((Date.now() - Date.parse(s.queuedSince)) / 1000) + ' · not billed per hour while waiting'),
        )
      } else if (s?.sessionId) {
        sess.append(el('div', {}, 'Session for ', el('b', {}, s.userId || '?'), ' · ', kwh(s.energyWh)))
        sess.append(
          el(
            'div',
            { class: 'cost' },
            money(s.cost, s.currency || o.currency, digitsOf(s.currency || o.currency)),
            el('span', { class: 'unit' }, ' so far'),
          ),
        )
      } else {
        sess.append(el('div', { class: 'unit' }, state === 'armed' ? 'Armed: charging starts when a car draws current' : 'No open session'))
        sess.append(el('div', { class: 'unit' }, 'Plan ' + o.planId + (o.hasRelay ? '' : ' · meter only')))
      }
      card.append(sess)
      if (s?.sessionId) {
        const stop = el('button', { type: 'button', class: 'link', 'data-stop': o.id }, 'Stop this session')
        stop.addEventListener('click', () => command(o.id, 'stop', { by: 'manager' }))
        card.append(stop)
      }
      box.append(card)
    }
    if (snap.outlets.length === 0) box.append(el('p', { class: 'empty' }, 'No outlets yet: scan the bus below and add the meters it finds.'))
    renderStartChoices()
  }

  /** The start form offers the outlets with no open session (the choice made is kept across redraws). */
  function renderStartChoices() {
    const sel = $('start-outlet')
    const was = sel.value
    const free = snap.outlets.filter((o) => !(statuses.get(o.id) || o.status)?.sessionId).map((o) => o.id)
    if (free.join() === [...sel.options].map((x) => x.value).join()) return
    sel.replaceChildren(...free.map((id) => el('option', id === was ? { value: id, selected: '' } : { value: id }, id)))
    $('start-form').hidden = snap.outlets.length === 0
  }

  /** A start or stop as the signed-in role (installer, owner or admin; a viewer is refused by the server). */
  async function command(outlet, action, body) {
    $('start-error').textContent = ''
    try {
      await api('/api/outlets/' + encodeURIComponent(outlet) + '/' + action, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
      })
    } catch (err) {
      $('start-error').textContent = outlet + ': ' + err.message
    }
  }

  $('start-form').addEventListener('submit', (ev) => {
    ev.preventDefault()
    const outlet = $('start-outlet').value
    if (outlet) command(outlet, 'start', { userId: $('start-user').value.trim() })
  })

  function renderSessions() {
    const body = $('sessions').tBodies[0]
    body.replaceChildren()
    if (sessions.length === 0) {
      body.append(el('tr', {}, el('td', { colspan: '7', class: 'empty' }, 'No session has ended yet.')))
      return
    }
    for (const r of sessions.slice(0, 10)) {
      body.append(
        el(
          'tr',
          { 'data-seq': String(r.seq) },
          el('td', {}, time(r.endedAt)),
          el('td', {}, r.outlet),
          el('td', {}, r.userId),
          el('td', {}, r.reason),
          el('td', { class: 'n' }, kwh(r.energyWh)),
          el('td', { class: 'n' }, dur(r.durationS)),
          el(
            'td',
            { class: 'n' },
            money(r.total, r.currency, digitsOf(r.currency)),
            r.offline ? el('span', { class: 'unit', title: 'part of this session ran while the uplink was down' }, ' offline') : null,
          ),
        ),
      )
    }
  }

  function renderUplink() {
    const u = snap.uplink
    const j = snap.journal
    const dl = $('uplink')
    dl.replaceChildren()
    const row = (k, v, cls) => dl.append(el('dt', {}, k), el('dd', cls ? { class: cls } : {}, v))
    row('Uplink', u.status, u.status === 'online' ? 'good' : u.status === 'offline' ? 'bad' : 'warn')
    row('Waiting for the cloud', u.backlog + (u.backlog === 1 ? ' record' : ' records'), u.backlog > 0 && u.status !== 'online' ? 'warn' : '')
    row('Oldest unacknowledged', u.oldestUnacked === null ? 'none' : `#${u.oldestUnacked}, ${ago(u.oldestUnackedTs)}`)
    row('Acknowledged up to', '#' + u.acked)
    row('Journal head', '#' + j.head)
    if (j.fault) row('Journal fault', j.fault, 'bad')
    // A site that speaks OCPP: its central system's link, beside the uplink.
    const o = snap.ocpp
    if (o) {
      const state = o.connected && o.accepted ? 'online' : o.connected ? 'connected, not accepted' : 'offline'
      row('Central system (OCPP)', state, state === 'online' ? 'good' : state === 'offline' ? 'bad' : 'warn')
      row('Waiting for the central system', o.queued + (o.queued === 1 ? ' message' : ' messages'), o.queued > 0 && state !== 'online' ? 'warn' : '')
    }
    const nr = snap.nodeRed
    if (nr) {
      const restarts = nr.restarts ? ` · ${nr.restarts} restart${nr.restarts === 1 ? '' : 's'}` : ''
      row('Node-RED', nr.state + restarts, nr.state === 'running' ? 'good' : nr.state === 'stopped' ? '' : 'bad')
      if (nr.lastExit && nr.state !== 'running') row('Node-RED stopped', `${nr.lastExit.why}, ${ago(nr.lastExit.at)}`, 'warn')
      if (nr.refused) row('Node-RED commands refused', `${nr.refused} over the rate limit`, 'warn')
    }
  }

  function renderCircuits() {
    const list = snap.circuits || []
    $('circuits-section').hidden = list.length === 0
    const box = $('circuits')
    box.replaceChildren()
    for (const c of list) {
      const card = el('article', { class: 'card circuit', 'data-circuit': c.circuit })
      const head = c.failsafe ? 'failsafe' : c.limitA < c.maxA ? 'limited' : c.queue.length > 0 ? 'full' : 'ok'
      card.append(el('h3', {}, el('span', {}, c.circuit), el('span', { class: 'state' }, head)))
      card.append(
        el(
          'div',
          { class: 'unit' },
          `limit ${c.limitA} A per phase` + (c.limitA !== c.maxA ? ` (wired for ${c.maxA} A)` : '') + (c.parent ? ` · fed by ${c.parent}` : ''),
        ),
      )
      if (c.feederFault) card.append(el('div', { class: 'err' }, 'feeder meter: ' + c.feederFault))
      ;['L1', 'L2', 'L3'].forEach((ph, i) => {
        const a = c.currentA[i]
        if (a === 0 && i > 0) return
        const pct = c.limitA > 0 ? Math.min(100, (a / c.limitA) * 100) : 100
        const bar = el('i', { class: pct >= 95 ? 'full' : '' })
        bar.style.width = pct.toFixed(0) + '%'
        card.append(el('div', { class: 'phase', 'data-phase': ph }, `${ph}: ${a.toFixed(1)} A of ${c.limitA} A`), el('div', { class: 'bar' }, bar))
      })
      card.append(el('div', {}, `${c.on.length} charging · ${c.queue.length} waiting`))
      if (c.queue.length > 0) {
        const ol = el('ol', { class: 'queue' })
        for (const q of c.queue) ol.append(el('li', { 'data-outlet': q.outlet }, `${q.outlet} (${q.userId}) waiting ${dur(q.waitedS)}`))
        card.append(ol)
      }
      box.append(card)
    }
  }

  function renderBuses() {
    const box = $('buses')
    box.replaceChildren()
    for (const b of snap.buses) {
      const div = el('div', { class: 'bus', 'data-bus': b.id })
      div.append(el('h3', {}, el('span', {}, b.id), el('span', { class: b.state === 'open' ? 'good' : 'bad' }, b.state)))
      div.append(el('div', { class: 'port' }, b.port))
      div.append(el('div', {}, `${b.transactions} transactions · ${b.timeouts} timeouts · ${b.crcErrors} CRC errors · ${b.exceptions} exceptions`))
      if (b.lastError)
        div.append(
          el('div', { class: 'err' }, `last bus error ${ago(new Date(b.lastError.ts).toISOString())}: ${b.lastError.code} ${b.lastError.message}`),
        )
      const t = el(
        'table',
        {},
        el(
          'thead',
          {},
          el('tr', {}, el('th', {}, 'Unit'), el('th', { class: 'n' }, 'OK'), el('th', { class: 'n' }, 'Failed'), el('th', {}, 'Last error')),
        ),
      )
      const tb = el('tbody')
      for (const d of b.devices) {
        const last = d.lastError ? `${d.lastError.code} ${ago(new Date(d.lastError.ts).toISOString())}` : ''
        tb.append(
          el(
            'tr',
            {},
            el('td', {}, String(d.unit) + (d.backedOffUntil ? ' (backed off)' : '')),
            el('td', { class: 'n' }, String(d.transactions - d.failures)),
            el('td', { class: 'n' + (d.consecutiveFailures > 0 ? ' bad' : '') }, String(d.failures)),
            el('td', { class: 'err' }, last),
          ),
        )
      }
      t.append(tb)
      div.append(t)
      box.append(div)
    }
  }

  // ---------------------------------------------------------------- chart

  function sample(s) {
    const t = Date.now()
    let arr = series.get(s.outlet)
    if (!arr) {
      arr = []
      series.set(s.outlet, arr)
    }
    arr.push({ t, a: s.currentA, w: s.powerW })
    while (arr.length && arr[0].t < t - WINDOW_MS) arr.shift()
  }

  function drawChart() {
    const c = $('chart')
    const dpr = window.devicePixelRatio || 1
    const w = c.clientWidth
    const h = c.clientHeight || 220
    if (c.width !== Math.round(w * dpr)) c.width = Math.round(w * dpr)
    c.height = Math.round(h * dpr)
    const g = c.getContext('2d')
    g.setTransform(dpr, 0, 0, dpr, 0, 0)
    g.clearRect(0, 0, w, h)
    const now = Date.now()
    const ids = snap ? snap.outlets.map((o) => o.id) : []
    const val = (p) => (quantity === 'power' ? p.w / 1000 : p.a)
    let max = quantity === 'power' ? 1 : 6
    for (const id of ids) for (const p of series.get(id) || []) max = Math.max(max, val(p))
    const scale = niceScale(max)
    max = scale.max
    const L = 40,
      R = 8,
      T = 10,
      B = 22
    g.font = '11px system-ui, sans-serif'
    g.fillStyle = '#5b6472'
    g.strokeStyle = '#dde1e7'
    g.lineWidth = 1
    for (let i = 0; i <= scale.steps; i++) {
      const y = T + ((h - T - B) * i) / scale.steps
      g.beginPath()
      g.moveTo(L, y)
      g.lineTo(w - R, y)
      g.stroke()
      g.fillText(String(+(max * (1 - i / scale.steps)).toFixed(2)), 4, y + 4)
    }
    for (let m = 0; m <= 5; m++) {
      const x = L + ((w - L - R) * (5 - m)) / 5
      g.fillText(m === 0 ? 'now' : `-${m} min`, Math.min(x - 10, w - 30), h - 6)
    }
    const legend = $('legend')
    legend.replaceChildren()
    ids.forEach((id, i) => {
      const color = COLORS[i % COLORS.length]
      const pts = series.get(id) || []
      g.strokeStyle = color
      g.lineWidth = 2
      g.beginPath()
      pts.forEach((p, k) => {
        const x = L + (w - L - R) * (1 - (now - p.t) / WINDOW_MS)
        const y = T + (h - T - B) * (1 - val(p) / max)
        if (k === 0) g.moveTo(x, y)
        else g.lineTo(x, y)
      })
      g.stroke()
      const last = pts[pts.length - 1]
      legend.append(
        el(
          'span',
          {},
          el('i', { color }),
          `${id} ${last ? (quantity === 'power' ? (last.w / 1000).toFixed(2) + ' kW' : last.a.toFixed(1) + ' A') : '—'}`,
        ),
      )
    })
  }

  /** A round top for the axis and a number of grid steps that gives round labels. */
  function niceScale(v) {
    const p = 10 ** Math.floor(Math.log10(v))
    for (const [m, steps] of [
      [1, 4],
      [2, 4],
      [2.5, 5],
      [4, 4],
      [5, 5],
      [8, 4],
      [10, 5],
    ])
      if (v <= m * p) return { max: m * p, steps }
    return { max: 10 * p, steps: 5 }
  }

  // ---------------------------------------------------------------- the stream

  function setConn(kind, text) {
    const c = $('conn')
    c.className = 'conn ' + kind
    c.textContent = text
    c.title = kind === 'down' ? 'the daemon does not answer; trying again every few seconds (the values shown are the last known)' : ''
    document.body.dataset.conn = kind
  }

  function onSnapshot(s) {
    snap = s
    for (const o of s.outlets)
      if (o.status) {
        statuses.set(o.id, o.status)
        sample(o.status)
      }
    sessions = s.sessions
    renderHeader()
    renderOutlets()
    renderSessions()
    renderUplink()
    renderCircuits()
    renderBuses()
    drawChart()
  }

  function connect() {
    if (es) es.close()
    es = new EventSource('/api/events')
    es.addEventListener('open', () => setConn('live', 'live'))
    es.addEventListener('history', (e) => {
      // The last minutes before this page (or this connection) opened: the chart starts full.
      const h = JSON.parse(e.data)
      const now = Date.now()
      for (const p of h.points) {
        for (const [id, [a, w]] of Object.entries(p.outlets)) {
          let arr = series.get(id)
          if (!arr) {
            arr = []
            series.set(id, arr)
          }
          const t = now - p.ageMs
          if (!arr.some((q) => Math.abs(q.t - t) < h.sampleMs / 2)) arr.push({ t, a, w })
        }
      }
      for (const arr of series.values()) arr.sort((x, y) => x.t - y.t)
    })
    es.addEventListener('snapshot', (e) => {
      lastMessage = Date.now()
      setConn('live', 'live')
      onSnapshot(JSON.parse(e.data))
    })
    es.addEventListener('outlet', (e) => {
      lastMessage = Date.now()
      const s = JSON.parse(e.data)
      statuses.set(s.outlet, s)
      sample(s)
      if (snap) renderOutlets()
    })
    es.addEventListener('record', (e) => {
      lastMessage = Date.now()
      const r = JSON.parse(e.data)
      if (snap) snap.journal.head = Math.max(snap.journal.head, r.seq)
      if (r.type === 'session.ended' && !sessions.some((x) => x.seq === r.seq)) {
        sessions = [r, ...sessions].slice(0, 10)
        renderSessions()
      }
      if (snap) {
        renderHeader()
        renderUplink()
      }
    })
    es.addEventListener('error', () => {
      setConn('down', 'disconnected')
      // EventSource retries by itself unless the server refused it (closed): then we do.
      if (es.readyState === EventSource.CLOSED) {
        // Refused: if it is the sign-in (the token was changed), show the form again.
        fetch('/api/status', { credentials: 'same-origin' }).then(
          (r) => (r.status === 401 ? location.reload() : setTimeout(connect, 3000)),
          () => setTimeout(connect, 3000),
        )
      }
    })
  }

  // A stream that stays silent (a half-open connection) is as good as gone.
  setInterval(() => {
    if (lastMessage && Date.now() - lastMessage > 10000) {
      setConn('down', 'disconnected')
      lastMessage = 0
      connect()
    }
  }, 2000)
  setInterval(() => {
    if (snap) drawChart()
  }, 1000)
  window.addEventListener('resize', () => snap && drawChart())
  $('show-power').addEventListener('click', () => {
    quantity = 'power'
    $('show-power').className = 'on'
    $('show-current').className = ''
    drawChart()
  })
  $('show-current').addEventListener('click', () => {
    quantity = 'current'
    $('show-current').className = 'on'
    $('show-power').className = ''
    drawChart()
  })
  connect()
})()
