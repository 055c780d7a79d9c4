/*
 * The status page's prices: one form per plan, its fields from the site config's JSON Schema
 * (the activation fee; each period's hours and rates, with the schema's ranges and
 * descriptions). "Save" is a config save (PUT /api/config with If-Match), the owner's to make:
 * the server's problems appear at their fields; a price change applies to sessions started
 * after it, and a running session keeps the price it started with (docs/contract.md "Config
 * changes").
 */
'use strict'
;(() => {
  const $ = (id) => document.getElementById(id)
  const { el, api, schemaField, resolveSchema, saveConfigForm } = window.Outpost
  /** What a period's row edits; its days stay as configured (shown). */
  const PERIOD_FIELDS = ['from', 'to', 'perKwh', 'perHour']
  let schema = null

  function form(plan, index) {
    const planNode = resolveSchema(schema, schema.$defs.plan)
    const periodNode = resolveSchema(schema, schema.$defs.period)
    const prefix = 'pf' + index
    const f = el('form', { class: 'of-form', 'data-plan': plan.id })
    f.append(el('h3', {}, plan.id + (plan.name ? ' — ' + plan.name : '') + ' · ' + plan.currency))
    const grid = el('div', { class: 'of-grid' })
    grid.append(
      schemaField(schema, planNode.properties.activationFee, plan.activationFee, '/activationFee', { label: 'activation fee', idPrefix: prefix }),
    )
    f.append(grid)
    plan.periods.forEach((p, i) => {
      const row = el('div', { class: 'of-grid' })
      row.append(el('div', { class: 'of-field' }, el('span', {}, 'days'), el('b', {}, p.days.join(' '))))
      for (const name of PERIOD_FIELDS)
        row.append(schemaField(schema, periodNode.properties[name], p[name], `/periods/${i}/${name}`, { label: name, idPrefix: prefix }))
      f.append(row)
    })
    f.append(el('button', { type: 'submit' }, 'Save'), ' ', el('span', { class: 'of-msg' }))
    f.addEventListener('submit', (ev) => {
      ev.preventDefault()
      save(f, index)
    })
    return f
  }

  /** The plan as the form says: an emptied field is left out, numbers as numbers. */
  function read(f, before) {
    const out = structuredClone(before)
    for (const input of f.querySelectorAll('[data-pointer]')) {
      const raw = input.value.trim()
      const parts = input.dataset.pointer.slice(1).split('/')
      const key = parts.pop()
      const at = parts.reduce((o, k) => o[k], out)
      if (raw === '') delete at[key]
      else at[key] = input.dataset.kind === 'number' && !Number.isNaN(Number(raw)) ? Number(raw) : raw
    }
    return out
  }

  function save(f, index) {
    return saveConfigForm(f, `/plans/${index}`, (next) => {
      next.plans[index] = read(f, next.plans[index])
    })
  }

  async function start() {
    const cfg = await api('/api/config').catch(() => null)
    if (!cfg) {
      $('plan-forms').textContent =
        'Prices are saved to the site’s config file: they work under outpost run --config FILE, and this daemon runs without one (as the demo does).'
      return
    }
    schema = (await api('/api/config/schema')).body
    $('plan-forms').replaceChildren(...cfg.body.config.plans.map((p, i) => form(p, i)))
  }

  $('plan-settings').addEventListener('toggle', (ev) => {
    if (ev.target.open) start().catch((err) => ($('plan-forms').textContent = err.message))
  })
})()
