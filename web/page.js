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

  return { el, api }
})()
