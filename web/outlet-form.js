/*
 * The status page's outlet settings: one form per outlet, built from the site config's JSON
 * Schema (GET /api/config/schema, the file check-config uses) — each field its type, range,
 * choices and description — with the references a schema cannot list (plans, circuits, buses)
 * filled in from the config. "Save" is a config save (PUT /api/config with If-Match): the
 * server's problems appear at their fields, by JSON pointer; nothing else changes.
 */
'use strict'
;(() => {
  const $ = (id) => document.getElementById(id)
  const { el, api } = window.Outpost
  /** Fields whose choices come from the config, not the schema: the list each names. */
  const REFERENCES = { plan: 'plans', circuit: 'circuits', bus: 'buses' }
  /** Shown, not edited here: an outlet's id names its topics and records. */
  const FIXED = new Set(['id', 'connectorId', 'autoStart'])
  let schema = null

  /** A schema node with its $ref followed (local refs only, as the site schema uses). */
  function resolve(node) {
    let n = node
    while (n?.$ref) {
      const path = n.$ref.replace(/^#\//, '').split('/')
      const desc = n.description
      n = path.reduce((o, k) => o?.[k], schema)
      if (desc && n && !n.description) n = { ...n, description: desc }
    }
    return n
  }

  /** One input for a leaf of the schema at `pointer` (relative: "/meter/unit"), its value from `value`. */
  function field(name, node, value, pointer, config) {
    const n = resolve(node) || {}
    const id = 'of' + pointer.replace(/\//g, '-')
    let input
    const ref = REFERENCES[name]
    if (ref) {
      input = el('select', { id, 'data-pointer': pointer })
      if (name !== 'plan' && name !== 'bus') input.append(el('option', { value: '' }, '(none)'))
      for (const x of config[ref] || []) input.append(el('option', x.id === value ? { value: x.id, selected: '' } : { value: x.id }, x.id))
    } else if (n.enum) {
      input = el('select', { id, 'data-pointer': pointer })
      if (n.default === undefined) input.append(el('option', { value: '' }, '(default)'))
      for (const v of n.enum)
        input.append(el('option', v === (value ?? n.default) ? { value: String(v), selected: '' } : { value: String(v) }, String(v)))
    } else if (n.type === 'integer' || n.type === 'number') {
      const a = { id, type: 'number', 'data-pointer': pointer, step: n.type === 'integer' ? '1' : 'any' }
      if (n.minimum !== undefined) a.min = String(n.minimum)
      if (n.maximum !== undefined) a.max = String(n.maximum)
      if (n.default !== undefined) a.placeholder = String(n.default)
      input = el('input', a)
      if (value !== undefined) input.value = String(value)
    } else {
      input = el('input', { id, type: 'text', 'data-pointer': pointer, ...(n.maxLength ? { maxlength: String(n.maxLength) } : {}) })
      if (value !== undefined) input.value = String(value)
    }
    input.dataset.kind = n.enum
      ? typeof n.enum[0] === 'number'
        ? 'number'
        : 'string'
      : n.type === 'integer' || n.type === 'number'
        ? 'number'
        : 'string'
    return el(
      'label',
      { class: 'of-field', title: n.description || '' },
      el('span', {}, pointer.slice(1).replace('/', ' ')),
      input,
      el('small', { class: 'err', 'data-error-for': pointer }),
    )
  }

  function form(outlet, index, config) {
    const item = resolve(schema.properties.outlets.items)
    const f = el('form', { class: 'of-form', 'data-outlet': outlet.id })
    f.append(el('h3', {}, outlet.id + (outlet.name ? ' — ' + outlet.name : '')))
    const grid = el('div', { class: 'of-grid' })
    for (const [name, node] of Object.entries(item.properties)) {
      if (FIXED.has(name)) continue
      const n = resolve(node)
      if (n.type === 'object') {
        for (const [sub, subNode] of Object.entries(n.properties || {}))
          grid.append(field(sub, subNode, outlet[name]?.[sub], `/${name}/${sub}`, config))
      } else grid.append(field(name, node, outlet[name], `/${name}`, config))
    }
    f.append(grid, el('button', { type: 'submit' }, 'Save'), ' ', el('span', { class: 'of-msg' }))
    f.addEventListener('submit', (ev) => {
      ev.preventDefault()
      save(f, index)
    })
    return f
  }

  /** The outlet as the form says: empty fields left out (the schema's default applies), numbers as numbers. */
  function read(f, before) {
    const out = {
      id: before.id,
      ...(before.connectorId !== undefined ? { connectorId: before.connectorId } : {}),
      ...(before.autoStart ? { autoStart: before.autoStart } : {}),
    }
    for (const input of f.querySelectorAll('[data-pointer]')) {
      const raw = input.value.trim()
      if (raw === '') continue
      const v = input.dataset.kind === 'number' && !Number.isNaN(Number(raw)) ? Number(raw) : raw
      const [a, b] = input.dataset.pointer.slice(1).split('/')
      if (b === undefined) out[a] = v
      else out[a] = { ...(out[a] || {}), [b]: v }
    }
    return out
  }

  async function save(f, index) {
    for (const e of f.querySelectorAll('[data-error-for]')) e.textContent = ''
    const msg = f.querySelector('.of-msg')
    msg.textContent = 'saving…'
    msg.className = 'of-msg'
    try {
      const cfg = await api('/api/config')
      const next = structuredClone(cfg.body.config)
      next.outlets[index] = read(f, next.outlets[index])
      const r = await api('/api/config', {
        method: 'PUT',
        headers: { 'content-type': 'application/json', 'if-match': cfg.etag },
        body: JSON.stringify(next, null, 2),
      })
      msg.textContent = r.body.unchanged ? 'nothing changed' : 'saved: ' + r.body.changed.join(', ')
      msg.className = 'of-msg good'
    } catch (err) {
      const prefix = `/outlets/${index}`
      let placed = 0
      for (const p of err.problems) {
        const at = p.pointer.startsWith(prefix) ? f.querySelector(`[data-error-for="${p.pointer.slice(prefix.length)}"]`) : null
        if (at) {
          at.textContent = p.message
          placed++
        }
      }
      msg.textContent = placed > 0 && placed === err.problems.length ? 'not saved: see the fields' : err.message
      msg.className = 'of-msg bad'
    }
  }

  async function start() {
    const cfg = await api('/api/config').catch(() => null)
    if (!cfg) {
      $('outlet-forms').textContent =
        'Outlet settings are saved to the site’s config file: they work under outpost run --config FILE, and this daemon runs without one (as the demo does).'
      return
    }
    const s = await api('/api/config/schema')
    schema = s.body
    const box = $('outlet-forms')
    box.replaceChildren(...cfg.body.config.outlets.map((o, i) => form(o, i, cfg.body.config)))
  }

  $('outlet-settings').addEventListener('toggle', (ev) => {
    if (ev.target.open) start().catch((err) => ($('outlet-forms').textContent = err.message))
  })
})()
