/*
 * What the status page's scripts share: building elements (every value as text, never HTML)
 * and calling the local API as the signed-in browser (an error carries the server's message
 * and, for a refused config, its problems at their pointers). Loaded before the others.
 */
'use strict'
window.Outpost = (() => {
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag)
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') e.className = v
      else if (k === 'color')
        e.style.background = v // CSSOM: allowed by the page's CSP, unlike a style attribute
      else e.setAttribute(k, v)
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c))
    return e
  }

  async function api(path, init) {
    const res = await fetch(path, { credentials: 'same-origin', cache: 'no-store', ...(init || {}) })
    const body = await res.json().catch(() => ({}))
    if (!res.ok) {
      const err = new Error(body.error?.message || 'HTTP ' + res.status)
      err.problems = body.error?.problems || []
      throw err
    }
    return { body, etag: res.headers.get('etag') }
  }

  /** A schema node with its $ref followed (local refs only, as the site schema uses). */
  function resolveSchema(schema, node) {
    let n = node
    while (n?.$ref) {
      const path = n.$ref.replace(/^#\//, '').split('/')
      const desc = n.description
      n = path.reduce((o, k) => o?.[k], schema)
      if (desc && n && !n.description) n = { ...n, description: desc }
    }
    return n
  }

  /**
   * One labelled input for a leaf of the site schema at `pointer` (relative to the form's
   * object): its type, range, choices and description from the schema, its value from `value`;
   * `o.choices` lists what a reference may name (a plan, a circuit), `o.none` offers leaving it out.
   * Each input carries `data-pointer` and `data-kind`, and an error line `data-error-for`.
   */
  function schemaField(schema, node, value, pointer, o) {
    const n = resolveSchema(schema, node) || {}
    const id = (o.idPrefix ?? 'of') + pointer.replace(/\//g, '-')
    let input
    if (o.choices) {
      input = el('select', { id, 'data-pointer': pointer })
      if (o.none) input.append(el('option', { value: '' }, '(none)'))
      for (const x of o.choices) input.append(el('option', x === value ? { value: x, selected: '' } : { value: x }, x))
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
      el('span', {}, o.label),
      input,
      el('small', { class: 'err', 'data-error-for': pointer }),
    )
  }

  /**
   * A settings form's save: the config in force, changed by `change`, saved with If-Match (a
   * concurrent edit is refused, never overwritten); the server's problems under `prefix` (the
   * form's object, "/plans/0") at their fields, the rest in the form's message.
   */
  async function saveConfigForm(f, prefix, change) {
    for (const e of f.querySelectorAll('[data-error-for]')) e.textContent = ''
    const msg = f.querySelector('.of-msg')
    msg.textContent = 'saving…'
    msg.className = 'of-msg'
    try {
      const cfg = await api('/api/config')
      const next = structuredClone(cfg.body.config)
      change(next)
      const r = await api('/api/config', {
        method: 'PUT',
        headers: { 'content-type': 'application/json', 'if-match': cfg.etag },
        body: JSON.stringify(next, null, 2),
      })
      msg.textContent = r.body.unchanged ? 'nothing changed' : 'saved: ' + r.body.changed.join(', ')
      msg.className = 'of-msg good'
    } catch (err) {
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

  /** A scrolling table: `headers` as text, `rows` the <tr> elements. */
  function table(id, headers, rows) {
    return el(
      'div',
      { class: 'scroll' },
      el('table', { id }, el('thead', {}, el('tr', {}, ...headers.map((x) => el('th', {}, x)))), el('tbody', {}, ...rows)),
    )
  }

  /**
   * A long job the server runs (the cross-check, a bus scan): its form's submit POSTs `body()`
   * to `path` (nothing when `body` returns null), its cancel button DELETEs it; either way the
   * server's refusal goes to `error` and the view is `refresh`ed.
   */
  function jobControls(o) {
    const $ = (id) => document.getElementById(id)
    $(o.form).addEventListener('submit', async (ev) => {
      ev.preventDefault()
      $(o.error).textContent = ''
      const body = o.body()
      if (body === null) return
      try {
        await api(o.path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
      } catch (err) {
        $(o.error).textContent = err.message
      }
      o.refresh()
    })
    $(o.cancel).addEventListener('click', async () => {
      await api(o.path, { method: 'DELETE' }).catch((err) => ($(o.error).textContent = err.message))
      o.refresh()
    })
  }

  return { el, api, table, resolveSchema, schemaField, saveConfigForm, jobControls }
})()
