// The routing inspector. Everything drawn comes from the gateway's public endpoints: the dry run
// (POST /v1/jisi/route) for the support set and the shortcut's confidence, chat completions' `jisi` object for
// the scores, the candidates, the choice, the calls and their costs; the grader (a replay upstream, relayed by
// /inspector/api/grade) for whether an answer is right. Nothing is recomputed here but the session's sums.
"use strict";

const $ = (id) => document.getElementById(id);
const SHOWN_MODELS = 12; // score rows drawn: the top models by score, and every candidate
const state = { config: { baseline_model: null, grading: false, examples: [] },
                tally: { n: 0, routerRight: 0, routerCost: 0, baselineRight: 0, baselineCost: 0 } };

class ApiError extends Error {}

async function call(path, body) {
  const headers = { "content-type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers.authorization = `Bearer ${key}`;
  let response;
  try {
    response = await fetch(path, body === undefined ? { headers } : { method: "POST", headers, body: JSON.stringify(body) });
  } catch (exc) {
    throw new ApiError(`the gateway did not answer (${exc.message}); is it still running?`);
  }
  let payload = null;
  try { payload = await response.json(); } catch (_) { /* not JSON: said below */ }
  if (!response.ok) {
    const err = payload && payload.error;
    const what = err ? `${err.message}${err.code ? ` (${err.code})` : ""}` : `HTTP ${response.status} without a JSON body`;
    throw new ApiError(`${path}: ${response.status} ${what}`);
  }
  if (payload === null) throw new ApiError(`${path}: the answer is not JSON`);
  return { body: payload, headers: response.headers };
}

function usd(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  if (value === 0) return "$0";
  return value < 0.01 ? `$${value.toPrecision(3)}` : `$${value.toFixed(4)}`;
}

function ms(value) { return value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${Math.round(value)} ms`; }

function cell(row, text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text;
  row.appendChild(td);
  return td;
}

function bar(value, scale, kind) {
  const wrap = document.createElement("div");
  wrap.className = `bar ${kind}`;
  if (value === undefined) { wrap.textContent = "—"; return wrap; }
  const fill = document.createElement("span");
  fill.className = "fill";
  fill.style.width = `${Math.max(1, Math.round(160 * Math.max(0, value) / scale))}px`;
  const label = document.createElement("span");
  label.className = "value";
  label.textContent = value.toFixed(3);
  wrap.append(fill, label);
  return wrap;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function verdict(el, grade) {
  el.className = "verdict";
  if (!grade) { el.textContent = ""; return; }
  if (grade.graded) {
    el.classList.add(grade.correct ? "right" : "wrong");
    el.textContent = grade.correct ? "right" : "wrong";
  } else {
    el.classList.add("ungraded");
    el.textContent = "not graded";
    el.title = grade.reason || "";
  }
}

async function grade(question, content, model) {
  if (!state.config.grading || content === null) return null;
  try {
    return (await call("/inspector/api/grade", { question, content, model })).body;
  } catch (exc) {
    return { graded: false, reason: exc.message };
  }
}

function request(method, messages) {
  const model = { jisi: "jisi", economy: "jisi-economy" }[method] || "jisi-route";
  const body = { model, messages };
  if (method === "route") body.jisi = { shortcut: null }; // the full top-K fan-out, the shortcut off
  return body;
}

function drawScores(dry, jisi) {
  const g = jisi.scores.g && Object.keys(jisi.scores.g).length ? jisi.scores.g : dry.scores.g;
  const gf = jisi.scores.gf || {};
  const candidates = new Set(jisi.candidates);
  const ranked = Object.keys(g).sort((a, b) => (gf[b] ?? -Infinity) - (gf[a] ?? -Infinity) || g[b] - g[a]);
  const shown = ranked.filter((m, i) => i < SHOWN_MODELS || candidates.has(m));
  // each column on its own scale: g^f adds the response term, so its values are not on g's scale
  const scaleG = Math.max(1e-9, ...shown.map((m) => g[m]));
  const scaleGf = Math.max(1e-9, ...Object.values(gf));
  const body = $("scores").querySelector("tbody");
  body.replaceChildren();
  for (const model of shown) {
    const row = document.createElement("tr");
    row.dataset.model = model;
    if (candidates.has(model)) row.classList.add("candidate");
    if (model === jisi.answered_by) row.classList.add("chosen");
    const name = document.createElement("th");
    name.textContent = model;
    const tags = [];
    if (candidates.has(model)) tags.push("candidate");
    if (jisi.final && jisi.final.includes(model) && jisi.mode === "aggregate") tags.push("aggregated");
    if (model === jisi.answered_by) tags.push("answered");
    if (model === jisi.aggregator && jisi.mode === "aggregate") tags.push("aggregator");
    for (const t of tags) {
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = t;
      name.appendChild(tag);
    }
    row.appendChild(name);
    cell(row, "").appendChild(bar(g[model], scaleG, "g"));
    cell(row, "").appendChild(bar(gf[model], scaleGf, "gf"));
    body.appendChild(row);
  }
}

function drawCalls(jisi) {
  const body = $("calls").querySelector("tbody");
  body.replaceChildren();
  for (const c of jisi.calls) {
    const row = document.createElement("tr");
    cell(row, c.model);
    cell(row, c.role);
    cell(row, ms(c.latency_ms), "num");
    cell(row, String(c.usage.prompt_tokens), "num");
    cell(row, String(c.usage.completion_tokens), "num");
    cell(row, usd(c.cost_usd), "num");
    body.appendChild(row);
  }
}

function drawSupport(dry) {
  $("support-size").textContent = `${dry.support.size} bank questions, τ = ${dry.support.tau.toFixed(3)}` +
    (dry.support.capped ? " (capped)" : "") + `; the ${dry.neighbours.length} nearest:`;
  const body = $("support").querySelector("tbody");
  body.replaceChildren();
  for (const n of dry.neighbours) {
    const row = document.createElement("tr");
    cell(row, n.similarity.toFixed(3), "num");
    cell(row, n.dataset);
    // a long question keeps its head and its tail: benchmark prompts share a long preamble, and differ at the end
    const text = n.text.replace(/\s+/g, " ");
    cell(row, text.length > 320 ? `${text.slice(0, 100)} … ${text.slice(-200)}` : text, "question");
    const right = cell(row, `${n.correct_models.length}`, "num");
    right.title = n.correct_models.join(", ");
    body.appendChild(row);
  }
}

function describeShortcut(method, dry, jisi) {
  const s = dry.shortcut;
  if (jisi.cascade) {
    const steps = jisi.cascade.map((st) => `${st.model} (lead ${st.lead === null ? "∞" : st.lead.toFixed(2)})`);
    return `cascade, cheapest first, stopping at lead ≥ ${dry.params.cascade}: ${steps.join(" → ")}`;
  }
  if (method === "route") return "shortcut off for this request: every candidate is called";
  if (s.threshold === null) return "no shortcut threshold in force (the bank's calibration chose none): every candidate is called";
  const confidence = s.leader_confidence === null ? "unknown" : s.leader_confidence.toFixed(3);
  return jisi.shortcut
    ? `shortcut fired: the coarse leader's confidence ${confidence} ≥ threshold ${s.threshold}, so only it was called`
    : `shortcut not fired: the coarse leader's confidence ${confidence} < threshold ${s.threshold}, so the top-K were called`;
}

function drawTally() {
  const t = state.tally;
  if (!t.n) return;
  $("tally").hidden = false;
  $("tally-n").textContent = $("tally-n2").textContent = String(t.n);
  $("tally-router-right").textContent = String(t.routerRight);
  $("tally-router-acc").textContent = `${(100 * t.routerRight / t.n).toFixed(1)} %`;
  $("tally-router-cost").textContent = usd(t.routerCost);
  $("tally-baseline-name").textContent = state.config.baseline_model || "best single";
  $("tally-baseline-right").textContent = String(t.baselineRight);
  $("tally-baseline-acc").textContent = `${(100 * t.baselineRight / t.n).toFixed(1)} %`;
  $("tally-baseline-cost").textContent = usd(t.baselineCost);
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) { showError("type a question, or pick one of the test questions"); return; }
  const method = document.querySelector("input[name=method]:checked").value;
  const messages = [{ role: "user", content: question }];
  const body = request(method, messages);
  $("error").hidden = true;
  $("busy").hidden = false;
  $("ask").disabled = true;
  try {
    const baselineModel = state.config.baseline_model;
    const [dry, chat, baseline] = await Promise.all([
      call("/v1/jisi/route", { ...body, neighbours: 10 }),  // the dry run plans with the same model's profile
      call("/v1/chat/completions", body),
      baselineModel ? call("/v1/chat/completions", { model: baselineModel, messages }).catch((exc) => exc) : null,
    ]);
    const jisi = chat.body.jisi;
    const answer = chat.body.choices[0].message.content;
    const baselineOk = baseline && !(baseline instanceof Error);
    const baselineAnswer = baselineOk ? baseline.body.choices[0].message.content : null;
    const [routerGrade, baselineGrade] = await Promise.all([
      grade(question, answer, jisi.answered_by),
      baselineOk ? grade(question, baselineAnswer, baselineModel) : null,
    ]);
    $("result").hidden = false;
    $("chosen-model").textContent = jisi.mode === "aggregate" ? `${jisi.aggregator} (aggregating)` : jisi.answered_by;
    verdict($("router-verdict"), routerGrade);
    $("decision").textContent = `mode ${jisi.mode}; candidates ${jisi.candidates.join(", ")}` +
      (jisi.mode === "aggregate" ? `; aggregated ${jisi.final.join(", ")}` : "") +
      (jisi.degraded ? `; DEGRADED: ${jisi.degraded_reasons.join("; ")}` : "") +
      // a replay upstream answers the aggregator's prompt with the aggregator's own recorded answer
      (jisi.mode === "aggregate" && state.config.grading
        ? " (replayed: the aggregator answers with its own recorded answer, the records hold no aggregated one)" : "");
    $("shortcut").textContent = describeShortcut(method, dry.body, jisi);
    $("router-cost").textContent = usd(jisi.total_cost_usd);
    $("router-calls").textContent = String(jisi.upstream_calls);
    $("router-latency").textContent = `${ms(jisi.timings_ms.total)} in all, gateway's own ${ms(jisi.timings_ms.overhead)}`;
    $("answer").textContent = answer ?? "";
    $("baseline-card").hidden = !baselineModel;
    if (baselineModel) {
      $("baseline-model").textContent = baselineModel;
      verdict($("baseline-verdict"), baselineGrade);
      if (baselineOk) {
        $("baseline-cost").textContent = usd(baseline.body.jisi.total_cost_usd);
        $("baseline-latency").textContent = ms(baseline.body.jisi.timings_ms.total);
        $("baseline-answer").textContent = baselineAnswer ?? "";
      } else {
        $("baseline-cost").textContent = "—";
        $("baseline-latency").textContent = "";
        $("baseline-answer").textContent = baseline.message;
      }
    }
    const truth = (routerGrade && routerGrade.ground_truth) || (baselineGrade && baselineGrade.ground_truth);
    $("truth").hidden = !truth;
    $("truth").textContent = truth ? `reference answer in the records: ${truth}` : "";
    drawScores(dry.body, jisi);
    drawCalls(jisi);
    drawSupport(dry.body);
    if (routerGrade && routerGrade.graded && baselineGrade && baselineGrade.graded) {
      const t = state.tally;
      t.n += 1;
      t.routerRight += routerGrade.correct ? 1 : 0;
      t.baselineRight += baselineGrade.correct ? 1 : 0;
      t.routerCost += jisi.total_cost_usd;
      t.baselineCost += baseline.body.jisi.total_cost_usd;
      drawTally();
    }
  } catch (exc) {
    let message = exc instanceof ApiError ? exc.message : `the page failed: ${exc.message}`;
    if (state.config.grading && /question_not_found|no recorded question/.test(message)) {
      message += " — the upstreams here replay recorded answers: they can answer the test questions listed above, " +
        "not a question of your own";
    }
    showError(message);
  } finally {
    $("busy").hidden = true;
    $("ask").disabled = false;
  }
}

