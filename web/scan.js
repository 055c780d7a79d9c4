/*
 * The status page's bus scan: pick a configured bus, a serial port found on the gateway (with
 * the line settings to try) or a Modbus TCP host; scan a range of unit ids with progress and a
 * cancel; each device found is listed with what the config already does with it, and "Add"
 * appends it to the config as an outlet (a meter, paired with the next free coil of a relay
 * board found or configured on the same bus), through the same checked save as every change.
 * A Shelly or a Tasmota is found by its address (with its password, kept by the gateway beside
 * the config): each metering channel read once, and "Add" appends the device and the outlet.
 * Everything through /api/scan and /api/config (docs/contract.md); names shown as text.
 */
'use strict'
;(() => {
  const $ = (id) => document.getElementById(id)
  const { el, api, table, jobControls } = window.Outpost
  let timer = null
  let hints = null

  /** What scan finds is added to the config file: a daemon run without one (the demo) has nothing to add to. */
  const NO_FILE =
    'The bus scan adds what it finds to the site’s config file: it works under outpost run --config FILE, and this daemon runs without one (as the demo does).'

  async function setup() {
    const [cfg, ports] = await Promise.all([api('/api/config').catch(() => null), api('/api/scan/ports')])
    if (!cfg) {
      $('scan-form').hidden = true
      $('net-form').hidden = true
      $('scan-hints').textContent = NO_FILE
      return false
    }
    hints = ports.body
    const src = $('scan-source')
    src.replaceChildren()
    for (const b of cfg.body.config.buses.filter((x) => x.type === 'modbus-rtu' || x.type === 'modbus-tcp'))
      src.append(el('option', { value: 'bus:' + b.id }, b.id + ' (configured, ' + (b.path || b.host + ':' + b.port) + ')'))
    for (const p of hints.ports)
      src.append(el('option', { value: 'rtu:' + (p.byId || p.path) }, (p.byId || p.path) + (p.note ? ' — ' + p.note : '') + ' (new RS-485 line)'))
    src.append(el('option', { value: 'tcp:' }, 'Modbus TCP host (new)'))
    $('scan-baud').replaceChildren(...hints.baudRates.map((b) => el('option', b === 9600 ? { value: b, selected: '' } : { value: b }, b)))
    $('scan-parity').replaceChildren(...hints.parities.map((p) => el('option', { value: p }, p)))
    $('scan-hints').replaceChildren(...hints.notes.map((n) => el('div', {}, n)))
    src.addEventListener('change', showFields)
    showFields()
    return true
  }

  function showFields() {
    const v = $('scan-source').value
    $('scan-line').hidden = !v.startsWith('rtu:')
    $('scan-tcp').hidden = v !== 'tcp:'
  }

  function request() {
    const v = $('scan-source').value
    const units = $('scan-units').value.trim()
    if (v.startsWith('bus:')) return { busId: v.slice(4), units }
    if (v.startsWith('rtu:'))
      return { bus: { type: 'modbus-rtu', path: v.slice(4), baudRate: Number($('scan-baud').value), parity: $('scan-parity').value }, units }
    return { bus: { type: 'modbus-tcp', host: $('scan-host').value.trim(), port: Number($('scan-port').value) }, units }
  }

  function render(scan) {
    $('scan-start').disabled = Boolean(scan?.running)
    $('scan-cancel').hidden = !scan?.running
    $('scan-progress').hidden = !scan?.running
    const box = $('scan-result')
    box.replaceChildren()
    if (!scan) return
    $('scan-progress').max = Math.max(1, scan.total)
    $('scan-progress').value = scan.done
    const where = scan.busId ? 'bus ' + scan.busId : scan.bus.path || scan.bus.host + ':' + scan.bus.port
    const state = scan.running
      ? 'scanning ' + where + ': ' + scan.done + ' of ' + scan.total + ' unit ids'
      : (scan.cancelled ? 'cancelled' : 'done') + ': ' + where + ', ' + scan.done + ' unit ids asked'
    box.append(el('p', { class: 'sub' }, state + (scan.error ? ' — ' + scan.error : '')))
    if (scan.hits.length === 0) {
      if (!scan.running) box.append(el('p', { class: 'empty' }, 'Nothing answered.'))
      return
    }
    const rows = scan.hits.map((h) => {
      const td = el('td', {})
      const uses = [...h.outlets, ...(h.feederOf || []).map((c) => 'feeder of ' + c)]
      if (uses.length > 0) td.append('in the config: ' + uses.join(', '))
      else if (h.kind === 'meter' && !scan.running) {
        const b = el('button', { type: 'button', 'data-unit': String(h.unit) }, 'Add as an outlet')
        b.addEventListener('click', () => add(scan, h, b))
        td.append(b)
      }
      const tested = el('td', {})
      if (h.kind === 'meter' && !scan.running) {
        const out = el('span', { class: 'sub', 'data-test': String(h.unit) })
        const b = el('button', { type: 'button', 'data-test-unit': String(h.unit) }, 'Test')
        b.addEventListener('click', () => test(scan, h, out))
        tested.append(b, ' ', out)
      }
      return el(
        'tr',
        { 'data-unit': String(h.unit) },
        el('td', { class: 'n' }, h.unit),
        el('td', {}, h.kind),
        el('td', {}, h.model || '—'),
        el('td', {}, h.serial || ''),
        el('td', { class: 'sub' }, h.detail),
        td,
        tested,
      )
    })
    box.append(table('scan-hits', ['Unit', 'Kind', 'Model', 'Serial', 'Detail', '', ''], rows))
  }

  /** The config with the meter at `hit` appended as an outlet (and the scanned bus, when it is new). */
  function withOutlet(config, scan, hit) {
    const next = structuredClone(config)
    let busId = scan.busId
    if (!busId) {
      let n = next.buses.length + 1
      while (next.buses.some((b) => b.id === 'bus' + n)) n++
      busId = 'bus' + n
      next.buses.push({ ...scan.bus, id: busId })
    }
    const onBus = next.outlets.filter((o) => o.bus === busId)
    const board = scan.hits.find((h) => h.kind === 'relay') || onBus.find((o) => o.relay && o.relay.model === 'modbus-coil')?.relay
    const boardUnit = board ? board.unit : null
    let relay
    if (boardUnit !== null) {
      const used = new Set(onBus.filter((o) => o.relay && o.relay.unit === boardUnit).map((o) => o.relay.coil))
      let coil = 0
      while (used.has(coil)) coil++
      relay = { model: 'modbus-coil', unit: boardUnit, coil }
    }
    let id = 'O' + hit.unit
    while (next.outlets.some((o) => o.id === id)) id += '-' + busId
    next.outlets.push({ id, bus: busId, meter: { model: hit.model, unit: hit.unit }, ...(relay ? { relay } : {}), ...sellsAs(next) })
    return next
  }

  /**
   * What a new outlet sells and where it draws: the first plan, and on a site with a supply
   * circuit that circuit, on L1 until the installer (or the cross-check's fix) says otherwise.
   */
  function sellsAs(config) {
    const supply = (config.circuits || []).find((c) => !c.parent)
    return { plan: config.plans[0].id, ...(supply ? { circuit: supply.id, phase: 'L1' } : {}) }
  }

  async function saveWith(change) {
    const cfg = await api('/api/config')
    await api('/api/config', {
      method: 'PUT',
      headers: { 'content-type': 'application/json', 'if-match': cfg.etag },
      body: JSON.stringify(change(cfg.body.config), null, 2),
    })
  }

  // ---------------------------------------------------------------- Shelly and Tasmota by address

  const reads = (r) => `${r.voltageV.toFixed(0)} V · ${r.currentA.toFixed(2)} A · ${r.powerW.toFixed(0)} W · ${(r.energyWh / 1000).toFixed(3)} kWh`

  function renderDevice(found) {
    const d = found.device
    const box = $('net-result')
    box.replaceChildren(
      el('p', { class: 'sub' }, `${d.type} at ${d.host}:${d.port}: ${[d.model, d.name].filter((x) => x).join(', ') || 'no model reported'}`),
    )
    if (d.channels.length === 0) return box.append(el('p', { class: 'empty' }, 'It has no metering channel an outlet could use.'))
    const rows = d.channels.map((c) => {
      const add = el('button', { type: 'button', 'data-channel': String(c.channel) }, 'Add as an outlet')
      add.addEventListener('click', () => addDevice(found, c, add))
      return el(
        'tr',
        { 'data-channel': String(c.channel) },
        el('td', { class: 'n' }, c.channel),
        el('td', {}, c.meter),
        el('td', {}, c.relay || '—'),
        el('td', {}, c.reading ? reads(c.reading) : 'no reading: ' + c.readError),
        el('td', {}, c.relayClosed === undefined ? '' : c.relayClosed ? 'closed' : 'open'),
        el('td', {}, add),
      )
    })
    box.append(table('net-channels', ['Channel', 'Meter', 'Relay', 'Reads now', 'Relay', ''], rows))
  }

  /** The device as a bus of its own (once), and the channel as an outlet on it. */
  async function addDevice(found, c, button) {
    button.disabled = true
    $('net-error').textContent = ''
    try {
      await saveWith((config) => {
        const next = structuredClone(config)
        const bus = found.bus
        if (!next.buses.some((b) => b.id === bus.id)) next.buses.push(bus)
        let id = bus.id + '-' + c.channel
        while (next.outlets.some((o) => o.id === id)) id += '-x'
        next.outlets.push({
          id,
          bus: bus.id,
          meter: { model: c.meter, channel: c.channel },
          ...(c.relay ? { relay: { model: c.relay, channel: c.relayChannel } } : {}),
          ...sellsAs(next),
        })
        return next
      })
      button.replaceWith('added')
    } catch (err) {
      button.disabled = false
      $('net-error').textContent = err.message
    }
  }

  $('net-form').addEventListener('submit', async (ev) => {
    ev.preventDefault()
    $('net-error').textContent = ''
    $('net-result').replaceChildren(el('p', { class: 'sub' }, 'asking the device…'))
    const body = { type: $('net-type').value, host: $('net-host').value.trim() }
    if ($('net-port').value.trim()) body.port = Number($('net-port').value)
    if ($('net-password').value) body.password = $('net-password').value
    try {
      const { body: found } = await api('/api/scan/device', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
      })
      renderDevice(found)
    } catch (err) {
      $('net-result').replaceChildren()
      $('net-error').textContent = err.message
    }
  })

  async function add(scan, hit, button) {
    button.disabled = true
    $('scan-error').textContent = ''
    try {
      await saveWith((config) => withOutlet(config, scan, hit))
      button.replaceWith('added')
    } catch (err) {
      button.disabled = false
      $('scan-error').textContent = err.message
    }
  }

  /** Reads the meter now, as its model says: V, A, W and kWh, and its serial. */
  async function test(scan, hit, out) {
    out.textContent = 'reading…'
    try {
      const where = scan.busId ? { busId: scan.busId } : { bus: scan.bus }
      const { body } = await api('/api/scan/test', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ ...where, meter: { model: hit.model, unit: hit.unit } }),
      })
      const m = body.meter
      out.textContent = m
        ? `${m.voltageV.toFixed(0)} V · ${m.currentA.toFixed(2)} A · ${m.powerW.toFixed(0)} W · ${(m.energyWh / 1000).toFixed(3)} kWh` +
          (body.serial ? ` · serial ${body.serial}` : '')
        : 'no answer: ' + body.meterError
    } catch (err) {
      out.textContent = err.message
    }
  }

  async function refresh() {
    try {
      const { scan } = (await api('/api/scan')).body
      render(scan)
      clearTimeout(timer)
      if (scan?.running) timer = setTimeout(refresh, 500)
    } catch (err) {
      $('scan-error').textContent = err.message
    }
  }

  jobControls({ path: '/api/scan', form: 'scan-form', cancel: 'scan-cancel', error: 'scan-error', refresh, body: request })
  setup()
    .then((ok) => ok && refresh())
    .catch((err) => ($('scan-error').textContent = err.message))
})()
