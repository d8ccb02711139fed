// Qingnuan operator dashboard: hash routes, one string table per language, inline SVG.
// Served by the server itself (no CDN); refreshes the current view every 30 s.
"use strict";

const STR = {
  zh: {
    title: "清暖 · 煤改电运行监测", nav_overview: "总览", nav_alarms: "告警", refresh: "刷新",
    loading: "加载中…", updated: "更新于", switch_lang: "English", error: "加载失败",
    gw_online: "在线网关", hp_running: "运行中热泵", open_alarms: "未处理告警",
    tonight: "今夜谷电（暂估）", last_night: "昨夜谷电", season_total: "本采暖季谷电",
    subsidy: "补贴", yuan: "元", kwh: "千瓦时", of: "/", households_live: "在线户数",
    progress: "各区进度（对照2018年计划）", district: "区", town: "镇/乡", village: "村",
    plan_villages: "计划村数", villages_enrolled: "登记村", villages_live: "在线村",
    hh_enrolled: "登记户", hh_live: "在线户", hh_running: "运行户", seed_m2: "籽种农业面积(㎡)",
    villages: "村庄", gateways: "网关", state: "状态", last_seen: "最后通信", version: "版本",
    spool: "缓存/丢弃", household: "住户", meters: "电表", running: "运行", live: "在线",
    power: "功率(W)", season_kwh: "季度谷电(kWh)", alarms: "告警", yes: "是", no: "否",
    online: "在线", offline: "离线", unknown: "未连接", open: "未处理", cleared: "已消除", all: "全部",
    nightly: "每晚谷电用量", actual: "实测", estimated: "估算", missing: "缺失",
    statement: "季度结算单", how: "计算依据", offpeak_kwh: "谷电电量", subsidised_kwh: "补贴电量",
    cap_kwh: "补贴上限", cap_reached_on: "达到上限日期", city_subsidy: "市级补贴", district_subsidy: "区级补贴",
    valley_charge: "谷电电费", nights: "夜数", flags: "标记", meter: "电表", last_read: "最后读数",
    failures: "连续失败", errors: "错误类型", clock: "时钟偏差(s)", kind: "类型", reason: "原因",
    opened: "产生时间", cleared_at: "消除时间", filter: "筛选", night: "夜", quality: "质量",
    none: "无", device: "设备", back_overview: "总览",
    k_gateway_offline: "网关离线", k_meter_silent: "电表无响应", k_no_consumption: "连续无谷电用电",
    k_cap_near: "接近补贴上限", k_tou_mismatch: "分时时段不符", k_meter_clock: "电表时钟偏差",
    k_readings_rejected: "读数被剔除", k_gateway_clock: "网关时钟偏差", k_spoofed_reading: "冒用电表读数",
  },
  en: {
    title: "Qingnuan · clean-heating monitor", nav_overview: "Overview", nav_alarms: "Alarms", refresh: "Refresh",
    loading: "Loading…", updated: "Updated", switch_lang: "中文", error: "Failed to load",
    gw_online: "Gateways online", hp_running: "Heat pumps running", open_alarms: "Open alarms",
    tonight: "Tonight off-peak (provisional)", last_night: "Last night off-peak", season_total: "Season off-peak",
    subsidy: "Subsidy", yuan: "yuan", kwh: "kWh", of: "/", households_live: "Households live",
    progress: "District progress against the 2018 plan", district: "District", town: "Town", village: "Village",
    plan_villages: "Planned villages", villages_enrolled: "Villages enrolled", villages_live: "Villages live",
    hh_enrolled: "Households", hh_live: "Live", hh_running: "Running", seed_m2: "Seed agriculture (m²)",
    villages: "Villages", gateways: "Gateways", state: "State", last_seen: "Last seen", version: "Version",
    spool: "Spool/dropped", household: "Household", meters: "Meters", running: "Running", live: "Live",
    power: "Power (W)", season_kwh: "Season off-peak (kWh)", alarms: "Alarms", yes: "yes", no: "no",
    online: "online", offline: "offline", unknown: "never heard", open: "open", cleared: "cleared", all: "all",
    nightly: "Nightly off-peak kWh", actual: "actual", estimated: "estimated", missing: "missing",
    statement: "Season statement", how: "How each figure was obtained", offpeak_kwh: "Off-peak energy",
    subsidised_kwh: "Subsidised energy", cap_kwh: "Cap", cap_reached_on: "Cap reached on",
    city_subsidy: "City subsidy", district_subsidy: "District subsidy", valley_charge: "Valley charge",
    nights: "Nights", flags: "Flags", meter: "Meter", last_read: "Last read", failures: "Failures in a row",
    errors: "Error kinds", clock: "Clock offset (s)", kind: "Kind", reason: "Reason", opened: "Opened",
    cleared_at: "Cleared", filter: "Filter", night: "Night", quality: "Quality", none: "none", device: "Device",
    back_overview: "Overview",
    k_gateway_offline: "Gateway offline", k_meter_silent: "Meter silent", k_no_consumption: "No off-peak consumption",
    k_cap_near: "Cap nearly reached", k_tou_mismatch: "TOU table mismatch", k_meter_clock: "Meter clock off",
    k_readings_rejected: "Readings rejected", k_gateway_clock: "Gateway clock off", k_spoofed_reading: "Spoofed readings",
  },
};
const KINDS = ["gateway_offline", "meter_silent", "no_consumption", "cap_near", "tou_mismatch", "meter_clock", "readings_rejected", "gateway_clock", "spoofed_reading"];

