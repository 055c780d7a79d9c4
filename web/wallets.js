/*
 * The status page's users and wallets (the owner's): each user's balance and what their open
 * sessions have reserved of it, and a form that sets a balance (PUT /api/wallets/{user}, the
 * same engine command as the cloud's set-wallet). Amounts are typed in currency units and
 * sent as integer minor units. Names shown as text.
 */
'use strict'
;(() => {
  const $ = (id) => document.getElementById(id)
  const { el, api } = window.Outpost
  let digits = {}

  const shown = (minor, currency, d) => (minor / 10 ** d).toFixed(d) + ' ' + currency

  async function refresh() {
    const { body } = await api('/api/wallets')
    digits = Object.fromEntries(body.wallets.map((w) => [w.currency, w.digits]))
    const rows = body.wallets.map((w) =>
      el(
        'tr',
        { 'data-user': w.userId },
        el('td', {}, w.userId),
        el('td', { class: 'n' }, shown(w.balance, w.currency, w.digits)),
        el('td', { class: 'n' }, shown(w.reserved, w.currency, w.digits)),
      ),
    )
    $('wallets').tBodies[0].replaceChildren(
      ...(rows.length > 0 ? rows : [el('tr', {}, el('td', { colspan: '3', class: 'empty' }, 'No wallets yet.'))]),
    )
  }

  async function start() {
    const cfg = await api('/api/config').catch(() => null)
    if (cfg && !$('wallet-currency').value) $('wallet-currency').value = cfg.body.config.plans[0]?.currency || ''
    await refresh()
  }

  $('wallet-form').addEventListener('submit', async (ev) => {
    ev.preventDefault()
    $('wallet-error').textContent = ''
    const currency = $('wallet-currency').value.trim().toUpperCase()
    // The currency's minor digits: a wallet's as the server said, else ISO 4217's as the browser knows them.
    let d = digits[currency]
    if (d === undefined) {
      try {
        d = new Intl.NumberFormat('en', { style: 'currency', currency }).resolvedOptions().maximumFractionDigits
      } catch (_) {
        d = 2
      }
    }
    const balance = Math.round(Number($('wallet-balance').value) * 10 ** d)
    try {
      await api('/api/wallets/' + encodeURIComponent($('wallet-user').value.trim()), {
        method: 'PUT',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ currency, balance }),
      })
      await refresh()
    } catch (err) {
      $('wallet-error').textContent = err.message
    }
  })

  $('wallet-settings').addEventListener('toggle', (ev) => {
    if (ev.target.open) start().catch((err) => ($('wallet-error').textContent = err.message))
  })
})()