async function start() {
  $("ask-form").addEventListener("submit", ask);
  $("example").addEventListener("change", () => {
    const picked = state.config.examples[Number($("example").value)];
    if (picked) $("question").value = picked.question;
  });
  try {
    const ready = (await call("/readyz")).body;
    $("bank").textContent = `bank ${ready.bank.build_id}: ${ready.bank.queries} questions, ${ready.bank.models} models; ` +
      `embedder ${ready.embedder}`;
  } catch (exc) {
    $("bank").textContent = `the gateway is not ready: ${exc.message}`;
  }
  try {
    const models = (await call("/v1/models")).body.data.map((m) => m.id);
    $("economy-choice").hidden = !models.includes("jisi-economy");  // the bank has an economy profile
  } catch (_) { /* the error shows when a question is asked */ }
  try {
    state.config = (await call("/inspector/api/config")).body;
  } catch (exc) {
    showError(`the inspector's settings could not be read: ${exc.message}`);
    return;
  }
  state.config.examples.forEach((e, i) => {
    const option = document.createElement("option");
    option.value = String(i);
    const text = e.question.replace(/\s+/g, " ");
    option.textContent = `[${e.dataset}] ${text.length > 110 ? `${text.slice(0, 110)}…` : text}`;
    $("example").appendChild(option);
  });
}

start();