function initialLang() {
  const q = new URLSearchParams(location.search).get("lang");
  if (q === "en" || q === "zh") return q;
  try { const s = localStorage.getItem("qn-lang"); if (s === "en" || s === "zh") return s; } catch (e) { /* private mode */ }
  return document.body.dataset.lang === "en" ? "en" : "zh";
}
let lang = initialLang();
const t = (k) => (STR[lang] && STR[lang][k]) || STR.zh[k] || k;

function esc(s) {
  return String(s == null ? "" : s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
// UTC Unix seconds as Beijing local time (UTC+8, no DST).
function fmtTime(s) {
  if (s == null) return "—";
  return new Date((s + 8 * 3600) * 1000).toISOString().slice(0, 16).replace("T", " ");
}
const enc = encodeURIComponent;
// With `[auth] tokens_file` the API wants a bearer token: asked once on a 401, kept in
// localStorage, sent with every request.
function savedToken() { try { return localStorage.getItem("qn-token") || ""; } catch (e) { return ""; } }
const askToken = { pending: null };
async function api(path, retried) {
  const headers = { Accept: "application/json" };
  const tok = savedToken();
  if (tok) headers.Authorization = "Bearer " + tok;
  const r = await fetch(path, { headers });
  if (r.status === 401 && !retried) {
    // Several views fetch at once: one prompt serves them all.
    if (!askToken.pending) {
      askToken.pending = Promise.resolve().then(() => {
        const entered = window.prompt(lang === "en" ? "API token" : "访问令牌 (API token)");
        if (entered) { try { localStorage.setItem("qn-token", entered.trim()); } catch (e) { /* private mode */ } }
        setTimeout(() => { askToken.pending = null; }, 1000);
        return entered;
      });
    }
    if (await askToken.pending) return api(path, true);
  }
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}
function pill(cls, text) { return `<span class="pill ${esc(cls)}">${esc(text)}</span>`; }
function stateText(s) { return pill("s-" + s, t(s)); }
function card(id, label, value, sub) {
  return `<div class="card"><div class="label">${esc(label)}</div><div class="value" id="${id}">${esc(value)}</div>${sub ? `<div class="sub">${sub}</div>` : ""}</div>`;
}
function table(head, rows) {
  return `<div class="table-wrap"><table><thead><tr>${head.map((h) => `<th class="${h[1] || ""}">${esc(h[0])}</th>`).join("")}</tr></thead><tbody>${rows.join("") || `<tr><td colspan="${head.length}" class="muted">${esc(t("none"))}</td></tr>`}</tbody></table></div>`;
}
function bar(permille) {
  const w = Math.max(0, Math.min(1000, permille || 0)) * 120 / 1000;
  return `<svg class="progress" viewBox="0 0 120 10" role="img"><rect width="120" height="10" fill="#e3e6ea"/><rect width="${w}" height="10" fill="#1f9d55"/></svg> ${((permille || 0) / 10).toFixed(1)}%`;
}

// ---- views ----
async function viewOverview() {
  const [o, p] = await Promise.all([api("/api/v1/overview"), api("/api/v1/progress")]);
  const tn = o.tonight, ln = o.last_night, st = o.season_total;
  let h = `<div class="cards">
    ${card("ov-gateways-online", t("gw_online"), `${o.gateways.online} / ${o.gateways.total}`)}
    ${card("ov-running", t("hp_running"), o.heat_pumps_running, `${esc(t("households_live"))}: <span id="ov-live">${o.households.live}</span> / ${o.households.enrolled}`)}
    ${card("ov-alarms", t("open_alarms"), o.alarms.open, `<a href="#/alarms">${esc(t("nav_alarms"))} →</a>`)}
    ${card("ov-tonight-kwh", t("tonight") + (tn ? " " + tn.night : ""), tn ? tn.kwh : "—", tn ? `${esc(t("subsidy"))} <span id="ov-tonight-yuan">${esc(tn.subsidy_yuan)}</span> ${esc(t("yuan"))}` : "")}
    ${card("ov-lastnight-kwh", t("last_night") + (ln ? " " + ln.night : ""), ln ? ln.kwh : "—", ln ? `${esc(t("subsidy"))} ${esc(ln.subsidy_yuan)} ${esc(t("yuan"))} · ${esc(t("actual"))} ${ln.quality.actual} / ${esc(t("estimated"))} ${ln.quality.estimated} / ${esc(t("missing"))} ${ln.quality.missing}` : "")}
    ${card("ov-season-kwh", t("season_total") + " " + o.season, st.offpeak_kwh, `${esc(t("subsidy"))} <span id="ov-season-yuan">${esc(st.subsidy_yuan)}</span> ${esc(t("yuan"))}`)}
  </div>`;
  h += `<h2>${esc(t("progress"))}</h2>`;
  h += table(
    [[t("district")], [t("plan_villages"), "num"], [t("villages_enrolled"), "num"], [t("villages_live"), "num"], [""], [t("hh_enrolled"), "num"], [t("hh_live"), "num"], [t("hh_running"), "num"], [t("seed_m2"), "num"]],
    p.districts.map((d) => `<tr><td><a href="#/district/${enc(d.district)}">${esc(d.district)}</a></td>
      <td class="num">${d.plan ? d.plan.villages : "—"}</td><td class="num">${d.villages_enrolled}</td><td class="num">${d.villages_live}</td>
      <td>${d.villages_live_permille == null ? "" : bar(d.villages_live_permille)}</td>
      <td class="num">${d.households_enrolled}</td><td class="num">${d.households_live}</td><td class="num">${d.households_running}</td>
      <td class="num">${d.plan ? d.plan.seed_agriculture_m2 : "—"}</td></tr>`));
  return h;
}

function crumbs(parts) {
  return `<div class="crumbs"><a href="#/">${esc(t("back_overview"))}</a>${parts.map((p) => ` › ${p}`).join("")}</div>`;
}

async function viewDistrict(d) {
  const [p, gws] = await Promise.all([api("/api/v1/progress"), api("/api/v1/gateways?district=" + enc(d))]);
  const dist = p.districts.find((x) => x.district === d);
  let h = crumbs([esc(d)]) + `<h2>${esc(d)} · ${esc(t("villages"))}</h2>`;
  h += table([[t("town")], [t("village")], [t("hh_enrolled"), "num"], [t("hh_live"), "num"], [t("hh_running"), "num"]],
    (dist ? dist.villages : []).map((v) => `<tr><td>${esc(v.town)}</td><td><a href="#/village/${enc(d)}/${enc(v.village)}">${esc(v.village)}</a></td>
      <td class="num">${v.enrolled}</td><td class="num">${v.live}</td><td class="num">${v.running}</td></tr>`));
  h += `<h2>${esc(t("gateways"))}</h2>` + gatewayTable(gws);
  return h;
}

function gatewayTable(gws) {
  return table([[t("gateways")], [t("state")], [t("last_seen")], [t("version")], [t("spool"), "num"], [t("clock"), "num"], [t("village")]],
    gws.map((g) => `<tr><td>${esc(g.id)}</td><td>${stateText(g.state)}</td><td>${fmtTime(g.last_seen)}</td><td>${esc(g.version || "—")}</td>
      <td class="num">${g.spool_records == null ? "—" : g.spool_records} / ${g.spool_dropped == null ? "—" : g.spool_dropped}</td>
      <td class="num">${g.clock_offset_s == null ? "—" : g.clock_offset_s}</td><td>${esc(g.village || "")}</td></tr>`));
}

async function viewVillage(d, v) {
  const r = await api(`/api/v1/households?district=${enc(d)}&village=${enc(v)}`);
  let h = crumbs([`<a href="#/district/${enc(d)}">${esc(d)}</a>`, esc(v)]) + `<h2>${esc(v)} · ${esc(t("household"))}</h2>`;
  h += table([[t("household")], [t("live")], [t("running")], [t("power"), "num"], [t("gateways")], [t("meters")], [t("season_kwh"), "num"], [t("subsidy"), "num"], [t("alarms"), "num"]],
    r.households.map((x) => `<tr><td><a href="#/household/${enc(x.id)}">${esc(x.id)}</a></td>
      <td>${x.live ? pill("s-online", t("yes")) : pill("s-offline", t("no"))}</td>
      <td>${x.running ? pill("s-online", t("yes")) : pill("s-unknown", t("no"))}</td>
      <td class="num">${x.meters.map((m) => (m.p_w == null ? "—" : m.p_w)).join(", ")}</td>
      <td>${x.gateways.map((g) => `${esc(g.id)} ${g.online ? stateText("online") : stateText("offline")}`).join("<br>")}</td>
      <td>${x.meters.map((m) => `${esc(m.meter)}${m.consecutive_failures ? ` <span class="error">×${m.consecutive_failures}</span>` : ""}`).join("<br>")}</td>
      <td class="num">${x.season ? esc(x.season.offpeak_kwh) : "—"}</td><td class="num">${x.season ? esc(x.season.subsidy_yuan) : "—"}</td>
      <td class="num">${x.open_alarms}</td></tr>`));
  return h;
}

// Nightly kWh as an SVG bar chart; quality coloured, missing nights drawn as a dashed stub.
function nightChart(nights) {
  const W = 720, H = 220, pad = 34, n = Math.max(nights.length, 1);
  const vals = nights.map((x) => parseFloat(x.kwh) || 0);
  const max = Math.max(1, ...vals);
  const bw = (W - pad - 8) / n;
  const bars = nights.map((x, i) => {
    const v = vals[i], hgt = x.quality === "missing" ? 6 : Math.max(1, (v / max) * (H - pad - 10));
    const xPos = pad + i * bw, y = H - pad - hgt;
    return `<rect class="bar bar-${esc(x.quality)}" data-night="${esc(x.night)}" x="${xPos.toFixed(1)}" y="${y.toFixed(1)}" width="${Math.max(1, bw - 2).toFixed(1)}" height="${hgt.toFixed(1)}"><title>${esc(x.night)}: ${esc(x.kwh)} kWh (${esc(t(x.quality))})</title></rect>`;
  }).join("");
  const first = nights[0] ? nights[0].night : "", last = nights.length ? nights[nights.length - 1].night : "";
  return `<div class="chart"><svg id="night-chart" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(t("nightly"))}">
    <line x1="${pad}" y1="${H - pad}" x2="${W}" y2="${H - pad}" stroke="#9aa3ad"/>
    <text x="2" y="14" font-size="11" fill="#6b7280">${max.toFixed(1)}</text><text x="2" y="${H - pad}" font-size="11" fill="#6b7280">0</text>
    ${bars}
    <text x="${pad}" y="${H - 10}" font-size="11" fill="#6b7280">${esc(first)}</text><text x="${W - 70}" y="${H - 10}" font-size="11" fill="#6b7280">${esc(last)}</text>
  </svg><div class="legend"><span><i class="q-actual"></i>${esc(t("actual"))}</span><span><i class="q-estimated"></i>${esc(t("estimated"))}</span><span><i class="q-missing"></i>${esc(t("missing"))}</span></div></div>`;
}

function howObtained(ex) {
  const d = ex.detail || {};
  const parts = (d.parts || []).map((p) => `${esc(p.meter)}: ${esc(p.start && p.start.at)} ${esc(p.start && p.start.method)}; ${esc(p.end && p.end.at)} ${esc(p.end && p.end.method)}`).join("<br>");
  return d.text ? `${esc(d.text)}<details><summary>${esc(t("how"))}</summary>${parts}</details>` : parts;
}

async function viewHousehold(id) {
  const m = await api(`/api/v1/households/${enc(id)}/monitor`);
  const season = m.season_name;
  const [nights, st] = await Promise.all([
    api(`/api/v1/households/${enc(id)}/nights?season=${enc(season)}`),
    api(`/api/v1/households/${enc(id)}/seasons/${enc(season)}?explain=1`),
  ]);
  let h = crumbs([`<a href="#/district/${enc(m.district)}">${esc(m.district)}</a>`, `<a href="#/village/${enc(m.district)}/${enc(m.village)}">${esc(m.village)}</a>`, esc(id)]);
  h += `<h2 id="hh-title">${esc(t("household"))} ${esc(id)} · ${esc(m.device)}</h2>`;
  h += table([[t("meter")], [t("gateways")], [t("last_read")], [t("last_seen")], [t("power"), "num"], [t("running")], [t("failures"), "num"], [t("errors")], [t("clock"), "num"]],
    m.meters.map((x) => {
      const g = m.gateways[0] || {};
      return `<tr><td>${esc(x.meter)}</td><td>${esc(g.id || "")} ${g.id ? stateText(g.online ? "online" : "offline") : ""}</td>
      <td>${x.last_kwh ? esc(x.last_kwh) + " kWh" : "—"}</td><td>${fmtTime(x.last_good)}</td><td class="num">${x.p_w == null ? "—" : x.p_w}</td>
      <td>${x.running ? pill("s-online", t("yes")) : pill("s-unknown", t("no"))}</td><td class="num">${x.consecutive_failures}</td>
      <td>${esc(Object.entries(x.errors || {}).map(([k, v]) => k + "×" + v).join(", ") || "—")}</td><td class="num">${x.clock_offset_s == null ? "—" : x.clock_offset_s}</td></tr>`;
    }));
  h += `<h2>${esc(t("nightly"))} · ${esc(season)}</h2>` + nightChart(nights);
  h += `<h2>${esc(t("statement"))}</h2><dl class="kv" id="statement">
    <dt>${esc(t("offpeak_kwh"))}</dt><dd id="st-offpeak">${esc(st.offpeak_kwh)} kWh</dd>
    <dt>${esc(t("subsidised_kwh"))}</dt><dd>${esc(st.subsidised_kwh)} kWh</dd>
    <dt>${esc(t("cap_kwh"))}</dt><dd>${esc(st.cap_kwh)} kWh</dd>
    <dt>${esc(t("cap_reached_on"))}</dt><dd>${esc(st.cap_reached_on || "—")}</dd>
    <dt>${esc(t("city_subsidy"))}</dt><dd>${esc(st.city_subsidy_yuan)} ${esc(t("yuan"))}</dd>
    <dt>${esc(t("district_subsidy"))}</dt><dd>${esc(st.district_subsidy_yuan)} ${esc(t("yuan"))}</dd>
    <dt>${esc(t("valley_charge"))}</dt><dd>${esc(st.valley_charge_yuan)} ${esc(t("yuan"))}</dd>
    <dt>${esc(t("nights"))}</dt><dd>${esc(t("actual"))} ${st.nights.actual} · ${esc(t("estimated"))} ${st.nights.estimated} · ${esc(t("missing"))} ${st.nights.missing}</dd>
    <dt>${esc(t("flags"))}</dt><dd>${esc((st.flags || []).join(", ") || "—")}</dd></dl>`;
  h += `<h2>${esc(t("how"))}</h2>` + table([[t("night")], ["kWh", "num"], [t("quality")], [t("flags")], [t("how")]],
    (st.explain || []).map((ex) => `<tr><td>${esc(ex.night)}</td><td class="num">${esc(ex.kwh)}</td><td>${pill("q-" + ex.quality, t(ex.quality))}</td>
      <td>${esc((ex.flags || []).join(", "))}</td><td class="wrap">${howObtained(ex)}</td></tr>`));
  if (m.alarms.length) h += `<h2>${esc(t("alarms"))}</h2>` + alarmTable(m.alarms);
  return h;
}

function alarmTable(list) {
  return table([[t("kind")], [t("state")], [t("district")], [t("village")], [t("household")], [t("reason")], [t("opened")], [t("cleared_at")]],
    list.map((a) => `<tr class="alarm"><td>${esc(t("k_" + a.kind))}</td><td>${stateText(a.state)}</td><td>${esc(a.district || "")}</td><td>${esc(a.village || "")}</td>
      <td>${a.household ? `<a href="#/household/${enc(a.household)}">${esc(a.household)}</a>` : esc(a.gateway || "")}</td>
      <td class="wrap">${esc(a.reason)}</td><td>${fmtTime(a.opened)}</td><td>${fmtTime(a.cleared)}</td></tr>`));
}

async function viewAlarms(params) {
  const q = new URLSearchParams(params);
  if (!q.get("state")) q.set("state", "open");
  const list = await api("/api/v1/alarms?" + q.toString());
  const opt = (name, values, label) => `<select data-f="${name}">${values.map((v) => `<option value="${esc(v)}"${q.get(name) === v ? " selected" : ""}>${esc(label(v))}</option>`).join("")}</select>`;
  let h = `<h2>${esc(t("nav_alarms"))}</h2><div class="filters">
    ${opt("state", ["open", "cleared", "all"], t)}
    ${opt("kind", [""].concat(KINDS), (k) => (k ? t("k_" + k) : t("kind") + ": " + t("all")))}
    <input data-f="district" placeholder="${esc(t("district"))}" value="${esc(q.get("district") || "")}">
    <input data-f="village" placeholder="${esc(t("village"))}" value="${esc(q.get("village") || "")}">
    <button type="button" id="apply-filter">${esc(t("filter"))}</button></div>`;
  return h + `<div id="alarm-count" class="muted">${list.length}</div>` + alarmTable(list);
}

// ---- routing and refresh ----
function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query] = hash.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  switch (parts[0]) {
    case "district": return () => viewDistrict(parts[1]);
    case "village": return () => viewVillage(parts[1], parts[2]);
    case "household": return () => viewHousehold(parts[1]);
    case "alarms": return () => viewAlarms(query || "");
    default: return viewOverview;
  }
}

