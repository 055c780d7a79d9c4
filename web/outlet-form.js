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
  const { el, api, schemaField, resolveSchema, saveConfigForm } = window.Outpost
  /** Fields whose choices come from the config, not the schema: the list each names. */
  const REFERENCES = { plan: 'plans', circuit: 'circuits', bus: 'buses' }
  /** Shown, not edited here: an outlet's id names its topics and records. */
  const FIXED = new Set(['id', 'connectorId', 'autoStart'])
  let schema = null

  /** One input for a leaf of the schema at `pointer` (relative: "/meter/unit"), its value from `value`. */
  function field(name, node, value, pointer, config) {
    const ref = REFERENCES[name]
    return schemaField(schema, node, value, pointer, {
      label: pointer.slice(1).replace('/', ' '),
      ...(ref ? { choices: (config[ref] || []).map((x) => x.id), none: name !== 'plan' && name !== 'bus' } : {}),
    })
  }

  function form(outlet, index, config) {
    const item = resolveSchema(schema, schema.properties.outlets.items)
    const f = el('form', { class: 'of-form', 'data-outlet': outlet.id })
    f.append(el('h3', {}, outlet.id + (outlet.name ? ' — ' + outlet.name : '')))
    const grid = el('div', { class: 'of-grid' })
    for (const [name, node] of Object.entries(item.properties)) {
      if (FIXED.has(name)) continue
      const n = resolveSchema(schema, node)
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

  function save(f, index) {
    return saveConfigForm(f, `/outlets/${index}`, (next) => {
      next.outlets[index] = read(f, next.outlets[index])
    })
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
