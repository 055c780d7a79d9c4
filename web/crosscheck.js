/*
 * The status page's wiring cross-check: whether the wiring in force has passed one, running
 * one (after the installer confirms loads may be switched) with its progress and a cancel,
 * and the last report: the matrix of relays against meters, each finding in words, a one-click
 * fix where the config can mend it, and a printable view. Everything through /api/crosscheck
 * (docs/contract.md "Wiring cross-check"); every name is shown as text, never as HTML.
 */
'use strict'
;(() => {
  const $ = (id) => document.getElementById(id)
  const { el, api, jobControls } = window.Outpost
  let timer = null
  let shown = null

  function when(ms) {
    return new Date(ms).toLocaleString()
  }

  function renderState(v) {
    const state = $('cc-state')
    state.replaceChildren()
    const running = v.running
    $('cc-start').disabled = Boolean(running) || Boolean(v.blocker)
    $('cc-cancel').hidden = !running
    $('cc-progress').hidden = !running
    if (running) {
      const p = running.progress
      $('cc-progress').max = Math.max(1, p.total)
      $('cc-progress').value = p.done
      state.append(
        el('span', { class: 'warn' }, 'Running'),
        ' — started by ' +
          running.who +
          ', relay ' +
          (p.done + (p.relay ? 1 : 0)) +
          ' of ' +
          p.total +
          (p.relay ? ' (' + p.relay + ')' : '') +
          '. No session starts until it ends.',
      )
    } else if (v.passed) {
      state.append(
        el('span', { class: 'good' }, 'Passed'),
        ' — the wiring in force passed on ' + when(v.passed.finishedAt) + ', run by ' + v.passed.who + '.',
      )
    } else if (v.last) {
      state.append(
        el('span', { class: 'bad' }, 'Not passed'),
        v.last.wiring === v.wiring ? ' — the last check found faults (below).' : ' — the wiring changed since the last check: run it again.',
      )
    } else {
      state.append(el('span', { class: 'bad' }, 'Never run'), ' — this site has not been cross-checked.')
    }
    if (v.blocker && !running) state.append(el('div', { class: 'err' }, 'Cannot run now: ' + v.blocker))
  }

  function renderReport(r, current) {
    const box = $('cc-report')
    box.replaceChildren()
    $('cc-print').hidden = !r
    if (!r) return
    box.append(
      el(
        'p',
        { class: 'sub' },
        'Report ' +
          r.id +
          ' — ' +
          when(r.startedAt) +
          ' to ' +
          when(r.finishedAt) +
          ', run by ' +
          r.who +
          ', ' +
          r.polls +
          ' polls of ' +
          r.pollMs +
          ' ms per relay' +
          (r.cancelled ? ', cancelled' : '') +
          '. ',
        el('a', { href: '/api/crosscheck/reports/' + encodeURIComponent(r.id) }, 'JSON'),
      ),
    )
    const head = el(
      'tr',
      {},
      el('th', {}, 'relay \\ meter'),
      ...r.meters.map((m) => el('th', { class: 'n' }, m + (r.meterSerials[m] ? ' (' + r.meterSerials[m] + ')' : ''))),
    )
    const rows = r.relays.map((relay, i) =>
      el(
        'tr',
        {},
        el('th', {}, relay),
        ...r.meters.map((m, j) => {
          const c = r.cells[i][j]
          const cls = ['n', c?.moved ? 'moved' : '', relay === m ? 'diag' : ''].filter(Boolean).join(' ')
          return el(
            'td',
            { class: cls, title: c ? c.powerW + ' W, ' + c.voltageV + ' V' : 'no answer' },
            c ? (c.currentA > 0 ? '+' : '') + c.currentA + ' A' : '—',
          )
        }),
      ),
    )
    box.append(el('div', { class: 'scroll' }, el('table', { class: 'cc-matrix' }, el('thead', {}, head), el('tbody', {}, ...rows))))
    const list = el('ul', { class: 'cc-findings' })
    r.findings.forEach((f, i) => {
      const li = el('li', { class: f.severity === 'ok' ? 'ok' : '', 'data-kind': f.kind }, f.message)
      if (f.fix && current) {
        const b = el('button', { type: 'button', 'data-finding': String(i) }, 'Fix: ' + f.fix.label)
        b.addEventListener('click', () => fix(r.id, [i], b))
        li.append(b)
      }
      list.append(li)
    })
    box.append(list)
  }

  async function fix(report, findings, button) {
    button.disabled = true
    $('cc-error').textContent = ''
    try {
      const cfg = await api('/api/config')
      await api('/api/crosscheck/fix', {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'if-match': cfg.etag },
        body: JSON.stringify({ report, findings }),
      })
      button.textContent = 'Fixed: run the cross-check again'
    } catch (err) {
      button.disabled = false
      $('cc-error').textContent = err.message
    }
  }

  async function refresh() {
    try {
      const v = (await api('/api/crosscheck')).body
      renderState(v)
      const key = v.last ? v.last.id + (v.last.wiring === v.wiring) : null
      if (key !== shown) {
        shown = key
        renderReport(v.last, v.last && v.last.wiring === v.wiring)
      }
      clearTimeout(timer)
      timer = setTimeout(refresh, v.running ? 1000 : 5000)
    } catch (err) {
      $('cc-error').textContent = err.message
      clearTimeout(timer)
      timer = setTimeout(refresh, 5000)
    }
  }

  jobControls({
    path: '/api/crosscheck',
    form: 'cc-run',
    cancel: 'cc-cancel',
    error: 'cc-error',
    refresh,
    body: () => {
      if ($('cc-confirm').checked) return { confirm: true }
      $('cc-error').textContent = 'Confirm first that a load is plugged into every outlet and may be switched on.'
      return null
    },
  })
  $('cc-print').addEventListener('click', () => window.print())
  refresh()
})()