function applyStatic() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.body.dataset.lang = lang;
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  document.getElementById("lang").textContent = t("switch_lang");
  document.title = t("title");
}

let busy = false;
async function render() {
  if (busy) return;
  busy = true;
  const view = document.getElementById("view");
  try {
    view.innerHTML = await route()();
    view.dataset.ready = location.hash || "#/";
    document.getElementById("updated").textContent = `${t("updated")} ${fmtTime(Math.floor(Date.now() / 1000)).slice(11)}`;
    const apply = document.getElementById("apply-filter");
    if (apply) apply.onclick = () => {
      const q = new URLSearchParams();
      document.querySelectorAll("[data-f]").forEach((el) => { if (el.value) q.set(el.dataset.f, el.value); });
      location.hash = "#/alarms?" + q.toString();
    };
  } catch (e) {
    view.innerHTML = `<p class="error">${esc(t("error"))}: ${esc(e.message)}</p>`;
  } finally {
    busy = false;
  }
}

document.getElementById("lang").addEventListener("click", () => {
  lang = lang === "zh" ? "en" : "zh";
  try { localStorage.setItem("qn-lang", lang); } catch (e) { /* private mode */ }
  applyStatic();
  render();
});
document.getElementById("refresh").addEventListener("click", render);
window.addEventListener("hashchange", render);
setInterval(render, 30000);
applyStatic();
render();
