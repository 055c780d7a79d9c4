/*
 * Outpost first-run setup page (docs/contract.md "First run"). The setup code opens a
 * setup session (a cookie); then the configuration is checked and saved through
 * /api/setup/check and PUT /api/setup/config, with check-config's problems at their
 * JSON pointers. Everything from the server is shown as text, never as HTML.
 */
'use strict'
;(() => {
  const $ = (id) => document.getElementById(id)
  const TEMPLATE = {
    site: { id: 'my-site', name: 'My site', timezone: 'Europe/Berlin' },
    storage: { dir: '/var/lib/outpost/journal' },
    buses: [{ id: 'rs485', type: 'modbus-rtu', path: '/dev/ttyUSB0', baudRate: 9600 }],
    outlets: [
      { id: 'A1', bus: 'rs485', meter: { model: 'eastron-sdm120', unit: 1 }, relay: { model: 'modbus-coil', unit: 100, coil: 0 }, plan: 'standard' },
    ],
    plans: [
      {
        id: 'standard',
        currency: 'EUR',
        periods: [{ days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '00:00', to: '24:00', perKwh: 0.4 }],
      },
    ],
    api: { listen: '0.0.0.0:8080', token: 'change-me-to-a-long-random-token' },
  }

  function say(text, ok) {
    $('msg').textContent = text
    $('msg').className = ok ? 'msg ok' : 'msg'
  }

  function showProblems(problems) {
    const ul = $('problems')
    ul.replaceChildren()
    for (const p of problems) {
      const li = document.createElement('li')
      const where = document.createElement('code')
      where.textContent = p.line !== undefined ? `line ${p.line}, column ${p.column}` : p.pointer === '' ? '/' : p.pointer
      li.append(where, document.createTextNode(`: ${p.message}`))
      ul.append(li)
    }
    $('problems-box').hidden = problems.length === 0
  }

  async function call(method, path, body) {
    const res = await fetch(path, {
      method,
      credentials: 'same-origin',
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body,
    })
    let json = null
    try {
      json = await res.json()
    } catch {
      json = null
    }
    return { status: res.status, json }
  }

  async function load() {
    const r = await call('GET', '/api/setup')
    if (r.status !== 200) return false
    const s = r.json
    $('code-step').hidden = true
    $('config-step').hidden = false
    $('state').textContent =
      s.state === 'missing'
        ? `There is no configuration at ${s.file} yet. Write one below (the example is a start), check it and save it.`
        : `The configuration at ${s.file} has problems; the site does not run until they are fixed.`
    showProblems(s.problems)
    $('config').value = s.text ?? `${JSON.stringify(TEMPLATE, null, 2)}\n`
    return true
  }

  $('code-form').addEventListener('submit', async (ev) => {
    ev.preventDefault()
    const r = await call('POST', '/api/setup/session', JSON.stringify({ code: $('code').value }))
    if (r.status === 200) {
      say('')
      await load()
    } else say(r.json?.error?.message ?? `refused (${r.status})`)
  })

  $('check').addEventListener('click', async () => {
    const r = await call('POST', '/api/setup/check', $('config').value)
    if (r.status !== 200) return say(r.json?.error?.message ?? `refused (${r.status})`)
    showProblems(r.json.problems)
    say(r.json.ok ? 'The configuration is valid.' : `${r.json.problems.length} problem(s), each at its JSON pointer.`, r.json.ok)
  })

  $('save').addEventListener('click', async () => {
    const r = await call('PUT', '/api/setup/config', $('config').value)
    if (r.status === 200) {
      showProblems([])
      $('config-step').hidden = true
      const where = r.json.api ? ` Its status page listens on ${r.json.api} (sign in with api.token).` : ''
      return say(`Saved (version ${r.json.version.slice(0, 12)}…). The site is starting.${where}`, true)
    }
    if (r.json?.error?.problems) showProblems(r.json.error.problems)
    say(r.json?.error?.message ?? `refused (${r.status})`)
  })

  load().catch(() => undefined)
})()
