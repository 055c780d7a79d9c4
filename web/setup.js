/*
 * Outpost first-run setup page (docs/contract.md "First run"). The setup code opens a
 * setup session (a cookie). A fresh gateway then gets a form — the site, the bus to its
 * meters and relays (a serial port found on the gateway, or a Modbus TCP host), the supply's
 * limit and feeder meter, the price, the sign-in tokens — that makes a site with no outlets
 * yet: the bus scan on the status page adds them once the site runs. The same configuration
 * is shown as JSON for the advanced path, and a file the checks refuse opens there, to fix.
 * Checked and saved through /api/setup/check and PUT /api/setup/config; the server's problems
 * appear at their fields (by JSON pointer), the others in the list. Everything from the server
 * is shown as text, never as HTML.
 */
'use strict'
;(() => {
  const $ = (id) => document.getElementById(id)
  /** The JSON box holds what is saved once the installer edits it; until then it mirrors the form. */
  let jsonEdited = false

  function say(text, ok) {
    $('msg').textContent = text
    $('msg').className = ok ? 'msg ok' : 'msg'
  }

  function option(value, text, selected) {
    const o = document.createElement('option')
    o.value = String(value)
    o.textContent = text
    if (selected) o.selected = true
    return o
  }

  /** A token of 32 random characters, made in the browser. */
  function token() {
    const bytes = crypto.getRandomValues(new Uint8Array(24))
    return btoa(String.fromCharCode(...bytes))
      .replace(/\+/g, '-')
      .replace(/\//g, '_')
  }

  const num = (id) => ($(id).value.trim() === '' ? undefined : Number($(id).value))

  /** The configuration the form describes. */
  function fromForm() {
    const source = $('f-bus').value
    const bus = source.startsWith('rtu:')
      ? { id: 'rs485', type: 'modbus-rtu', path: source.slice(4), baudRate: Number($('f-baud').value), parity: $('f-parity').value }
      : { id: 'modbus', type: 'modbus-tcp', host: $('f-host').value.trim(), port: num('f-port') }
    const period = { days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '00:00', to: '24:00' }
    if (num('f-perkwh') !== undefined) period.perKwh = num('f-perkwh')
    if (num('f-perhour') !== undefined) period.perHour = num('f-perhour')
    const config = {
      site: { id: $('f-site-id').value.trim(), name: $('f-site-name').value.trim() || undefined, timezone: $('f-site-tz').value.trim() },
      storage: { dir: $('f-storage').value.trim() },
      buses: [bus],
      outlets: [],
      plans: [{ id: 'standard', currency: $('f-currency').value.trim(), periods: [period] }],
      api: {
        listen: $('f-listen').value.trim(),
        token: $('f-token-admin').value,
        tokens: [
          { name: 'installer', role: 'installer', token: $('f-token-installer').value },
          { name: 'owner', role: 'owner', token: $('f-token-owner').value },
        ],
      },
    }
    const maxA = num('f-maxa')
    const feederUnit = num('f-feeder-unit')
    if (maxA !== undefined || feederUnit !== undefined) {
      const circuit = { id: 'supply', maxA }
      if (feederUnit !== undefined) circuit.meter = { bus: bus.id, model: $('f-feeder-model').value, unit: feederUnit }
      config.circuits = [circuit]
    }
    return config
  }

  function configText() {
    return jsonEdited ? $('config').value : `${JSON.stringify(fromForm(), null, 2)}\n`
  }

  function mirror() {
    if (!jsonEdited) $('config').value = configText()
  }

  /** Each problem at its field when the form has one for its pointer (or the nearest above it), else in the list. */
  function showProblems(problems) {
    for (const e of document.querySelectorAll('.field-err')) e.remove()
    for (const e of document.querySelectorAll('.bad')) e.classList.remove('bad')
    const fields = jsonEdited || $('site-form').hidden ? [] : [...document.querySelectorAll('#site-form [data-pointer]')]
    const listed = []
    for (const p of problems) {
      let at = null
      for (let ptr = p.pointer ?? null; ptr !== null && !at; ptr = ptr === '' ? null : ptr.slice(0, ptr.lastIndexOf('/')))
        at = fields.find((f) => f.dataset.pointer === ptr) ?? null
      if (at) {
        at.classList.add('bad')
        const span = document.createElement('span')
        span.className = 'field-err'
        span.textContent = p.message
        at.after(span)
      } else listed.push(p)
    }
    const ul = $('problems')
    ul.replaceChildren()
    for (const p of listed) {
      const li = document.createElement('li')
      const where = document.createElement('code')
      where.textContent = p.line !== undefined ? `line ${p.line}, column ${p.column}` : p.pointer === '' ? '/' : p.pointer
      li.append(where, document.createTextNode(`: ${p.message}`))
      ul.append(li)
    }
    $('problems-box').hidden = listed.length === 0
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

  /** The form's choices: the ports found on the gateway, the line settings, the feeder meter models. */
  async function fillForm() {
    const r = await call('GET', '/api/setup/ports')
    const hints = r.status === 200 ? r.json : { ports: [], baudRates: [9600], parities: ['none'], notes: [], meterModels: [] }
    const bus = $('f-bus')
    for (const p of hints.ports) bus.append(option('rtu:' + (p.byId || p.path), (p.byId || p.path) + (p.note ? ' — ' + p.note : '') + ' (RS-485)'))
    bus.append(option('tcp:', 'Modbus TCP host'))
    for (const b of hints.baudRates) $('f-baud').append(option(b, String(b), b === 9600))
    for (const p of hints.parities) $('f-parity').append(option(p, p))
    for (const m of hints.meterModels)
      $('f-feeder-model').append(option(m.name, m.name + (m.phases === 3 ? ' (3 phases)' : ''), m.name === 'eastron-sdm630'))
    $('f-hints').replaceChildren(...hints.notes.map((n) => Object.assign(document.createElement('div'), { textContent: n })))
    $('f-site-tz').value = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC'
    $('f-listen').value = `0.0.0.0:${location.port || '80'}`
    for (const id of ['f-token-admin', 'f-token-installer', 'f-token-owner']) $(id).value = token()
    const showBus = () => {
      $('f-line').hidden = !bus.value.startsWith('rtu:')
      $('f-tcp').hidden = bus.value !== 'tcp:'
      mirror()
    }
    bus.addEventListener('change', showBus)
    $('site-form').addEventListener('input', mirror)
    showBus()
  }

  async function load() {
    const r = await call('GET', '/api/setup')
    if (r.status !== 200) return false
    const s = r.json
    $('code-step').hidden = true
    $('config-step').hidden = false
    showProblems(s.problems)
    if (s.text === null) {
      $('state').textContent =
        `There is no configuration at ${s.file} yet. Describe the site below, check it and save it; the site starts with no outlets, and the bus scan on its status page adds them.`
      // Shown once its choices are in (the ports found, the models): never a half-filled form.
      await fillForm()
      mirror()
      $('site-form').hidden = false
    } else {
      $('state').textContent = `The configuration at ${s.file} has problems; the site does not run until they are fixed.`
      jsonEdited = true
      $('json-box').open = true
      $('config').value = s.text
    }
    return true
  }

  $('config').addEventListener('input', () => (jsonEdited = true))

  $('code-form').addEventListener('submit', async (ev) => {
    ev.preventDefault()
    const r = await call('POST', '/api/setup/session', JSON.stringify({ code: $('code').value }))
    if (r.status === 200) {
      say('')
      await load()
    } else say(r.json?.error?.message ?? `refused (${r.status})`)
  })

  $('check').addEventListener('click', async () => {
    const r = await call('POST', '/api/setup/check', configText())
    if (r.status !== 200) return say(r.json?.error?.message ?? `refused (${r.status})`)
    showProblems(r.json.problems)
    say(r.json.ok ? 'The configuration is valid.' : `${r.json.problems.length} problem(s), each at its field.`, r.json.ok)
  })

  $('save').addEventListener('click', async () => {
    const r = await call('PUT', '/api/setup/config', configText())
    if (r.status === 200) {
      showProblems([])
      $('config-step').hidden = true
      $('started').hidden = false
      // The site's own page: where its api.listen serves, seen from this browser (the same host).
      const port = r.json.api ? r.json.api.slice(r.json.api.lastIndexOf(':') + 1) : null
      if (port) $('status-link').href = `${location.protocol}//${location.hostname}:${port}/`
      else $('started').hidden = true
      const where = r.json.api ? ` Its status page listens on ${r.json.api} (sign in with a token).` : ''
      return say(`Saved (version ${r.json.version.slice(0, 12)}…). The site is starting.${where}`, true)
    }
    if (r.json?.error?.problems) showProblems(r.json.error.problems)
    say(r.json?.error?.message ?? `refused (${r.status})`)
  })

  load().catch(() => undefined)
})()
