// The node's dashboard: polls GET /v1/overview (open, read-only) and draws it. Actions send
// the admin token from the token field; it lives in this page's memory only (never in
// localStorage, a cookie or a URL). Every value from the node is put in the page as text.
"use strict";

(() => {
  const REFRESH_MS = 3000;
  const PHASES = ["train", "enrol", "encrypt", "mask", "commit", "exchange", "aggregate",
                  "decrypt"];
  const SVG_NS = "http://www.w3.org/2000/svg";
  let names = {};
  let lastOverview = null;

  const $ = (id) => document.getElementById(id);

  function el(tag, options = {}, ...children) {
    const node = document.createElement(tag);
    if (options.cls) node.className = options.cls;
    if (options.title) node.title = options.title;
    if (options.text !== undefined) node.textContent = String(options.text);
    for (const child of children) {
      if (child !== null && child !== undefined) {
        node.append(child instanceof Node ? child : document.createTextNode(String(child)));
      }
    }
    return node;
  }

  function svg(tag, attributes = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function short(hex, keep = 6) {
    if (!hex) return "";
    return hex.length > 2 * keep + 3 ? `${hex.slice(0, keep + 2)}…${hex.slice(-keep)}` : hex;
  }

  function who(address) {
    const name = names[address];
    return el("span", { title: address, text: name || short(address, 4) });
  }

  function people(addresses) {
    const span = el("span");
    addresses.forEach((address, i) => {
      if (i) span.append(", ");
      span.append(who(address));
    });
    return span;
  }

  function pct(value) {
    return value === null || value === undefined ? "–" : `${(100 * value).toFixed(1)} %`;
  }

  function fill(tbody, rows) {
    tbody.replaceChildren(...rows);
  }

  // ------------------------------------------------------------------ token and actions

  function token() {
    return $("token").value.trim();
  }

  function say(text, ok) {
    const message = $("action-message");
    message.textContent = text;
    message.className = `message ${ok ? "ok" : "bad"}`;
  }

  function updateButtons() {
    const has = token().length > 0;
    for (const button of document.querySelectorAll("button.needs-token")) {
      button.disabled = !has;
      button.title = has ? "" : "paste the admin token first";
    }
  }

  async function send(method, path, body) {
    const headers = { Authorization: `Bearer ${token()}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const reply = await fetch(path, {
      method, headers, cache: "no-store", credentials: "omit",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let answer = null;
    try {
      answer = await reply.json();
    } catch (_) {
      answer = null;
    }
    return { status: reply.status, ok: reply.ok, answer };
  }

  function refusal(action, reply) {
    const detail = reply.answer && typeof reply.answer.detail === "string"
      ? reply.answer.detail : `HTTP ${reply.status}`;
    if (reply.status === 401) {
      return `${action} refused: ${detail} (HTTP 401) — check the admin token.`;
    }
    return `${action} failed: ${detail} (HTTP ${reply.status}).`;
  }

  async function checkToken(event) {
    event.preventDefault();
    if (!token()) {
      say("Paste the admin token first.", false);
      return;
    }
    const reply = await send("GET", "/v1/status");
    if (reply.ok) say("Token accepted: actions are enabled.", true);
    else say(refusal("Token", reply), false);
  }

  function forgetToken() {
    $("token").value = "";
    updateButtons();
    say("Token forgotten: the page is read-only.", true);
  }

  async function createInvite() {
    const ttl = Number($("invite-ttl").value);
    const reply = await send("POST", "/v1/invites", { ttl_s: ttl });
    if (!reply.ok) {
      hideInvite();
      say(refusal("Invite", reply), false);
      return;
    }
    $("invite-token").textContent = reply.answer.invite;
    const expires = new Date(reply.answer.expires_at * 1000);
    $("invite-expiry").textContent =
      `Valid until ${expires.toLocaleString()}, for one node, through ${reply.answer.sponsor}.`;
    $("invite-result").hidden = false;
    say("Invite created.", true);
  }

  function hideInvite() {
    $("invite-token").textContent = "";
    $("invite-expiry").textContent = "";
    $("invite-result").hidden = true;
  }

  async function approve(address) {
    const reply = await send("POST", `/v1/members/${encodeURIComponent(address)}/approval`);
    if (!reply.ok) {
      say(refusal("Approval", reply), false);
      return;
    }
    const a = reply.answer;
    say(a.member ? `Approved: ${address} is a member now.`
                 : `Approved: ${address} has ${a.approvals} approvals.`, true);
    refresh();
  }

  // ------------------------------------------------------------------ members

  function drawMembers(overview) {
    const rows = overview.members.map((m) => {
      const row = el("tr", { cls: m.this_node ? "me" : "" },
        el("td", {}, m.name || "(unnamed)", m.this_node ? el("span", { cls: "tag", text: "this node" }) : null),
        el("td", { cls: "mono", title: m.address, text: short(m.address, 4) }),
        el("td", { cls: "mono", text: m.endpoint }),
        el("td", { text: m.dataset_size }),
        el("td", { text: m.last_round === null ? "–" : `round ${m.last_round}` }));
      row.dataset.address = m.address;
      return row;
    });
    fill($("members").tBodies[0], rows);
    $("members-empty").hidden = rows.length > 0;

    const pending = overview.pending.map((p) => {
      const button = el("button", { cls: "needs-token", text: "Approve" });
      button.type = "button";
      button.addEventListener("click", () => approve(p.address));
      return el("tr", {},
        el("td", { text: p.name || "(unnamed)" }),
        el("td", { cls: "mono", title: p.address, text: short(p.address, 4) }),
        el("td", { cls: "mono", text: p.endpoint }),
        el("td", { text: p.dataset_size }),
        el("td", { text: `${p.approvals} of ${p.needed}` }),
        el("td", {}, button));
    });
    fill($("pending").tBodies[0], pending);
    $("pending-empty").hidden = pending.length > 0;
  }

  // ------------------------------------------------------------------ chain, certificate

  function facts(dl, entries) {
    const items = [];
    for (const [label, value] of entries) {
      items.push(el("dt", { text: label }));
      items.push(value instanceof Node ? el("dd", {}, value) : el("dd", { text: value }));
    }
    dl.replaceChildren(...items);
  }

  function drawChain(overview) {
    const c = overview.chain;
    if (!c) {
      facts($("chain"), [["Status", "not a swarm member yet"]]);
      return;
    }
    const reach = el("span", { cls: c.reachable ? "good" : "warn",
                               text: c.reachable ? "reachable" : "unreachable" });
    const entries = [["Chain", reach], ["Endpoint", c.endpoint]];
    if (c.problem) entries.push(["Problem", el("span", { cls: "warn", text: c.problem })]);
    if (c.reachable) {
      const affordable = c.rounds_affordable === null ? "–" : `about ${c.rounds_affordable}`;
      entries.push(
        ["Block", c.block_number], ["Chain id", c.chain_id],
        ["Contract", el("span", { cls: "mono", text: c.contract })],
        ["Membership", c.membership_rule],
        ["Admin", who(c.admin)],
        ["Round", `${c.current_round} open, ${c.last_finalized_round} finalized`],
        ["Key epoch", c.key_epoch],
        ["Balance", `${c.balance_eth.toFixed(4)} ETH`],
        ["Gas price", `${c.gas_price_gwei.toFixed(3)} gwei`],
        ["Gas per round", c.gas_per_round === null ? "–" : c.gas_per_round.toLocaleString()],
        ["Pays for", el("span", { title: c.cost_basis }, `${affordable} rounds`)],
        ["Basis", el("span", { cls: "hint", text: c.cost_basis })]);
    } else {
      entries.push(["Contract", el("span", { cls: "mono", text: c.contract })]);
    }
    facts($("chain"), entries);
  }

  function drawCertificate(overview) {
    const t = overview.certificate;
    if (!t) {
      facts($("certificate"), [["Status", "no certificate in the state directory"]]);
      return;
    }
    const days = el("span", { cls: t.days_left < 30 ? "warn" : "good",
                              text: `${Math.floor(t.days_left)} days left` });
    facts($("certificate"), [
      ["Subject", t.subject || "–"],
      ["Expires", new Date(t.not_after).toISOString().slice(0, 10)],
      ["Left", days],
      ["Fingerprint", el("span", { cls: "mono", title: t.fingerprint, text: short(t.fingerprint, 8) })],
    ]);
  }

  // ------------------------------------------------------------------ chart

  function drawChart(rounds) {
    const chart = $("accuracy-chart");
    const W = 760, H = 260, left = 48, right = 16, top = 14, bottom = 34;
    const points = rounds.filter((r) => r.accuracy !== null);
    chart.replaceChildren();
    chart.dataset.points = String(points.length);
    if (!points.length) {
      chart.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "no-data" },
                       "no finished round yet"));
      return;
    }
    const values = points.flatMap((r) => [r.accuracy, r.heldout_accuracy])
      .filter((v) => v !== null);
    const low = Math.max(0, Math.floor((Math.min(...values) - 0.02) * 10) / 10);
    const high = Math.min(1, Math.ceil((Math.max(...values) + 0.02) * 10) / 10);
    const first = points[0].round, last = points[points.length - 1].round;
    const x = (n) => left + (last === first ? 0.5 : (n - first) / (last - first)) * (W - left - right);
    const y = (v) => top + (1 - (v - low) / (high - low || 1)) * (H - top - bottom);

    for (let v = low; v <= high + 1e-9; v += 0.1) {
      chart.append(svg("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), class: "grid-line" }));
      chart.append(svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" },
                       `${Math.round(v * 100)}%`));
    }
    chart.append(svg("line", { x1: left, x2: left, y1: top, y2: H - bottom, class: "axis" }));
    chart.append(svg("line", { x1: left, x2: W - right, y1: H - bottom, y2: H - bottom, class: "axis" }));
    const step = Math.max(1, Math.ceil(points.length / 12));
    points.forEach((r, i) => {
      if (i % step === 0 || i === points.length - 1) {
        chart.append(svg("text", { x: x(r.round), y: H - bottom + 16, "text-anchor": "middle",
                                   class: "tick" }, r.round));
      }
    });
    chart.append(svg("text", { x: (left + W - right) / 2, y: H - 4, "text-anchor": "middle",
                               class: "tick" }, "round"));

    for (const [key, cls] of [["accuracy", "test"], ["heldout_accuracy", "heldout"]]) {
      const series = points.filter((r) => r[key] !== null);
      if (!series.length) continue;
      const path = series.map((r, i) => `${i ? "L" : "M"}${x(r.round).toFixed(1)},${y(r[key]).toFixed(1)}`);
      chart.append(svg("path", { d: path.join(" "), class: `series series-${cls}` }));
      for (const r of series) {
        const dot = svg("circle", { cx: x(r.round), cy: y(r[key]), r: 3.5, class: `point point-${cls}` });
        dot.append(svg("title", {}, `round ${r.round}: ${pct(r[key])} (${cls === "test" ? "own test split" : "held-out"})`));
        chart.append(dot);
      }
    }
  }

  // ------------------------------------------------------------------ rounds

  function phaseBar(seconds) {
    const total = Object.values(seconds).reduce((a, b) => a + b, 0);
    const bar = el("div", { cls: "phasebar" });
    for (const [phase, value] of Object.entries(seconds)) {
      const part = el("span", { cls: `phase-${PHASES.includes(phase) ? phase : "other"}`,
                                title: `${phase} ${value.toFixed(2)} s` });
      part.style.width = `${total ? (100 * value) / total : 0}%`;
      bar.append(part);
    }
    return el("div", {}, bar, el("span", { cls: "phase-total", text: `${total.toFixed(1)} s` }));
  }

  function hashes(list) {
    const cell = el("div", { cls: "mono" });
    list.forEach((h, i) => {
      if (i) cell.append(el("br"));
      cell.append(el("span", { title: h, text: short(h) }));
    });
    return list.length ? cell : "–";
  }

  function liveRow(live) {
    const dot = el("span", { cls: "live-dot" });
    const row = el("tr", { cls: "live" },
      el("td", {}, dot, ` ${live.round}`),
      el("td", {}, el("span", { cls: "tag live", text: `live: ${live.stage}` })),
      el("td", {}, people(live.enrolled), el("div", { cls: "hint",
        text: `${live.enrolled.length} enrolled, ${live.committed} of ${live.participants} committed, attempt ${live.attempt}` })),
      el("td", {}, live.relay_order.length ? who(live.relay_order[0]) : "–"),
      el("td", { text: lastOverview ? lastOverview.phase : "" }),
      el("td", { text: `${live.aggregated_blocks} of ${live.block_count} blocks aggregated` }),
      el("td", { text: "–" }), el("td", { text: "–" }), el("td", { text: "–" }));
    row.id = "live-round";
    return row;
  }

  function drawRounds(overview) {
    const rows = [];
    if (overview.live) rows.push(liveRow(overview.live));
    for (const r of [...overview.rounds].reverse()) {
      const status = el("span", { cls: `tag ${r.status}`, text: r.status });
      const statusCell = el("td", {}, status);
      if (r.reason) statusCell.append(el("div", { cls: "hint", text: r.reason }));
      if (!r.committed) statusCell.append(el("div", { cls: "hint", text: "caught up" }));
      const relay = r.relays.length ? people(r.relays) : "–";
      const row = el("tr", {},
        el("td", { text: r.round }),
        statusCell,
        el("td", {}, people(r.contributors), el("div", { cls: "hint", text: `${r.weight_sum} samples` })),
        el("td", {}, relay, r.relayed_here ? el("span", { cls: "tag", text: "this node" }) : null),
        el("td", {}, phaseBar(r.seconds)),
        el("td", {}, `test ${pct(r.accuracy)}`, el("br"), `held-out ${pct(r.heldout_accuracy)}`),
        el("td", {}, hashes(r.aggregate_digests)),
        el("td", {}, hashes(r.aggregate_transactions)),
        el("td", { text: r.gas_used === null ? "–" : r.gas_used.toLocaleString() }));
      row.dataset.round = String(r.round);
      rows.push(row);
    }
    fill($("rounds").tBodies[0], rows);
  }

  function drawPhaseLegend() {
    const legend = $("phase-legend");
    for (const phase of PHASES) {
      legend.append(el("span", { cls: `swatch phase-${phase}` }), phase);
    }
  }

  // ------------------------------------------------------------------ refresh

  function drawStatus(overview) {
    $("node-name").textContent = overview.node;
    document.title = `Apiary node ${overview.node}`;
    const line = $("status-line");
    const parts = [`${overview.mode} mode`, `model of round ${overview.round}`,
                   `phase: ${overview.phase}`];
    if (overview.address) parts.push(`account ${short(overview.address, 4)}`);
    parts.push(`updated ${new Date(overview.generated_at * 1000).toLocaleTimeString()}`);
    line.replaceChildren();
    if (overview.live) line.append(el("span", { cls: "live-dot" }), `round ${overview.live.round} live · `);
    line.append(parts.join(" · "));
  }

  async function refresh() {
    let overview;
    try {
      const reply = await fetch("/v1/overview", { cache: "no-store", credentials: "omit" });
      if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
      overview = await reply.json();
    } catch (error) {
      $("status-line").textContent = `the node did not answer (${error.message}); retrying`;
      return;
    }
    lastOverview = overview;
    names = {};
    for (const m of [...overview.members, ...overview.pending]) {
      if (m.name) names[m.address] = m.name;
    }
    drawStatus(overview);
    drawMembers(overview);
    drawChain(overview);
    drawCertificate(overview);
    drawChart(overview.rounds);
    drawRounds(overview);
    updateButtons();
    document.body.dataset.loaded = "true";
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("refresh-seconds").textContent = String(REFRESH_MS / 1000);
    $("token-form").addEventListener("submit", checkToken);
    $("token").addEventListener("input", updateButtons);
    $("forget-token").addEventListener("click", forgetToken);
    $("create-invite").addEventListener("click", createInvite);
    $("invite-done").addEventListener("click", hideInvite);
    drawPhaseLegend();
    updateButtons();
    refresh();
    setInterval(refresh, REFRESH_MS);
  });
})();
